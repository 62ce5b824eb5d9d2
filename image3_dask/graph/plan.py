"""Planning shared by outlier detection and resample: output grid, tiles, pixel maps.

The pixel map of every exposure onto the output grid is computed once, by one task per
exposure, saved beside the work store, and read (memory-mapped, cropped) by every task that
needs it: the single drizzles, the blot and the final drizzle. The official pipeline evaluates
the gwcs of every pixel two to three times instead.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from image3_dask.algorithms.drizzle_tile import kernel_halo, n_ctx_planes
from image3_dask.algorithms.grid import (
    OutputGrid,
    compute_output_grid,
    grid_from_wcs,
    pixel_scale_ratio_from_area,
)
from image3_dask.algorithms.pixmap import checked_pixmap, exposure_pixmap
from image3_dask.algorithms.tiles import (
    Tile,
    auto_tile_shape,
    overlapping,
    plan_tiles,
)
from image3_dask.graph.tasks import TaskSpec, with_wcs
from image3_dask.io.exposures import ExposureInfo
from image3_dask.io.mosaic_store import atomic_write_text, fingerprint
from image3_dask.io.storage import stat_token
from image3_dask.io.wcs_files import load_output_wcs
from image3_dask.io.work_files import save_npy

log = logging.getLogger("image3_dask")

__all__ = [
    "GridInfo",
    "MosaicPlan",
    "PixmapRef",
    "make_plan",
    "output_grid",
    "start_pixmaps",
    "total_threads",
    "exposure_fingerprint",
    "wcs_fingerprint",
    "worker_memory",
]


@dataclass(frozen=True)
class PixmapRef:
    """Where an exposure's pixel map is stored and what part of the grid it covers."""

    index: int
    path: Path
    bbox: tuple[float, float, float, float] | None  # xmin, xmax, ymin, ymax (output pixels)


@dataclass(frozen=True)
class GridInfo:
    """What a tile task needs of the output grid."""

    halo: int
    grid_shape: tuple[int, int]
    pixel_scale_ratio: float


@dataclass
class MosaicPlan:
    """Output grid, tiles, and which exposures reach which tile."""

    grid: OutputGrid
    tiles: list[Tile]
    halo: int
    pixmaps: dict[int, PixmapRef]
    overlaps: dict[str, list[int]] = field(default_factory=dict)
    grid_fp: str = ""

    @property
    def info(self) -> GridInfo:
        """Halo, shape and pixel scale ratio, for the tile tasks."""
        return GridInfo(self.halo, tuple(self.grid.shape), self.grid.pixel_scale_ratio or 1.0)

    def tiles_reached(self, bbox, margin: float = 0.0) -> list[Tile]:
        """The tiles that an exposure whose pixel map spans ``bbox`` reaches (halo + margin)."""
        if bbox is None:
            return []
        return [t for t in self.tiles if overlapping(bbox, t, self.halo + margin)]

    @property
    def tile_shape(self) -> tuple[int, int]:
        """Shape of a full tile (the chunk shape of the stores)."""
        t = self.tiles[0]
        return (t.y1 - t.y0, t.x1 - t.x0)


#: ``id(wcs)`` -> (wcs, shape, fingerprint): the WCS objects of a run are fingerprinted once.
_FINGERPRINTS: dict[int, tuple] = {}


def wcs_fingerprint(wcs, shape: tuple[int, int]) -> str:
    """Fingerprint of a WCS from its world coordinates at 9 points (full precision).

    Remembered per WCS object (WCS objects are not modified once made), so that the plans
    and tile fingerprints of every step do not evaluate it again.
    """
    known = _FINGERPRINTS.get(id(wcs))
    if known is not None and known[0] is wcs and known[1] == tuple(shape):
        return known[2]
    ny, nx = shape
    xs = np.array([0, nx / 2, nx - 1] * 3, float)
    ys = np.repeat([0, ny / 2, ny - 1], 3).astype(float)
    ra, dec = wcs(xs, ys)
    fp = hashlib.sha256(np.concatenate([ra, dec]).astype(np.float64).tobytes()).hexdigest()[:24]
    if len(_FINGERPRINTS) > 4096:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[id(wcs)] = (wcs, tuple(shape), fp)
    return fp


def exposure_fingerprint(e: ExposureInfo) -> list:
    """What a task reading exposure ``e`` depends on, for the resume manifests.

    The pixels are identified by ``e.content_fp`` when the file is a product of this run's
    earlier steps (a ``_crf`` file is identified by what made it, so rewriting it with the same
    content does not invalidate later tiles), else by the file's path, size and modification
    time. The WCS (after tweakreg) and the sky level (after skymatch) are part of it.
    """
    if e.content_fp is not None:
        content: list = ["made-from", e.content_fp]
    else:
        try:
            content = [str(e.path), *stat_token(e.path)]
        except OSError:
            content = [str(e.path), None, None]
    return [
        e.name,
        content,
        wcs_fingerprint(e.wcs, e.shape),
        e.background_level,
        e.background_subtracted,
    ]


def output_grid(exposures: list[ExposureInfo], params: dict) -> OutputGrid:
    """The output grid for resample-like ``params`` (jwst parameter names), checked for size."""
    names = [e.name for e in exposures]
    max_pixels = params.get("max_output_pixels")
    if params.get("output_wcs"):
        wcs, extra = load_output_wcs(params["output_wcs"])
        shape = params.get("output_shape")
        grid = grid_from_wcs(
            wcs,
            shape=(shape[1], shape[0]) if shape else None,
            pixel_scale=extra.get("pixel_scale"),
        )
        if grid.pixel_scale_ratio is None and exposures[0].meta.get("pixelarea_steradians"):
            from dataclasses import replace

            grid = replace(
                grid,
                pixel_scale_ratio=pixel_scale_ratio_from_area(
                    grid.pixel_scale, exposures[0].meta["pixelarea_steradians"]
                ),
            )
        return grid
    sregions = [e.meta.get("s_region") for e in exposures]
    shape = params.get("output_shape")
    return compute_output_grid(
        [e.wcs for e in exposures],
        [e.shape for e in exposures],
        ref_wcsinfo=exposures[0].wcsinfo or None,
        sregions=sregions if all(sregions) else None,
        pixel_scale_ratio=params.get("pixel_scale_ratio", 1.0) or 1.0,
        pixel_scale=params.get("pixel_scale"),
        rotation=params.get("rotation"),
        crpix=params.get("crpix"),
        crval=params.get("crval"),
        output_shape=(shape[1], shape[0]) if shape else None,
        names=names,
        max_pixels=max_pixels,
    )


def _compute_pixmap(
    info: ExposureInfo, grid_wcs, path: Path, stepsize: float, order: int, max_error: float
):
    """Task: compute and save an exposure's pixel map; return its output bounding box.

    ``stepsize > 1`` is jwst's unchecked sparse-grid spline; otherwise the map is interpolated
    from a sparse grid when :func:`checked_pixmap` finds it within ``max_error`` output pixels
    of the exact WCS, and evaluated at every pixel (as jwst's default) when not or when
    ``max_error`` is 0.
    """
    if stepsize > 1:
        pm = exposure_pixmap(info.wcs, grid_wcs, info.shape, stepsize=stepsize, order=order)
    else:
        pm, err = checked_pixmap(info.wcs, grid_wcs, info.shape, max_error)
        if err is not None and err > max_error:
            log.info(
                "%s: interpolated pixel map off by %.3g px (> %g); WCS evaluated at every pixel",
                info.name,
                err,
                max_error,
            )
    save_npy(path, pm)
    return _bbox_of(pm)


def _bbox_of(pm: np.ndarray):
    x = pm[..., 0]
    y = pm[..., 1]
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    return (float(x[ok].min()), float(x[ok].max()), float(y[ok].min()), float(y[ok].max()))


def _max_error(params: dict) -> float:
    """``pixmap_max_error`` (0 when unset or None: exact maps)."""
    return float(params.get("pixmap_max_error") or 0.0)


def worker_memory(client) -> int | None:
    """Smallest memory limit per worker thread of the cluster (bytes); None when unlimited."""
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
    except TypeError:  # older distributed
        workers = client.scheduler_info()["workers"].values()
    limits = [w.get("memory_limit") or 0 for w in workers]
    threads = [max(1, w.get("nthreads", 1)) for w in workers]
    per_thread = [m // t for m, t in zip(limits, threads, strict=True) if m]
    return min(per_thread) if per_thread else None


@dataclass(frozen=True)
class _PixmapTasks:
    """Pixel-map tasks submitted for a grid, not yet collected."""

    grid: OutputGrid
    grid_fp: str
    paths: list[Path]
    futures: list


def _plan_key(exposures: list[ExposureInfo], params: dict, grid_fp: str) -> tuple:
    return (
        grid_fp,
        tuple(wcs_fingerprint(e.wcs, e.shape) for e in exposures),
        params.get("pixmap_stepsize", 1.0),
        params.get("pixmap_order", 1),
        _max_error(params),
    )


def start_pixmaps(ctx, exposures: list[ExposureInfo], params: dict) -> tuple:
    """Submit the pixel-map tasks of the grid of ``params`` without waiting for them.

    Called as soon as the exposures' WCS are final (after tweakreg), so that the maps are
    computed while skymatch runs; :func:`make_plan` collects them. Returns the plan's key in
    ``ctx.plans``; a grid already started or planned is not started again.
    """
    grid = output_grid(exposures, params)
    grid_fp = fingerprint({"grid": grid.to_dict() if hasattr(grid, "to_dict") else str(grid)})
    key = _plan_key(exposures, params, grid_fp)
    if key in ctx.plans:
        return key
    folder = ctx.work_dir / "pixmaps" / grid_fp
    stepsize = float(params.get("pixmap_stepsize", 1.0) or 1.0)
    order = int(params.get("pixmap_order", 1) or 1)
    tasks, paths = [], []
    sent = ctx.exposure_kwargs(exposures)
    (grid_wcs,) = ctx.wcs_futures([grid.wcs])
    for e in exposures:
        path = folder / f"{e.index:04d}_{e.name}_{key[1][e.index]}.npy"
        paths.append(path)
        tasks.append(
            TaskSpec(
                "pixmap-exposure",
                e.name,
                with_wcs,
                kwargs={
                    "task": _compute_pixmap,
                    **sent[e.index],
                    "grid_wcs": grid_wcs,
                    "path": path,
                    "stepsize": stepsize,
                    "order": order,
                    "max_error": _max_error(params),
                },
                # the client plans the tiles from the maps' extents: ahead of the sky
                # statistics queued before them, which then run while it plans
                priority=1,
            )
        )
    ctx.plans[key] = _PixmapTasks(grid, grid_fp, paths, ctx.submit(tasks))
    return key


def make_plan(ctx, exposures: list[ExposureInfo], params: dict, stage: str) -> MosaicPlan:
    """Grid, tiles, and the pixel map of every exposure (one task each, shared by the steps).

    Plans are kept in ``ctx.plans`` by grid and WCS fingerprints, so that outlier detection
    and resample share the pixel maps when they use the same grid; the maps' tasks may have
    been started earlier by :func:`start_pixmaps`.
    """
    key = start_pixmaps(ctx, exposures, params)
    found = ctx.plans[key]
    if isinstance(found, MosaicPlan):
        grid, grid_fp, pixmaps = found.grid, found.grid_fp, found.pixmaps
    else:
        grid, grid_fp = found.grid, found.grid_fp
        bboxes = ctx.wait(found.futures, f"{stage}: pixel maps")
        pixmaps = {
            e.index: PixmapRef(e.index, p, b)
            for e, p, b in zip(exposures, found.paths, bboxes, strict=True)
        }
        atomic_write_text(found.paths[0].parent / "grid.json", str(grid_fp))
    halo = kernel_halo(
        params.get("kernel", "square"), params.get("pixfrac", 1.0), grid.pixel_scale_ratio or 1.0
    )
    tile_shape = params.get("tile_shape")
    if tile_shape:
        tile_shape = (int(tile_shape[0]), int(tile_shape[1]))
    else:
        depth = _max_depth(grid, [p.bbox for p in pixmaps.values()])
        mem = worker_memory(ctx.client) or 4 * 2**30
        tile_shape = auto_tile_shape(
            mem,
            grid.shape,
            depth,
            halo=halo,
            pixel_scale_ratio=grid.pixel_scale_ratio or 1.0,
            n_ctx_planes=n_ctx_planes(len(exposures)),
        )
        tile_shape = _enough_tiles(tile_shape, grid.shape, total_threads(ctx.client))
    tiles = plan_tiles(grid.shape, tile_shape)
    overlaps = {
        t.name: [
            i
            for i, p in sorted(pixmaps.items())
            if p.bbox is not None and overlapping(p.bbox, t, halo)
        ]
        for t in tiles
    }
    plan = MosaicPlan(
        grid=grid, tiles=tiles, halo=halo, pixmaps=pixmaps, overlaps=overlaps, grid_fp=grid_fp
    )
    if not isinstance(found, MosaicPlan):
        ctx.plans[key] = plan
    ctx.tasks.tell("add_plan", plan, exposures, stage)
    log.info(
        "%s grid %d x %d pixels, %d tiles of %d x %d, halo %d",
        stage,
        grid.shape[1],
        grid.shape[0],
        len(tiles),
        tile_shape[1],
        tile_shape[0],
        halo,
    )
    return plan


def total_threads(client) -> int:
    """Worker threads of the cluster (1 when it has none yet)."""
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # a client without workers yet
        return 1


def _enough_tiles(
    tile_shape,
    grid_shape,
    threads: int,
    per_thread: int = 2,
    min_side: int = 256,
    max_side: int = 1024,
):
    """Shrink memory-derived tiles so every worker thread gets some, and balance their sizes.

    Tiles are the unit of parallelism: one tile for the whole mosaic would leave all workers
    but one idle, while many small tiles repeat per-task work (reading input regions, the
    drizzle halo). Sides lie between ``min_side`` and ``max_side`` (so that memory per task
    stays flat as mosaics grow) and divide the grid evenly (no thin last row or column).
    """
    ny, nx = grid_shape
    target = int(np.sqrt(ny * nx / float(per_thread * threads)))
    target = min(max_side, max(min_side, target))
    out = []
    for n, limit in ((ny, tile_shape[0]), (nx, tile_shape[1])):
        side = min(target, int(limit), n)
        count = -(-n // side)  # ceil
        out.append(min(int(limit), -(-n // count)))
    return tuple(out)


def _max_depth(grid: OutputGrid, bboxes) -> int:
    """Largest number of exposure footprints over any point of a coarse grid."""
    ny, nx = grid.shape
    step = max(1, max(ny, nx) // 64)
    depth = np.zeros((ny // step + 1, nx // step + 1), np.int32)
    for b in bboxes:
        if b is None:
            continue
        x0, x1, y0, y1 = (int(max(0, v) // step) for v in b)
        depth[y0 : y1 + 1, x0 : x1 + 1] += 1
    return max(1, int(depth.max()))
