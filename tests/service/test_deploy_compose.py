"""The compose stack run for real: ``deploy/Dockerfile`` built, scheduler and workers started
with Docker Compose from ``docker-compose.yml``, the ``submit`` service run, and its i2d compared
with a local run's; then a worker container killed in the middle of a job's resample.

Needs a Docker engine, a Compose (``docker-compose`` v1, or the ``docker compose`` v2 plugin)
and the base image present locally: no registry is assumed. ``.ci/docker_setup.sh start`` (as
root with apt) installs and starts the engine and builds a local base image; ``.ci/run`` then
sets :data:`REQUIRE_DOCKER` and :data:`BASE_IMAGE_ENV` for these tests. Without an engine or
base image the tests skip with the reason; with ``IMAGE3_REQUIRE_DOCKER=1`` they fail instead.

The image is built under the compose file's tag (``image3-dask:0.1.0``) from this checkout; the
stack runs as the compose project :data:`PROJECT` on free loopback ports and is removed with its
volume afterwards. The variant without a shared disk (``deploy/compose-s3.yml``: moto's S3
server in place of the volume) is run likewise as :data:`PROJECT_S3`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
#: Set (to 1) by .ci/run once .ci/docker_setup.sh has an engine ready: these tests must run.
REQUIRE_DOCKER = "IMAGE3_REQUIRE_DOCKER"
#: The image deploy/Dockerfile builds on (its BASE_IMAGE argument); Docker Hub's by default.
BASE_IMAGE_ENV = "IMAGE3_BASE_IMAGE"
#: The compose project the tests start (containers, network and volume carry its name).
PROJECT = "image3-deploy-test"
PRODUCT = "miri_dither"


# ---- as in tests/service/test_cluster.py (kept here: the two may move apart) -------------------


def assert_same_i2d(a: Path, b: Path) -> None:
    """Every image extension of two i2d files is identical (NaN where NaN)."""
    from astropy.io import fits

    def arrays(path):
        with fits.open(path) as hdul:
            return {h.name: np.array(h.data) for h in hdul if h.data is not None and h.is_image}

    xa, xb = arrays(a), arrays(b)
    assert sorted(xa) == sorted(xb) and "SCI" in xa
    for name in xa:
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)


def hold_workers(client) -> None:
    """Pause the workers: they start no new task (running ones finish), so a job cannot end;
    the memory monitor is told not to resume them."""

    def pause(dask_worker):
        from distributed.core import Status

        dask_worker._test_pause_fraction = dask_worker.memory_manager.memory_pause_fraction
        dask_worker.memory_manager.memory_pause_fraction = False
        dask_worker.status = Status.paused

    client.run(pause)


def release_workers(client) -> None:
    """Resume the workers :func:`hold_workers` paused (a killed one is ignored)."""

    def resume(dask_worker):
        from distributed.core import Status

        if dask_worker.status == Status.paused:
            dask_worker.memory_manager.memory_pause_fraction = dask_worker._test_pause_fraction
            dask_worker.status = Status.running

    client.run(resume, on_error="ignore")


def lost_and_recomputed(client, keys, t_kill: float) -> tuple[set, set]:
    """Of ``keys``: those the scheduler released because their worker died, and those computed
    (again) after ``t_kill``, from the scheduler's transitions (its story of the keys)."""
    keys = list(keys)
    story = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.story(*keys)))
    lost = {
        t[0] for t in story
        if t[4].startswith("handle-worker-cleanup") and t[1] in ("memory", "processing")
    }
    recomputed = {t[0] for t in story if t[2] == "memory" and t[5] > t_kill}
    return lost, recomputed


# ---- the stack ----------------------------------------------------------------------------------


def _run(argv: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT)


def compose_command() -> list[str] | None:
    """The Compose program: ``IMAGE3_COMPOSE`` if set, else ``docker-compose`` (v1, Debian's
    package), else the ``docker compose`` plugin (v2); None when there is none."""
    if os.environ.get("IMAGE3_COMPOSE"):
        return shlex.split(os.environ["IMAGE3_COMPOSE"])
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and _run(["docker", "compose", "version"], 30).returncode == 0:
        return ["docker", "compose"]
    return None


def base_image() -> str:
    """The base image the tests build on: ``$IMAGE3_BASE_IMAGE`` or ``python:3.11-slim``."""
    return os.environ.get(BASE_IMAGE_ENV) or "python:3.11-slim"


def why_no_engine() -> str | None:
    """Why the compose tests cannot run here (None when they can)."""
    if not shutil.which("docker"):
        return "the docker command is not installed"
    r = _run(["docker", "info", "--format", "{{.ServerVersion}}"], 60)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker engine answers `docker info` ({last})"
    if compose_command() is None:
        return "neither docker-compose (v1) nor the docker compose plugin (v2) is installed"
    if _run(["docker", "image", "inspect", base_image()], 60).returncode != 0:
        return (f"the base image {base_image()} is not present locally (no registry is assumed: "
                f"build one with `.ci/docker_setup.sh base-image` and set {BASE_IMAGE_ENV}, or docker pull it)")
    return None


@pytest.fixture(scope="module")
def engine() -> None:
    """Skip (or fail, when :data:`REQUIRE_DOCKER` is set) without an engine and base image."""
    reason = why_no_engine()
    if reason is None:
        return
    msg = reason if "docker_setup" in reason else (
        f"{reason}; .ci/docker_setup.sh start sets one up (as root with apt)")
    if os.environ.get(REQUIRE_DOCKER, "") not in ("", "0"):
        pytest.fail(f"{REQUIRE_DOCKER}=1 but {msg}", pytrace=False)
    pytest.skip(msg)


def say(request, message: str) -> None:
    """Print ``message`` on the terminal even under capture (CI's log shows the stack's run)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n[compose] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """A running compose project: its Compose command line, environment and scheduler port.

    Parameters
    ----------
    workdir : Path
        Folder for the override file and logs.
    compose_file : Path
        The compose file (docker-compose.yml, or deploy/compose-s3.yml).
    project : str
        The compose project's name.
    """

    def __init__(self, workdir: Path, compose_file: Path = COMPOSE_FILE, project: str = PROJECT):
        self.workdir = workdir
        self.project = project
        self.scheduler_port = free_port()
        self.env = dict(
            os.environ,
            BASE_IMAGE=base_image(),
            IMAGE3_SCHEDULER_PORT=str(self.scheduler_port),
            IMAGE3_DASHBOARD_PORT=str(free_port()),
        )
        # The scheduler keeps every transition (default: the last 1000), so the killed-worker
        # test can read what happened to the tasks of the killed container. Only for the tests.
        override = workdir / "compose.test-override.yml"
        override.write_text(yaml.safe_dump({"services": {"scheduler": {"environment": [
            "DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH=1000000"]}}}))
        self.argv = [*compose_command(), "-p", project, "-f", str(compose_file),
                     "-f", str(override)]

    @property
    def address(self) -> str:
        """The scheduler, as published on this machine."""
        return f"tcp://127.0.0.1:{self.scheduler_port}"

    def compose(self, *args: str, timeout: float = 300, check: bool = True):
        """Run one Compose command on the project; fail with its output when it fails."""
        t0 = time.monotonic()
        r = _run([*self.argv, *args], timeout, env=self.env)
        print(f"[{time.monotonic() - t0:6.1f} s] compose {' '.join(args)} -> {r.returncode}")
        if check and r.returncode != 0:
            pytest.fail(f"compose {' '.join(args)} failed ({r.returncode}):\n"
                        f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}", pytrace=False)
        return r

    def logs(self, tail: int = 60) -> str:
        """The last ``tail`` lines of each service's log."""
        r = self.compose("logs", "--no-color", "--tail", str(tail), check=False, timeout=120)
        return r.stdout + r.stderr

    def containers(self, service: str) -> list[str]:
        """IDs of the project's running containers of ``service``."""
        r = _run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                  "--filter", f"label=com.docker.compose.service={service}"], 60)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    def data_dir(self) -> Path:
        """Where the project's ``data`` volume (``/data`` in the containers) is on this machine."""
        r = _run(["docker", "volume", "ls", "-q", "--filter",
                  f"label=com.docker.compose.project={self.project}"], 60)
        names = [n for n in r.stdout.split() if n.endswith("data")]
        assert len(names) == 1, (r.stdout, r.stderr)
        r = _run(["docker", "volume", "inspect", "-f", "{{.Mountpoint}}", names[0]], 60)
        path = Path(r.stdout.strip())
        if not os.access(path, os.R_OK | os.X_OK):
            pytest.fail(f"the volume's folder {path} is not readable here: these tests read it "
                        "directly and need a local engine and root", pytrace=False)
        return path

    def client(self):
        """A Dask client of the stack's scheduler (package versions are the same; the Python
        patch level may differ from the image's, which distributed warns about)."""
        from distributed import Client

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Client(self.address, timeout=30)


def container_ip(cid: str) -> set[str]:
    """The container's addresses on its networks."""
    r = _run(["docker", "inspect", "-f",
              "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid], 60)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


@pytest.fixture(scope="module")
def stack(engine, tmp_path_factory, request):
    """The image built, the scheduler and two workers up; everything removed afterwards."""
    st = Stack(tmp_path_factory.mktemp("compose"))
    st.compose("down", "-v", "--remove-orphans", "-t", "5")  # leftovers of an interrupted run
    try:
        t0 = time.monotonic()
        # one build: the services share the image (v1 would build it once per service)
        st.compose("build", "scheduler", timeout=1200)
        size = _run(["docker", "image", "inspect", "-f", "{{.Size}}", "image3-dask:0.1.0"], 60)
        say(request, f"image3-dask:0.1.0 built from deploy/Dockerfile on {base_image()} in "
                     f"{time.monotonic() - t0:.0f} s ({int(size.stdout) / 1e6:.0f} MB)")
        t0 = time.monotonic()
        st.compose("up", "-d", "scheduler", "worker", timeout=300)
        assert len(st.containers("worker")) == 2
        with st.client() as c:
            c.wait_for_workers(2, timeout=120)
        say(request, f"scheduler and 2 workers up in {time.monotonic() - t0:.0f} s "
                     f"({' '.join(st.argv[:-4])} up -d scheduler worker)")
        yield st
    finally:
        (st.workdir / "compose.log").write_text(st.logs(tail=100000))
        st.compose("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout=300)


def submit_options() -> list[str]:
    """The ``--steps.*`` options of the compose file's ``submit`` command (the local reference
    run uses the same)."""
    svc = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["submit"]
    assert svc["command"][:2] == ["sh", "-c"], svc["command"]
    parts = [shlex.split(p) for p in svc["command"][2].split("&&")]
    (submit,) = [p for p in parts if p[:2] == ["image3-dask", "submit"]]
    return [a for a in submit if a.startswith("--steps.")]


@pytest.fixture(scope="module")
def reference(stack, tmp_path_factory, request):
    """The compose file's ``submit`` service run as a user runs it (it simulates a 4-exposure
    dither on the volume, submits it and waits), and the same inputs run locally here."""
    t0 = time.monotonic()
    r = stack.compose("run", "--rm", "submit", timeout=900)
    say(request, f"`run --rm submit` (simulate, submit, wait) in {time.monotonic() - t0:.0f} s")
    data = stack.data_dir()
    here = tmp_path_factory.mktemp("local")
    shutil.copytree(data / "sim", here / "sim")
    t0 = time.monotonic()
    local = subprocess.run(
        [sys.executable, "-m", "image3_dask.cli", "run", str(here / "sim" / "asn.json"),
         "-o", str(here / "out"), *submit_options()],
        capture_output=True, text=True, timeout=600,
    )
    assert local.returncode == 0, local.stderr
    say(request, f"the same inputs run locally here in {time.monotonic() - t0:.0f} s")
    return {"submit": r, "data": data, "local_i2d": here / "out" / f"{PRODUCT}_i2d.fits",
            "sim": here / "sim"}


def versions(argv: list[str]) -> dict[str, str]:
    """Versions of the packages that make the numbers, from the Python ``argv`` runs."""
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "('numpy', 'scipy', 'astropy', 'drizzle', 'stcal', 'gwcs', 'photutils', "
            "'stdatamodels', 'dask', 'distributed')}))")
    r = _run([*argv, "-c", code], 300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def assert_same_as_local(i2d: Path, local_i2d: Path) -> None:
    """The i2d arrays are identical; on a difference, say whether the image's packages differ
    from this environment's."""
    try:
        assert_same_i2d(i2d, local_i2d)
    except AssertionError as err:
        image = versions(["docker", "run", "--rm", "image3-dask:0.1.0", "python"])
        here = versions([sys.executable])
        differ = {k: (image[k], here[k]) for k in here if image[k] != here[k]}
        raise AssertionError(f"{err}\npackage versions (image, here) that differ: "
                             f"{differ or 'none'}") from err


def test_compose_submit_service_gives_the_local_i2d(reference, request):
    """``compose run --rm submit`` (the file's own command) ends with a done job on the stack's
    workers, and its i2d is bit-identical to a local run of the same inputs here."""
    r = reference["submit"]
    assert "state:    done" in r.stdout, r.stdout[-3000:]
    i2d = reference["data"] / "out" / f"{PRODUCT}_i2d.fits"
    assert f"i2d: /data/out/{PRODUCT}_i2d.fits" in r.stdout, r.stdout[-3000:]
    # the job's driver ran on a worker container, not in the submitting one
    worker = r.stdout.split("worker:", 1)[1].split()[0]
    assert worker.startswith("tcp://") and "127.0.0.1" not in worker, r.stdout[-3000:]
    assert_same_as_local(i2d, reference["local_i2d"])
    say(request, "i2d of the compose stack == i2d of the local run (every extension, bit for bit)")


def tiles(keys) -> set:
    """The resample tiles among ``keys``."""
    return {k for k in keys if "resample-tile" in str(k)}


def pause_when_held(c, job: str, manifest: Path, timeout: float = 300) -> tuple[str, set]:
    """Pause the workers at a moment the worker *not* running ``job``'s driver holds resample
    tiles (in memory or assigned), with some tiles written and the job running.

    Returns
    -------
    victim : str
        That worker's address.
    held : set
        The tiles it holds, the workers paused (no task starts; :func:`release_workers`).
    """
    from image3_dask.service.status import get_job

    t0 = time.monotonic()
    while True:
        rec = get_job(c, job)
        assert rec["state"] in ("queued", "running"), rec
        n_done = len(list(manifest.glob("*.json")))
        assert n_done < 100 and time.monotonic() - t0 < timeout, (
            f"the job's resample ended ({n_done} tiles) before the worker without the driver "
            f"held a tile: {rec}")
        if n_done >= 2 and rec.get("worker"):
            others = [a for a in c.processing() if a != rec["worker"]]
            assert len(others) == 1, (others, rec)
            processing, has_what = c.processing(), c.has_what()
            if tiles([*processing[others[0]], *has_what[others[0]]]):
                hold_workers(c)
                time.sleep(0.5)  # tasks already running finish; none starts
                processing, has_what = c.processing(), c.has_what()
                held = tiles([*processing[others[0]], *has_what[others[0]]])
                rec = get_job(c, job)
                if held and rec["state"] == "running":
                    return others[0], held
                release_workers(c)
        time.sleep(0.05)


def test_worker_container_killed_mid_resample_gives_the_same_i2d(stack, reference, request):
    """``docker kill`` of a worker container that holds resample tiles (results in memory,
    tasks assigned) in the middle of a submitted job: the scheduler recomputes what it held on
    the surviving worker and the i2d is bit-identical to the local run.

    As in tests/service/test_cluster.py, the workers are paused before the kill (no task
    starts, so the job cannot end first and the victim's tasks are known) and the survivor is
    resumed right after it. The victim is the worker that does not run the job's driver (the
    driver's own death is the other fault test there).

    (This test found that the WCS a run sent with ``client.scatter`` were lost with the
    killed worker; they are now held by recomputable tasks.)
    """
    from image3_dask.service.status import get_job

    job = "killed-worker"
    manifest = stack.data_dir() / "killed" / f"{PRODUCT}_i2d.zarr.manifest" / "resample"
    workers = stack.containers("worker")
    assert len(workers) == 2
    with stack.client() as c:
        c.wait_for_workers(2, timeout=120)
        r = stack.compose(
            "run", "--rm", "submit", "image3-dask", "submit", "/data/sim/asn.json",
            "-o", "/data/killed", "--job-id", job, "--scheduler", "tcp://scheduler:8786",
            "--driver-resource", "image3-driver", *submit_options(),
            "--steps.resample.tile_shape=32,32",  # 100 tiles on this dither
            timeout=300,
        )
        assert f"submitted job {job}" in r.stdout, r.stdout
        victim, held = pause_when_held(c, job, manifest)
        try:
            host = victim.split("://", 1)[1].rsplit(":", 1)[0]
            (cid,) = [w for w in workers if host in container_ip(w)]
            done_at_kill = len(list(manifest.glob("*.json")))
            t_kill = time.time()
            k = _run(["docker", "kill", cid], 60)
            assert k.returncode == 0, k.stderr
        finally:
            release_workers(c)
        t0 = time.monotonic()
        while (rec := get_job(c, job))["state"] != "done":
            if rec["state"] != "running" or time.monotonic() - t0 > 600:
                pytest.fail(f"job after the kill: {json.dumps(rec, indent=1, default=str)}\n"
                            f"{stack.logs()}", pytrace=False)
            time.sleep(0.5)
        lost, recomputed = lost_and_recomputed(c, held, t_kill)
    state = _run(["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid], 60)
    say(request, f"docker kill {cid[:12]} (worker {victim}) holding {len(held)} resample tiles, "
                 f"{done_at_kill} of 100 written; {len(lost)} lost and recomputed; the container "
                 f"is now {state.stdout.strip()}")
    assert state.stdout.split() == ["exited", "137"]  # SIGKILL, not a clean exit
    assert rec["attempt"] == 1 and rec["worker"] != victim, rec  # the driver went on
    assert lost  # the scheduler lost tasks with the container...
    assert lost <= recomputed  # ...and computed them again on the live worker
    n_tiles = len(list(manifest.glob("*.json")))
    assert n_tiles == 100 and done_at_kill < n_tiles
    assert_same_as_local(manifest.parents[1] / f"{PRODUCT}_i2d.fits", reference["local_i2d"])
    say(request, "i2d after the kill == i2d of the local run")


# ---- the variant without a shared disk: deploy/compose-s3.yml ---------------------------------

COMPOSE_S3_FILE = ROOT / "deploy" / "compose-s3.yml"
PROJECT_S3 = "image3-deploy-s3-test"


def test_compose_s3_variant_gives_the_local_i2d(engine, tmp_path, request):
    """deploy/compose-s3.yml run as its header says: its image built (s3fs and moto's server
    in it), the store, scheduler and workers up, the ``submit`` service run (simulate in its
    container, upload, submit s3:// inputs and outputs, wait). No volume exists in the project;
    the i2d, fetched from the store through its published port, is bit-identical to a local
    run of the same inputs (fetched from the store too)."""
    s3fs = pytest.importorskip("s3fs")
    st = Stack(tmp_path, COMPOSE_S3_FILE, PROJECT_S3)
    s3_port = free_port()
    st.env["IMAGE3_S3_PORT"] = str(s3_port)
    st.compose("down", "-v", "--remove-orphans", "-t", "5")
    try:
        t0 = time.monotonic()
        st.compose("build", "scheduler", timeout=1500)
        say(request, f"image3-dask-s3:0.1.0 built in {time.monotonic() - t0:.0f} s")
        t0 = time.monotonic()
        st.compose("up", "-d", "s3", "scheduler", "worker", timeout=300)
        assert len(st.containers("worker")) == 2
        r = st.compose("run", "--rm", "submit", timeout=900)
        say(request, f"compose-s3: up and `run --rm submit` in {time.monotonic() - t0:.0f} s")
        assert "state:    done" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        assert f"i2d: s3://image3/out/{PRODUCT}_i2d.fits" in r.stdout, r.stdout[-3000:]
        volumes = _run(["docker", "volume", "ls", "-q", "--filter",
                        f"label=com.docker.compose.project={PROJECT_S3}"], 60)
        assert volumes.returncode == 0 and volumes.stdout.split() == [], volumes.stdout
        fs = s3fs.S3FileSystem(
            key="image3-test", secret="image3-test-secret",
            client_kwargs={"endpoint_url": f"http://127.0.0.1:{s3_port}",
                           "region_name": "us-east-1"})
        fs.get("image3/sim", str(tmp_path / "sim"), recursive=True)
        fs.get(f"image3/out/{PRODUCT}_i2d.fits", str(tmp_path / "s3_i2d.fits"))
        steps = [a for a in shlex.split(yaml.safe_load(COMPOSE_S3_FILE.read_text())[
            "services"]["submit"]["command"][2]) if a.startswith("--steps.")]
        assert steps
        local = subprocess.run(
            [sys.executable, "-m", "image3_dask.cli", "run", str(tmp_path / "sim" / "asn.json"),
             "-o", str(tmp_path / "out"), *steps],
            capture_output=True, text=True, timeout=600,
        )
        assert local.returncode == 0, local.stderr
        assert_same_i2d(tmp_path / "s3_i2d.fits", tmp_path / "out" / f"{PRODUCT}_i2d.fits")
    finally:
        (st.workdir / "compose.log").write_text(st.logs(tail=100000))
        st.compose("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout=300)
