"""Markdown sections of the whole-pipeline report (used by ``run_all.write_report``).

Every figure comes from the ``bench_output/e2e_<case>.json`` results that ``run_all.py`` writes;
nothing here measures anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STEPS = ("tweakreg", "skymatch", "outlier_detection", "resample", "source_catalog")

#: The issue's targets on this 2-core machine.
TARGET_WALL = {"miri_dither_16": 0.4, "miri_mosaic_16": 0.4, "miri_mosaic_64_512px": 0.35}
TARGET_CPU = 0.6
TARGET_SERIAL = 0.10
TARGET_SERIAL_LARGE = 0.05
TARGET_CLIENT = 0.05
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


def _rounds(r: dict, key: str) -> str:
    """``; median of 3 rounds: 0.41, 0.43, 0.44`` for a repeated case, else nothing."""
    rounds = r.get("rounds", ())
    if len(rounds) < 2:
        return ""
    values = ", ".join(f"{q[key]:.2f}" for q in rounds)
    return f"; median of {len(rounds)} rounds: {values}"


def cpu_ratio(r: dict) -> float:
    """CPU-seconds of ours on 2 workers over jwst's (the median over rounds when repeated)."""
    return r.get("ratio_cpu_2w", r["ours_2w"]["cpu"] / r["official"]["cpu"])


def e2e_sections(results: list[dict]) -> list[str]:
    """The whole-pipeline tables: time and memory, agreement, time per step."""
    lines = [
        "## Whole pipeline",
        "",
        "Each case ran jwst's `Image3Pipeline` (one process) and image3-dask on fresh local",
        "clusters of 1 and 2 single-thread workers, every worker held to "
        f"{results[0].get('memory_limit', '4GB')}. CPU is the user+system time of all processes"
        " (workers; the client, scheduler and nannies share the calling process). The serial"
        " share is the part of the 2-worker wall time with at most one task running (idle"
        " included), from Dask's task stream.",
        "",
        "| case | input | jwst wall [s] | jwst CPU [s] | ours 1 worker [s] | ours 2 workers [s] "
        "| ours CPU [s] | wall ratio (2w ÷ jwst) | CPU ratio | serial share | client+scheduler "
        "CPU | parallel eff. (1→2) | jwst peak [MB] | ours peak/worker [MB] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        o, w1, w2 = r["official"], r["ours_1w"], r["ours_2w"]
        lines.append(
            f"| {r['case']} | {describe(r['spec'])} | {o['wall']:.1f} | {o['cpu']:.0f} "
            f"| {w1['wall']:.1f} | {w2['wall']:.1f} | {w2['cpu']:.0f} | {r['ratio_wall_2w']:.2f} "
            f"| {cpu_ratio(r):.2f} | {_pct(w2.get('serial_share'))} "
            f"| {_pct(w2['cpu_client_scheduler'] / w2['cpu'] if 'cpu_client_scheduler' in w2 else None)} "
            f"| {r['parallel_efficiency']:.0%} | {o['peak_mb']:.0f} | {w2['worker_peak_mb']:.0f} |"
        )
    repeated = [r for r in results if len(r.get("rounds", ())) > 1]
    if repeated:
        lines += [
            "",
            "Cases run in several rounds (`--repeat`): jwst and ours alternate within each round,",
            "the ratios above are the medians of the rounds' ratios, and the other columns are",
            "those of the round with the median wall ratio:",
            "",
            "| case | round | jwst wall [s] | ours 2 workers [s] | wall ratio | CPU ratio "
            "| parallel eff. |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in repeated:
            for k, q in enumerate(r["rounds"], 1):
                lines.append(
                    f"| {r['case']} | {k} | {q['wall_official']:.1f} | {q['wall_2w']:.1f} "
                    f"| {q['ratio_wall_2w']:.2f} | {q['ratio_cpu_2w']:.2f} "
                    f"| {q['parallel_efficiency']:.0%} |"
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
        "| target (2-core machine, ratios to jwst on the same data in one run) | measured | |",
        "|---|---|---|",
    ]
    for case, limit in TARGET_WALL.items():
        r = by_case.get(case)
        if r:
            lines.append(
                f"| whole-pipeline wall time ≤ {limit}x jwst, {describe(r['spec'])} "
                f"| {r['ratio_wall_2w']:.2f}x ({r['ours_2w']['wall']:.0f} s vs "
                f"{r['official']['wall']:.0f} s{_rounds(r, 'ratio_wall_2w')}) "
                f"| {mark(r['ratio_wall_2w'] <= limit)} |"
            )
    for case in TARGET_WALL:
        r = by_case.get(case)
        if r and "cpu" in r["official"] and case != "miri_mosaic_64_512px":
            ratio = cpu_ratio(r)
            lines.append(
                f"| CPU-seconds of all processes ≤ {TARGET_CPU}x jwst's, {r['case']} "
                f"| {ratio:.2f}x ({r['ours_2w']['cpu']:.0f} s vs {r['official']['cpu']:.0f} s"
                f"{_rounds(r, 'ratio_cpu_2w')}) "
                f"| {mark(ratio <= TARGET_CPU)} |"
            )
    shares = [r for r in results if "serial_share" in r["ours_2w"]]
    if shares:
        cells = ", ".join(f"{r['case']}: {r['ours_2w']['serial_share']:.1%}" for r in shares)
        sixteen = [r for r in shares if r["case"] in ("miri_mosaic_16", "miri_dither_16")]
        ok = all(r["ours_2w"]["serial_share"] <= TARGET_SERIAL for r in sixteen)
        lines.append(
            f"| serial share (at most one task running, idle included) ≤ {TARGET_SERIAL:.0%}, "
            f"16-exposure cases, 2 workers | {cells} | {mark(ok and bool(sixteen))} |"
        )
        cs = ", ".join(
            f"{r['case']}: {r['ours_2w']['cpu_client_scheduler'] / r['ours_2w']['cpu']:.1%}"
            for r in shares
        )
        worst = max(r["ours_2w"]["cpu_client_scheduler"] / r["ours_2w"]["cpu"] for r in shares)
        lines.append(
            f"| client + scheduler ≤ {TARGET_CLIENT:.0%} of all CPU-seconds | {cs} "
            f"| {mark(worst <= TARGET_CLIENT)} |"
        )
    if results:
        effs = ", ".join(f"{r['case']}: {r['parallel_efficiency']:.0%}" for r in results)
        ok = all(r["parallel_efficiency"] >= TARGET_EFFICIENCY for r in results)
        lines.append(f"| parallel efficiency 1→2 workers ≥ 85% | {effs} | {mark(ok)} |")
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
        agree = []
        for r in results:
            par = r.get("parity") or r["agreement"]
            agree.append(
                (par.get("i2d_frac_within_0.1err") or 0) >= 0.999
                and (par.get("outlier_jaccard") in (None, 1.0))
                and par["catalog_frac_official_matched_0.1arcsec"] >= 0.999
            )
        lines.append(
            "| products agree with jwst (i2d within 0.1 ERR, outlier flags Jaccard 1.0, every "
            "jwst source matched) | see the agreement table | " + mark(all(agree)) + " |"
        )
    if large:
        proj = large.get("projected_wall_s", {})
        share = large.get("serial_share")
        lines.append(
            f"| large mosaic: serial share ≤ {TARGET_SERIAL_LARGE:.0%} | "
            f"{share:.1%} ({large['exposures']} exposures, grid {large['grid_shape'][1]} x "
            f"{large['grid_shape'][0]}, {large['wall_s'] / 60:.1f} min on 2 workers, peak "
            f"{large['worker_peak_mb']:.0f} MB/worker) | {mark(share <= TARGET_SERIAL_LARGE)} |"
        )
        if "64" in proj and large.get("one_worker_s"):
            speedup = large["one_worker_s"] / proj["64"]
            lines.append(
                f"| large mosaic: projection to 64 workers ≥ 20x the 1-worker time | "
                f"{speedup:.1f}x ({large['one_worker_s'] / 60:.1f} min → {proj['64'] / 60:.1f} "
                f"min) | {mark(speedup >= 20)} |"
            )
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
