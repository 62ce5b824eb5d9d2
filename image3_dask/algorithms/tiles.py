"""Tiling of the output mosaic: every tile is one task of the resample graph."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Tile",
    "auto_tile_shape",
    "footprint_bbox",
    "overlapping",
    "plan_tiles",
]


@dataclass(frozen=True)
class Tile:
    """A rectangle ``[y0, y1) x [x0, x1)`` of the output grid.

    Attributes
    ----------
    iy, ix : int
        Row and column of the tile in the tile layout.
    y0, y1, x0, x1 : int
        Half-open pixel limits on the output grid.
    """

    iy: int
    ix: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def name(self) -> str:
        """Tile name such as ``"r003c007"`` (used in task keys and store paths)."""
        return f"r{self.iy:03d}c{self.ix:03d}"

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the tile."""
        return (self.y1 - self.y0, self.x1 - self.x0)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(y, x)`` slices of the tile in the mosaic."""
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))

    def padded(self, halo: int, grid_shape: Sequence[int]) -> tuple[int, int, int, int]:
        """The tile grown by ``halo`` pixels on each side, clipped to the mosaic.

        Drizzling onto this larger region and keeping the tile (:meth:`crop_in`) gives the
        same tile as a full-frame drizzle: drizzle ignores input pixels that do not lie
        entirely inside its output array, so the margin must hold every input pixel that
        reaches the tile; at the mosaic edges the region stops where the mosaic stops, as in
        the full-frame drizzle.

        Parameters
        ----------
        halo : int
            Margin in output pixels.
        grid_shape : (int, int)
            ``(ny, nx)`` of the mosaic.

        Returns
        -------
        (int, int, int, int)
            ``(y0, y1, x0, x1)`` of the padded region (half-open).
        """
        h = int(math.ceil(halo))
        return (
            max(0, self.y0 - h),
            min(int(grid_shape[0]), self.y1 + h),
            max(0, self.x0 - h),
            min(int(grid_shape[1]), self.x1 + h),
        )

    def crop_in(self, region: Sequence[int]) -> tuple[slice, slice]:
        """Slices selecting this tile inside an array covering ``region``.

        Parameters
        ----------
        region : (int, int, int, int)
            ``(y0, y1, x0, x1)`` of the enclosing array (e.g. from :meth:`padded`).

        Returns
        -------
        (slice, slice)
            ``(y, x)`` slices.
        """
        ry0, _, rx0, _ = region
        return (
            slice(self.y0 - ry0, self.y1 - ry0),
            slice(self.x0 - rx0, self.x1 - rx0),
        )


def plan_tiles(shape: Sequence[int], tile_shape: Sequence[int]) -> list[Tile]:
    """Cut a grid into tiles of at most ``tile_shape`` (the last row/column may be smaller).

    Parameters
    ----------
    shape : (int, int)
        ``(ny, nx)`` of the mosaic.
    tile_shape : (int, int)
        ``(ty, tx)`` of a tile.

    Returns
    -------
    list of Tile
        Row-major list of tiles covering the grid exactly once.
    """
    ny, nx = int(shape[0]), int(shape[1])
    ty, tx = int(tile_shape[0]), int(tile_shape[1])
    if ty < 1 or tx < 1:
        raise ValueError("tile_shape must be positive.")
    tiles = []
    for iy, y0 in enumerate(range(0, ny, ty)):
        for ix, x0 in enumerate(range(0, nx, tx)):
            tiles.append(Tile(iy, ix, y0, min(y0 + ty, ny), x0, min(x0 + tx, nx)))
    return tiles


# bytes per output pixel: SCI, WHT, ERR, 3 VAR (float32) + per-variance running sums and
# weights (2 x 3 float32) + one temporary drizzle (img + wht float32, float64 weight)
_OUT_BYTES = 6 * 4 + 6 * 4 + 2 * 4 + 8
# bytes per input pixel in a crop: SCI, 3 VAR, weight (float32), DQ (uint32), pixmap (2 f64)
_IN_BYTES = 5 * 4 + 4 + 16


def auto_tile_shape(
    memory_limit_bytes: int,
    grid_shape: Sequence[int],
    n_overlapping_estimate: int,
    *,
    halo: int = 4,
    pixel_scale_ratio: float = 1.0,
    n_ctx_planes: int = 1,
    safety: float = 0.5,
    multiple: int = 64,
    min_tile: int = 64,
    max_tile: int = 8192,
) -> tuple[int, int]:
    """Choose a square tile size that fits a worker's memory.

    Parameters
    ----------
    memory_limit_bytes : int
        Memory of one worker thread (worker memory / threads per worker).
    grid_shape : (int, int)
        ``(ny, nx)`` of the mosaic (a tile is never larger than the grid).
    n_overlapping_estimate : int
        Expected number of exposures overlapping one tile (e.g. the maximum depth).
    halo : int, optional
        Padding of the drizzled region.
    pixel_scale_ratio : float, optional
        Output over input pixel scale.
    n_ctx_planes : int, optional
        Number of context planes (``(n_inputs - 1) // 32 + 1``).
    safety : float, optional
        Fraction of ``memory_limit_bytes`` the task may use.
    multiple : int, optional
        Tile sides are rounded down to a multiple of this (when larger than it).
    min_tile, max_tile : int, optional
        Limits of the tile side.

    Returns
    -------
    (int, int)
        ``(ty, tx)``.
    """
    budget = safety * float(memory_limit_bytes)
    per_px = (_OUT_BYTES + 4 * n_ctx_planes) + n_overlapping_estimate * _IN_BYTES / max(
        pixel_scale_ratio, 1e-3
    ) ** 2
    side = int(math.sqrt(max(budget, 0.0) / per_px)) - 2 * halo
    if side > multiple:
        side -= side % multiple
    side = max(min_tile, min(max_tile, side))
    return (min(side, int(grid_shape[0])), min(side, int(grid_shape[1])))


def footprint_bbox(
    in_wcs, in_shape: Sequence[int], grid_wcs, *, step: int = 16
) -> tuple[float, float, float, float]:
    """Bounding box of an exposure on the output grid, from points along its edges.

    Parameters
    ----------
    in_wcs : gwcs.WCS
        Exposure WCS.
    in_shape : (int, int)
        ``(ny, nx)`` of the exposure.
    grid_wcs : gwcs.WCS
        Output grid WCS.
    step : int, optional
        Spacing in input pixels of the edge points (corners always included).

    Returns
    -------
    (float, float, float, float)
        ``(xmin, xmax, ymin, ymax)`` in output pixel coordinates (pixel edges of the input
        mapped; not clipped to the grid). NaN when no edge point maps.
    """
    ny, nx = int(in_shape[0]), int(in_shape[1])
    xs = np.unique(np.r_[np.arange(-0.5, nx - 0.5, step), nx - 0.5])
    ys = np.unique(np.r_[np.arange(-0.5, ny - 0.5, step), ny - 0.5])
    ex = np.r_[xs, xs, np.full(ys.size, -0.5), np.full(ys.size, nx - 0.5)]
    ey = np.r_[np.full(xs.size, -0.5), np.full(xs.size, ny - 0.5), ys, ys]
    world = in_wcs(ex, ey, with_bounding_box=False)
    ox, oy = grid_wcs.invert(*world[:2], with_bounding_box=False)
    ox = np.asarray(ox, dtype=float)
    oy = np.asarray(oy, dtype=float)
    if not np.any(np.isfinite(ox) & np.isfinite(oy)):
        return (np.nan, np.nan, np.nan, np.nan)
    return (
        float(np.nanmin(ox)),
        float(np.nanmax(ox)),
        float(np.nanmin(oy)),
        float(np.nanmax(oy)),
    )


def overlapping(bbox: Sequence[float], tile: Tile, halo: float = 0.0) -> bool:
    """Whether an exposure's output bounding box reaches a tile (grown by ``halo``).

    Parameters
    ----------
    bbox : (float, float, float, float)
        ``(xmin, xmax, ymin, ymax)`` from :func:`footprint_bbox`.
    tile : Tile
        The tile.
    halo : float, optional
        Margin in output pixels (kernel reach).

    Returns
    -------
    bool
        `True` when the rectangles intersect.
    """
    xmin, xmax, ymin, ymax = bbox
    if not np.all(np.isfinite([xmin, xmax, ymin, ymax])):
        return False
    return not (
        xmax < tile.x0 - 0.5 - halo
        or xmin > tile.x1 - 0.5 + halo
        or ymax < tile.y0 - 0.5 - halo
        or ymin > tile.y1 - 0.5 + halo
    )
