"""Peak worker memory of resample as the mosaic grows: bounded by tile and exposure, not mosaic.

Usage::

    python benchmarks/bench_resample_memory.py [--sizes 2x2 4x4 6x6] [--memory-limit 1GB] [--official]

For each mosaic (rows x cols MIRI pointings, full 1032x1024 detectors), runs the resample step on
2 workers held to ``--memory-limit`` and records the peak RSS of every worker process, next to the
bytes the full SCI+WHT+CON+ERR+VAR arrays of that mosaic would take. With ``--official`` also runs
jwst's ResampleStep (which holds the whole mosaic) for its peak memory.
"""

from __future__ import annotations

import argparse
import json

from _common import dataset, miri_mosaic_spec, run_official, run_ours, write_result
from bench_resample import OFFICIAL, ONLY_RESAMPLE


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["2x2", "4x4", "6x6"])
    p.add_argument("--memory-limit", default="1GB")
    p.add_argument("--official", action="store_true")
    args = p.parse_args()
    rows = []
    for size in args.sizes:
        r, c = (int(v) for v in size.split("x"))
        name, spec = miri_mosaic_spec(r, c, None)
        asn = dataset(name, **spec)
        out = asn.parent.parent.parent / "runs" / name
        ours = run_ours(
            asn, out / "ours", ONLY_RESAMPLE, n_workers=2, memory_limit=args.memory_limit
        )
        from stdatamodels.jwst import datamodels

        with datamodels.open(ours["products"]["i2d"]) as m:
            shape = m.data.shape
            n_con = m.con.shape[0]
        full_bytes = shape[0] * shape[1] * (4 * 6 + 4 * n_con)
        row = {
            "mosaic": size,
            "exposures": r * c,
            "shape": list(shape),
            "full_arrays_mb": full_bytes / 2**20,
            "worker_memory_limit": args.memory_limit,
            "ours_wall_s": ours["wall"],
            "ours_peak_worker_mb": ours["worker_peak_mb"],
        }
        if args.official:
            off = run_official(
                OFFICIAL.format(asn=str(asn), out=str(out / "official_i2d.fits")), "ResampleStep"
            )
            row.update(official_wall_s=off["wall"], official_peak_mb=off["peak_mb"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    path = write_result("resample_memory", {"rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
