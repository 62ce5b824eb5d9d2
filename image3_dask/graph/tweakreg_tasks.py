"""The worker tasks of tweakreg: source catalogs, the alignment, the WCS corrections.

The step's flow (what is submitted when, what the client waits for) is
:mod:`image3_dask.graph.tweakreg`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from image3_dask.io.catalog_files import read_source_catalog, write_catalog
from image3_dask.io.exposures import read_pixels

log = logging.getLogger("image3_dask")

__all__ = [
    "CATALOG_PARAMS",
    "align_batch_task",
    "align_task",
    "catalog_task",
    "correct_task",
    "corrected_wcs",
    "finder_params",
    "merge_align_batches",
    "pair_tasks",
    "reference_batches",
    "refcat_task",
    "resolve_align_mode",
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
#: The relative parameters of a batch aligned to the fixed reference catalog (whose order and
#: expansion are those of ``expand_refcat=False``).
_BATCH_PARAMS = tuple(k for k in _REL_PARAMS if k not in ("enforce_user_order", "expand_refcat"))
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
        finder_kind,
        make_tweakreg_catalog,
    )

    if custom:
        cat = read_source_catalog(custom)
    else:
        # ERR only feeds the segmentation finder's photometry
        segmentation = finder_kind(params.get("starfinder", "iraf")) == "segmentation"
        pix = read_pixels(path, ("data", "dq", "err") if segmentation else ("data", "dq"))
        err = pix.err if segmentation else None
        cat = make_tweakreg_catalog(pix.data, coverage_mask_from_dq(pix.dq), err=err, **params)
    if len(cat):
        cat = filter_catalog_by_bounding_box(cat, bbox)
    cat.meta["name"] = name
    if save_to is not None and not custom:
        write_catalog(cat, save_to, catalog_format)
    return cat


class _Capture(logging.Handler):
    """Collects warnings logged while a task runs, to show them on the client.

    A context manager: within it, the handler listens to image3_dask's, tweakwcs's and
    stcal's loggers.
    """

    LOGGERS = ("image3_dask", "tweakwcs", "stcal")

    def __enter__(self) -> _Capture:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

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

    with _Capture() as capture:
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


def reference_batches(group_ids: list[str], n_batches: int) -> tuple[list[int], list[list[int]]]:
    """Exposures of jwst's reference group, and the other groups cut into batches.

    See :mod:`image3_dask.algorithms.align_reference`: with ``expand_refcat=False`` every
    group is matched to the first group's catalog alone, so batches of groups can be aligned
    at the same time.

    Parameters
    ----------
    group_ids : list of str
        Per exposure, in association order.
    n_batches : int
        How many batches at most (at least one group each).

    Returns
    -------
    reference : list of int
        Indices of the reference group's exposures (the first group), in association order.
    batches : list of list of int
        Indices of the other exposures, whole groups per batch, groups in order of first
        appearance and exposures in association order within each batch.
    """
    order: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        order.setdefault(g, []).append(i)
    groups = list(order.values())
    reference, others = groups[0], groups[1:]
    n = max(1, min(n_batches, len(others)))
    cuts = [round(k * len(others) / n) for k in range(n + 1)]
    batches = [
        sorted(i for grp in others[a:b] for i in grp) for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    return reference, [b for b in batches if b]


def refcat_task(
    catalogs: list[Table], wcses: list[Any], wcsinfos: list[dict], group_id: str, names: list[str]
) -> Table | None:
    """Task: jwst's reference catalog from the reference group (``reference_catalog``)."""
    from image3_dask.algorithms.align_reference import reference_catalog

    return reference_catalog(catalogs, wcses, wcsinfos, group_id, names)


def align_batch_task(
    catalogs: list[Table],
    wcses: list[Any],
    wcsinfos: list[dict],
    group_ids: list[str],
    names: list[str],
    *,
    refcat: Table | None,
    params: dict,
) -> dict:
    """Task: a batch of groups aligned to jwst's reference catalog (``align_to_reference``).

    Returns
    -------
    dict
        ``exact`` (whether these fits are those of one alignment of all groups), ``wcs``
        (per exposure of the batch: the corrected gwcs or `None`), ``fit_info`` and
        ``warnings`` (messages logged).
    """
    from image3_dask.algorithms.align_reference import align_to_reference

    with _Capture() as capture:
        res, exact = align_to_reference(
            catalogs,
            wcses,
            wcsinfos,
            group_ids,
            refcat,
            names=names,
            **{k: params[k] for k in _BATCH_PARAMS},
        )
    return {
        "exact": exact,
        "wcs": [
            w if fi.get("status") == "SUCCESS" else None
            for w, fi in zip(res.wcs, res.fit_info, strict=True)
        ],
        "fit_info": [dict(fi) for fi in res.fit_info],
        "warnings": capture.messages,
    }


def merge_align_batches(
    group_ids: list[str], reference: list[int], batches: list[list[int]], results: list[dict]
) -> dict | None:
    """The result of :func:`align_task` assembled from the batches' results.

    Returns `None` when a batch was not ``exact`` (the step then aligns all groups in one
    task). Otherwise the dictionary :func:`align_task` returns in jwst's mode (``official``),
    with ``batches``: how many tasks aligned the groups.
    """
    if not all(r["exact"] for r in results):
        return None
    wcs: list[Any] = [None] * len(group_ids)
    fit_info: list[dict] = [{"status": "REFERENCE", "group_id": g} for g in group_ids]
    warnings: list[str] = []
    for batch, r in zip(batches, results, strict=True):
        for k, i in enumerate(batch):
            fit_info[i] = r["fit_info"][k]
            wcs[i] = r["wcs"][k]
        warnings += r["warnings"]
    return {
        "wcs": wcs,
        "fit_info": fit_info,
        "mode": "official",
        "absolute": None,
        "success": True,
        "warnings": warnings,
        "batches": len(batches),
    }


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
    wcses: list[Any],
    wcsinfos: list[dict],
    corrections: list[tuple[Any, Any]],
    tangent_plane: Any,
    shapes: list[tuple[int, int]],
) -> list[tuple[Any, str | None]]:
    """Task: insert the global solve's corrections into a batch of exposures' WCSs.

    Parameters
    ----------
    wcses, wcsinfos
        The exposures' WCSs and ``wcsinfo`` (``v2_ref``, ``v3_ref``, ``roll_ref``).
    corrections : list of tuple
        Per exposure, the ``(matrix, shift)`` of :func:`align_task`'s ``corrections``.
    tangent_plane
        The reference corrector of :func:`align_task`'s result (``tangent_plane``).
    shapes : list of tuple of int
        The exposures' shapes (for their ``S_REGION``).

    Returns
    -------
    list of tuple
        Per exposure, the corrected WCS and its ``S_REGION``.
    """
    from image3_dask.algorithms.global_solve import apply_correction

    out = []
    for wcs, wcsinfo, (matrix, shift), shape in zip(
        wcses, wcsinfos, corrections, shapes, strict=True
    ):
        new = apply_correction(wcs, wcsinfo, matrix, shift, tangent_plane)
        out.append((new, s_region_imaging(new, shape)))
    return out


def corrected_wcs(corrected: list[tuple[Any, str | None]], k: int) -> Any:
    """Task: the ``k``-th WCS of a :func:`correct_task` result (kept for later tasks)."""
    return corrected[k][0]


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
