"""Source catalog: image3-dask (single frame and tiled, 1 and 2 workers) against jwst's step.

Usage::

    python benchmarks/bench_catalog.py [--n 4] [--shape 512 512] [--stars 600] [--bkg 128]

The mosaic is made once by image3-dask's resample (tweakreg/skymatch/outlier skipped, 256-pixel
tiles); then jwst's ``SourceCatalogStep`` (fresh offline subprocess) and our source_catalog step
(resample skipped, fresh local clusters) run on the *same* ``_i2d.fits`` with the same
parameters and the same APCORR/ABVEGAOFFSET override files (made here with stdatamodels from
the documented simulated-MIRI defaults). Prints step wall times, ratios to the official step,
peak memory per process and the agreement of the catalogs; writes
``bench_output/catalog_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
from _common import (
    OUT,
    dataset,
    run_official,
    run_ours,
    start_rss_sampler,
    stop_rss_sampler,
    write_result,
)

SKIP = {s: {"skip": True} for s in ("tweakreg", "skymatch", "outlier_detection")}

OFFICIAL = """
import json, time
from jwst.source_catalog import SourceCatalogStep
t0 = time.perf_counter()
cat = SourceCatalogStep.call({i2d!r}, output_dir={out!r}, save_results=True, **{params!r})
wall = time.perf_counter() - t0
print(json.dumps({{"wall": wall, "n": len(cat),
                  "peak_mb": PEAK[0] / 2**20}}))
"""


def _reference_files(folder) -> dict:
    """APCORR/ABVEGAOFFSET files for simulated MIRI F770W (from the simulator's PSF)."""
    from image3_dask.simulate.refs import write_reference_files

    apcorr, abvega = write_reference_files("miri", folder)
    return {"override_apcorr": str(apcorr), "override_abvegaoffset": str(abvega)}


def _agreement(ours_path, ref_path) -> dict:
    from astropy.table import QTable
    from scipy.spatial import cKDTree

    a, b = QTable.read(ours_path), QTable.read(ref_path)
    d, idx = cKDTree(np.transpose([a["xcentroid"], a["ycentroid"]])).query(
        np.transpose([b["xcentroid"], b["ycentroid"]])
    )
    ok = d < 0.1
    rel = np.abs(
        np.asarray(a["aper_total_flux"].value)[idx[ok]] / b["aper_total_flux"].value[ok] - 1
    )
    return {
        "n_ours": len(a),
        "n_jwst": len(b),
        "matched_0.1px": float(ok.mean()),
        "total_flux_max_rel": float(np.nanmax(rel)) if rel.size else None,
        "same_columns": a.colnames == b.colnames,
    }


def run_catalog(asn, out, steps: dict, n_workers: int) -> dict:
    """Like ``_common.run_ours`` but keeps the mosaic already copied into ``out``."""
    import time

    from distributed import Client, LocalCluster

    from image3_dask.pipeline.image3 import Image3Pipeline

    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(start_rss_sampler)
        t0 = time.perf_counter()
        products = Image3Pipeline.call(
            asn, output_dir=out, steps=steps, client=client, progress=False
        )
        wall = time.perf_counter() - t0
        peaks = client.run(stop_rss_sampler)
    return {
        "wall": wall,
        "worker_peak_mb": max(peaks.values()),
        "products": products,
        "timings": products["timings"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=2, default=[512, 512])
    p.add_argument("--stars", type=int, default=600)
    p.add_argument("--bkg", type=int, default=128, help="bkg_boxsize (tiles are whole boxes)")
    args = p.parse_args()
    name = f"miri_dither_{args.n}_{args.shape[0]}x{args.shape[1]}_s{args.stars}"
    asn = dataset(
        name,
        instrument="miri",
        n=args.n,
        seed=5,
        pattern="dither",
        shape=tuple(args.shape),
        n_stars=args.stars,
        n_galaxies=args.stars // 10,
        pointing_error=0.0,
        roll_error=0.0,
        sky_variation=0.0,
        cosmic_ray_rate=0.0,
    )
    runs = OUT / "runs" / f"catalog_{name}"
    mosaic = runs / "mosaic"
    res = run_ours(
        asn,
        mosaic,
        {**SKIP, "resample": {"tile_shape": [256, 256]}, "source_catalog": {"skip": True}},
        n_workers=2,
    )
    i2d = res["products"]["i2d"]
    from stdatamodels.jwst import datamodels

    with datamodels.open(i2d) as m:
        shape = m.data.shape
    params = {
        **_reference_files(runs / "refs"),
        "bkg_boxsize": args.bkg,
        "snr_threshold": 2.0,
        "npixels": 10,
    }
    official_dir = runs / "official"
    official_dir.mkdir(parents=True, exist_ok=True)
    official = run_official(
        OFFICIAL.format(i2d=str(i2d), out=str(official_dir), params=params),
        "jwst SourceCatalogStep",
    )
    ref_cat = next(official_dir.glob("*_cat.ecsv"))
    ours = {}
    for label, tiled, workers in (
        ("single_1w", "never", 1),
        ("single_2w", "never", 2),
        ("tiled_1w", "always", 1),
        ("tiled_2w", "always", 2),
    ):
        out = runs / label
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for src in mosaic.glob("*_i2d.*"):
            (shutil.copytree if src.is_dir() else shutil.copy)(src, out / src.name)
        r = run_catalog(
            asn,
            out,
            {**SKIP, "resample": {"skip": True}, "source_catalog": {**params, "tiled": tiled}},
            n_workers=workers,
        )
        step = r["timings"]["source_catalog"]
        ours[label] = {
            "step_wall": step,
            "ratio_to_jwst": step / official["wall"],
            "worker_peak_mb": r["worker_peak_mb"],
            "agreement": _agreement(r["products"]["cat"], ref_cat),
        }
        print(
            f"{label:10s} {step:7.2f} s  ratio {step / official['wall']:.2f}  "
            f"peak {r['worker_peak_mb']:.0f} MB  {ours[label]['agreement']}",
            flush=True,
        )
    result = {
        "dataset": name,
        "mosaic_shape": list(shape),
        "params": params,
        "official": official,
        "ours": ours,
    }
    print(
        f"jwst       {official['wall']:7.2f} s  peak {official['peak_mb']:.0f} MB  "
        f"({official['n']} sources, mosaic {shape[0]}x{shape[1]})"
    )
    print("wrote", write_result(f"catalog_{name}", result))
    print(json.dumps({k: v["ratio_to_jwst"] for k, v in ours.items()}))


if __name__ == "__main__":
    main()
