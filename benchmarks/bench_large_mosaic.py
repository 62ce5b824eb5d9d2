"""A large mosaic on this machine: hundreds of exposures, a grid over 10,000 px a side.

Usage::

    python benchmarks/bench_large_mosaic.py [--rows 18 --cols 18 --shape 640 640] [--memory-limit 2GB]

Runs the whole pipeline on 2 workers held to ``--memory-limit`` with Dask's task stream and
performance report, and records wall time, time per step, peak RSS per worker, the share of the
wall time during which at most one task ran (serial: small solve tasks, client-side planning and
the FITS streaming), and an Amdahl projection to 8, 32 and 128 workers:
``T(N) = serial_wall + parallel_task_seconds / N``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
from _common import OUT, dataset, local_client, start_rss_sampler, stop_rss_sampler, write_result


def busy_profile(stream: list[dict], t0: float, t1: float) -> dict:
    """Seconds during which 0, 1, or >= 2 tasks were running, from Dask's task stream."""
    events = []
    for rec in stream:
        for s in rec.get("startstops", []):
            if s.get("action") == "compute":
                events.append((max(s["start"], t0), 1))
                events.append((min(s["stop"], t1), -1))
    events.sort()
    running, last = 0, t0
    spans = {"idle": 0.0, "one": 0.0, "many": 0.0}
    parallel_task_seconds = serial_task_seconds = 0.0
    for t, d in events:
        dt = max(0.0, t - last)
        key = "idle" if running == 0 else "one" if running == 1 else "many"
        spans[key] += dt
        if running >= 2:
            parallel_task_seconds += dt * running
        elif running == 1:
            serial_task_seconds += dt
        running += d
        last = t
    spans["idle"] += max(0.0, t1 - last)
    spans["parallel_task_seconds"] = parallel_task_seconds
    spans["serial_task_seconds"] = serial_task_seconds
    return spans


def task_kind(key) -> str:
    """The kind of a task from its key: the action of ``(action, name, token)`` keys."""
    return str(key[0] if isinstance(key, tuple) else key).split(" ")[0].strip("('\",")


def alone_by_kind(stream: list[dict], t0: float, t1: float) -> dict[str, float]:
    """Seconds during which a task of each kind was the only task running."""
    events = []
    for rec in stream:
        kind = task_kind(rec["key"])
        for s in rec.get("startstops", []):
            if s.get("action") == "compute":
                events.append((max(s["start"], t0), 1, kind))
                events.append((min(s["stop"], t1), -1, kind))
    events.sort(key=lambda e: (e[0], e[1]))
    running: dict[str, int] = defaultdict(int)
    out: dict[str, float] = defaultdict(float)
    last = t0
    for t, d, kind in events:
        busy = [k for k, n in running.items() if n > 0]
        if sum(running.values()) == 1:
            out[busy[0]] += max(0.0, t - last)
        running[kind] += d
        last = t
    return dict(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=18)
    p.add_argument("--cols", type=int, default=18)
    p.add_argument("--shape", type=int, nargs=2, default=[640, 640])
    p.add_argument("--memory-limit", default="2GB")
    args = p.parse_args()
    name = f"miri_large_{args.rows}x{args.cols}_{args.shape[0]}px"
    asn = dataset(
        name,
        instrument="miri",
        n=args.rows * args.cols,
        rows=args.rows,
        cols=args.cols,
        pattern="mosaic",
        seed=31,
        shape=tuple(args.shape),
        n_galaxies=30,
    )
    out = OUT / "runs" / name
    import shutil

    from distributed import get_task_stream, performance_report

    from image3_dask.pipeline.image3 import Image3Pipeline
    from image3_dask.simulate.refs import write_reference_files

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    apcorr, abvega = write_reference_files("miri", OUT / "refs")
    steps = {
        "source_catalog": {"override_apcorr": str(apcorr), "override_abvegaoffset": str(abvega)}
    }
    with local_client(2, args.memory_limit) as client:
        client.run(start_rss_sampler)
        ts = get_task_stream(client)
        with performance_report(filename=str(out / "dask-report.html")), ts:
            t0 = time.time()
            products = Image3Pipeline.call(
                asn, output_dir=out, steps=steps, client=client, progress=True
            )
            t1 = time.time()
        peaks = client.run(stop_rss_sampler)
    wall = t1 - t0
    prof = busy_profile(ts.data, t0, t1)
    serial_wall = prof["idle"] + prof["one"]
    from stdatamodels.jwst import datamodels

    with datamodels.open(products["i2d"]) as m:
        shape = list(m.data.shape)
        coverage = float(np.mean(m.wht > 0))
    # Amdahl: the serial wall time stays, the task-seconds that ran in parallel divide by N
    projection = {n: serial_wall + prof["parallel_task_seconds"] / n for n in (2, 8, 32, 64, 128)}
    one_worker = serial_wall + prof["parallel_task_seconds"]
    result = {
        "exposures": args.rows * args.cols,
        "detector_shape": args.shape,
        "grid_shape": shape,
        "coverage": coverage,
        "memory_limit": args.memory_limit,
        "wall_s": wall,
        "timings": products["timings"],
        "worker_peak_mb": max(peaks.values()),
        "serial_share": serial_wall / wall,
        "busy_profile_s": prof,
        "alone_by_kind_s": {
            k: round(v, 2)
            for k, v in sorted(alone_by_kind(ts.data, t0, t1).items(), key=lambda kv: -kv[1])
            if v >= 0.1
        },
        "projected_wall_s": projection,
        "one_worker_s": one_worker,
        "report": str(out / "dask-report.html"),
        "n_sources": None,
    }
    if products.get("cat"):
        from astropy.table import Table

        result["n_sources"] = len(Table.read(products["cat"]))
    write_result("large_mosaic", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
