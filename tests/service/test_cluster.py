"""A real cluster, started as a user would (``dask scheduler`` + ``dask worker`` processes on
127.0.0.1), driven through the ``image3-dask`` command: run, submit/status, failures, a worker
killed in the middle of a run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SKIP = [
    "--steps.tweakreg.skip=true",
    "--steps.skymatch.skip=true",
    "--steps.outlier_detection.skip=true",
    "--steps.source_catalog.skip=true",
]
TILES = ["--steps.resample.tile_shape=16,16"]  # about 150 tiles: a resample lasting seconds
CLI = [sys.executable, "-m", "image3_dask.cli"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("image3-dask: error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def i2d_arrays(path: Path) -> dict[str, np.ndarray]:
    from astropy.io import fits

    with fits.open(path) as hdul:
        return {h.name: np.array(h.data) for h in hdul if h.data is not None and h.is_image}


def assert_same_i2d(a: Path, b: Path) -> None:
    xa, xb = i2d_arrays(a), i2d_arrays(b)
    assert sorted(xa) == sorted(xb) and "SCI" in xa
    for name in xa:
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("svc_sim")
    return simulate(instrument="miri", n=2, out_dir=out, seed=5, pattern="dither", shape=(128, 128))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from image3_dask.service.devcluster import ProcessCluster

    with pytest.MonkeyPatch.context() as mp:
        # the scheduler keeps every transition of the module's jobs (default: the last 1000),
        # so the tests can read what happened to the tasks of a killed worker
        mp.setenv("DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH", "1000000")
        pc = ProcessCluster(tmp_path_factory.mktemp("svc_cluster"), n_workers=2, nthreads=1)
        pc.start(timeout=120)
    yield pc
    pc.close()


def hold_workers(client, workers=None) -> None:
    """Pause workers: they start no new task (running ones finish), so a job cannot end.

    The memory monitor would resume a paused worker whose memory is low: it is told not to.
    """

    def pause(dask_worker):
        from distributed.core import Status

        dask_worker._test_pause_fraction = dask_worker.memory_manager.memory_pause_fraction
        dask_worker.memory_manager.memory_pause_fraction = False
        dask_worker.status = Status.paused

    client.run(pause, workers=workers)


def release_workers(client) -> None:
    """Resume the workers :func:`hold_workers` paused (restarted ones are running already;
    the killed one may still be listed by the scheduler: errors are ignored)."""

    def resume(dask_worker):
        from distributed.core import Status

        if dask_worker.status == Status.paused:
            dask_worker.memory_manager.memory_pause_fraction = dask_worker._test_pause_fraction
            dask_worker.status = Status.running

    client.run(resume, on_error="ignore")


def scheduler_story(client, keys) -> list[tuple]:
    """The scheduler's transitions of ``keys``: ``(key, start, finish, recs, stimulus, time)``."""
    keys = list(keys)
    return client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.story(*keys)))


def lost_and_recomputed(story, t_kill: float) -> tuple[set, set]:
    """Keys the scheduler released because their worker died, and keys computed after the kill."""
    lost = {
        t[0] for t in story
        if t[4].startswith("handle-worker-cleanup") and t[1] in ("memory", "processing")
    }
    recomputed = {t[0] for t in story if t[2] == "memory" and t[5] > t_kill}
    return lost, recomputed


def wait_record(pc, job: str, predicate, timeout: float = 180) -> dict:
    from image3_dask.service.status import get_job

    t0 = time.monotonic()
    with pc.client() as c:
        while True:
            rec = get_job(c, job)
            if predicate(rec):
                return rec
            assert rec["state"] != "failed", rec
            assert time.monotonic() - t0 < timeout, rec
            time.sleep(0.2)


@pytest.fixture(scope="module")
def submitted(cluster, sim, tmp_path_factory):
    """A job submitted with ``image3-dask submit``, then followed with ``status --wait``."""
    out = tmp_path_factory.mktemp("svc_submit") / "out"
    addr = ["--scheduler", cluster.address]
    # a job whose driver needs a resource no worker has stays queued...
    r = cli("submit", str(sim.asn_path), *addr, "-o", str(out), "--job-id", "parked",
            "--driver-resource", "nowhere", *SKIP)
    assert r.returncode == 0, r.stderr
    # ...so a second job for the same product and folder is refused
    r = cli("submit", str(sim.asn_path), *addr, "-o", str(out), *SKIP)
    assert_one_line_error(r, "job parked (queued) is already writing product miri_dither")
    r = cli("cancel", "parked", *addr)
    assert r.returncode == 0, r.stderr
    r = cli("status", "parked", *addr)
    assert "state:    failed" in r.stdout and "cancelled before it started" in r.stdout
    t0 = time.monotonic()
    r = cli("submit", str(sim.asn_path), *addr, "-o", str(out), "--job-id", "ref-job",
            *SKIP, *TILES)
    submit_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert "submitted job ref-job" in r.stdout
    # the submitting client is gone: the job goes on
    w = cli("status", "ref-job", "--scheduler", cluster.address, "--wait", "--interval", "0.5")
    return {"out": out, "submit": r, "wait": w, "submit_s": submit_s}


def test_run_through_cli_on_real_cluster(cluster, sim, tmp_path):
    from stdatamodels.jwst import datamodels

    out = tmp_path / "out"
    r = cli("run", str(sim.asn_path), "--scheduler", cluster.address, "-o", str(out), *SKIP)
    assert r.returncode == 0, r.stderr
    i2d = out / "miri_dither_i2d.fits"
    assert f"i2d: {i2d}" in r.stdout
    with datamodels.open(i2d) as m:
        assert m.data.ndim == 2 and min(m.data.shape) > 128
        assert np.isfinite(m.data).mean() > 0.5 and m.meta.instrument.name == "MIRI"


def test_unreachable_scheduler_is_one_clear_error(sim, tmp_path):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = cli("run", str(sim.asn_path), "--scheduler", f"tcp://127.0.0.1:{port}", "--timeout", "2",
            "-o", str(out), *SKIP)
    assert_one_line_error(r, f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")
    assert r.returncode == 2
    assert not out.exists()  # nothing written, not even the folder
    assert time.monotonic() - t0 < 60
    for cmd in (["submit", str(sim.asn_path), "-o", str(out)], ["status"], ["cancel", "x"]):
        r = cli(*cmd, "--scheduler", f"tcp://127.0.0.1:{port}", "--timeout", "2")
        assert_one_line_error(r, "cannot reach")
    assert not out.exists()


def test_bad_input_to_submit_is_refused_before_anything_runs(cluster, tmp_path):
    out = tmp_path / "out"
    r = cli("submit", str(tmp_path / "missing_asn.json"), "--scheduler", cluster.address,
            "-o", str(out), *SKIP)
    assert_one_line_error(r, "missing_asn.json")
    r = cli("submit", str(tmp_path / "missing_asn.json"), "-o", str(out))
    assert_one_line_error(r, "needs the cluster", "--scheduler")
    r = cli("status", "no-such-job", "--scheduler", cluster.address)
    assert_one_line_error(r, "does not know job 'no-such-job'")
    assert not out.exists()


def test_submit_returns_at_once_and_status_follows_the_job(submitted, cluster):
    out = submitted["out"]
    w = submitted["wait"]
    assert w.returncode == 0, w.stdout + w.stderr
    assert "state:    done" in w.stdout and "resample-tile" in w.stderr  # progress while waiting
    i2d = out / "miri_dither_i2d.fits"
    assert f"i2d: {i2d}" in w.stdout and i2d.is_file()
    # the record is also in the output folder, readable without the scheduler
    rec = json.loads((out / ".image3-dask-jobs" / "ref-job.json").read_text())
    assert rec["state"] == "done" and rec["attempt"] == 1 and rec["steps_done"] == ["resample"]
    r = cli("status", "--output-dir", str(out))
    assert r.returncode == 0 and "ref-job" in r.stdout and " done " in r.stdout
    r = cli("status", "--scheduler", cluster.address, "--json")
    assert json.loads(r.stdout)["ref-job"]["products"]["i2d"] == str(i2d)
    print(f"submit returned after {submitted['submit_s']:.1f} s (process start included)")


def test_worker_killed_mid_run_gives_identical_i2d(submitted, cluster, sim, tmp_path):
    """A worker holding resample tiles (results in memory, tasks assigned) is killed mid-run:
    the scheduler recomputes exactly what it held and the i2d is bit-identical to a clean run.

    The workers are paused before the kill (no task starts, so the job cannot end first and
    the victim's tasks are known); the survivor is resumed right after it.
    """
    out = tmp_path / "out"
    manifest = out / "miri_dither_i2d.zarr.manifest" / "resample"
    pids = cluster.worker_pids()
    assert len(pids) == 2
    proc = subprocess.Popen(
        [*CLI, "run", str(sim.asn_path), "--scheduler", cluster.address, "-o", str(out),
         *SKIP, *TILES],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    with cluster.client() as c:
        t0 = time.monotonic()
        while len(list(manifest.glob("*.json"))) < 4:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < 180
            time.sleep(0.05)
        try:
            hold_workers(c)
            time.sleep(0.5)  # tasks already running finish; none starts
            processing, has_what = c.processing(), c.has_what()

            def tiles(keys):
                return {k for k in keys if "resample-tile" in str(k)}

            victim = max(pids, key=lambda a: len(tiles([*processing[a], *has_what[a]])))
            held = tiles([*processing[victim], *has_what[victim]])
            assert held, (processing, has_what)  # the killed worker holds tiles
            done_at_kill = len(list(manifest.glob("*.json")))
            assert proc.poll() is None  # the job is still running
            t_kill = time.time()
            os.kill(pids[victim], signal.SIGKILL)  # the worker process; its nanny starts a new one
        finally:
            release_workers(c)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        lost, recomputed = lost_and_recomputed(scheduler_story(c, held), t_kill)
    print(f"killed a worker holding {len(held)} tiles; {len(lost)} lost and recomputed")
    assert lost  # the scheduler lost tasks with the worker...
    assert lost <= recomputed  # ...and computed them again on a live worker
    n_tiles = len(list((submitted["out"] / "miri_dither_i2d.zarr.manifest/resample").glob("*")))
    assert 30 <= n_tiles and done_at_kill < n_tiles
    assert len(list(manifest.glob("*.json"))) == n_tiles
    assert_same_i2d(out / "miri_dither_i2d.fits", submitted["out"] / "miri_dither_i2d.fits")
    cluster.wait_for_workers(2, timeout=120)  # the nanny restarted the killed worker


def test_job_survives_death_of_the_worker_driving_it(submitted, cluster, sim, tmp_path):
    """The worker running a submitted job's driver dies mid-job: a second attempt finishes it.

    The workers are paused before the kill, so the job cannot end before it (no race with
    the job's end): the record must still say running, attempt 1, with tiles left to do.
    """
    out = tmp_path / "out"
    r = cli("submit", str(sim.asn_path), "--scheduler", cluster.address, "-o", str(out),
            "--job-id", "killed-driver", *SKIP, *TILES)
    assert r.returncode == 0, r.stderr
    rec = wait_record(cluster, "killed-driver", lambda rec: rec.get("step") == "resample")
    # the record's task counts come once a second, the tiles take less: watch the manifest
    manifest = out / "miri_dither_i2d.zarr.manifest" / "resample"
    n_tiles = len(list((submitted["out"] / "miri_dither_i2d.zarr.manifest/resample").glob("*")))
    t0 = time.monotonic()
    while len(list(manifest.glob("*.json"))) < 3:
        assert time.monotonic() - t0 < 180
        time.sleep(0.01)
    with cluster.client() as c:
        try:
            hold_workers(c)
            time.sleep(0.5)
            from image3_dask.service.status import get_job

            held = get_job(c, "killed-driver")
            n_at_kill = len(list(manifest.glob("*.json")))
            assert held["state"] == "running" and held["attempt"] == 1, held
            assert held["pid"] == rec["pid"] and n_at_kill < n_tiles, (held, n_at_kill)
            os.kill(rec["pid"], signal.SIGKILL)  # the worker running the job's driver
        finally:
            release_workers(c)
    print(f"killed the driver with {n_at_kill} of {n_tiles} tiles written")
    final = wait_record(cluster, "killed-driver", lambda rec: rec["state"] == "done", timeout=300)
    assert final["attempt"] == 2 and final["pid"] != rec["pid"], (final, n_at_kill)
    assert len(list(manifest.glob("*.json"))) == n_tiles
    assert not (out / ".miri_dither.image3-dask.lock").exists()
    assert_same_i2d(out / "miri_dither_i2d.fits", submitted["out"] / "miri_dither_i2d.fits")
    cluster.wait_for_workers(2, timeout=120)
