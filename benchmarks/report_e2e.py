"""Markdown sections of the whole-pipeline report (used by ``run_all.write_report``).

Every figure comes from the ``bench_output/e2e_<case>.json`` results that ``run_all.py`` writes;
nothing here measures anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STEPS = ("tweakreg", "skymatch", "outlier_detection", "resample", "source_catalog")

#: The issue's targets on this 2-core machine.
TARGET_RATIO_16 = 0.4
TARGET_PEAK_MB = 1000.0
TARGET_EFFICIENCY = 0.85


def describe(spec: dict) -> str:
    """A short description of a case from its simulation spec (values stored as strings)."""
    inst = spec.get("instrument", "?").upper().replace("NIRCAM", "NIRCam")
    n = int(spec.get("n", 0))
    ndet = int(spec.get("n_detectors", 1))
    shape = spec.get("shape")
    size = "full-size" if not shape else shape.strip("()").replace(", ", "x") + " px"
    if spec.get("pattern") == "mosaic":
        what = f"{spec.get('rows')}x{spec.get('cols')} mosaic"
    else:
        what = "dither"
    files = f"{n} exposures" if ndet == 1 else f"{n} exposures x {ndet} detectors"
    return f"{inst} {what}, {files}, {size}"


def _n_files(spec: dict) -> int:
    return int(spec.get("n", 0)) * int(spec.get("n_detectors", 1))


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.1%}"


def _agreement_row(r: dict) -> str:
    par = r.get("parity") or r["agreement"]
    mode = "align_mode=official" if r.get("parity") else "default"
    a = r["agreement"]
    jac = par.get("outlier_jaccard")
    return (
        f"| {r['case']} | {mode} | {_pct(par.get('i2d_frac_within_0.1err'))} | "
        f"{_pct(par['catalog_frac_official_matched_0.1arcsec'])} "
        f"({par['catalog_n_official']} / {par['catalog_n_ours']}) | "
        f"{'n/a' if jac is None else f'{jac:.3f}'} | "
        f"{a['astrometry_rms_mas_vs_truth_official']:.0f} / "
        f"{a['astrometry_rms_mas_vs_truth_ours']:.0f} |"
    )


def e2e_sections(results: list[dict]) -> list[str]:
    """The whole-pipeline tables: time and memory, agreement, time per step."""
    lines = [
        "## Whole pipeline",
        "",
        "Each case ran jwst's `Image3Pipeline` (one process) and image3-dask on fresh local",
        "clusters of 1 and 2 single-thread workers, every worker held to "
        f"{results[0].get('memory_limit', '4GB')}. CPU is the user+system time of all processes.",
        "",
        "| case | input | jwst wall [s] | jwst CPU [s] | ours 1 worker [s] | ours 2 workers [s] "
        "| ours CPU [s] | wall ratio (2w ÷ jwst) | parallel eff. (1→2) | jwst peak [MB] "
        "| ours peak/worker [MB] |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        o, w1, w2 = r["official"], r["ours_1w"], r["ours_2w"]
        lines.append(
            f"| {r['case']} | {describe(r['spec'])} | {o['wall']:.1f} | {o['cpu']:.0f} "
            f"| {w1['wall']:.1f} | {w2['wall']:.1f} | {w2['cpu']:.0f} | {r['ratio_wall_2w']:.2f} "
            f"| {r['parallel_efficiency']:.0%} | {o['peak_mb']:.0f} | {w2['worker_peak_mb']:.0f} |"
        )
    lines += [
        "",
        "Agreement of the products with jwst's, and of both catalogs with the truth. On mosaics",
        "the comparison with jwst uses an extra run of ours with jwst's own alignment",
        "(`tweakreg.align_mode=official`), since the default global alignment differs from it on",
        "purpose; the astrometry column compares jwst with our default run:",
        "",
        '| case | our alignment | i2d pixels within 0.1 ERR | jwst sources matched within 0.1" '
        "(jwst / ours) | outlier-flag Jaccard | star astrometry rms vs truth, jwst / ours [mas] |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_agreement_row(r) for r in results]
    lines += [
        "",
        "Time per step in seconds, from each pipeline's log (jwst's where its log was kept):",
        "",
        "| case | run | " + " | ".join(STEPS) + " |",
        "|---" * (len(STEPS) + 2) + "|",
    ]

    def cells(t: dict) -> str:
        return " | ".join(f"{t[s]:.1f}" if s in t else "" for s in STEPS)

    for r in results:
        if r["official"].get("step_seconds"):
            lines.append(f"| {r['case']} | jwst | {cells(r['official']['step_seconds'])} |")
        lines.append(f"| {r['case']} | ours, 1 worker | {cells(r['ours_1w']['timings'])} |")
        lines.append(f"| {r['case']} | ours, 2 workers | {cells(r['ours_2w']['timings'])} |")
    return lines


def targets_section(results: list[dict], large: dict | None) -> list[str]:
    """The issue's targets next to what was measured, each marked met or not met."""
    by_case = {r["case"]: r for r in results}

    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [
        "## Targets",
        "",
        "| target (2-core machine, ratios to jwst on the same data) | measured | |",
        "|---|---|---|",
    ]
    r16 = by_case.get("miri_mosaic_16")
    if r16:
        lines.append(
            f"| whole-pipeline wall time ≤ {TARGET_RATIO_16}x jwst, 16 MIRI exposures "
            f"| {r16['ratio_wall_2w']:.2f}x ({r16['ours_2w']['wall']:.0f} s vs "
            f"{r16['official']['wall']:.0f} s) | {mark(r16['ratio_wall_2w'] <= TARGET_RATIO_16)} |"
        )
    if results:
        ordered = sorted(results, key=lambda r: _n_files(r["spec"]))
        peaks = ", ".join(
            f"{_n_files(r['spec'])} files: {r['ours_2w']['worker_peak_mb']:.0f} MB" for r in ordered
        )
        worst = max(r["ours_2w"]["worker_peak_mb"] for r in results)
        jwst_peaks = ", ".join(f"{r['official']['peak_mb']:.0f}" for r in ordered)
        lines.append(
            f"| peak memory per worker ≤ 1 GB, flat as exposures grow | {peaks} "
            f"(jwst: {jwst_peaks} MB) | {mark(worst <= TARGET_PEAK_MB)} |"
        )
        effs = ", ".join(f"{r['case']}: {r['parallel_efficiency']:.0%}" for r in results)
        ok = all(r["parallel_efficiency"] >= TARGET_EFFICIENCY for r in results)
        lines.append(f"| parallel efficiency 1→2 workers ≥ 85% | {effs} | {mark(ok)} |")
    if large:
        lines.append(
            f"| large mosaic (hundreds of exposures, grid > 10,000 px a side) completes with "
            f"2 GB workers | {large['exposures']} exposures, grid {large['grid_shape'][1]} x "
            f"{large['grid_shape'][0]}, {large['wall_s'] / 60:.1f} min, peak "
            f"{large['worker_peak_mb']:.0f} MB/worker | "
            f"{mark(max(large['grid_shape']) > 10000 and large['worker_peak_mb'] < 2000)} |"
        )
    if r16 and r16["ratio_wall_2w"] > TARGET_RATIO_16:
        o, w1, w2 = r16["official"], r16["ours_1w"], r16["ours_2w"]
        budget = TARGET_RATIO_16 * o["wall"]
        slower = [
            f"{s} {w1['timings'][s] / o['step_seconds'][s]:.1f}x"
            for s in STEPS
            if s in o.get("step_seconds", {}) and s in w1["timings"]
        ]
        lines += [
            "",
            f"Why the wall-time target is not met on this machine: 0.4x jwst is {budget:.0f} s, "
            f"so at most {2 * budget:.0f} CPU-seconds on 2 cores. jwst itself used "
            f"{o['cpu']:.0f} CPU-seconds for this mosaic, and image3-dask runs the same per-pixel "
            "kernels (the drizzle C code, gwcs pixel maps, photutils) over the same pixels: it "
            f"used {w1['cpu']:.0f} CPU-seconds on 1 worker and {w2['cpu']:.0f} on 2 (all "
            "processes: workers, scheduler, client). No scheduling reaches 0.4x with 2 cores; "
            "what the 2 workers gain is the parallel part, with the efficiency shown above."
            + (
                " Per step, one worker of ours takes this many times jwst's time: "
                + ", ".join(slower)
                + ". Where the excess goes (`benchmarks/profile_tasks.py`): each task opens "
                "its own exposure files (datamodel reads and ASDF schema validation that jwst "
                "does once per exposure), tiles re-read their inputs and halos, and the "
                "catalog is tiled to stay within a 1 GB worker, which recomputes the "
                "background and convolution of the detection pass while measuring."
                if slower
                else ""
            ),
        ]
    low = [r for r in results if r["parallel_efficiency"] < TARGET_EFFICIENCY]
    if low:
        cpu = ", ".join(
            f"{r['case']} {r['ours_1w']['cpu']:.0f} → {r['ours_2w']['cpu']:.0f} s" for r in low
        )
        lines += [
            "",
            "Why the efficiency target is not met on this machine: efficiency is the 1-worker "
            "wall time over twice the 2-worker one, and with 2 workers on 2 cores the workers "
            "share them with the scheduler, the client and the nannies (which have a core to "
            "themselves in the 1-worker run). The CPU time of all processes grows from 1 to 2 "
            f"workers ({cpu}), and the serial parts (the alignment and sky solves, the "
            "client's planning between steps) weigh more as the parallel tile tasks get "
            "faster. `benchmarks/profile_tasks.py --workers 2` shows the serial task seconds "
            "and the idle gaps of a run.",
        ]
    return lines + [""]


def e2e_figure(results: list[dict], png: Path) -> None:
    """Wall time (jwst, ours on 1 and 2 workers) and peak memory per case, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(results))
    names = [r["case"] for r in results]
    for k, (label, key) in enumerate(
        (("jwst", "official"), ("ours, 1 worker", "ours_1w"), ("ours, 2 workers", "ours_2w"))
    ):
        axes[0].bar(x + (k - 1) * 0.27, [r[key]["wall"] for r in results], 0.27, label=label)
    axes[0].set_xticks(x, names, rotation=15)
    axes[0].set_ylabel("wall time [s]")
    axes[0].legend()
    axes[1].bar(x - 0.2, [r["official"]["peak_mb"] for r in results], 0.4, label="jwst (process)")
    axes[1].bar(
        x + 0.2, [r["ours_2w"]["worker_peak_mb"] for r in results], 0.4, label="ours (per worker)"
    )
    axes[1].axhline(TARGET_PEAK_MB, color="k", ls=":", lw=1, label="1 GB")
    axes[1].set_xticks(x, names, rotation=15)
    axes[1].set_ylabel("peak memory [MB]")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
