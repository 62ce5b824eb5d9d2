"""Where the time goes: task seconds per kind of task, and the serial share, for one case.

Usage::

    python benchmarks/profile_tasks.py [--case miri_mosaic_16] [--workers 2]

Runs the whole pipeline on a fresh local cluster with Dask's task stream and prints, per task
kind (the task name's prefix, e.g. ``outlier-median``), the number of tasks and their compute
seconds, the time each step took on the client, and the seconds during which 0, 1 or at least
2 tasks ran. Used to decide what to optimise; the figures are not part of the report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import defaultdict

from _common import OUT, dataset, local_client
from bench_large_mosaic import alone_by_kind, busy_profile, task_kind
from run_all import CASES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="miri_mosaic_16", choices=sorted(CASES))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="1GB")
    p.add_argument("--steps", nargs="*", default=[], help="extra step.name=value parameters")
    p.add_argument(
        "--stream", metavar="JSON", help="also save every task's name, worker and compute span"
    )
    args = p.parse_args()
    spec = dict(CASES[args.case])
    spec.pop("refcat", None)
    asn = dataset(args.case, **spec)
    out = OUT / "runs" / f"profile_{args.case}_{args.workers}w"
    shutil.rmtree(out, ignore_errors=True)

    from distributed import get_task_stream

    from image3_dask.pipeline.image3 import Image3Pipeline
    from image3_dask.simulate.refs import write_reference_files

    apcorr, abvega = write_reference_files(spec["instrument"], OUT / "refs")
    steps: dict = {
        "source_catalog": {"override_apcorr": str(apcorr), "override_abvegaoffset": str(abvega)}
    }
    for item in args.steps:
        key, value = item.split("=", 1)
        step, name = key.split(".", 1)
        steps.setdefault(step, {})[name] = (
            json.loads(value) if value[:1] in "[{0123456789tf-" else value
        )
    import logging

    handler = logging.StreamHandler()
    t_start = time.time()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda r: setattr(r, "msg", f"[{r.created - t_start:7.2f}] {r.msg}") or True)
    logging.getLogger("image3_dask").addHandler(handler)
    logging.getLogger("image3_dask").setLevel(logging.INFO)
    with local_client(args.workers, args.memory_limit) as client:
        ts = get_task_stream(client)
        with ts:
            t0 = time.time()
            products = Image3Pipeline.call(
                asn, output_dir=out, steps=steps, client=client, progress=False
            )
            t1 = time.time()
    if args.stream:
        rows = [
            {"key": str(rec["key"]), "worker": rec.get("worker"),
             "start": s["start"] - t_start, "stop": s["stop"] - t_start}
            for rec in ts.data
            for s in rec.get("startstops", [])
            if s.get("action") == "compute"
        ]
        with open(args.stream, "w") as f:
            json.dump({"t0": t0 - t_start, "t1": t1 - t_start, "tasks": rows}, f, indent=0)
    per: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for rec in ts.data:
        prefix = task_kind(rec["key"])
        for s in rec.get("startstops", []):
            if s.get("action") == "compute":
                per[prefix][0] += 1
                per[prefix][1] += s["stop"] - s["start"]
    print(f"wall {t1 - t0:.1f} s on {args.workers} worker(s)")
    print("steps:", {k: round(v, 1) for k, v in products["timings"].items()})
    for k, (n, sec) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(f"  {k:32s} {n:5d} tasks {sec:8.1f} s")
    spans = sorted(
        (s["start"], s["stop"])
        for rec in ts.data
        for s in rec.get("startstops", [])
        if s.get("action") == "compute"
    )
    last = t0
    print("gaps with no task running (> 0.3 s), seconds from the start:")
    for a, b in spans + [(t1, t1)]:
        if a - last > 0.3:
            print(f"  {last - t_start:7.2f} .. {a - t_start:7.2f}  ({a - last:.2f} s)")
        last = max(last, b)
    prof = busy_profile(ts.data, t0, t1)
    print("busy:", {k: round(v, 1) for k, v in prof.items()})
    print("seconds with exactly one task running, by the task kind running alone:")
    for kind, sec in sorted(alone_by_kind(ts.data, t0, t1).items(), key=lambda kv: -kv[1]):
        if sec >= 0.1:
            print(f"  {kind:32s} {sec:6.1f} s")


if __name__ == "__main__":
    main()
