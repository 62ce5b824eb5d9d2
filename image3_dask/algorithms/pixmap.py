"""Pixel maps: where every input pixel lands on the output grid.

The pixel map of an exposure is computed ONCE and then cut into the small pieces each output
tile needs (:func:`pixmap_for_region`), for the single drizzle, the blot and the final drizzle
(the official pipeline recomputes it in each of them). The values are exactly those of
:func:`stcal.resample.utils.calc_pixmap` (``disable_bbox="to"``), including its sparse-grid
spline interpolation when ``stepsize > 1``, but the WCS objects are never modified (stcal
temporarily removes their bounding boxes, which is unsafe when threads share a WCS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CHECKED_STEPSIZE",
    "checked_pixmap",
    "exposure_pixmap",
    "pixmap_error",
    "pixmap_blocks",
    "input_range",
    "local_range",
    "pixmap_for_region",
    "scanner_maps_corners",
    "without_scanner_clip",
]


def _bbox_f(wcs) -> tuple | None:
    bb = getattr(wcs, "bounding_box", None)
    if bb is None:
        return None
    try:
        return bb.bounding_box(order="F")
    except AttributeError:
        return tuple(bb)


def _map(in_wcs, out_wcs, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # input WCS with its bounding box (NaN outside), output WCS without it (as calc_pixmap's
    # default disable_bbox="to")
    world = in_wcs(x, y, with_bounding_box=True, fill_value=np.nan)
    ox, oy = out_wcs.invert(*world, with_bounding_box=False)
    return np.asarray(ox, dtype=float), np.asarray(oy, dtype=float)


def _valid_box(in_wcs, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(xmin, xmax, ymin, ymax)``: the input pixels inside the WCS bounding box, inclusive."""
    bbox = _bbox_f(in_wcs)
    if bbox is None:
        return 0, shape[1] - 1, 0, shape[0] - 1
    (bx0, bx1), (by0, by1) = bbox
    return (
        max(0, int(math.ceil(bx0))),
        min(shape[1] - 1, int(math.floor(bx1))),
        max(0, int(math.ceil(by0))),
        min(shape[0] - 1, int(math.floor(by1))),
    )


def _sparse_nodes(lo: int, hi: int, stepsize: float) -> np.ndarray:
    """Nodes of the sparse grid along one axis, as stcal places them (>= 10 unless fewer pixels)."""
    n = hi - lo + 1
    return np.linspace(lo, hi, max(int(math.ceil(n / stepsize)), min(10, n)))


def exposure_pixmap(
    in_wcs, out_wcs, in_shape: Sequence[int], stepsize: float = 1, order: int = 1
) -> np.ndarray:
    """Output-grid coordinates of every input pixel centre.

    Parameters
    ----------
    in_wcs : gwcs.WCS
        WCS of the exposure (its bounding box is honoured: NaN outside).
    out_wcs : gwcs.WCS
        WCS of the output grid (its bounding box is ignored).
    in_shape : (int, int)
        ``(ny, nx)`` of the exposure.
    stepsize : float, optional
        If > 1, evaluate the WCS on a sparse grid (at most ``stepsize`` pixels apart, at
        least 10 points a side) inside the input bounding box and interpolate with a spline,
        as stcal does; falls back to the full computation when a sparse point is not finite.
    order : {1, 3}, optional
        Spline order for ``stepsize > 1``.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx, 2)`` float64: ``[..., 0]`` output x, ``[..., 1]`` output y (0-based).
    """
    from scipy import interpolate

    shape = (int(in_shape[0]), int(in_shape[1]))
    xmin, xmax, ymin, ymax = _valid_box(in_wcs, shape)

    def full() -> tuple[np.ndarray, np.ndarray]:
        y, x = np.indices(shape, dtype=np.float64)
        return _map(in_wcs, out_wcs, x, y)

    if stepsize <= 1 or max(xmax - xmin + 1, ymax - ymin + 1) <= 10:
        x, y = full()
    else:
        if order not in (1, 3):
            raise ValueError("Interpolation order should be either 1 or 3.")
        xc = _sparse_nodes(xmin, xmax, stepsize)
        yc = _sparse_nodes(ymin, ymax, stepsize)
        gx, gy = np.meshgrid(xc, yc)
        cx, cy = _map(in_wcs, out_wcs, gx, gy)
        if np.all(np.isfinite(cx)) and np.all(np.isfinite(cy)):
            y_in, x_in = np.arange(ymin, ymax + 1), np.arange(xmin, xmax + 1)
            fx = interpolate.RectBivariateSpline(yc, xc, cx, kx=order, ky=order)
            fy = interpolate.RectBivariateSpline(yc, xc, cy, kx=order, ky=order)
            xs = fx(y_in, x_in)
            ys = fy(y_in, x_in)
            if (xmin, ymin, xmax, ymax) == (0, 0, shape[1] - 1, shape[0] - 1):
                x, y = xs, ys
            else:
                x = np.full(shape, np.nan)
                y = np.full(shape, np.nan)
                x[ymin : ymax + 1, xmin : xmax + 1] = xs
                y[ymin : ymax + 1, xmin : xmax + 1] = ys
        else:
            x, y = full()
    return np.dstack([x, y])


def pixmap_error(pixmap: np.ndarray, in_wcs, out_wcs, stepsize: float) -> float:
    """Largest distance between ``pixmap`` and the exact WCS where interpolation is weakest.

    The exact WCS is evaluated at the pixel nearest the centre of every cell of the sparse
    grid of :func:`exposure_pixmap` (``stepsize``), and at the middle of every cell side on
    the border of the valid region, where a spline is least constrained; the nodes themselves
    are exact by construction.

    Parameters
    ----------
    pixmap : numpy.ndarray
        ``(ny, nx, 2)`` map to check.
    in_wcs, out_wcs : gwcs.WCS
        The WCS pair the map was made for.
    stepsize : float
        Spacing of the sparse grid the map was interpolated from.

    Returns
    -------
    float
        Largest distance in output pixels; ``inf`` where the map is not finite at a checked
        point where the WCS is, or the reverse.
    """
    shape = pixmap.shape[:2]
    xmin, xmax, ymin, ymax = _valid_box(in_wcs, shape)
    xc = _sparse_nodes(xmin, xmax, stepsize)
    yc = _sparse_nodes(ymin, ymax, stepsize)
    xm = np.unique(np.rint(0.5 * (xc[1:] + xc[:-1])).astype(int))
    ym = np.unique(np.rint(0.5 * (yc[1:] + yc[:-1])).astype(int))
    gx, gy = np.meshgrid(xm, ym)
    px = np.concatenate([gx.ravel(), xm, xm, np.full(ym.size, xmin), np.full(ym.size, xmax)])
    py = np.concatenate([gy.ravel(), np.full(xm.size, ymin), np.full(xm.size, ymax), ym, ym])
    ex, ey = _map(in_wcs, out_wcs, px.astype(float), py.astype(float))
    mx, my = pixmap[py, px, 0], pixmap[py, px, 1]
    with np.errstate(invalid="ignore"):
        d = np.hypot(mx - ex, my - ey)
    if not np.array_equal(np.isfinite(d), np.isfinite(ex) & np.isfinite(ey)):
        return math.inf
    return float(np.nanmax(d)) if np.isfinite(d).any() else 0.0


#: Spacing (input pixels) of the sparse grid of :func:`checked_pixmap`.
CHECKED_STEPSIZE = 16


def checked_pixmap(
    in_wcs, out_wcs, in_shape: Sequence[int], max_error: float
) -> tuple[np.ndarray, float | None]:
    """A pixel map interpolated from a sparse grid, used only when it is checked to be accurate.

    A cubic spline through the WCS every :data:`CHECKED_STEPSIZE` pixels costs a few percent
    of evaluating the WCS at every pixel. The result is compared with the exact WCS by
    :func:`pixmap_error`; when it is off by more than ``max_error`` output pixels anywhere
    checked, the exact map is computed instead.

    Parameters
    ----------
    in_wcs, out_wcs, in_shape
        As :func:`exposure_pixmap`.
    max_error : float
        Largest error accepted, in output pixels; ``<= 0`` computes the exact map directly.

    Returns
    -------
    pixmap : numpy.ndarray
        ``(ny, nx, 2)``, as :func:`exposure_pixmap`.
    error : float or None
        Error measured on the interpolated map (also when it was rejected); `None` when the
        exact map was computed without trying.
    """
    if max_error <= 0:
        return exposure_pixmap(in_wcs, out_wcs, in_shape), None
    pm = exposure_pixmap(in_wcs, out_wcs, in_shape, stepsize=CHECKED_STEPSIZE, order=3)
    err = pixmap_error(pm, in_wcs, out_wcs, CHECKED_STEPSIZE)
    if err > max_error:
        return exposure_pixmap(in_wcs, out_wcs, in_shape), err
    return pm, err


def input_range(in_shape: Sequence[int], bbox=None) -> tuple[int, int, int, int]:
    """Range of input pixels drizzle may use, as stcal's ``resample_range``.

    Parameters
    ----------
    in_shape : (int, int)
        ``(ny, nx)`` of the exposure.
    bbox : ((float, float), (float, float)) or None
        ``((xlo, xhi), (ylo, yhi))`` bounding box of the exposure WCS.

    Returns
    -------
    (int, int, int, int)
        ``(xmin, xmax, ymin, ymax)``, inclusive, 0-based.
    """
    ny, nx = int(in_shape[0]), int(in_shape[1])
    if bbox is None:
        return 0, max(nx - 1, 0), 0, max(ny - 1, 0)
    try:
        bbox = bbox.bounding_box(order="F")
    except AttributeError:
        pass
    (x1, x2), (y1, y2) = bbox
    xmin = max(0, int(x1 + 0.5))
    ymin = max(0, int(y1 + 0.5))
    xmax = max(xmin, min(nx - 1, int(x2 + 0.5)))
    ymax = max(ymin, min(ny - 1, int(y2 + 0.5)))
    return xmin, xmax, ymin, ymax


def local_range(
    rng: tuple[int, int, int, int], slices: tuple[slice, slice]
) -> tuple[int, int, int, int] | None:
    """Translate an :func:`input_range` into the coordinates of an input crop.

    Parameters
    ----------
    rng : (int, int, int, int)
        ``(xmin, xmax, ymin, ymax)`` in full-exposure pixels.
    slices : (slice, slice)
        The ``(y, x)`` crop returned by :func:`pixmap_for_region`.

    Returns
    -------
    (int, int, int, int) or None
        The range inside the crop, or `None` when the crop lies outside it.
    """
    sy, sx = slices
    xmin, xmax, ymin, ymax = rng
    lx0, lx1 = max(xmin, sx.start) - sx.start, min(xmax, sx.stop - 1) - sx.start
    ly0, ly1 = max(ymin, sy.start) - sy.start, min(ymax, sy.stop - 1) - sy.start
    if lx1 < lx0 or ly1 < ly0:
        return None
    return lx0, lx1, ly0, ly1


#: Side of the input-pixel blocks summarised by :func:`pixmap_blocks`.
BLOCK = 32


def pixmap_blocks(pixmap: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Bounds of the mapped pixel centres in each ``block x block`` block of input pixels.

    Parameters
    ----------
    pixmap : numpy.ndarray
        ``(ny, nx, 2)`` map of the whole exposure.
    block : int, optional
        Block side in input pixels (the last row and column of blocks may be smaller).

    Returns
    -------
    numpy.ndarray
        ``(ceil(ny / block), ceil(nx / block), 4)``: ``xmin, xmax, ymin, ymax`` of the finite
        mapped centres of each block (pixels where x or y is NaN are left out, as
        :func:`pixmap_for_region` never selects them); NaN for a block without any.
    """
    ny, nx = pixmap.shape[:2]
    nby, nbx = -(-ny // block), -(-nx // block)
    out = np.empty((nby, nbx, 4))
    for axis in (0, 1):
        coord = np.full((nby * block, nbx * block), np.nan)
        coord[:ny, :nx] = pixmap[..., axis]
        coord[:ny, :nx][np.isnan(pixmap[..., 1 - axis])] = np.nan
        cells = coord.reshape(nby, block, nbx, block)
        # fmin/fmax skip NaN; a block of NaN only stays NaN
        out[..., 2 * axis] = np.fmin.reduce(np.fmin.reduce(cells, axis=3), axis=1)
        out[..., 2 * axis + 1] = np.fmax.reduce(np.fmax.reduce(cells, axis=3), axis=1)
    return out


def pixmap_for_region(
    pixmap: np.ndarray,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    halo: float,
    margin: int = 2,
    blocks: np.ndarray | None = None,
    block: int = BLOCK,
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Crop a pixel map to the input pixels that can touch an output region.

    An input pixel is kept when its mapped centre lies within ``halo`` output pixels of the
    region ``[y0, y1) x [x0, x1)``; the crop is the bounding rectangle of those pixels plus
    ``margin`` input pixels (drizzle interpolates the map between neighbouring pixels to find
    pixel corners, so the neighbours of edge pixels must be present too).

    Parameters
    ----------
    pixmap : numpy.ndarray
        ``(ny, nx, 2)`` map of the whole exposure (:func:`exposure_pixmap`).
    y0, y1, x0, x1 : int
        Output region (half-open), in output-grid pixels.
    halo : float
        Reach of one input pixel on the output grid (kernel size plus pixel size), in output
        pixels; see :func:`image3_dask.algorithms.drizzle_tile.kernel_halo`.
    margin : int, optional
        Extra input pixels around the selection.
    blocks : numpy.ndarray, optional
        :func:`pixmap_blocks` of ``pixmap``: only the blocks whose bounds reach the region
        are tested pixel by pixel (the result is the same; an exposure's blocks are made
        once for all the tiles it reaches).
    block : int, optional
        The block side ``blocks`` were made with.

    Returns
    -------
    ((slice, slice), numpy.ndarray) or None
        The ``(y, x)`` input slices and the cropped map shifted so that output pixel
        ``(y0, x0)`` is ``(0, 0)``; `None` when no input pixel reaches the region.
    """
    lo_x, hi_x = x0 - 0.5 - halo, x1 - 0.5 + halo
    lo_y, hi_y = y0 - 0.5 - halo, y1 - 0.5 + halo
    ny, nx = pixmap.shape[:2]
    wy0, wx0, window = 0, 0, pixmap
    if blocks is not None:
        with np.errstate(invalid="ignore"):
            cand = (
                (blocks[..., 1] >= lo_x)
                & (blocks[..., 0] <= hi_x)
                & (blocks[..., 3] >= lo_y)
                & (blocks[..., 2] <= hi_y)
            )
        brows = np.flatnonzero(cand.any(axis=1))
        if brows.size == 0:
            return None
        bcols = np.flatnonzero(cand.any(axis=0))
        wy0, wx0 = int(brows[0]) * block, int(bcols[0]) * block
        window = pixmap[wy0 : (int(brows[-1]) + 1) * block, wx0 : (int(bcols[-1]) + 1) * block]
    px = window[..., 0]
    py = window[..., 1]
    with np.errstate(invalid="ignore"):
        sel = (px >= lo_x) & (px <= hi_x) & (py >= lo_y) & (py <= hi_y)
    rows = np.flatnonzero(sel.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(sel[rows[0] : rows[-1] + 1].any(axis=0))
    iy0 = max(0, wy0 + int(rows[0]) - margin)
    iy1 = min(ny, wy0 + int(rows[-1]) + 1 + margin)
    ix0 = max(0, wx0 + int(cols[0]) - margin)
    ix1 = min(nx, wx0 + int(cols[-1]) + 1 + margin)
    slices = (slice(iy0, iy1), slice(ix0, ix1))
    local = pixmap[slices].copy()
    local[..., 0] -= x0
    local[..., 1] -= y0
    return slices, local


def _maps_point(pixmap: np.ndarray, x: float, y: float) -> bool:
    # drizzle's interpolate_point: bilinear on the 2x2 block at (int(x), int(y)), clamped to
    # [0, n - 2] (extrapolation at the edges); NaN when any of the 4 values is NaN
    ny, nx = pixmap.shape[:2]
    i0 = min(max(int(x), 0), nx - 2)
    j0 = min(max(int(y), 0), ny - 2)
    return bool(np.isfinite(pixmap[j0 : j0 + 2, i0 : i0 + 2]).all())


def scanner_maps_corners(pixmap: np.ndarray, rng: tuple[int, int, int, int]) -> bool:
    """Whether drizzle maps the four corners of the input range ``rng`` through ``pixmap``.

    drizzle (``init_image_scanner``) maps the corners of the input range to the output frame
    to find the input pixels lying entirely inside the output array, and drops the others
    (pixels straddling an output edge). When a corner maps to NaN (the pixel map is NaN next
    to the WCS bounding box) it scans every pixel of the range instead and clips each one to
    the output array, so pixels straddling an output edge contribute their inner part.
    """
    xmin, xmax, ymin, ymax = rng
    return all(
        _maps_point(pixmap, x, y)
        for x in (xmin - 0.5, xmax + 0.5)
        for y in (ymin - 0.5, ymax + 0.5)
    )


def without_scanner_clip(
    local: np.ndarray,
    rng: tuple[int, int, int, int],
    slices: tuple[slice, slice],
    full_shape: Sequence[int],
) -> tuple[int, int, int, int]:
    """Make drizzle's corner mapping fail on a crop, as it fails on the whole exposure.

    Sets the outer column (or row) of the crop ``local`` to NaN, on a side where
    :func:`pixmap_for_region` cut the crop inside the exposure (its two outer columns are
    then margin pixels, which reach no output pixel of the region), and returns the range
    without it. ``local`` is modified in place.
    """
    xmin, xmax, ymin, ymax = rng
    ny, nx = local.shape[:2]
    sy, sx = slices
    if sx.start > 0 and xmin == 0 and nx > 2:
        local[:, 0] = np.nan
        return (1, xmax, ymin, ymax)
    if sx.stop < full_shape[1] and xmax == nx - 1 and nx > 2:
        local[:, -1] = np.nan
        return (xmin, nx - 2, ymin, ymax)
    if sy.start > 0 and ymin == 0 and ny > 2:
        local[0] = np.nan
        return (xmin, xmax, 1, ymax)
    if sy.stop < full_shape[0] and ymax == ny - 1 and ny > 2:
        local[-1] = np.nan
        return (xmin, xmax, ymin, ny - 2)
    return rng
