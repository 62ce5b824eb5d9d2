"""The tweakreg step as a graph: a source catalog per exposure in parallel, then one alignment task.

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
from image3_dask.graph.tasks import TaskSpec
from image3_dask.io.catalog_files import (
    GAIA_CATALOGS,
    catalog_output_name,
    parse_catfile,
    read_refcat,
    read_source_catalog,
    write_catalog,
)
from image3_dask.io.exposures import ExposureInfo, read_pixels

log = logging.getLogger("image3_dask")

__all__ = [
    "CATALOG_PARAMS",
    "align_task",
    "finder_params",
    "catalog_task",
    "custom_catalogs",
    "run",
    "s_region_imaging",
]

#: Step parameters passed to the source finder.
CATALOG_PARAMS = (
    "starfinder",
    "snr_threshold",
    "kernel_fwhm",
    "bkg_boxsize",
    "minsep_fwhm",
    "sigma_radius",
    "sharplo",
    "sharphi",
    "roundlo",
    "roundhi",
    "brightest",
    "peakmax",
    "npixels",
    "connectivity",
    "nlevels",
    "contrast",
    "multithresh_mode",
    "localbkg_width",
    "apermask_method",
    "kron_params",
    "deblend",
)
_REL_PARAMS = (
    "searchrad",
    "separation",
    "use2dhist",
    "tolerance",
    "xoffset",
    "yoffset",
    "enforce_user_order",
    "expand_refcat",
    "minobj",
    "fitgeometry",
    "nclip",
    "sigma",
)
_GLOBAL_PARAMS = (
    "searchrad",
    "separation",
    "use2dhist",
    "tolerance",
    "xoffset",
    "yoffset",
    "minobj",
    "fitgeometry",
    "nclip",
    "sigma",
)
_ABS_PARAMS = (
    "abs_searchrad",
    "abs_separation",
    "abs_use2dhist",
    "abs_tolerance",
    "abs_minobj",
    "abs_fitgeometry",
    "abs_nclip",
    "abs_sigma",
)


def finder_params(cfg: dict) -> dict:
    """The source-finder options implied by the step's parameters."""
    out = {k: cfg[k] for k in CATALOG_PARAMS if k in cfg}
    if out.get("connectivity") is not None:
        out["connectivity"] = int(out["connectivity"])
    return out


def catalog_task(
    path: Path,
    name: str,
    params: dict,
    bbox: tuple | None,
    custom: str | None = None,
    save_to: Path | None = None,
    catalog_format: str = "ecsv",
) -> Table:
    """Task: the source catalog of one exposure (found, or read from a custom file).

    Parameters
    ----------
    path : Path
        The exposure file (read by this task).
    name : str
        Catalog name (for the alignment log messages).
    params : dict
        Source-finder options (:func:`finder_params`).
    bbox : tuple or None
        ``((xmin, xmax), (ymin, ymax))`` of the WCS; sources outside are dropped.
    custom : str, optional
        A user catalog to read instead of finding sources.
    save_to : Path, optional
        Where to write the catalog (``save_catalogs``; never for custom catalogs).
    catalog_format : {'ecsv', 'fits'}
        Format of the saved catalog.

    Returns
    -------
    astropy.table.Table
        ``x``, ``y`` (0-based pixels) and the other columns of the catalog.
    """
    from image3_dask.algorithms.tweakreg_catalog import (
        coverage_mask_from_dq,
        filter_catalog_by_bounding_box,
        make_tweakreg_catalog,
    )

    if custom:
        cat = read_source_catalog(custom)
    else:
        pix = read_pixels(path, ("data", "dq", "err"))
        cat = make_tweakreg_catalog(pix.data, coverage_mask_from_dq(pix.dq), err=pix.err, **params)
    if len(cat):
        cat = filter_catalog_by_bounding_box(cat, bbox)
    cat.meta["name"] = name
    if save_to is not None and not custom:
        write_catalog(cat, save_to, catalog_format)
    return cat


class _Capture(logging.Handler):
    """Collects warnings logged while a task runs, to show them on the client."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def align_task(
    catalogs: list[Table],
    wcses: list[Any],
    wcsinfos: list[dict],
    group_ids: list[str],
    names: list[str],
    *,
    align_mode: str,
    params: dict,
    refcat: Table | None = None,
    defer_correction: bool = False,
    token: str | None = None,
) -> dict:
    """Task: relative (then absolute) alignment of all exposures from their catalogs.

    Parameters
    ----------
    catalogs, wcses, wcsinfos, group_ids, names : list
        Per exposure, in association order.
    align_mode : {'auto', 'global', 'official'}
        Relative alignment mode (see the module docstring).
    params : dict
        The tweakreg step parameters.
    refcat : astropy.table.Table, optional
        Reference catalog for absolute alignment.
    defer_correction : bool
        With the global solve and no absolute alignment, return the corrections
        (``corrections``: index -> ``(matrix, shift)``, and ``tangent_plane``) instead of
        inserting them into the WCSs here, so that :func:`correct_task` does it per exposure
        in parallel (``wcs`` is then `None` for those exposures).
    token : str, optional
        The run's token: the global solve's pairs are then matched by ``tweakreg-pairs``
        tasks submitted from this task (:func:`pair_tasks`), in parallel on the cluster.

    Returns
    -------
    dict
        ``wcs`` (per exposure: the corrected gwcs, or `None` when unchanged), ``fit_info``
        (per exposure), ``mode`` (``relative``/``global``/``none``), ``absolute`` (bool or
        `None` when not attempted), ``success`` and ``warnings`` (messages logged).
    """
    from image3_dask.algorithms.align import (
        absolute_align,
        global_align,
        relative_align,
    )

    capture = _Capture()
    loggers = [logging.getLogger(n) for n in ("image3_dask", "tweakwcs", "stcal")]
    for lg in loggers:
        lg.addHandler(capture)
    try:
        n_groups = len(set(group_ids))
        current = list(wcses)
        fit_info: list[dict] = [{"status": "FAILED: not aligned", "group_id": g} for g in group_ids]
        mode = "none"
        rel_ok = False
        deferred = None
        res = None
        if n_groups > 1:
            mode = align_mode
            if mode == "auto":
                mode = resolve_align_mode(mode, wcses, group_ids)
            defer = refcat is None and defer_correction
            if mode == "global":
                res = global_align(
                    catalogs,
                    wcses,
                    wcsinfos,
                    group_ids,
                    names=names,
                    apply=not defer,
                    map_batches=pair_tasks(token) if token else None,
                    **{k: params[k] for k in _GLOBAL_PARAMS},
                )
            else:
                kw = {k: params[k] for k in _REL_PARAMS}
                if refcat is not None:
                    kw["expand_refcat"] = True  # as jwst does when an abs_refcat is given
                res = relative_align(catalogs, wcses, wcsinfos, group_ids, names=names, **kw)
            rel_ok = res.success
            if res.success:
                current = list(res.wcs)
                fit_info = [dict(fi) for fi in res.fit_info]
                deferred = res.extra.get("corrections") if mode == "global" else None
        absolute = None
        if refcat is not None:
            res = absolute_align(
                catalogs,
                current,
                wcsinfos,
                refcat,
                group_ids=group_ids,
                names=names,
                **{k: params[k] for k in _ABS_PARAMS},
            )
            absolute = res.success
            if not res.success:  # jwst then leaves every exposure unchanged
                return {
                    "wcs": [None] * len(wcses),
                    "fit_info": [dict(fi) for fi in res.fit_info],
                    "mode": mode,
                    "absolute": False,
                    "success": False,
                    "warnings": capture.messages,
                }
            for i, fi in enumerate(res.fit_info):
                if fi.get("status") == "SUCCESS":
                    current[i] = res.wcs[i]
                    fit_info[i] = {**fi, "relative_status": fit_info[i].get("status")}
        success = rel_ok or bool(absolute)
        out_wcs = [
            w if success and fi.get("status") == "SUCCESS" and i not in (deferred or {}) else None
            for i, (w, fi) in enumerate(zip(current, fit_info, strict=True))
        ]
        out = {
            "wcs": out_wcs,
            "fit_info": fit_info,
            "mode": mode,
            "absolute": absolute,
            "success": success,
            "warnings": capture.messages,
        }
        if deferred and success:
            out.update(corrections=deferred, tangent_plane=res.extra["tangent_plane"])
        return out
    finally:
        for lg in loggers:
            lg.removeHandler(capture)


def pair_tasks(token: str):
    """A ``map_batches`` for the global solve: one ``tweakreg-pairs`` task per batch of pairs.

    Called inside the alignment task: its worker thread secedes while the batches run on the
    whole cluster (``distributed.worker_client``), so the matching of hundreds of overlapping
    pairs is not serial. Warnings of the batches are logged by the workers that ran them.
    """

    def run(func, batches: list) -> list:
        from distributed import worker_client

        if len(batches) < 2:
            return [func(b) for b in batches]
        with worker_client() as client:
            futures = [
                client.submit(func, b, key=("tweakreg-pairs", f"{i:04d}", token), pure=False)
                for i, b in enumerate(batches)
            ]
            return client.gather(futures)

    return run


def resolve_align_mode(align_mode: str, wcses: list[Any], group_ids: list[str]) -> str:
    """Task: ``align_mode='auto'`` made ``'official'`` or ``'global'`` from the footprints.

    Runs beside the catalog tasks, so the alignment task does not compute it while every
    worker waits.
    """
    from image3_dask.algorithms.align import choose_align_mode

    if align_mode != "auto":
        return align_mode
    groups: dict[str, list] = {}
    for w, g in zip(wcses, group_ids, strict=True):
        groups.setdefault(g, []).append(np.asarray(w.footprint(), float))
    return choose_align_mode(list(groups.values()))


def correct_task(
    wcs: Any, wcsinfo: dict, align: dict, index: int, shape: tuple[int, int]
) -> tuple[Any, str | None]:
    """Task: insert the global solve's correction into one exposure's WCS.

    Parameters
    ----------
    wcs, wcsinfo
        The exposure's WCS and ``wcsinfo`` (``v2_ref``, ``v3_ref``, ``roll_ref``).
    align : dict
        The result of :func:`align_task` (``corrections``, ``tangent_plane``).
    index : int
        The exposure's index.
    shape : tuple of int
        The exposure's shape (for its ``S_REGION``).

    Returns
    -------
    tuple
        The corrected WCS and its ``S_REGION``.
    """
    from image3_dask.algorithms.global_solve import apply_correction

    matrix, shift = align["corrections"][index]
    new = apply_correction(wcs, wcsinfo, matrix, shift, align["tangent_plane"])
    return new, s_region_imaging(new, shape)


def corrected_wcs(corrected: tuple[Any, str | None]) -> Any:
    """Task: the WCS of a :func:`correct_task` result (kept on the cluster for later tasks)."""
    return corrected[0]


def s_region_imaging(wcs: Any, shape: tuple[int, int]) -> str | None:
    """``S_REGION`` of an imaging exposure as jwst's ``update_s_region_imaging`` computes it.

    The footprint of the WCS bounding box (or of the array when there is none) with
    ``center=False``, RA wrapped to [0, 360); `None` when a corner is not finite.
    """
    bbox = getattr(wcs, "bounding_box", None)
    if bbox is None:
        bbox = ((-0.5, shape[-1] - 0.5), (-0.5, shape[-2] - 0.5))
    fp = np.asarray(wcs.footprint(bbox, center=False, axis_type="spatial"), float).T[:2, :]
    np.mod(fp[0], 360, out=fp[0])
    s = "POLYGON ICRS  " + " ".join(f"{v:.9f}" for v in fp.T.flatten())
    return None if "nan" in s else s


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
    """The tweakreg step: catalogs in parallel, one alignment task, corrected gwcs per exposure.

    The alignment task takes the catalog tasks' results directly; the client waits for the
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
    (align,) = ctx.submit([spec])
    (result,) = ctx.wait([align], "tweakreg: catalogs and alignment")
    if result.get("corrections"):
        # the corrections are inserted into the WCSs one exposure per task
        todo = sorted(result["corrections"])
        futures = ctx.submit(
            [
                TaskSpec(
                    "tweakreg-correct",
                    exposures[i].name,
                    correct_task,
                    (wcses[i], exposures[i].wcsinfo, align, i, exposures[i].shape),
                )
                for i in todo
            ]
        )
        fixed = ctx.wait(futures, "tweakreg: corrected WCS")
        result["wcs"] = list(result["wcs"])
        s_regions = {}
        # the later steps' tasks read the corrected WCS from the workers, not from the client
        held = ctx.submit(
            [
                TaskSpec("tweakreg-wcs", exposures[i].name, corrected_wcs, (f,))
                for i, f in zip(todo, futures, strict=True)
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
