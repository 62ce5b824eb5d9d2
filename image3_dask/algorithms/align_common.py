"""Pieces shared by the alignment modes (:mod:`.align` and :mod:`.global_solve`).

The result type of every mode, the ``tweakwcs`` corrector of one exposure, and the small
helpers both the reference-group and the global solvers apply to their inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from astropy.table import Table
from tweakwcs.correctors import JWSTWCSCorrector

from .tweakreg_catalog import filter_catalog_by_bounding_box

__all__ = [
    "AlignResult",
    "exposure_names",
    "make_corrector",
    "make_correctors",
    "rename_xy_columns",
    "unchanged_result",
    "wcs_bounding_box",
]

log = logging.getLogger(__name__)


class ShiftSearchMessages(logging.Filter):
    """Log tweakwcs's initial-shift search messages at INFO, not WARNING.

    While it looks for the offset between two catalogs, ``tweakwcs.matchutils`` warns when
    one histogram has no pair within ``searchrad`` or its peak's significance cannot be
    estimated (a single clear peak), even when the fit that follows aligns the exposures
    perfectly. The outcome is what deserves a warning, and the solvers give it (an exposure
    with too few matches keeps its WCS, with a warning naming it); these intermediate
    messages are information.
    """

    MESSAGES = ("No matches found within a search radius", "Unable to estimate significance")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(self.MESSAGES):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_MATCH_LOG = logging.getLogger("tweakwcs.matchutils")
if not any(isinstance(f, ShiftSearchMessages) for f in _MATCH_LOG.filters):
    _MATCH_LOG.addFilter(ShiftSearchMessages())


@dataclass
class AlignResult:
    """Result of an alignment.

    Attributes
    ----------
    wcs : list of gwcs.WCS
        Per exposure (input order): the corrected WCS, or the input WCS (same object)
        when that exposure was not corrected.
    fit_info : list of dict
        Per exposure: ``status`` (``'SUCCESS'``, ``'REFERENCE'`` or ``'FAILED: ...'``),
        ``group_id`` and, when fitted, ``shift`` (arcsec, in the fit tangent plane),
        ``rotation`` (deg), ``scale``, ``matrix``, ``rmse`` (arcsec), ``mae`` (arcsec),
        ``nmatches`` and ``fitgeom``.
    success : bool
        `False` when the whole alignment was skipped (the official step's
        ``TweakregError`` cases); all WCSs are then unchanged.
    mode : str
        ``'relative'``, ``'global'`` or ``'absolute'``.
    message : str
        Reason for skipping, if any.
    extra : dict
        Mode-specific details (``'pairs'`` and ``'group_order'`` of
        :func:`~image3_dask.algorithms.global_solve.global_align`).
    """

    wcs: list[Any]
    fit_info: list[dict]
    success: bool = True
    mode: str = "relative"
    message: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def updated(self) -> list[bool]:
        """Per exposure, whether the WCS was replaced by a corrected one."""
        return [fi.get("status") == "SUCCESS" for fi in self.fit_info]


def make_corrector(
    wcs: Any,
    wcsinfo: Mapping[str, float],
    catalog: Table | None = None,
    group_id: Hashable = None,
    name: str | None = None,
) -> JWSTWCSCorrector:
    """Build a ``tweakwcs`` JWST corrector for one exposure.

    Parameters
    ----------
    wcs : gwcs.WCS
        JWST-like gwcs with a ``v2v3`` frame.
    wcsinfo : mapping
        Must hold ``v2_ref``, ``v3_ref`` (arcsec) and ``roll_ref`` (deg).
    catalog : astropy.table.Table or None, optional
        Source catalog with ``x``, ``y``; sources outside the WCS bounding box are dropped.
    group_id : hashable, optional
        Exposure group identifier.
    name : str or None, optional
        Name used in ``tweakwcs`` log messages.

    Returns
    -------
    tweakwcs.correctors.JWSTWCSCorrector
        The corrector (a deep copy of ``wcs`` is corrected, ``wcs`` is left untouched).
    """
    meta: dict[str, Any] = {"group_id": group_id, "name": name}
    if catalog is not None:
        catalog = rename_xy_columns(Table(catalog, copy=True))
        catalog = filter_catalog_by_bounding_box(
            catalog, getattr(wcs, "bounding_box", None) and wcs_bounding_box(wcs)
        )
        if name is not None:
            catalog.meta["name"] = name
        meta["catalog"] = catalog
    return JWSTWCSCorrector(
        wcs=wcs,
        wcsinfo={k: float(wcsinfo[k]) for k in ("v2_ref", "v3_ref", "roll_ref")},
        meta=meta,
    )


def make_correctors(
    catalogs: Sequence[Table | None],
    wcses: Sequence[Any],
    wcsinfos: Sequence[Mapping[str, float]],
    group_ids: Sequence[Hashable],
    names: Sequence[str],
) -> list[JWSTWCSCorrector]:
    """`make_corrector` for each exposure (all sequences in the same order)."""
    return [
        make_corrector(w, info, cat, g, n)
        for cat, w, info, g, n in zip(catalogs, wcses, wcsinfos, group_ids, names, strict=True)
    ]


def wcs_bounding_box(wcs: Any) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Bounding box of a gwcs as ``((xmin, xmax), (ymin, ymax))``.

    Parameters
    ----------
    wcs : gwcs.WCS
        Any object; only its ``bounding_box`` is read.

    Returns
    -------
    ((float, float), (float, float)) or None
        ``x`` then ``y`` limits, or `None` when the WCS has no bounding box.
    """
    bb = getattr(wcs, "bounding_box", None)
    if bb is None:
        return None
    try:
        return tuple(tuple(float(v) for v in b) for b in bb.bounding_box(order="F"))
    except AttributeError:
        return tuple(tuple(float(v) for v in b) for b in bb)


def rename_xy_columns(catalog: Table) -> Table:
    """Name a catalog's source position columns ``x`` and ``y``, as ``tweakwcs`` needs them.

    Parameters
    ----------
    catalog : astropy.table.Table
        Source catalog with ``x``/``y``, ``xcentroid``/``ycentroid`` or
        ``x_centroid``/``y_centroid`` columns; renamed in place.

    Returns
    -------
    astropy.table.Table
        ``catalog`` itself.

    Raises
    ------
    ValueError
        If a position column is missing.
    """
    for axis in ("x", "y"):
        if axis not in catalog.colnames:
            for long_name in (axis + "centroid", axis + "_centroid"):
                if long_name in catalog.colnames:
                    catalog.rename_column(long_name, axis)
                    break
            else:
                raise ValueError(f"source catalogs must contain a {axis!r} column")
    return catalog


def unchanged_result(
    wcses: Sequence[Any], group_ids: Sequence[Hashable], mode: str, msg: str
) -> AlignResult:
    """The result of an alignment that was skipped: every WCS unchanged, the reason logged.

    Parameters
    ----------
    wcses : sequence of gwcs.WCS
        Per exposure: the input WCS, returned as is.
    group_ids : sequence of hashable
        Per exposure: group identifier.
    mode : str
        Alignment mode (see `AlignResult.mode`).
    msg : str
        Why the alignment was skipped (logged as a warning, recorded in the fit info).

    Returns
    -------
    AlignResult
        ``success=False``, ``fit_info`` statuses ``'FAILED: <msg>'``.
    """
    log.warning(msg)
    return AlignResult(
        wcs=list(wcses),
        fit_info=[{"status": f"FAILED: {msg}", "group_id": g} for g in group_ids],
        success=False,
        mode=mode,
        message=msg,
    )


def exposure_names(n: int, names: Sequence[str] | None) -> list[str]:
    """Exposure names for log messages: ``names`` as strings, or ``exposure<i>``.

    Parameters
    ----------
    n : int
        Number of exposures.
    names : sequence of str or None
        Given names, or `None`.

    Returns
    -------
    list of str
        ``n`` names.
    """
    return [f"exposure{i}" for i in range(n)] if names is None else [str(s) for s in names]
