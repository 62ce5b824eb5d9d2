"""Blot (reverse-drizzle) a region of the median back onto an exposure's pixels.

The official step calls ``stcal.outlier_detection.utils.gwcs_blot``, which
computes ``pixmap = calc_pixmap(exposure_wcs, median_wcs, exposure_shape)``
(the same pixel map drizzle uses for that exposure), replaces NaN by -1 and
runs ``drizzle.resample.blot_image(median, pixmap, interp="linear",
fillval=NaN, iscale=1)`` on the *full* median grid.

Here only the part of the grid the exposure needs is read. Drizzle's
bilinear blot reads pixels ``floor(x)`` and ``floor(x)+1`` (``floor(x)`` alone
on the grid's last column/row) for every mapped point with ``0 <= x < nx``,
after converting the pixel map to float32. :func:`blot_region_bounds` returns
the smallest grid box containing all of them; :func:`blot_median` subtracts
the box origin from the float32 pixel map. For a mapped point
``x0 <= x < 2**24`` the float32 difference ``x - x0`` (``x0`` an integer) is
exact: it is a multiple of the ulp of ``x`` and no larger than ``x``. Hence
the integer and fractional parts that drizzle's bilinear interpolation uses
are identical and the blot is bit-for-bit equal to the full-grid blot.
"""

from __future__ import annotations

import numpy as np
from drizzle.resample import blot_image

__all__ = ["blot_median", "blot_region_bounds"]


def _pixmap32(pixmap: np.ndarray) -> np.ndarray:
    pixmap = np.asarray(pixmap)
    if pixmap.ndim != 3 or pixmap.shape[2] != 2:
        raise ValueError("pixmap must have shape (ny, nx, 2)")
    # drizzle casts the (float64) pixmap to C float before using it; NaN -> -1
    # reproduces stcal's gwcs_blot (such pixels fall off the grid -> fillval).
    pm = pixmap.astype(np.float32)
    pm[np.isnan(pm)] = -1.0
    return pm


def blot_region_bounds(
    pixmap: np.ndarray, grid_shape: tuple[int, int]
) -> tuple[slice, slice] | None:
    """Part of the median grid that a blot onto one exposure reads.

    Parameters
    ----------
    pixmap : numpy.ndarray
        ``(ny_in, nx_in, 2)`` map from exposure pixels to grid pixels
        (``[..., 0]`` = x, ``[..., 1]`` = y, 0-based), as used for drizzling the
        exposure (``stcal.resample.utils.calc_pixmap(exposure_wcs, grid_wcs,
        exposure_shape)``).
    grid_shape : tuple of int
        ``(ny, nx)`` of the full median grid.

    Returns
    -------
    tuple of slice or None
        ``(yslice, xslice)`` of the grid to read, or None if no exposure pixel
        maps onto the grid (the blot is then all ``fillval``).
    """
    pm = _pixmap32(pixmap)
    ny, nx = grid_shape
    x = pm[..., 0]
    y = pm[..., 1]
    inside = (x >= 0) & (x < np.float32(nx)) & (y >= 0) & (y < np.float32(ny))
    if not inside.any():
        return None
    ix = x[inside].astype(np.int64)  # truncation == floor for x >= 0
    iy = y[inside].astype(np.int64)
    x0, x1 = int(ix.min()), min(int(ix.max()) + 1, nx - 1)
    y0, y1 = int(iy.min()), min(int(iy.max()) + 1, ny - 1)
    return slice(y0, y1 + 1), slice(x0, x1 + 1)


def blot_median(
    median_region: np.ndarray,
    region_offset: tuple[int, int],
    pixmap: np.ndarray,
    grid_shape: tuple[int, int],
    *,
    fillval: float = np.nan,
) -> np.ndarray:
    """Blot a region of the median grid onto an exposure's pixel grid.

    Equals ``stcal.outlier_detection.utils.gwcs_blot(median, median_wcs,
    exposure_shape, exposure_wcs, fillval=NaN)`` on the full median, bit for
    bit, provided the region contains :func:`blot_region_bounds`.

    Parameters
    ----------
    median_region : numpy.ndarray
        ``median[y0:y0+h, x0:x0+w]``, a part of the full median grid.
    region_offset : tuple of int
        ``(y0, x0)``, position of the region in the grid.
    pixmap : numpy.ndarray
        ``(ny_in, nx_in, 2)`` exposure -> full-grid pixel map (x, y), the one
        used to drizzle the exposure. NaN entries map nowhere.
    grid_shape : tuple of int
        ``(ny, nx)`` of the full grid; needed to reproduce the grid-edge
        behaviour and to check that the region is large enough.
    fillval : float, optional
        Value for exposure pixels mapping outside the grid (default NaN, as the
        official step).

    Returns
    -------
    numpy.ndarray
        ``(ny_in, nx_in)`` float32 blotted median.

    Raises
    ------
    ValueError
        If the region does not contain all grid pixels the blot needs.
    """
    pm = _pixmap32(pixmap)
    y0, x0 = (int(v) for v in region_offset)
    region = np.asarray(median_region, dtype=np.float32)
    out = np.full(pm.shape[:2], fillval, dtype=np.float32)
    need = blot_region_bounds(pm, grid_shape)
    if need is None:
        return out
    h, w = region.shape
    ys, xs = need
    if y0 < 0 or x0 < 0 or y0 + h > grid_shape[0] or x0 + w > grid_shape[1]:
        raise ValueError("median region extends beyond the grid")
    if not (y0 <= ys.start and ys.stop <= y0 + h and x0 <= xs.start and xs.stop <= x0 + w):
        raise ValueError(
            f"median region y[{y0}:{y0 + h}] x[{x0}:{x0 + w}] does not contain the "
            f"needed part y[{ys.start}:{ys.stop}] x[{xs.start}:{xs.stop}]"
        )
    ny, nx = grid_shape
    x = pm[..., 0]
    y = pm[..., 1]
    outside = ~((x >= 0) & (x < np.float32(nx)) & (y >= 0) & (y < np.float32(ny)))
    # Exact in float32 (integer offset, result no larger than the operand).
    local = np.empty_like(pm)
    local[..., 0] = x - np.float32(x0)
    local[..., 1] = y - np.float32(y0)
    # Points off the full grid must stay off the region (-1 -> fillval).
    local[outside] = -1.0
    blot_image(
        data=region,
        pixmap=local.astype(np.float64),
        out_img=out,
        fillval=fillval,
        iscale=1.0,
        interp="linear",
    )
    return out
