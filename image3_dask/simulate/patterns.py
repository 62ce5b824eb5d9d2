"""Pointing patterns: small dithers and mosaics.

A pointing is an offset of the telescope, in arcsec along the *ideal* frame axes of the primary
detector (x along detector rows, y along columns, up to distortion): the centre of the field of
view (of all detectors of an exposure) looks at ``field centre + offset``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from image3_dask.simulate.instruments import Detector, Instrument

__all__ = ["Pointing", "dither_pattern", "field_extent_ideal", "mosaic_pattern"]

# Offsets (arcsec, ideal frame) of a 4-point dither with sub-pixel phases, similar in size to the
# MIRI "4-Point-Sets" pattern used in the MIRI imaging demo.
_DITHER4 = np.array([[-2.42, -2.06], [2.36, 2.17], [-1.81, 2.49], [1.87, -2.60]])


@dataclass(frozen=True)
class Pointing:
    """One exposure's place in the pattern.

    Attributes
    ----------
    offset : tuple of float
        Telescope offset in the primary detector's ideal frame (arcsec).
    tile : tuple of int or None
        ``(row, col)`` of the mosaic tile.
    dither : int
        Index of the exposure within its tile (or within the dither pattern).
    """

    offset: tuple[float, float]
    tile: tuple[int, int] | None
    dither: int


def dither_pattern(n: int, scale: float = 1.0) -> list[Pointing]:
    """``n`` exposures of a 4-point dither (repeated with growing sub-pixel shifts past 4).

    ``scale`` multiplies the offsets (use the instrument pixel scale ratio to keep them in pixels).
    """
    out = []
    for i in range(n):
        base = _DITHER4[i % 4] * scale
        cycle = i // 4
        shift = np.array([0.37 * cycle, 0.23 * cycle]) * scale
        out.append(Pointing((float(base[0] + shift[0]), float(base[1] + shift[1])), None, i))
    return out


def field_extent_ideal(
    inst: Instrument, detectors: list[Detector], shape: tuple[int, int], dist_models: dict
) -> tuple[float, float, float, float]:
    """``(x_min, x_max, y_min, y_max)`` of all detectors' bounding boxes in the ideal frame of
    the first detector (arcsec)."""
    from image3_dask.simulate.wcs import bounding_box

    primary = detectors[0]
    a = np.deg2rad(primary.v3yangle)
    p = primary.vparity
    mat = np.array([[p * np.cos(a), np.sin(a)], [-p * np.sin(a), np.cos(a)]])
    inv = np.linalg.inv(mat)
    xs, ys = [], []
    (x0, x1), (y0, y1) = bounding_box(inst, shape)
    cx = np.array([x0, x1, x1, x0, 0.5 * (x0 + x1), 0.5 * (x0 + x1), x0, x1])
    cy = np.array([y0, y0, y1, y1, y0, y1, 0.5 * (y0 + y1), 0.5 * (y0 + y1)])
    for det in detectors:
        v2, v3 = dist_models[det.name](cx, cy, with_bounding_box=False)
        d = inv @ np.vstack([v2 - primary.v2_ref, v3 - primary.v3_ref])
        xs.append(d[0])
        ys.append(d[1])
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    return float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())


def mosaic_pattern(
    n: int | None,
    extent: tuple[float, float, float, float],
    rows: int | None = None,
    cols: int | None = None,
    overlap: float = 0.12,
    per_pointing: int = 1,
) -> list[Pointing]:
    """A ``rows x cols`` grid of tiles overlapping by ``overlap`` of the field size.

    Parameters
    ----------
    n : int or None
        Number of exposures; with ``rows``/``cols`` unset the grid is the most square one with
        at least ``n / per_pointing`` tiles and the first ``n`` exposures are kept. When ``None``,
        ``rows * cols * per_pointing``.
    extent : tuple
        Field of one exposure in the ideal frame, from :func:`field_extent_ideal`.
    rows, cols : int, optional
        Grid size.
    overlap : float
        Overlap of adjacent tiles as a fraction of the field size (default 12 %).
    per_pointing : int
        Exposures per tile; they are dithered by about 3 % of the field size.
    """
    if not 0 <= overlap < 1:
        raise ValueError("overlap must be in [0, 1)")
    if n is None:
        if rows is None or cols is None:
            raise ValueError("give n or both rows and cols")
        n = rows * cols * per_pointing
    ntiles = math.ceil(n / per_pointing)
    if rows is None and cols is None:
        cols = math.ceil(math.sqrt(ntiles))
        rows = math.ceil(ntiles / cols)
    elif rows is None:
        rows = math.ceil(ntiles / cols)
    elif cols is None:
        cols = math.ceil(ntiles / rows)
    if rows * cols * per_pointing < n:
        raise ValueError(f"a {rows}x{cols} mosaic with {per_pointing} exposures per tile < {n}")
    x0, x1, y0, y1 = extent
    w, h = x1 - x0, y1 - y0
    sx, sy = w * (1 - overlap), h * (1 - overlap)
    dith = [(0.0, 0.0), (0.031, 0.027), (-0.029, 0.033), (0.027, -0.031)]
    out = []
    for r in range(rows):
        for c in range(cols):
            for k in range(per_pointing):
                if len(out) == n:
                    return out
                ddx, ddy = dith[k % 4]
                ox = (c - (cols - 1) / 2.0) * sx + ddx * w
                oy = (r - (rows - 1) / 2.0) * sy + ddy * h
                out.append(Pointing((float(ox), float(oy)), (r, c), k))
    return out
