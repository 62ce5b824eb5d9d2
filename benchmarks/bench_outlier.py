"""Outlier detection: time against jwst's OutlierDetectionStep, and peak worker memory.

Two measurements on simulated MIRI data (sky level written into ``meta.background`` as skymatch
records it, so that the ±10 % sky differences of the simulated exposures are not outliers):

* timing: a dither of ``--n`` exposures of ``--shape`` pixels; the official step (in a fresh
  subprocess, models opened in memory beforehand, only ``step.run`` timed) against
  ``image3_dask.graph.outlier.run`` on a fresh local cluster of 1 and 2 single-threaded workers
  (workers warmed up, pixel maps included in the time). Also the Jaccard index of the flagged
  pixel sets and the cosmic-ray recovery of both (criterion of ``tests/graph/test_outlier_step.py``);
* memory: mosaics of growing numbers of exposures (``--mosaics``, e.g. 2x2, 2x4, 4x4) with a fixed
  tile size; peak RSS of each worker process (sampled every 10 ms by a thread in the worker while
  the step runs; ``ru_maxrss`` is useless here, Linux keeps the parent's value across exec)
  against the peak RSS of the official step's process (sampled the same way). Ours should stay
  flat, since a tile only ever holds the groups that overlap it.

Usage::

    python benchmarks/bench_outlier.py                      # 8 x 512^2 dither, mosaics 4/8/16
    python benchmarks/bench_outlier.py --shape 1024 --n 8   # full-size MIRI (takes minutes)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import OUT, dataset, run_official, start_rss_sampler, stop_rss_sampler, write_result  # noqa: E402

OUTLIER = 16

OFFICIAL = """
import json, os, tempfile, time, numpy as np
from stdatamodels.jwst import datamodels
from jwst.datamodels import ModelLibrary
from jwst.outlier_detection import OutlierDetectionStep
base = _proc.memory_info().rss  # _proc and PEAK come from _common.RSS_SAMPLER_CODE
t0 = time.perf_counter()
models = [datamodels.open(p) for p in {members!r}]
t_open = time.perf_counter() - t0
step = OutlierDetectionStep()
step.in_memory = True
t0 = time.perf_counter()
res = step.run(ModelLibrary(models, on_disk=False))
t_step = time.perf_counter() - t0
masks = {{}}
tmp = tempfile.mkdtemp()
t_save = 0.0
with res:
    for i in range(len(res)):
        m = res.borrow(i)
        masks[f"m{{i}}"] = (m.dq & 16) > 0
        t0 = time.perf_counter()
        m.save(os.path.join(tmp, f"{{i}}_crf.fits"))
        t_save += time.perf_counter() - t0
        res.shelve(m, i, modify=False)
np.savez_compressed({masks_path!r}, **masks)
print(json.dumps({{"time": t_step, "time_io": t_open + t_step + t_save, "peak_mb": PEAK[0] / 2**20,
                  "baseline_mb": base / 2**20}}))
"""


def with_sky_levels(asn: Path) -> Path:
    """A copy of a simulated data set with the true sky in ``meta.background`` (cached)."""
    from stdatamodels.jwst import datamodels

    from image3_dask.simulate import load_truth

    src = asn.parent
    dst = src.parent / f"{src.name}_sky"
    if (dst / "asn.json").exists():
        return dst / "asn.json"
    dst.mkdir(parents=True, exist_ok=True)
    for e in load_truth(src / "truth.json").exposures:
        with datamodels.open(src / e.filename) as m:
            m.meta.background.level = float(e.sky_mjysr)
            m.meta.background.subtracted = False
            m.meta.background.method = "global"
            m.save(dst / e.filename)
    shutil.copy(asn, dst / "asn.json")
    shutil.copy(src / "truth.json", dst / "truth.json")
    return dst / "asn.json"


def _warm():
    """Worker: import what the tasks use and load the datamodel schemas (as jwst's process has)."""
    import tempfile

    import drizzle.cdrizzle  # noqa: F401
    import zarr  # noqa: F401
    from stdatamodels.jwst import datamodels

    import image3_dask.graph.outlier  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        m = datamodels.ImageModel((4, 4))
        m.save(f"{tmp}/warm.fits")
        datamodels.open(f"{tmp}/warm.fits").close()


def run_ours(asn: Path, out: Path, n_workers: int, tile_shape=None) -> dict:
    """The step alone on a fresh local cluster: wall time and per-worker peak RSS."""
    from distributed import Client, LocalCluster

    from image3_dask.graph import outlier
    from image3_dask.io.asn import load_association
    from image3_dask.io.exposures import read_exposures
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.context import RunContext

    shutil.rmtree(out, ignore_errors=True)
    steps = {"tweakreg": {"skip": True}, "skymatch": {"skip": True}}
    if tile_shape:
        steps["resample"] = {"tile_shape": list(tile_shape)}
    a = load_association(asn)
    exposures = read_exposures(a.members)
    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_warm)
        base = client.run(start_rss_sampler)
        ctx = RunContext(
            client=client,
            config=PipelineConfig(steps),
            asn=a,
            output_dir=out,
            work_dir=out / "work",
            progress=False,
        )
        t0 = time.perf_counter()
        result = outlier.run(ctx, exposures)
        wall = time.perf_counter() - t0
        peaks = client.run(stop_rss_sampler)
    plans = list(ctx.shared.get("plans", {}).values())
    return {
        "time": wall,
        "worker_peak_mb": max(peaks.values()),
        "worker_baseline_mb": max(base.values()),
        "n_tiles": len(plans[0].tiles) if plans else None,
        "tile_shape": plans[0].tile_shape if plans else None,
        "crf": [str(e.path) for e in result],
        "exposures": result,
    }


def run_official_step(asn: Path, masks_path: Path) -> dict:
    """The official step in a fresh subprocess; its OUTLIER masks are saved to ``masks_path``."""
    from image3_dask.io.asn import load_association

    members = [str(p) for p in load_association(asn).members]
    code = OFFICIAL.format(members=members, masks_path=str(masks_path))
    return run_official(code, "OutlierDetectionStep")


def compare(ours: dict, masks_path: Path, truth_path: Path) -> dict:
    """Jaccard index of the flagged pixels, and CR recovery of both."""
    from stdatamodels.jwst import datamodels
    from test_step_outlier import _cr_stats

    from image3_dask.simulate import load_truth

    ours_dq = []
    for p in ours["crf"]:
        with datamodels.open(p) as m:
            ours_dq.append(np.array(m.dq))
    with np.load(masks_path) as z:
        off = [z[f"m{i}"] for i in range(len(ours_dq))]
    a = np.concatenate([((d & OUTLIER) > 0).ravel() for d in ours_dq])
    b = np.concatenate([m.ravel() for m in off])
    truth = load_truth(truth_path)
    counted, rec = _cr_stats(truth, ours["exposures"], ours_dq)
    _, rec_off = _cr_stats(truth, ours["exposures"], [m.astype(np.uint32) * OUTLIER for m in off])
    return {
        "jaccard": float((a & b).sum() / max((a | b).sum(), 1)),
        "flagged_ours": int(a.sum()),
        "flagged_official": int(b.sum()),
        "cr_counted": counted,
        "cr_recovered_ours": rec,
        "cr_recovered_official": rec_off,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8, help="exposures of the timing dither")
    p.add_argument("--shape", type=int, default=512, help="detector side of the timing dither")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--mosaics",
        nargs="*",
        default=["2x2", "2x4", "4x4"],
        help="rowsxcols of the memory runs (empty: none)",
    )
    p.add_argument("--mosaic-shape", type=int, default=256)
    p.add_argument("--tile", type=int, default=256, help="tile side of the memory runs")
    args = p.parse_args(argv)
    result: dict = {"timing": {}, "memory": []}

    # ---- timing ---------------------------------------------------------------------------
    name = f"miri_dither_{args.n}_{args.shape}"
    asn = with_sky_levels(
        dataset(
            name,
            instrument="miri",
            n=args.n,
            seed=1,
            pattern="dither",
            shape=(args.shape, args.shape),
        )
    )
    masks = OUT / f"outlier_{name}_official.npz"
    off = run_official_step(asn, masks)
    print(
        f"official: step {off['time']:.1f} s, with reading and writing crf {off['time_io']:.1f} s;"
        f" peak RSS {off['peak_mb']:.0f} MB (before reading {off['baseline_mb']:.0f} MB)",
        flush=True,
    )
    timing = {"official": off}
    for w in args.workers:
        ours = run_ours(asn, OUT / f"outlier_{name}_w{w}", w)
        timing[f"ours_{w}w"] = {k: v for k, v in ours.items() if k not in ("crf", "exposures")}
        print(
            f"ours, {w} worker(s): {ours['time']:.1f} s incl. reading and writing crf "
            f"(official/ours: step {off['time'] / ours['time']:.2f}, with I/O "
            f"{off['time_io'] / ours['time']:.2f}), worker peak {ours['worker_peak_mb']:.0f} MB "
            f"(before {ours['worker_baseline_mb']:.0f} MB), {ours['n_tiles']} tile(s) "
            f"of {ours['tile_shape']}",
            flush=True,
        )
    timing["agreement"] = compare(ours, masks, asn.parent / "truth.json")
    print(f"agreement: {json.dumps(timing['agreement'])}", flush=True)
    result["timing"][name] = timing

    # ---- memory against the number of exposures ---------------------------------------------
    for rc in args.mosaics:
        rows, cols = (int(v) for v in rc.lower().split("x"))
        mname = f"miri_mosaic_{rows}x{cols}_{args.mosaic_shape}"
        masn = with_sky_levels(
            dataset(
                mname,
                instrument="miri",
                n=None,
                rows=rows,
                cols=cols,
                seed=2,
                pattern="mosaic",
                shape=(args.mosaic_shape, args.mosaic_shape),
            )
        )
        moff = run_official_step(masn, OUT / f"outlier_{mname}_official.npz")
        mours = run_ours(masn, OUT / f"outlier_{mname}", 2, tile_shape=(args.tile, args.tile))
        row = {
            "exposures": rows * cols,
            "official_time": moff["time"],
            "official_time_io": moff["time_io"],
            "official_peak_mb": moff["peak_mb"],
            "official_models_mb": moff["baseline_mb"],
            "ours_time_2w": mours["time"],
            "ours_worker_peak_mb": mours["worker_peak_mb"],
            "ours_worker_baseline_mb": mours["worker_baseline_mb"],
            "n_tiles": mours["n_tiles"],
        }
        result["memory"].append(row)
        print(
            f"{rows * cols:3d} exposures: official {moff['time']:.1f} s ({moff['time_io']:.1f} s "
            f"with I/O), peak {moff['peak_mb']:.0f} MB (before reading {moff['baseline_mb']:.0f}"
            f" MB); ours (2 workers) {mours['time']:.1f} s, worker peak "
            f"{mours['worker_peak_mb']:.0f} MB (before {mours['worker_baseline_mb']:.0f} MB), "
            f"{mours['n_tiles']} tiles",
            flush=True,
        )
    path = write_result(f"bench_outlier_{name}", result)
    print(f"results: {path}")
    return result


if __name__ == "__main__":
    main()
