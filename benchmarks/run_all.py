"""End-to-end benchmark: jwst's Image3Pipeline and image3-dask side by side on the same data.

Usage::

    python benchmarks/run_all.py [--cases miri_dither_4 miri_mosaic_16 ...] [--repeat 3]
                                 [--report docs/benchmarks.md]

For every case it simulates the data once (cached in ``bench_output/data``), runs the official
pipeline offline in a subprocess (with the simulated instrument's APCORR/ABVEGAOFFSET files) and
image3-dask on fresh local clusters of 1 and 2 workers, and records wall time, CPU time, peak
memory per process, and the agreement of the products (i2d pixels, catalog matches, flagged
pixels). With ``--repeat K`` each case runs K rounds, jwst and ours alternating, and every
ratio is the median of the rounds' ratios, each taken within one round (this machine's speed
drifts by tens of per cent over an hour). Results go to ``bench_output/e2e_<case>.json``;
``--report`` (re)writes the Markdown report with PNG plots from every result present.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import (
    OUT,
    dataset,
    local_client,
    run_official,
    start_rss_sampler,
    stop_rss_sampler,
    write_result,
)
from bench_large_mosaic import busy_profile
from report_e2e import e2e_figure, e2e_sections, targets_section

CASES = {
    "miri_dither_4_256px": dict(
        instrument="miri", n=4, pattern="dither", seed=20, shape=(256, 256)
    ),
    "miri_dither_4": dict(instrument="miri", n=4, pattern="dither", seed=21),
    # 16 full exposures on one field (4 passes of the 4-point dither with growing sub-pixel
    # shifts): the issue's "16-exposure MIRI dither"
    "miri_dither_16": dict(instrument="miri", n=16, pattern="dither", seed=25),
    "miri_mosaic_16": dict(instrument="miri", n=16, rows=4, cols=4, pattern="mosaic", seed=22),
    # 512 px crops hold a quarter of a full detector's sky: four times the stars keep the star
    # density (and so the matches in the 12 % overlaps that tweakreg needs) of the other cases
    "miri_mosaic_64_512px": dict(
        instrument="miri",
        n=64,
        rows=8,
        cols=8,
        pattern="mosaic",
        seed=23,
        shape=(512, 512),
        n_stars=600,
        n_galaxies=200,
    ),
    "nircam_2x4det": dict(instrument="nircam", n=2, n_detectors=4, pattern="dither", seed=24),
}

#: Memory limit of every worker of ours (the issue's target: at most 1 GB per worker).
MEMORY_LIMIT = "1GB"

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


def run_ours(
    asn: Path,
    out: Path,
    n_workers: int,
    apcorr: Path,
    abvega: Path,
    memory_limit: str = MEMORY_LIMIT,
    extra_steps: dict | None = None,
) -> dict:
    """The whole pipeline on a fresh local cluster: wall, CPU of all processes, peak per worker."""
    import shutil

    from image3_dask.pipeline.image3 import Image3Pipeline

    shutil.rmtree(out, ignore_errors=True)
    steps: dict = {
        "source_catalog": {"override_apcorr": str(apcorr), "override_abvegaoffset": str(abvega)}
    }
    for step, values in (extra_steps or {}).items():
        steps.setdefault(step, {}).update(values)
    from distributed import get_task_stream

    with local_client(n_workers, memory_limit) as client:
        base = client.run(start_rss_sampler)
        workers0 = sum(client.run(_cpu_seconds).values())
        here0 = _cpu_seconds()
        ts = get_task_stream(client)
        with ts:
            t0 = time.perf_counter()
            w0 = time.time()
            products = Image3Pipeline.call(
                asn, output_dir=out, steps=steps, client=client, progress=False
            )
            wall = time.perf_counter() - t0
            w1 = time.time()
        here = _cpu_seconds() - here0
        workers = sum(client.run(_cpu_seconds).values()) - workers0
        peaks = client.run(stop_rss_sampler)
    prof = busy_profile(ts.data, w0, w1)
    return {
        "wall": wall,
        # this process holds the client, the scheduler and the nannies of the local cluster
        "cpu": workers + here,
        "cpu_workers": workers,
        "cpu_client_scheduler": here,
        "busy": prof,
        "serial_share": (prof["idle"] + prof["one"]) / wall,
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


def round_ratios(r: dict) -> dict:
    """Ratios of one round: ours (1 and 2 workers) to jwst, and the 1-to-2-worker efficiency."""
    o, w1, w2 = r["official"], r["ours_1w"], r["ours_2w"]
    return {
        "ratio_wall_1w": w1["wall"] / o["wall"],
        "ratio_wall_2w": w2["wall"] / o["wall"],
        "ratio_cpu_2w": w2["cpu"] / o["cpu"],
        "parallel_efficiency": w1["wall"] / (2 * w2["wall"]),
        "wall_official": o["wall"],
        "wall_2w": w2["wall"],
    }


def run_case(name: str, repeat: int = 1) -> dict:
    from image3_dask.simulate import load_truth
    from image3_dask.simulate.refs import write_reference_files

    spec = dict(CASES[name])
    asn = dataset(name, **spec)
    apcorr, abvega = write_reference_files(spec["instrument"], OUT / "refs")
    runs = OUT / "runs" / f"e2e_{name}"
    official_dir = runs / "official"
    official_dir.mkdir(parents=True, exist_ok=True)
    code = OFFICIAL.format(
        asn=str(asn), out=str(official_dir), apcorr=str(apcorr), abvega=str(abvega)
    )
    # jwst and ours alternate (jwst first in even rounds, last in odd ones; ours on 2 workers
    # always next to it), and each ratio is taken within one round: a machine whose speed drifts over minutes moves both sides alike
    rounds = []
    for k in range(repeat):
        tag = f" (round {k + 1} of {repeat})" if repeat > 1 else ""
        ours = {}
        if k % 2:
            for n in (1, 2):
                print(f"[{name}] image3-dask, {n} worker(s){tag} ...", flush=True)
                ours[n] = run_ours(asn, runs / f"ours_{n}w", n, apcorr, abvega)
        print(f"[{name}] official pipeline{tag} ...", flush=True)
        official = run_official(code, f"jwst Image3Pipeline on {name}", runs / "official.log")
        if not k % 2:
            for n in (2, 1):
                print(f"[{name}] image3-dask, {n} worker(s){tag} ...", flush=True)
                ours[n] = run_ours(asn, runs / f"ours_{n}w", n, apcorr, abvega)
        rounds.append({"official": official, "ours_1w": ours[1], "ours_2w": ours[2]})
    ratios = [round_ratios(r) for r in rounds]
    # the round whose wall ratio is the median stands for the case in the tables
    order = sorted(range(repeat), key=lambda k: ratios[k]["ratio_wall_2w"])
    middle = rounds[order[(repeat - 1) // 2]]
    official, ours = middle["official"], {1: middle["ours_1w"], 2: middle["ours_2w"]}
    truth = load_truth(asn.parent)
    parity = None
    if spec.get("pattern") == "mosaic":
        # the default (global) alignment differs from jwst's on purpose; the pixel-level
        # comparison is made against a run with jwst's own alignment (align_mode=official)
        print(f"[{name}] image3-dask, 2 workers, align_mode=official (parity) ...", flush=True)
        # jwst's alignment can leave a mosaic whose background boxes are all rejected, which
        # only the single-frame catalog handles (photutils' fallback): this run is for the
        # comparison only, so it gets the single frame and the memory it needs
        same = run_ours(
            asn,
            runs / "ours_2w_official_align",
            2,
            apcorr,
            abvega,
            memory_limit="4GB",
            extra_steps={
                "tweakreg": {"align_mode": "official"},
                "source_catalog": {"tiled": "never"},
            },
        )
        parity = {"wall": same["wall"], **agreement(official_dir, same, truth)}
    result = {
        "case": name,
        "spec": {k: str(v) for k, v in spec.items()},
        "official": official,
        "ours_1w": ours[1],
        "ours_2w": ours[2],
        **{key: float(np.median([r[key] for r in ratios])) for key in ratios[0]},
        "rounds": ratios,
        "agreement": agreement(official_dir, ours[2], truth),
        "parity": parity,
        "memory_limit": MEMORY_LIMIT,
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
    large_path = OUT / "large_mosaic.json"
    large = json.loads(large_path.read_text()) if large_path.exists() else None
    if results:
        lines += targets_section(results, large)
        analysis = path.parent / "benchmarks_analysis.md"
        if analysis.exists():  # written by hand from the measurements, kept across runs
            lines += [analysis.read_text().rstrip(), ""]
        lines += e2e_sections(results)
        png = path.parent / "benchmarks_e2e.png"
        e2e_figure(results, png)
        lines += ["", f"![wall time and peak memory]({png.name})", ""]
    mem = OUT / "resample_memory.json"
    earlier = path.parent / "benchmarks_resample.md"
    if not mem.exists() and earlier.exists():  # kept from the last run of the resample benchmarks
        lines += [earlier.read_text().rstrip(), ""]
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
    peer = OUT / "reproject_peer.json"
    if peer.exists():
        r = json.loads(peer.read_text())
        off = r.get("official") or {}
        lines += [
            "## Resample: against reproject_and_coadd",
            "",
            "`python benchmarks/bench_reproject.py [--exact]`: the resample step alone on "
            f"`{r['dataset']}` ({r['exposures']} MIRI exposures of {r['detector_shape'][1]} x "
            f"{r['detector_shape'][0]} px, grid {r['grid_shape'][1]} x {r['grid_shape'][0]}); "
            "astropy's `reproject_and_coadd` co-adds onto our grid (the FITS WCS of our i2d), each "
            "exposure weighted by its good-pixel mask, with its own `parallel` (dask threads in "
            "one process) and `block_size`. Wall times include reading the exposures.",
            "",
            "| tool | wall [s] | peak [MB] | median rel. diff to ours | within 1 % of ours | flux ratio to ours | pixels only ours / only theirs |",
            "|---|---|---|---|---|---|---|",
            f"| jwst ResampleStep | {off['wall_s']:.1f} | {off['peak_mb']:.0f} | | | | |"
            if off
            else "| jwst ResampleStep | not run | not run | | | | |",
            f"| image3-dask, 2 workers ({r['ours_2w']['memory_limit']} each) | "
            f"{r['ours_2w']['wall_s']:.1f} | {r['ours_2w']['peak_worker_mb']:.0f} per worker | | | | |",
        ]
        for function, t in sorted(r.get("reproject", {}).items(), reverse=True):
            a = t["agreement_with_ours"]
            lines.append(
                f"| reproject_and_coadd + {function} (parallel={t['parallel']}, block "
                f"{t['block_size']}) | {t['wall_s']:.1f} | {t['peak_mb']:.0f} "
                f"| {a['sci_median_rel_diff']:.1e} | {a['sci_frac_within_1pct']:.2%} "
                f"| {a['flux_ratio_reproject_over_ours']:.5f} "
                f"| {a['pixels_only_ours']} / {a['pixels_only_reproject']} |"
            )
        lines += [
            "",
            "reproject is not drizzle, so this checks our pixels with an independent code rather",
            "than testing parity: `reproject_exact` computes the same exact pixel-overlap areas as",
            "drizzle's square kernel at pixfrac 1 and `reproject_interp` interpolates bilinearly",
            "(the same weights for a shift at equal pixel scale, nearly the case on a grid aligned",
            "with the detectors), but reproject weights overlaps by the good-pixel mask instead of",
            "the inverse variance and loses an output pixel next to a bad input pixel (the pixels",
            "only ours covers), so differences show at exposure edges, in overlaps and around bad",
            "pixels while the flux agrees.",
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
            f"- serial share {r['serial_share']:.1%} of the wall time (at most one task running, idle "
            "included), from Dask's task stream;",
            f"- projected wall time (serial time + parallel task time / N): 8 workers {proj['8'] / 60:.1f} min, "
            f"32 workers {proj['32'] / 60:.1f} min, 64 workers {proj.get('64', float('nan')) / 60:.1f} min, "
            f"128 workers {proj['128'] / 60:.1f} min (1 worker: "
            f"{r.get('one_worker_s', float('nan')) / 60:.1f} min).",
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
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds per case, jwst and ours alternating; ratios are medians over the rounds",
    )
    args = p.parse_args()
    for case in args.cases:
        run_case(case, args.repeat)
    print(f"report: {write_report(Path(args.report))}")


if __name__ == "__main__":
    main()
