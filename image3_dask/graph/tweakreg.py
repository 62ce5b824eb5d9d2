"""The tweakreg step as a graph: a source catalog per exposure in parallel, then the alignment.

1. ``tweakreg-catalog <exposure>`` (one task per exposure): the worker reads the exposure's SCI,
   DQ and ERR arrays itself, finds sources with the official parameters
   (:func:`image3_dask.algorithms.tweakreg_catalog.make_tweakreg_catalog`), or reads the
   user's catalog (``use_custom_catalogs`` with ``catfile`` or the association's
   ``tweakreg_catalog`` entries), drops sources outside the WCS bounding box and, with
   ``save_catalogs``, writes ``<input file stem>_cat.<catalog_format>`` in the output folder
   (the name jwst gives it). Only the catalog (a few hundred rows) travels back.
2. ``tweakreg-align <product>`` (one small task): relative alignment of the exposure groups
   (``align_mode``: ``official`` = jwst's reference-group mode, ``global`` = all groups together
   from every overlapping pair, ``auto`` = global when the groups do not all overlap one
   another), then absolute alignment to ``abs_refcat``: a catalog file, or a Gaia release
   (``GAIADR3``...) the client fetched once from the catalog service (:mod:`image3_dask.io.gaia`)
   and saved as ``fit_<name>_ref.ecsv`` next to the products.

   In jwst's mode without ``abs_refcat`` and with ``expand_refcat=False`` (jwst's defaults),
   each group is matched to the reference group's catalog alone
   (:mod:`image3_dask.algorithms.align_reference`): ``tweakreg-refcat <product>`` makes that
   catalog once the reference group's catalogs are found, and the other groups are aligned in
   batches (``tweakreg-align <product> k/n``, about four per worker thread), each starting as
   soon as its own catalogs are found, beside the catalog tasks still running. The fits are
   those of one alignment of all groups (tested bit for bit). Should a batch meet a case where
   that does not hold (the reference group without sources, a skipped alignment), the one
   task aligns all groups instead.
3. On the client: each exposure whose fit succeeded gets its corrected gwcs and the
   ``s_region`` jwst recomputes after tweakreg (``update_s_region_imaging``: footprint of the
   bounding box with ``center=False``); the fit of every exposure is recorded in
   ``ctx.products["tweakreg"]`` and, with ``save_results``, in ``<product>_tweakreg.json``.

Exposures that could not be aligned (too few sources or matches, no overlap) keep their WCS
with a warning; with fewer than two groups and no ``abs_refcat`` the step is skipped, as jwst
does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from image3_dask.algorithms.align import wcs_bounding_box
from image3_dask.graph.handoff import StepData
from image3_dask.graph.plan import total_threads
from image3_dask.graph.tasks import TaskSpec
from image3_dask.graph.tweakreg_tasks import (
    align_batch_task,
    align_task,
    catalog_task,
    correct_task,
    corrected_wcs,
    finder_params,
    merge_align_batches,
    refcat_task,
    reference_batches,
    resolve_align_mode,
    s_region_imaging,
)
from image3_dask.io.catalog_files import (
    GAIA_CATALOGS,
    catalog_output_name,
    parse_catfile,
    read_refcat,
)
from image3_dask.io.exposures import ExposureInfo

log = logging.getLogger("image3_dask")

__all__ = ["custom_catalogs", "run", "submit"]

#: Alignment batches per worker thread. Each costs about 0.1 s of its own (one process, the
#: 16-exposure MIRI dither: 2.9 s in 4 batches, 3.3 s in 15); the more there are, the less
#: the last one runs alone after the last catalog.
ALIGN_BATCHES_PER_THREAD = 4


def custom_catalogs(ctx, cfg: dict, exposures: list[ExposureInfo]) -> dict[int, str | None]:
    """Exposure index -> custom catalog path, from ``catfile`` or the association.

    Returns an empty dictionary when custom catalogs are not used (or the ``catfile`` lists
    none, in which case jwst turns them off with a warning).
    """
    if not cfg.get("use_custom_catalogs"):
        return {}
    catfile = (cfg.get("catfile") or "").strip()
    entries: dict[str, str | None] = {}
    if catfile:
        entries = parse_catfile(catfile)
        if not any(v for v in entries.values()):
            log.warning(
                "'use_custom_catalogs' is set to True but 'catfile' contains no user catalogs. "
                "Turning on built-in catalog creation."
            )
            return {}
    else:
        raw = ctx.asn.raw or {}
        base = ctx.asn.path.parent if ctx.asn.path is not None else Path(".")
        for product in raw.get("products", [])[:1]:
            for m in product.get("members", []):
                if "tweakreg_catalog" in m:
                    cat = m.get("tweakreg_catalog")
                    entries[Path(m["expname"]).name] = (
                        str(base / cat) if cat and str(cat).strip() else None
                    )
    out: dict[int, str | None] = {}
    for info in exposures:
        names = (info.path.name, (info.source_path or info.path).name)
        for key, cat in entries.items():
            if Path(key).name in names:
                out[info.index] = cat
                break
    return out


def _refcat(ctx, cfg: dict, exposures: list[ExposureInfo]) -> Table | None:
    """The absolute reference catalog: a file, or a Gaia release fetched once by the client.

    For ``GAIADR3``, ``GAIADR2``, ``GAIADR1`` and ``GAIAREFCAT`` the client queries the catalog
    service (:func:`image3_dask.io.gaia.fetch_gaia_catalog`) for the exposures' footprints plus
    ``abs_searchrad``, at the epoch of the first exposure's ``DATE-OBS`` (jwst's
    ``meta.observation.date`` of the first image), and writes it to
    ``<output_dir>/fit_<name>_ref.ecsv``.
    """
    value = (cfg.get("abs_refcat") or "").strip()
    if not value or value.lower() == "none":
        return None
    if value.upper() in GAIA_CATALOGS:
        from image3_dask.io.gaia import fetch_gaia_catalog

        first = exposures[0].source_path or exposures[0].path
        out = ctx.output_dir / f"fit_{value.lower()}_ref.ecsv"
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        refcat = fetch_gaia_catalog(
            value,
            [np.asarray(e.wcs.footprint(), dtype=float) for e in exposures],
            _epoch(first),
            url=cfg.get("abs_refcat_url"),
            margin_arcsec=float(cfg.get("abs_searchrad") or 0.0),
            out_path=out,
        )
        ctx.products["abs_refcat"] = out
        return refcat
    return read_refcat(value)


def _epoch(path: Path) -> float | None:
    """Decimal year of an exposure's ``DATE-OBS`` (``meta.observation.date``), or None."""
    from astropy.time import Time

    from image3_dask.io.storage import open_fits

    with open_fits(path) as hdul:
        date = hdul[0].header.get("DATE-OBS")
    if not date:
        log.warning("%s: no DATE-OBS; the Gaia positions are not moved to the epoch", path)
        return None
    return float(Time(str(date)).decimalyear)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _log_catalogs(exposures: list[ExposureInfo], catalogs: list, n_groups: int) -> None:
    for e, cat in zip(exposures, catalogs, strict=True):
        if len(cat) == 0:
            log.warning("No sources found in %s.", e.path.name)
        else:
            log.info("Detected %d sources in %s.", len(cat), e.path.name)
    log.info("Number of image groups to be aligned: %d.", n_groups)


def _record(ctx, cfg: dict, report: dict) -> None:
    report = _jsonable(report)
    ctx.products["tweakreg"] = report
    if cfg.get("save_results", True):
        path = ctx.product_path("tweakreg", "json")
        path.write_text(json.dumps(report, indent=1) + "\n")
        ctx.products["tweakreg_json"] = path


def run(ctx, exposures: list[ExposureInfo]) -> list[ExposureInfo]:
    """:func:`submit` and wait for its tasks; return the exposures."""
    out = submit(ctx, StepData(exposures)).exposures
    ctx.finish_pending()
    return out


def submit(ctx, data: StepData) -> StepData:
    """The tweakreg step: catalogs in parallel, the alignment, corrected gwcs per exposure.

    The alignment tasks take the catalog tasks' results directly; the client waits for the
    alignment only (the next steps plan their grids from the corrected WCS).

    Parameters
    ----------
    ctx : RunContext
        The run (client, parameters, output folder).
    data : StepData
        The exposures, in association order.

    Returns
    -------
    StepData
        The exposures, with ``wcs`` and ``meta['s_region']`` updated where the fit succeeded
        and ``cal_steps['tweakreg']`` set to ``COMPLETE`` or ``SKIPPED``.
    """
    data = data.settled()
    return data.evolve(exposures=_align(ctx, data.exposures))


def _correction_batches(todo: list[int], threads: int, per_thread: int = 2) -> list[list[int]]:
    """Exposure indices cut into about ``per_thread`` batches per worker thread, in order.

    Batches hold at least 4 exposures (a correction takes ~40 ms: smaller tasks cost their
    scheduling) and at most 8 (batches of 32 left the last one running alone for seconds on
    the 324-exposure mosaic, and many more batches than threads balance better).
    """
    if not todo:
        return []
    size = -(-len(todo) // max(1, threads * per_thread))
    size = min(8, max(4, size))
    return [todo[k : k + size] for k in range(0, len(todo), size)]


def _align_in_batches(
    ctx, cfg: dict, exposures: list[ExposureInfo], catalogs: list, wcses: list
) -> dict | None:
    """jwst's reference-group alignment as batches of groups aligned at the same time.

    ``tweakreg-refcat`` makes the reference catalog as soon as the reference group's catalogs
    are found; each ``tweakreg-align`` batch (:func:`reference_batches`) starts as soon as that
    catalog and its own groups' are found, beside the catalog tasks still running. Returns
    the result of :func:`align_task`, or `None` when a batch could not vouch for its fits
    being those of one alignment of all groups (:func:`merge_align_batches`).
    """
    group_ids = [e.group_id for e in exposures]
    reference, batches = reference_batches(
        group_ids, ALIGN_BATCHES_PER_THREAD * total_threads(ctx.client)
    )
    columns = (
        catalogs,
        wcses,
        [e.wcsinfo for e in exposures],
        group_ids,
        [e.name for e in exposures],
    )

    def pick(indices: list[int]) -> tuple:
        return tuple([values[i] for i in indices] for values in columns)

    ref_args = pick(reference)
    (refcat,) = ctx.submit(
        [
            TaskSpec(
                "tweakreg-refcat",
                ctx.product_name,
                refcat_task,
                (*ref_args[:3], group_ids[reference[0]], ref_args[4]),
                priority=1,  # every batch waits for it
            )
        ]
    )
    futures = ctx.submit(
        [
            TaskSpec(
                "tweakreg-align",
                f"{ctx.product_name} {k + 1}/{len(batches)}",
                align_batch_task,
                pick(batch),
                {"refcat": refcat, "params": cfg},
            )
            for k, batch in enumerate(batches)
        ]
    )
    results = ctx.wait(futures, "tweakreg: catalogs and alignment")
    ctx.tasks.forget([refcat])
    merged = merge_align_batches(group_ids, reference, batches, results)
    if merged is None:
        log.info("tweakreg: the batches could not be joined exactly; aligning all groups at once")
    return merged


def _align(ctx, exposures: list[ExposureInfo]) -> list[ExposureInfo]:
    cfg = dict(ctx.config["tweakreg"])
    refcat = _refcat(ctx, cfg, exposures)  # fail on a bad abs_refcat before any work
    group_ids = [e.group_id for e in exposures]
    n_groups = len(set(group_ids))
    base_report = {
        "align_mode": cfg["align_mode"],
        "n_groups": n_groups,
        "abs_refcat": (cfg.get("abs_refcat") or "").strip() or None,
    }

    def skipped(message: str) -> list[ExposureInfo]:
        log.warning(message)
        _record(ctx, cfg, {**base_report, "status": "SKIPPED", "message": message})
        return [e.evolve(cal_steps={**e.cal_steps, "tweakreg": "SKIPPED"}) for e in exposures]

    if refcat is None and not cfg["save_catalogs"] and n_groups == 1:
        return skipped(
            "At least two exposures are required for image alignment. "
            "Nothing to do. Skipping 'TweakRegStep'..."
        )

    custom = custom_catalogs(ctx, cfg, exposures)
    params = finder_params(cfg)
    fmt = cfg.get("catalog_format", "ecsv")
    tasks = []
    for e in exposures:
        cat = custom.get(e.index)
        save_to = None
        if cfg["save_catalogs"] and not cat:
            save_to = ctx.output_dir / catalog_output_name(e.source_path or e.path, fmt)
        tasks.append(
            TaskSpec(
                "tweakreg-catalog",
                e.name,
                catalog_task,
                (e.path, e.name, params, wcs_bounding_box(e.wcs), cat, save_to, fmt),
            )
        )
    if cfg["save_catalogs"]:
        ctx.products["tweakreg_catalogs"] = [t.args[5] for t in tasks if t.args[5] is not None]
    if refcat is None and n_groups < 2:
        catalogs = ctx.run_now(tasks, "tweakreg: catalogs")
        _log_catalogs(exposures, catalogs, n_groups)
        return skipped("At least two exposure groups are required for relative alignment.")
    catalogs = ctx.submit(tasks)
    # sent to the cluster once, read by the mode and the alignment tasks
    wcses = ctx.wcs_futures([e.wcs for e in exposures])
    mode = cfg["align_mode"]
    if mode == "auto" and n_groups > 1:  # decided beside the catalog tasks
        (mode,) = ctx.submit(
            [
                TaskSpec(
                    "tweakreg-mode",
                    ctx.product_name,
                    resolve_align_mode,
                    (cfg["align_mode"], wcses, group_ids),
                    priority=1,  # before the catalogs still queued: the batches wait for it
                )
            ]
        )
    spec = TaskSpec(
        "tweakreg-align",
        ctx.product_name,
        align_task,
        (catalogs, wcses, [e.wcsinfo for e in exposures], group_ids, [e.name for e in exposures]),
        {
            "align_mode": mode,
            "params": cfg,
            "refcat": refcat,
            "defer_correction": True,
            "token": ctx.token,
        },
    )
    result = None
    if refcat is None and not cfg.get("expand_refcat") and n_groups > 2:
        if not isinstance(mode, str):  # align_mode=auto: the tweakreg-mode task's future
            (mode,) = ctx.wait([mode], "tweakreg: alignment mode")
        if mode == "official":
            result = _align_in_batches(ctx, cfg, exposures, catalogs, wcses)
    if result is None:  # one task aligns all groups
        (align,) = ctx.submit([spec])
        (result,) = ctx.wait([align], "tweakreg: catalogs and alignment")
    if result.get("corrections"):
        # the corrections are inserted into the WCSs by batches of exposures: one task per
        # exposure left a trail of 40 ms tasks (and their scheduling) between the solve and
        # the next steps, which all wait for the corrected WCSs
        todo = sorted(result["corrections"])
        batches = _correction_batches(todo, total_threads(ctx.client))
        # the batches take their corrections as data and the tangent plane's corrector from
        # one task holding it, not the alignment's whole result: that result (with every
        # group's fit) drew all the batches onto the worker holding it, one after the other
        (plane,) = ctx.wcs_futures([result["tangent_plane"]])
        futures = ctx.submit(
            [
                TaskSpec(
                    "tweakreg-correct",
                    exposures[batch[0]].name,
                    correct_task,
                    (
                        [wcses[i] for i in batch],
                        [exposures[i].wcsinfo for i in batch],
                        [result["corrections"][i] for i in batch],
                        plane,
                        [exposures[i].shape for i in batch],
                    ),
                )
                for batch in batches
            ]
        )
        fixed = [item for done in ctx.wait(futures, "tweakreg: corrected WCS") for item in done]
        result["wcs"] = list(result["wcs"])
        s_regions = {}
        # the later steps' tasks read the corrected WCS from the workers, not from the client
        held = ctx.submit(
            [
                TaskSpec("tweakreg-wcs", exposures[i].name, corrected_wcs, (f, k))
                for batch, f in zip(batches, futures, strict=True)
                for k, i in enumerate(batch)
            ]
        )
        for i, (w, region), f in zip(todo, fixed, held, strict=True):
            result["wcs"][i] = w
            s_regions[i] = region
            ctx.remember_wcs(w, f)
        ctx.tasks.forget(futures)
    else:
        s_regions = {}
    catalogs = ctx.tasks.results(catalogs)
    _log_catalogs(exposures, catalogs, n_groups)
    for msg in result["warnings"]:
        log.warning("tweakreg: %s", msg)
    report = {
        **base_report,
        "status": "COMPLETE" if result["success"] else "SKIPPED",
        "mode": result["mode"],
        "align_tasks": result.get("batches", 1),
        "absolute": result["absolute"],
        "n_sources": {e.name: len(c) for e, c in zip(exposures, catalogs, strict=True)},
        "exposures": {e.name: fi for e, fi in zip(exposures, result["fit_info"], strict=True)},
    }
    _record(ctx, cfg, report)
    if not result["success"]:
        log.warning("tweakreg: alignment failed; every exposure keeps its WCS")
        return [e.evolve(cal_steps={**e.cal_steps, "tweakreg": "SKIPPED"}) for e in exposures]

    out = []
    n_updated = 0
    for k, (e, w) in enumerate(zip(exposures, result["wcs"], strict=True)):
        meta = dict(e.meta)
        steps = {**e.cal_steps, "tweakreg": "COMPLETE"}
        if w is None:
            out.append(e.evolve(cal_steps=steps))
            continue
        if refcat is not None:
            w.name = f"FIT-LVL3-{report['abs_refcat']}"
        s_region = s_regions[k] if k in s_regions else s_region_imaging(w, e.shape)
        wcsinfo = dict(e.wcsinfo)
        if s_region is not None:
            meta["s_region"] = s_region
            wcsinfo["s_region"] = s_region
        out.append(e.evolve(wcs=w, wcsinfo=wcsinfo, meta=meta, cal_steps=steps))
        n_updated += 1
    log.info(
        "tweakreg (%s%s): %d of %d exposures corrected",
        result["mode"],
        " + absolute" if result["absolute"] else "",
        n_updated,
        len(exposures),
    )
    return out
