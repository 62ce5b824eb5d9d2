"""End-to-end benchmark: jwst's Image3Pipeline and image3-dask side by side on the same data.

Usage::

    python benchmarks/run_all.py [--cases miri_dither_4 miri_mosaic_16 ...] [--report docs/benchmarks.md]

For every case it simulates the data once (cached in ``bench_output/data``), runs the official
pipeline offline in a subprocess (with the simulated instrument's APCORR/ABVEGAOFFSET files) and
image3-dask on fresh local clusters of 1 and 2 workers, and records wall time, CPU time, peak
memory per process, and the agreement of the products (i2d pixels, catalog matches, flagged
pixels). Results go to ``bench_output/e2e_<case>.json``; ``--report`` (re)writes the Markdown
report with PNG plots from every result present.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import OUT, dataset, run_official, start_rss_sampler, stop_rss_sampler, write_result

from image3_dask.pipeline.cluster import WORKER_PRELOAD

CASES = {
    "miri_dither_4_256px": dict(
        instrument="miri", n=4, pattern="dither", seed=20, shape=(256, 256)
    ),
    "miri_dither_4": dict(instrument="miri", n=4, pattern="dither", seed=21),
    "miri_mosaic_16": dict(instrument="miri", n=16, rows=4, cols=4, pattern="mosaic", seed=22),
    "miri_mosaic_64_512px": dict(
        instrument="miri", n=64, rows=8, cols=8, pattern="mosaic", seed=23, shape=(512, 512)
    ),
    "nircam_2x4det": dict(instrument="nircam", n=2, n_detectors=4, pattern="dither", seed=24),
}

OFFICIAL = """
import json, os, resource, time
from jwst.pipeline import Image3Pipeline
t0 = time.perf_counter()
Image3Pipeline.call({asn!r}, output_dir={out!r}, save_results=True, steps={{
    "source_catalog": {{"override_apcorr": {apcorr!r}, "override_abvegaoffset": {abvega!r}}}}})
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "peak_mb": PEAK[0] / 2**20}}))
"""


def _cpu_seconds() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def run_ours(asn: Path, out: Path, n_workers: int, apcorr: Path, abvega: Path) -> dict:
    """The whole pipeline on a fresh local cluster: wall, CPU of all processes, peak per worker."""
    import shutil

    from distributed import Client, LocalCluster

    from image3_dask.pipeline.image3 import Image3Pipeline

    shutil.rmtree(out, ignore_errors=True)
    steps = {
        "source_catalog": {"override_apcorr": str(apcorr), "override_abvegaoffset": str(abvega)}
    }
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            preload=[WORKER_PRELOAD],
            dashboard_address=":0",
            memory_limit="4GB",
        ) as cluster,
        Client(cluster) as client,
    ):
        base = client.run(start_rss_sampler)
        cpu0 = sum(client.run(_cpu_seconds).values()) + _cpu_seconds()
        t0 = time.perf_counter()
        products = Image3Pipeline.call(
            asn, output_dir=out, steps=steps, client=client, progress=False
        )
        wall = time.perf_counter() - t0
        cpu = sum(client.run(_cpu_seconds).values()) + _cpu_seconds() - cpu0
        peaks = client.run(stop_rss_sampler)
    return {
        "wall": wall,
        "cpu": cpu,
        "worker_peak_mb": max(peaks.values()),
        "worker_baseline_mb": max(base.values()),
        "timings": products["timings"],
        "i2d": str(products["i2d"]),
        "cat": str(products.get("cat")),
        "crf": [str(p) for p in products.get("crf", [])],
    }


def agreement(official_dir: Path, ours: dict, truth) -> dict:
    """How the products compare: i2d pixels, catalog sources, flagged pixels; and vs truth."""
    from astropy.coordinates import SkyCoord
    from astropy.table import Table
    from stdatamodels.jwst import datamodels

    res: dict = {}
    off_i2d = next(official_dir.glob("*_i2d.fits"))
    with datamodels.open(off_i2d) as a, datamodels.open(ours["i2d"]) as b:
        res["i2d_shape_equal"] = a.data.shape == b.data.shape
        if a.data.shape == b.data.shape:
            ok = np.isfinite(a.data) & np.isfinite(b.data) & (a.wht > 0)
            scale = np.nanmedian(np.abs(a.err[ok]))
            d = np.abs(a.data[ok] - b.data[ok]) / scale
            res["i2d_median_absdiff_in_err"] = float(np.median(d))
            res["i2d_frac_within_0.1err"] = float(np.mean(d < 0.1))
    off_cat = Table.read(next(official_dir.glob("*_cat.ecsv")))
    our_cat = Table.read(ours["cat"])
    c_off, c_our = SkyCoord(off_cat["sky_centroid"]), SkyCoord(our_cat["sky_centroid"])
    _, sep, _ = c_off.match_to_catalog_sky(c_our)
    res["catalog_n_official"], res["catalog_n_ours"] = len(off_cat), len(our_cat)
    res["catalog_frac_official_matched_0.1arcsec"] = float(np.mean(sep.arcsec < 0.1))
    true = SkyCoord(truth.sources["ra"], truth.sources["dec"], unit="deg")
    stars = np.asarray(truth.sources["kind"]) == "star"
    for name, cat in (("official", c_off), ("ours", c_our)):
        _, s, _ = cat.match_to_catalog_sky(true[stars])
        good = s.arcsec < 0.3
        res[f"astrometry_rms_mas_vs_truth_{name}"] = float(
            np.sqrt(np.mean(s.arcsec[good] ** 2)) * 1000
        )
    inter = union = 0
    for crf in ours["crf"]:
        name = Path(crf).name
        off = official_dir / name
        if not off.exists():
            continue
        with datamodels.open(off) as a, datamodels.open(crf) as b:
            fa, fb = (a.dq & 16) > 0, (b.dq & 16) > 0
            inter += int(np.sum(fa & fb))
            union += int(np.sum(fa | fb))
    res["outlier_jaccard"] = inter / union if union else None
    return res


def run_case(name: str) -> dict:
    from image3_dask.simulate import load_truth
    from image3_dask.simulate.refs import write_reference_files

    spec = dict(CASES[name])
    asn = dataset(name, **spec)
    apcorr, abvega = write_reference_files(spec["instrument"], OUT / "refs")
    runs = OUT / "runs" / f"e2e_{name}"
    official_dir = runs / "official"
    official_dir.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] official pipeline ...", flush=True)
    official = run_official(
        OFFICIAL.format(
            asn=str(asn), out=str(official_dir), apcorr=str(apcorr), abvega=str(abvega)
        ),
        f"jwst Image3Pipeline on {name}",
    )
    ours = {}
    for n in (1, 2):
        print(f"[{name}] image3-dask, {n} worker(s) ...", flush=True)
        ours[n] = run_ours(asn, runs / f"ours_{n}w", n, apcorr, abvega)
    result = {
        "case": name,
        "spec": {k: str(v) for k, v in spec.items()},
        "official": official,
        "ours_1w": ours[1],
        "ours_2w": ours[2],
        "ratio_wall_1w": ours[1]["wall"] / official["wall"],
        "ratio_wall_2w": ours[2]["wall"] / official["wall"],
        "parallel_efficiency": ours[1]["wall"] / (2 * ours[2]["wall"]),
        "agreement": agreement(official_dir, ours[2], load_truth(asn.parent)),
    }
    write_result(f"e2e_{name}", result)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("ours_1w", "ours_2w")},
            indent=1,
            default=str,
        )
    )
    return result


def write_report(path: Path) -> Path:
    """Markdown report with PNG plots from every ``e2e_*.json`` and other results present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads(p.read_text()) for p in sorted(OUT.glob("e2e_*.json"))]
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Benchmarks",
        "",
        "Measured on this project's 2-core, 24 GiB machine with `python benchmarks/run_all.py`;",
        "jwst 3.0.0 offline (CRDS step parameters disabled, simulated-instrument APCORR/ABVEGAOFFSET",
        "files) against image3-dask on fresh local clusters of 1 and 2 single-thread workers, on the",
        "same simulated associations. Peak memory is sampled every 10 ms in each process.",
        "",
    ]
    if results:
        lines += [
            "## Whole pipeline",
            "",
            "| case | jwst wall [s] | ours 1 worker [s] | ours 2 workers [s] | ratio (2w/jwst) | parallel eff. | jwst peak [MB] | ours peak/worker [MB] |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            lines.append(
                f"| {r['case']} | {r['official']['wall']:.1f} | {r['ours_1w']['wall']:.1f} | {r['ours_2w']['wall']:.1f} "
                f"| {r['ratio_wall_2w']:.2f} | {r['parallel_efficiency']:.0%} | {r['official']['peak_mb']:.0f} "
                f"| {r['ours_2w']['worker_peak_mb']:.0f} |"
            )
        lines += [
            "",
            "Agreement of the products (ours on 2 workers against jwst, and both against the truth):",
            "",
            '| case | i2d within 0.1 ERR | catalog: jwst sources matched (0.1") | outlier Jaccard | star astrometry rms vs truth, jwst / ours [mas] |',
            "|---|---|---|---|---|",
        ]
        for r in results:
            a = r["agreement"]
            lines.append(
                f"| {r['case']} | {a.get('i2d_frac_within_0.1err', float('nan')):.1%} | "
                f"{a['catalog_frac_official_matched_0.1arcsec']:.1%} ({a['catalog_n_official']} / {a['catalog_n_ours']}) | "
                f"{a['outlier_jaccard'] if a['outlier_jaccard'] is None else round(a['outlier_jaccard'], 3)} | "
                f"{a['astrometry_rms_mas_vs_truth_official']:.1f} / {a['astrometry_rms_mas_vs_truth_ours']:.1f} |"
            )
        lines += [
            "",
            "Where the two disagree, the truth decides: on a dither both align every exposure to the",
            "first one and the products agree; on a mosaic jwst's reference-group tweakreg leaves the",
            "tiles that do not overlap the reference unaligned, while image3-dask's default",
            "(`align_mode=auto`, a global solution for mosaics) aligns them, so the grids, the flagged",
            "pixels (jwst flags the doubled stars of misaligned overlaps) and the catalogs differ, and",
            "the star positions of our catalog are closer to the truth. Neither run has an absolute",
            "reference catalog, so both keep the reference exposure's own pointing error.",
            "",
            "Time per step (ours, 2 workers, seconds):",
            "",
            "| case | "
            + " | ".join(
                ["tweakreg", "skymatch", "outlier_detection", "resample", "source_catalog"]
            )
            + " |",
            "|---" * 6 + "|",
        ]
        for r in results:
            t = r["ours_2w"]["timings"]
            lines.append(
                f"| {r['case']} | "
                + " | ".join(
                    f"{t.get(s, 0):.1f}"
                    for s in (
                        "tweakreg",
                        "skymatch",
                        "outlier_detection",
                        "resample",
                        "source_catalog",
                    )
                )
                + " |"
            )
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        x = np.arange(len(results))
        for k, (label, key) in enumerate(
            (("jwst", "official"), ("ours, 1 worker", "ours_1w"), ("ours, 2 workers", "ours_2w"))
        ):
            axes[0].bar(x + (k - 1) * 0.27, [r[key]["wall"] for r in results], 0.27, label=label)
        axes[0].set_xticks(x, [r["case"] for r in results], rotation=20)
        axes[0].set_ylabel("wall time [s]")
        axes[0].legend()
        axes[1].bar(
            x - 0.2, [r["official"]["peak_mb"] for r in results], 0.4, label="jwst (one process)"
        )
        axes[1].bar(
            x + 0.2,
            [r["ours_2w"]["worker_peak_mb"] for r in results],
            0.4,
            label="ours (per worker)",
        )
        axes[1].set_xticks(x, [r["case"] for r in results], rotation=20)
        axes[1].set_ylabel("peak memory [MB]")
        axes[1].legend()
        fig.tight_layout()
        png = path.parent / "benchmarks_e2e.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        lines += ["", f"![wall time and peak memory]({png.name})", ""]
    mem = OUT / "resample_memory.json"
    if mem.exists():
        rows = json.loads(mem.read_text())["rows"]
        lines += [
            "## Resample: memory as the mosaic grows",
            "",
            "`python benchmarks/bench_resample_memory.py --sizes 2x2 4x4 6x6 --memory-limit 1GB --official`:",
            "MIRI mosaics of full-size exposures, resample step only, 2 workers held to 1 GB each.",
            "",
            "| mosaic | exposures | grid | full SCI+WHT+CON+ERR+VAR [MB] | ours peak/worker [MB] | jwst peak [MB] | ours wall [s] | jwst wall [s] |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['mosaic']} | {r['exposures']} | {r['shape'][1]} x {r['shape'][0]} | {r['full_arrays_mb']:.0f} "
                f"| {r['ours_peak_worker_mb']:.0f} | {r.get('official_peak_mb', float('nan')):.0f} "
                f"| {r['ours_wall_s']:.1f} | {r.get('official_wall_s', float('nan')):.1f} |"
            )
        lines += [
            "",
            "Peak memory per worker is bounded by the tile (at most 1024 px a side) and the",
            "exposures that overlap it, not by the mosaic: the 6x6 mosaic's arrays alone would not",
            "fit a 1 GB worker.",
            "",
        ]
    large = OUT / "large_mosaic.json"
    if large.exists():
        r = json.loads(large.read_text())
        t = r["timings"]
        proj = r["projected_wall_s"]
        lines += [
            "## Large mosaic",
            "",
            f"`python benchmarks/bench_large_mosaic.py`: {r['exposures']} MIRI exposures of "
            f"{r['detector_shape'][0]}x{r['detector_shape'][1]} px in an 18x18 mosaic, output grid "
            f"{r['grid_shape'][1]} x {r['grid_shape'][0]} px, whole pipeline on 2 workers held to "
            f"{r['memory_limit']} each.",
            "",
            f"- wall time {r['wall_s'] / 60:.1f} min: tweakreg {t['tweakreg']:.0f} s, skymatch "
            f"{t['skymatch']:.0f} s, outlier_detection {t['outlier_detection']:.0f} s, resample "
            f"{t['resample']:.0f} s, source_catalog {t['source_catalog']:.0f} s; {r['n_sources']} sources;",
            f"- peak memory per worker {r['worker_peak_mb']:.0f} MB (limit {r['memory_limit']});",
            f"- serial share {r['serial_share']:.0%} of the wall time (at most one task running: the "
            "alignment and sky solves, client-side planning, the FITS streaming), from Dask's task stream;",
            f"- projected wall time (serial time + parallel task time / N): 8 workers {proj['8'] / 60:.1f} min, "
            f"32 workers {proj['32'] / 60:.1f} min, 128 workers {proj['128'] / 60:.1f} min; the serial "
            "part dominates beyond ~16 workers and is the next thing to shrink.",
            "",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cases",
        nargs="*",
        default=["miri_dither_4", "miri_mosaic_16"],
        help=f"cases to run (default: the two quick ones); all: {', '.join(CASES)}",
    )
    p.add_argument(
        "--report", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md")
    )
    args = p.parse_args()
    for case in args.cases:
        run_case(case)
    print(f"report: {write_report(Path(args.report))}")


if __name__ == "__main__":
    main()
