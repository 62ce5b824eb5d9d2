"""Resample: image3-dask on 1 and 2 workers against jwst's ResampleStep, same data, one run.

Usage::

    python benchmarks/bench_resample.py [--n 8] [--shape 1024 1032] [--pattern dither|mosaic]

Prints wall times, ratios to the official step, peak memory per process, and the agreement of
SCI/WHT/ERR; writes ``bench_output/resample_<n>.json``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _common import dataset, run_official, run_ours, write_result

ONLY_RESAMPLE = {
    s: {"skip": True} for s in ("tweakreg", "skymatch", "outlier_detection", "source_catalog")
}

OFFICIAL = """
import json, time
from jwst.resample import ResampleStep
t0 = time.perf_counter()
m = ResampleStep.call({asn!r})
wall = time.perf_counter() - t0
m.save({out!r})
print(json.dumps({{"wall": wall, "peak_mb": PEAK[0] / 2**20}}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--shape", type=int, nargs=2, default=None)
    p.add_argument("--pattern", default="mosaic")
    p.add_argument("--instrument", default="miri")
    args = p.parse_args()
    name = f"{args.instrument}_{args.pattern}_{args.n}" + (
        f"_{args.shape[0]}x{args.shape[1]}" if args.shape else ""
    )
    kw = {"shape": tuple(args.shape)} if args.shape else {}
    asn = dataset(name, instrument=args.instrument, n=args.n, seed=5, pattern=args.pattern, **kw)
    out = asn.parent.parent.parent / "runs" / name
    out.mkdir(parents=True, exist_ok=True)
    official_file = out / "official_i2d.fits"
    official = run_official(
        OFFICIAL.format(asn=str(asn), out=str(official_file)), "jwst ResampleStep"
    )
    ours = {n: run_ours(asn, out / f"ours_{n}w", ONLY_RESAMPLE, n_workers=n) for n in (1, 2)}

    from stdatamodels.jwst import datamodels

    with datamodels.open(official_file) as a, datamodels.open(ours[2]["products"]["i2d"]) as b:
        ok = np.isfinite(a.data) & np.isfinite(b.data)
        agree = {
            "shape_equal": a.data.shape == b.data.shape,
            "sci_max_rel": float(
                np.nanmax(np.abs(a.data[ok] - b.data[ok]) / np.maximum(np.abs(a.data[ok]), 1e-30))
            ),
            "wht_max_rel": float(np.nanmax(np.abs(a.wht - b.wht) / np.maximum(a.wht, 1e-30))),
            "err_max_rel": float(
                np.nanmax(np.abs(a.err[ok] - b.err[ok]) / np.maximum(a.err[ok], 1e-30))
            ),
            "nan_pattern_equal": bool(np.array_equal(np.isnan(a.data), np.isnan(b.data))),
            "shape": list(a.data.shape),
        }
    result = {
        "dataset": name,
        "official_wall_s": official["wall"],
        "official_peak_mb": official["peak_mb"],
        "ours_1w_wall_s": ours[1]["wall"],
        "ours_2w_wall_s": ours[2]["wall"],
        "ours_1w_peak_worker_mb": ours[1]["worker_peak_mb"],
        "ours_2w_peak_worker_mb": ours[2]["worker_peak_mb"],
        "ratio_1w": ours[1]["wall"] / official["wall"],
        "ratio_2w": ours[2]["wall"] / official["wall"],
        "parallel_efficiency": ours[1]["wall"] / (2 * ours[2]["wall"]),
        "agreement": agree,
    }
    path = write_result(f"resample_{name}", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
