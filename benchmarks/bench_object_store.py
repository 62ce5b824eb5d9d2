"""Inputs and outputs on a local S3 server against local disk: wall time, and bytes read per task.

Usage::

    python benchmarks/bench_object_store.py [--n 4] [--shape 256 256] [--workers 2]

Simulates a MIRI dither, uploads it to a moto S3 server started on 127.0.0.1 (the tests'
``tests/helpers/s3_server.py``, which logs every request), runs the whole pipeline from and to
local disk and from and to S3 on the same local cluster, checks the products are identical,
and prints the wall times. Then it runs the S3 case again on one single-threaded worker and
gives every request the task running at that moment (requests outside any task are the
client's): requests and bytes received from the server per task kind, and for the member
files (``*_cal.fits``, ``*_crf.fits``) the bytes read per task against the file size, which
shows the ranged reads.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _arrays(path, fs):
    from astropy.io import fits

    src = io.BytesIO(fs.cat_file(path.path)) if hasattr(path, "fs") else path
    with fits.open(src) as hdul:
        return {h.name: np.array(h.data) for h in hdul if h.is_image and h.data is not None}


def _attribute(requests: list[dict], stream: list[dict]) -> dict[str, dict]:
    """Per task kind: tasks, requests and bytes received, from time windows of one worker."""
    windows = []
    for t in stream:
        for ss in t.get("startstops", ()):
            if ss["action"] == "compute":
                key = t["key"]
                kind = key[0] if isinstance(key, tuple) else str(key).split("-")[0]
                windows.append((ss["start"], ss["stop"], kind, key))
    windows.sort()
    out: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    tasks: dict[str, set] = defaultdict(set)
    for _, _, kind, key in windows:
        tasks[kind].add(str(key))
    for r in requests:
        mid = (r["t0"] + r["t1"]) / 2
        kind = next((k for a, b, k, _ in windows if a <= mid <= b), "client (no task)")
        row = out[kind]
        row["requests"] += 1
        if r["method"] == "GET":
            row["bytes_read"] += r["sent"]
            if r["key"].endswith(("_cal.fits", "_crf.fits")):
                row["member_bytes"] += r["sent"]
                row["member_gets"] += 1
                row["ranged"] += bool(r["range"])
        elif r["method"] == "PUT":
            row["bytes_written"] += r["received"]
    for kind, keys in tasks.items():
        out[kind]["tasks"] = len(keys)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4, help="exposures (default 4)")
    p.add_argument("--shape", type=int, nargs=2, default=[256, 256])
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    import s3fs
    from distributed import Client, LocalCluster, get_task_stream
    from helpers.s3_server import S3Server

    from image3_dask import Image3Pipeline
    from image3_dask.simulate import simulate

    work = Path(tempfile.mkdtemp(prefix="bench_s3_"))
    server = S3Server(work)
    opts = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": server.endpoint}}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("bench")
    sim = simulate(instrument="miri", n=args.n, out_dir=work / "sim", seed=1,
                   pattern="dither", shape=tuple(args.shape))
    fs.put(f"{work / 'sim'}/", "bench/sim/", recursive=True)
    size = fs.info(f"bench/sim/{sim.cal_paths[0].name}")["size"]
    steps = {"source_catalog": {"snr_threshold": 2, "npixels": 10}}
    try:
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0",
                          memory_limit="2GB") as cluster, Client(cluster) as c:
            c.run(lambda: __import__("image3_dask.pipeline.worker_setup"))
            times = {}
            for label, asn, out in (
                ("local warm-up", sim.asn_path, work / "warm"),
                ("local disk", sim.asn_path, work / "out"),
                ("S3 (moto, 127.0.0.1)", "s3://bench/sim/asn.json", "s3://bench/out"),
            ):
                t = time.perf_counter()
                prod = Image3Pipeline.call(asn, out, steps=steps, client=c, progress=False,
                                           storage_options=opts, configure_log=False)
                times[label] = time.perf_counter() - t
                times.pop("local warm-up", None)
                if label == "local disk":
                    ref = prod
            got = prod
            for kind in ("i2d", "segm"):
                a, b = _arrays(got[kind], fs), _arrays(ref[kind], fs)
                assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in b), kind
        print(f"{args.n} exposures of {args.shape[0]}x{args.shape[1]}, {args.workers} workers; "
              "products identical")
        for label, t in times.items():
            print(f"  {label:<24} {t:6.1f} s")

        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                          memory_limit="3GB") as cluster, Client(cluster) as c:
            c.run(lambda: __import__("image3_dask.pipeline.worker_setup"))
            fs.rm("bench/out", recursive=True)
            mark = server.mark()
            with get_task_stream(c) as ts:
                Image3Pipeline.call("s3://bench/sim/asn.json", "s3://bench/out", steps=steps,
                                    client=c, progress=False, storage_options=opts,
                                    configure_log=False)
            rows = _attribute(server.read_log()[mark:], ts.data)
        print(f"\nbytes per task kind (one worker; member file size {size / 1e6:.2f} MB):")
        print(f"  {'task kind':<22}{'tasks':>6}{'requests':>9}{'read MB':>9}{'written MB':>11}"
              f"{'member MB/task':>15}{'ranged':>8}")
        for kind, r in sorted(rows.items(), key=lambda kv: -kv[1]["bytes_read"]):
            n = max(1, r["tasks"])
            print(f"  {kind:<22}{r['tasks']:>6}{r['requests']:>9}{r['bytes_read'] / 1e6:>9.2f}"
                  f"{r['bytes_written'] / 1e6:>11.2f}{r['member_bytes'] / n / 1e6:>15.3f}"
                  f"{r['ranged']:>4}/{r['member_gets']:<3}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
