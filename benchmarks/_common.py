"""Shared helpers of the benchmarks: cached simulated data, timed runs, peak memory per process.

Peak memory is the largest resident set size of a process, sampled every 10 ms by a thread in
that process while the measured work runs: in every worker process of a fresh local cluster for
our runs, in the subprocess that runs the official pipeline for theirs. (``ru_maxrss`` cannot be
used: Linux keeps the parent's value across exec, so every worker would report its parent's.)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from image3_dask.pipeline.cluster import WORKER_PRELOAD

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("IMAGE3_BENCH_DIR", ROOT / "bench_output"))

OFFLINE_ENV = {
    "STPIPE_DISABLE_CRDS_STEPPARS": "True",
    "CRDS_SERVER_URL": "https://localhost:1",
    "CRDS_PATH": str(OUT / "crds_cache"),
}


def dataset(name: str, **kwargs) -> Path:
    """Simulate once (cached by name) and return the association path."""
    from image3_dask.simulate import simulate

    folder = OUT / "data" / name
    asn = folder / "asn.json"
    if not asn.exists():
        t0 = time.perf_counter()
        simulate(out_dir=folder, **kwargs)
        print(f"simulated {name} in {time.perf_counter() - t0:.1f} s", flush=True)
    return asn


#: Python prepended to the official pipeline's code: ``PEAK[0]`` holds the sampled peak RSS.
RSS_SAMPLER_CODE = """
import threading as _th, time as _t, psutil as _ps
_proc = _ps.Process()
PEAK = [_proc.memory_info().rss]
def _sample():
    while True:
        PEAK[0] = max(PEAK[0], _proc.memory_info().rss)
        _t.sleep(0.01)
_th.Thread(target=_sample, daemon=True).start()
"""


def start_rss_sampler(dask_worker=None) -> float:
    """Worker: sample this process's RSS every 10 ms in a thread; return the current RSS (MB)."""
    import threading

    import psutil

    proc = psutil.Process()
    state = {"peak": proc.memory_info().rss, "run": True}

    def loop():
        while state["run"]:
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(0.01)

    threading.Thread(target=loop, daemon=True).start()
    dask_worker._bench_rss_sampler = state
    return proc.memory_info().rss / 2**20


def stop_rss_sampler(dask_worker=None) -> float:
    """Worker: stop sampling and return the peak RSS (MB) since :func:`start_rss_sampler`."""
    state = dask_worker._bench_rss_sampler
    state["run"] = False
    return state["peak"] / 2**20


@contextlib.contextmanager
def local_client(n_workers: int, memory_limit: str):
    """A fresh local cluster of single-thread worker processes (preloaded as the CLI's) and its client."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            preload=[WORKER_PRELOAD],
            dashboard_address=":0",
            memory_limit=memory_limit,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def miri_mosaic_spec(rows: int, cols: int, shape: tuple[int, int] | None) -> tuple[str, dict]:
    """Name and simulation parameters of the MIRI mosaics of the resample benchmarks.

    Parameters
    ----------
    rows, cols : int
        Pointings of the mosaic.
    shape : tuple of int or None
        Detector shape ``(ny, nx)``; None for the full MIRI imager.

    Returns
    -------
    name : str
        Cache name (``miri_mosaic_<rows>x<cols>``, plus ``_<ny>x<nx>`` for a smaller detector).
    spec : dict
        Keyword arguments of :func:`image3_dask.simulate.simulate`.
    """
    name = f"miri_mosaic_{rows}x{cols}"
    spec: dict = dict(
        instrument="miri",
        n=rows * cols,
        rows=rows,
        cols=cols,
        seed=7,
        pattern="mosaic",
        n_galaxies=20,
    )
    if shape is not None:
        name += f"_{shape[0]}x{shape[1]}"
        spec["shape"] = tuple(shape)
    return name, spec


def run_official(code: str, label: str, log_path: Path | None = None) -> dict:
    """Run Python ``code`` (which must print one JSON line) in a fresh offline subprocess.

    With ``log_path`` its standard error (jwst's log) is saved there, and the result gets
    ``step_seconds``: the time of each stpipe step from its "running"/"done" log lines.
    """
    env = {**os.environ, **OFFLINE_ENV}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RSS_SAMPLER_CODE + code], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - t0
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        Path(log_path).write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_process"] = wall
    if log_path is not None:
        result["step_seconds"] = stpipe_step_seconds(proc.stderr)
    return result


def stpipe_step_seconds(log: str) -> dict[str, float]:
    """Seconds of each stpipe step, from the timestamps of its "Step <name> running"/"done" lines."""
    import re
    from datetime import datetime

    pattern = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Step (\w+) (running|done)")
    started: dict[str, datetime] = {}
    out: dict[str, float] = {}
    for line in log.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        name, what = m.group(2), m.group(3)
        if what == "running":
            started[name] = t
        elif name in started:
            out[name] = out.get(name, 0.0) + (t - started.pop(name)).total_seconds()
    return out


def run_ours(
    asn: Path, out: Path, steps: dict, n_workers: int, memory_limit: str = "auto", **kw
) -> dict:
    """Run image3-dask on a fresh local cluster; time it and read every worker's peak RSS."""
    import shutil

    from image3_dask.pipeline.image3 import Image3Pipeline

    shutil.rmtree(out, ignore_errors=True)
    with local_client(n_workers, memory_limit) as client:
        base = client.run(start_rss_sampler)
        t0 = time.perf_counter()
        products = Image3Pipeline.call(
            asn, output_dir=out, steps=steps, client=client, progress=False, **kw
        )
        wall = time.perf_counter() - t0
        peaks = client.run(stop_rss_sampler)
    return {
        "wall": wall,
        "worker_peak_mb": max(peaks.values()),
        "worker_baseline_mb": max(base.values()),
        "products": products,
        "timings": products.get("timings", {}),
    }


def write_result(name: str, result: dict) -> Path:
    """Save a benchmark's numbers as JSON in the benchmark folder."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path
