"""Time image3-dask's tweakreg and skymatch steps against the official jwst steps.

Simulates ``--n`` MIRI exposures (a dither, or a mosaic with ``--mosaic ROWSxCOLS``) of reduced
size, then runs, on the same files:

* jwst 3.0 ``TweakRegStep`` and ``SkyMatchStep`` (one process, in memory);
* image3-dask's steps on a local cluster of 1 and of 2 single-threaded workers
  (cluster start-up not counted; the first run on a fresh cluster includes worker imports,
  so each configuration is run twice and the second run is reported).

Example (one short run)::

    python benchmarks/bench_tweakreg_skymatch.py --n 12 --shape 512 --out /tmp/bench_tw
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "True")
os.environ.setdefault("CRDS_SERVER_URL", "https://localhost:1")
os.environ.setdefault("CRDS_PATH", tempfile.mkdtemp(prefix="crds_"))


def _official(asn: Path, out: Path, align_mode: str) -> dict[str, float]:
    from jwst.skymatch import SkyMatchStep
    from jwst.tweakreg import TweakRegStep

    times = {}
    t0 = time.perf_counter()
    lib = TweakRegStep.call(str(asn), output_dir=str(out))
    times["tweakreg"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    SkyMatchStep.call(lib)
    times["skymatch"] = time.perf_counter() - t0
    return times


def _ours(asn: Path, out: Path, client, align_mode: str) -> dict[str, float]:
    from image3_dask.pipeline.image3 import Image3Pipeline

    skip = {s: {"skip": True} for s in ("outlier_detection", "resample", "source_catalog")}
    products = Image3Pipeline.call(
        asn,
        output_dir=out,
        client=client,
        progress=False,
        steps={**skip, "tweakreg": {"align_mode": align_mode}},
    )
    return dict(products["timings"])


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table of times and ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=12, help="exposures (dither)")
    p.add_argument("--mosaic", default=None, help="ROWSxCOLS mosaic instead of a dither")
    p.add_argument("--shape", type=int, default=512, help="detector size (pixels per side)")
    p.add_argument("--out", default=None, help="work folder (a temporary one by default)")
    p.add_argument("--workers", default="1,2", help="worker counts to time")
    p.add_argument("--align-mode", default="official", help="image3-dask align_mode")
    p.add_argument("--no-jwst", action="store_true", help="skip the official steps")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("image3_dask").setLevel(logging.WARNING)
    for name in ("stpipe", "jwst", "tweakwcs", "stcal"):
        logging.getLogger(name).setLevel(logging.ERROR)

    from distributed import Client, LocalCluster

    from image3_dask.simulate import simulate

    work = Path(args.out or tempfile.mkdtemp(prefix="bench_tw_"))
    kw = {
        "instrument": "miri",
        "seed": 1,
        "shape": (args.shape, args.shape),
        "n_stars": 1500,
        "n_galaxies": 150,
    }
    if args.mosaic:
        rows, cols = (int(v) for v in args.mosaic.lower().split("x"))
        sim = simulate(n=None, rows=rows, cols=cols, pattern="mosaic", out_dir=work / "sim", **kw)
    else:
        sim = simulate(n=args.n, pattern="dither", out_dir=work / "sim", **kw)
    n = len(sim.cal_paths)
    print(f"{n} MIRI exposures of {args.shape}x{args.shape} px in {work / 'sim'}")

    rows = {}
    if not args.no_jwst:
        out = work / "jwst"
        out.mkdir(parents=True, exist_ok=True)
        rows["jwst 3.0"] = _official(sim.asn_path, out, args.align_mode)
    for nw in (int(v) for v in args.workers.split(",")):
        with (
            LocalCluster(n_workers=nw, threads_per_worker=1, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            for rep in range(2):  # the first run pays the workers' imports
                out = work / f"dask{nw}_{rep}"
                times = _ours(sim.asn_path, out, client, args.align_mode)
            rows[f"image3-dask, {nw} worker{'s' if nw > 1 else ''}"] = times

    ref = rows.get("jwst 3.0")
    print(f"\n{'':28s} {'tweakreg':>10s} {'skymatch':>10s}   ratio to jwst (tweakreg, skymatch)")
    for label, t in rows.items():
        ratio = ""
        if ref and label != "jwst 3.0":
            ratio = (
                f"   {ref['tweakreg'] / t['tweakreg']:.2f}x, {ref['skymatch'] / t['skymatch']:.2f}x"
            )
        print(f"{label:28s} {t['tweakreg']:9.2f}s {t['skymatch']:9.2f}s{ratio}")
    print("(ratio > 1: image3-dask faster)")


if __name__ == "__main__":
    main()
