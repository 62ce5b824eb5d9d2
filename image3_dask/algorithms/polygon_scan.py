"""The pixels of a polygon, as ``gwcs.region.Polygon.scan`` marks them, with numpy.

stcal's skymatch (and so jwst's) rasterises each overlap polygon with
``gwcs.region.Polygon(rid, vertices).scan(mask)``, a scan-line fill written in pure Python that
builds an edge object per scan line and edge: about 30 ms for one overlap on a 1024 x 1032
MIRI frame. The sky statistics of an exposure need one scan per neighbour, so on a 16-exposure
dither the scans cost about 0.5 s of each exposure's 1.2 s statistics task.

:func:`scan_polygon` marks the same pixels, bit for bit (the tests compare the two on
thousands of random polygons), about 6 times faster:

- vertices are rounded to integers after the same shift of the bounding box's corner to
  non-negative coordinates, and shifted back with the rounded shift;
- an edge is active on the scan lines ``ymin <= y < ymax``, except on the polygon's last
  scan line, where the edges active on the line before it are kept (gwcs does not update its
  active edge table there); horizontal edges are never active;
- the crossing of an edge with scan line ``y`` is evaluated with the same floating-point
  operations as gwcs's ``Edge.intersection`` and rounded up;
- the sorted crossings are filled pairwise, ``[x0, x1]`` inclusive, clipped as gwcs clips
  them (with Python's slice semantics).
"""

from __future__ import annotations

import numpy as np

__all__ = ["scan_polygon"]


def scan_polygon(vertices: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Set to True the pixels of ``mask`` inside a polygon (``gwcs.region.Polygon.scan``).

    Parameters
    ----------
    vertices : array-like
        ``(N, 2)`` pixel coordinates ``(x, y)`` of the polygon's vertices, the last equal to the
        first (N >= 4), as ``gwcs.region.Polygon`` takes them.
    mask : numpy.ndarray
        2D boolean array, modified in place.

    Returns
    -------
    numpy.ndarray
        ``mask``.
    """
    v = np.asarray(vertices, dtype=float)
    if v.ndim != 2 or v.shape[1] != 2 or len(v) < 4:
        raise ValueError("Expected vertices to be a list of minimum 4 tuples (x,y)")
    if not np.isfinite(v).all():
        raise ValueError("polygon vertices must be finite")
    ny, nx = mask.shape
    shiftx = min(0.0, float(v[:, 0].min()))
    shifty = min(0.0, float(v[:, 1].min()))
    iv = np.rint(np.column_stack([v[:, 0] - shiftx, v[:, 1] - shifty])).astype(np.int64)
    sx, sy = int(round(shiftx)), int(round(shifty))
    bx, by = int(iv[:, 0].min()), int(iv[:, 1].min())
    bw = int(iv[:, 0].max()) - bx
    top = int(iv[:, 1].max())
    if bw <= 0 or top <= by:
        return mask
    start, stop = iv[:-1], iv[1:]
    keep = start[:, 1] != stop[:, 1]
    start, stop = start[keep], stop[keep]
    if len(start) == 0:
        return mask
    ymin = np.minimum(start[:, 1], stop[:, 1])
    ymax = np.maximum(start[:, 1], stop[:, 1])
    ys = np.arange(by, top + 1, dtype=np.int64)[:, None]
    active = (ymin <= ys) & (ys < ymax)
    active[-1] = (ymin < top) & (ymax == top)  # the last line keeps the line before's edges
    # Edge.intersection(scan_line): u = stop - start, v = (bw, 0), w = start - (bx, y)
    u0 = stop[:, 0] - start[:, 0]
    u1 = stop[:, 1] - start[:, 1]
    d = u0 * 0 - u1 * bw
    num = bw * (start[:, 1] - ys) - 0 * (start[:, 0] - bx)
    x = num / d * u0 + start[:, 0]
    xc = np.where(active, np.ceil(x), np.inf)
    xc.sort(axis=1)
    count = active.sum(axis=1)
    rows = ys[:, 0] + sy
    # pairs (crossing 2k, crossing 2k + 1) of each scan line inside the image
    npair = np.where((rows >= 0) & (rows < ny), count // 2, 0)
    k = np.arange(xc.shape[1] // 2)
    take = k[None, :] < npair[:, None]
    r = np.broadcast_to(rows[:, None], take.shape)[take]
    lo = xc[:, 0 : 2 * len(k) : 2][take].astype(np.int64) + sx
    hi = xc[:, 1 : 2 * len(k) : 2][take].astype(np.int64) + sx
    # data[y][max(0, lo) : min(hi, nx - 1) + 1], with Python's slice semantics as in gwcs
    for y, a, b in zip(r.tolist(), lo.tolist(), hi.tolist(), strict=True):
        mask[y, max(0, a) : min(b, nx - 1) + 1] = True
    return mask
