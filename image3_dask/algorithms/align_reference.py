"""jwst's reference-group alignment, one batch of groups at a time.

With ``expand_refcat=False`` (jwst's default) ``tweakwcs.align_wcs`` takes the first group as
the reference and matches every other group to the reference group's catalog alone, in
association order: no group's fit depends on another's. The alignment of all groups can
therefore be split in two parts:

* `reference_catalog` -- the reference group's sources with their sky positions, the
  catalog ``align_wcs`` builds from the first group (once);
* `align_to_reference` -- any batch of the other groups aligned to that catalog, with the
  same matcher, fit and checks as ``stcal.tweakreg.relative_align``; batches can run at the
  same time, each as soon as its own catalogs are found.

The fits are those of `image3_dask.algorithms.align.relative_align` on all groups at once
(tested bit for bit). Where that could not be vouched for (the reference group has no
sources and tweakwcs would take another group; the alignment was skipped), the batch reports
``exact=False`` and the caller aligns all groups at once instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from astropy.table import Table
from tweakwcs.wcsimage import WCSGroupCatalog, WCSImageCatalog

from .align import _collect, align_to_catalog
from .align_common import AlignResult, exposure_names, make_correctors

__all__ = ["align_to_reference", "reference_catalog"]


def _inexact(wcses: Sequence[Any], group_ids: Sequence[Hashable]) -> AlignResult:
    """A batch whose fits cannot stand for the whole alignment's (nothing is logged here: the
    alignment of all groups at once that follows tells the user what happened)."""
    return AlignResult(
        wcs=list(wcses),
        fit_info=[{"status": "FAILED: not aligned", "group_id": g} for g in group_ids],
        success=False,
        mode="relative",
    )


def _image_catalogs(correctors: Sequence[Any]) -> list[WCSImageCatalog]:
    """``tweakwcs``'s image catalogs of the correctors, made as ``align_wcs`` makes them."""
    return [
        WCSImageCatalog(
            catalog=c.meta["catalog"],
            corrector=c,
            name=c.meta.get("name", "Unknown"),
            group_id=c.meta.get("group_id"),
        )
        for c in correctors
    ]


def reference_catalog(
    catalogs: Sequence[Table],
    wcses: Sequence[Any],
    wcsinfos: Sequence[Mapping[str, float]],
    group_id: Hashable,
    names: Sequence[str] | None = None,
) -> Table | None:
    """The reference catalog of jwst's relative alignment, from the reference group.

    Parameters
    ----------
    catalogs, wcses, wcsinfos : sequence
        Per exposure of the reference group (the first group in association order), in
        association order: sources with ``x``, ``y``; gwcs; ``v2_ref``/``v3_ref``/``roll_ref``.
    group_id : hashable
        The reference group.
    names : sequence of str, optional
        Exposure names (the catalog is named after the first, as in ``align_wcs``).

    Returns
    -------
    astropy.table.Table or None
        The group's sources with ``RA``/``DEC`` (``WCSGroupCatalog.catalog``), or `None` when
        the group has none (``align_wcs`` would then take another group as the reference).
    """
    names = exposure_names(len(wcses), names)
    correctors = make_correctors(catalogs, wcses, wcsinfos, [group_id] * len(wcses), names)
    images = _image_catalogs(correctors)
    group = WCSGroupCatalog(images, name=f"GROUP ID: {group_id}")
    catalog = group.catalog
    if catalog is None or not len(catalog):
        return None
    catalog.meta["name"] = images[0].name
    return catalog


def align_to_reference(
    catalogs: Sequence[Table],
    wcses: Sequence[Any],
    wcsinfos: Sequence[Mapping[str, float]],
    group_ids: Sequence[Hashable],
    refcat: Table | None,
    *,
    names: Sequence[str] | None = None,
    searchrad: float = 2.0,
    separation: float = 1.0,
    use2dhist: bool = True,
    tolerance: float = 0.7,
    xoffset: float = 0.0,
    yoffset: float = 0.0,
    minobj: int = 15,
    fitgeometry: str = "rshift",
    nclip: int = 3,
    sigma: float = 3.0,
    clip_accum: bool = False,
) -> tuple[AlignResult, bool]:
    """Align a batch of groups to jwst's reference catalog (`reference_catalog`).

    Parameters
    ----------
    catalogs, wcses, wcsinfos, group_ids : sequence
        Per exposure of the batch (no exposure of the reference group), in association order.
    refcat : astropy.table.Table or None
        The reference catalog; `None` (a reference group without sources) gives
        ``exact=False``.
    names : sequence of str, optional
        Exposure names for log messages.
    searchrad, separation, use2dhist, tolerance, xoffset, yoffset
        ``XYXYMatch`` options in arcsec, as in the official step.
    minobj, fitgeometry, nclip, sigma, clip_accum
        ``align_wcs`` options, as in the official step.

    Returns
    -------
    result : AlignResult
        Per exposure of the batch: the corrected WCS (or the input one) and the fit.
    exact : bool
        Whether these fits are those of one alignment of all groups. `False` when the
        alignment was skipped (bad ``separation``, no group with sources, matching error,
        a correction larger than ``2 (searchrad + tolerance)``: jwst then leaves every
        exposure unchanged) or ``refcat`` is `None`.
    """
    from stcal.tweakreg import tweakreg as twk

    if refcat is None or separation <= math.sqrt(2.0) * tolerance:
        return _inexact(wcses, group_ids), False
    names = exposure_names(len(wcses), names)
    correctors = make_correctors(catalogs, wcses, wcsinfos, group_ids, names)
    error = align_to_catalog(
        correctors,
        refcat,
        searchrad=searchrad,
        separation=separation,
        use2dhist=use2dhist,
        tolerance=tolerance,
        xoffset=xoffset,
        yoffset=yoffset,
        minobj=minobj,
        fitgeometry=fitgeometry,
        nclip=nclip,
        sigma=sigma,
        clip_accum=clip_accum,
    )
    if error is not None:
        return _inexact(wcses, group_ids), False
    # stcal's check that no correction is implausibly large (it skips the whole alignment)
    with warnings.catch_warnings(record=True):
        small = twk._is_wcs_correction_small(
            correctors, use2dhist, searchrad, tolerance, xoffset, yoffset
        )
    if not small:
        return _inexact(wcses, group_ids), False
    return _collect(correctors, wcses, group_ids, "relative"), True
