"""Pairs of exposure groups for the global alignment: tangent-plane positions and matching.

The first two stages of :mod:`image3_dask.algorithms.global_solve`:

1. `tangent_plane_positions` -- sources of each exposure in the common tangent plane
   (arcsec), through the exposure's WCS and the tangent plane of a reference corrector;
   `footprint_tangent_plane` -- the exposure's footprint there.
2. `match_pair` -- ``tweakwcs`` ``XYXYMatch`` (2D-histogram offset + ``xyxymatch``) on the
   sources of two groups inside their common footprint (`inside_any`); one per overlapping
   pair, each a `PairMatch`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table
from tweakwcs.correctors import JWSTWCSCorrector
from tweakwcs.matchutils import XYXYMatch

__all__ = [
    "PairMatch",
    "footprint_tangent_plane",
    "inside_any",
    "match_pair",
    "match_pairs",
    "tangent_plane_positions",
    "xy_box",
]

log = logging.getLogger(__name__)


@dataclass
class PairMatch:
    """Matched sources of one overlapping pair of groups.

    Attributes
    ----------
    a, b : int
        Group indices.
    xy_a, xy_b : numpy.ndarray
        ``(K, 2)`` tangent-plane positions (arcsec, before correction) of the K matched
        sources in group ``a`` and group ``b``.
    """

    a: int
    b: int
    xy_a: np.ndarray
    xy_b: np.ndarray

    @property
    def n(self) -> int:
        """Number of matched sources."""
        return len(self.xy_a)


def tangent_plane_positions(
    catalog: Table, wcs: Any, ref_corrector: JWSTWCSCorrector
) -> np.ndarray:
    """Positions of an exposure's sources in the common tangent plane.

    Parameters
    ----------
    catalog : astropy.table.Table
        Sources with ``x``, ``y`` (0-based pixels).
    wcs : gwcs.WCS
        The exposure's WCS.
    ref_corrector : tweakwcs.correctors.JWSTWCSCorrector
        Corrector defining the common tangent plane (arcsec).

    Returns
    -------
    numpy.ndarray
        ``(N, 2)`` tangent-plane coordinates in arcsec.
    """
    if len(catalog) == 0:
        return np.zeros((0, 2))
    ra, dec = wcs(
        np.asarray(catalog["x"], float), np.asarray(catalog["y"], float), with_bounding_box=False
    )
    xt, yt = ref_corrector.world_to_tanp(ra, dec)
    return np.column_stack([np.asarray(xt, float), np.asarray(yt, float)])


def footprint_tangent_plane(wcs: Any, ref_corrector: JWSTWCSCorrector) -> np.ndarray:
    """Corners of an exposure's footprint in the common tangent plane (``(4, 2)``, arcsec).

    Parameters
    ----------
    wcs : gwcs.WCS
        The exposure's WCS (with a bounding box).
    ref_corrector : tweakwcs.correctors.JWSTWCSCorrector
        Corrector defining the common tangent plane.

    Returns
    -------
    numpy.ndarray
        Footprint corners, in order around the polygon.
    """
    ra, dec = np.asarray(wcs.footprint(), dtype=float).T
    xt, yt = ref_corrector.world_to_tanp(ra, dec)
    return np.column_stack([xt, yt])


def xy_box(xy: np.ndarray) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` of points; an empty box (inf, inf, -inf, -inf) for none."""
    if len(xy) == 0:
        return (np.inf, np.inf, -np.inf, -np.inf)
    return (*np.min(xy, axis=0), *np.max(xy, axis=0))


def inside_any(xy: np.ndarray, quads: Sequence[np.ndarray], margin: float) -> np.ndarray:
    """Points inside any convex polygon grown by ``margin`` (arcsec)."""
    inside = np.zeros(len(xy), dtype=bool)
    for q in quads:
        ok = np.ones(len(xy), dtype=bool)
        n = len(q)
        area2 = 0.0
        for k in range(n):
            p0, p1 = q[k], q[(k + 1) % n]
            area2 += p0[0] * p1[1] - p1[0] * p0[1]
        sgn = 1.0 if area2 > 0 else -1.0
        for k in range(n):
            p0, p1 = q[k], q[(k + 1) % n]
            e = p1 - p0
            normal = sgn * np.array([e[1], -e[0]]) / np.hypot(*e)  # outward normal
            d = (xy - p0) @ normal
            ok &= d <= margin
        inside |= ok
    return inside


def match_pair(
    xy_a: np.ndarray,
    xy_b: np.ndarray,
    *,
    searchrad: float = 2.0,
    separation: float = 1.0,
    use2dhist: bool = True,
    tolerance: float = 0.7,
    xoffset: float = 0.0,
    yoffset: float = 0.0,
    tp_pscale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Match two groups' sources in the common tangent plane (``tweakwcs`` ``XYXYMatch``).

    Parameters
    ----------
    xy_a, xy_b : numpy.ndarray
        ``(N, 2)`` and ``(M, 2)`` tangent-plane positions (arcsec); ``xy_a`` plays the
        role of the reference catalog.
    searchrad, separation, use2dhist, tolerance, xoffset, yoffset : float or bool
        ``XYXYMatch`` options in arcsec, as in the official step.
    tp_pscale : float, optional
        Pixel scale in the tangent plane (arcsec), sets the 2D-histogram bin size.

    Returns
    -------
    idx_a, idx_b : numpy.ndarray
        Indices of matched sources in ``xy_a`` and ``xy_b`` (empty if nothing matched
        or matching failed).
    """
    empty = (np.zeros(0, dtype=int), np.zeros(0, dtype=int))
    if len(xy_a) == 0 or len(xy_b) == 0:
        return empty
    ta = Table({"TPx": xy_a[:, 0], "TPy": xy_a[:, 1]}, meta={"name": "a"})
    tb = Table({"TPx": xy_b[:, 0], "TPy": xy_b[:, 1]}, meta={"name": "b"})
    matcher = XYXYMatch(
        searchrad=searchrad,
        separation=separation,
        use2dhist=use2dhist,
        tolerance=tolerance,
        xoffset=xoffset,
        yoffset=yoffset,
    )
    try:
        ia, ib = matcher(ta, tb, tp_pscale=tp_pscale, tp_units="arcsec")
    except (RuntimeError, ValueError) as e:
        log.warning("Matching failed for a pair of groups: %s", e)
        return empty
    ia = np.asarray(ia, dtype=int)
    ib = np.asarray(ib, dtype=int)
    # keep one-to-one matches only
    _, ua = np.unique(ia, return_counts=True)
    _, ub = np.unique(ib, return_counts=True)
    if (ua > 1).any() or (ub > 1).any():
        keep = np.isin(ia, np.unique(ia)[ua == 1]) & np.isin(ib, np.unique(ib)[ub == 1])
        ia, ib = ia[keep], ib[keep]
    return ia, ib


def match_pairs(
    jobs: Sequence[tuple[int, int, np.ndarray, np.ndarray]], **options: Any
) -> list[PairMatch]:
    """:func:`match_pair` on each ``(a, b, xy_a, xy_b)`` of ``jobs``; the pairs that matched.

    A batch of the global alignment's pairs (one task when they run on a cluster); ``options``
    are :func:`match_pair`'s keywords.
    """
    out = []
    for a, b, xy_a, xy_b in jobs:
        ia, ib = match_pair(xy_a, xy_b, **options)
        if len(ia):
            out.append(PairMatch(a, b, xy_a[ia], xy_b[ib]))
    return out
