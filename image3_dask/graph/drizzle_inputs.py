"""Drizzle inputs of an output region: the crops of the exposures that reach it.

Shared by the tile tasks of outlier detection (single drizzles) and of resample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from image3_dask.algorithms.drizzle_tile import DrizzleInput, build_weight
from image3_dask.algorithms.outlier_flags import match_nans_and_flags
from image3_dask.algorithms.pixmap import (
    input_range,
    local_range,
    pixmap_blocks,
    pixmap_for_region,
    scanner_maps_corners,
    without_scanner_clip,
)
from image3_dask.graph.plan import PixmapRef
from image3_dask.io.array_cache import ArrayCache
from image3_dask.io.exposures import ExposureInfo, read_pixels
from image3_dask.io.storage import Location, stat_token
from image3_dask.io.work_files import load_npy

__all__ = ["drizzle_inputs_for_region", "bbox_only", "map_blocks", "time_for_weight"]


@dataclass(frozen=True)
class _BBoxOnly:
    """Stands for an exposure's gwcs in tile tasks, which only need its bounding box."""

    bounding_box: tuple | None


def bbox_only(info: ExposureInfo) -> ExposureInfo:
    """A copy of ``info`` whose WCS is reduced to its bounding box (cheap to send to tasks).

    Pickling a gwcs costs ~10 ms and tens of kB; a tile task receives every exposure that
    overlaps it, and only :func:`drizzle_inputs_for_region`
    reads the WCS, for its bounding box.
    """
    bb = getattr(info.wcs, "bounding_box", None)
    if bb is not None:
        try:
            bb = bb.bounding_box(order="F")
        except AttributeError:
            pass
        bb = tuple(tuple(float(v) for v in interval) for interval in bb)
    return info.evolve(wcs=_BBoxOnly(bb))


#: Block bounds of the pixel maps this worker has cut, by file and content token (LRU):
#: ~35 kB each for a full MIRI or NIRCam frame.
_BLOCKS = ArrayCache(max_items=512)


def map_blocks(path: Location, pm: np.ndarray) -> np.ndarray:
    """:func:`~image3_dask.algorithms.pixmap.pixmap_blocks` of a stored pixel map, made once.

    A pixel map is cut for every tile its exposure reaches, in the single-drizzle, blot and
    resample tasks; the worker keeps each map's block bounds (keyed by the file's path and
    its size and mtime, or ETag) so that each cut only tests the blocks near its tile.
    """
    return _BLOCKS.get(f"{path} {stat_token(path)}", lambda: pixmap_blocks(pm))


def time_for_weight(info: ExposureInfo) -> float:
    """The exposure time that ``weight_type='exptime'`` weights by (measurement time if known)."""
    mt = info.meta.get("measurement_time")
    return float(mt if mt is not None else info.exptime)


def drizzle_inputs_for_region(
    entries: list[tuple[ExposureInfo, PixmapRef]],
    region: tuple[int, int, int, int],
    halo: int,
    *,
    weight_type: str | None,
    good_bits,
    read_var: bool = True,
    read_err: bool = False,
) -> list[DrizzleInput]:
    """Read, for each exposure, the pixels reaching ``region`` and build drizzle inputs.

    Parameters
    ----------
    entries : list of (ExposureInfo, PixmapRef)
        Exposures in association order (the order fixes the floating-point sums).
    region : (y0, y1, x0, x1)
        The output region to drizzle (a tile grown by the halo).
    halo : int
        Reach of one input pixel on the output grid.
    """
    y0, y1, x0, x1 = region
    inputs = []
    arrays = ("data", "dq") + (
        ("var_rnoise", "var_poisson", "var_flat") if read_var else ("var_rnoise",)
    )
    if read_err:
        arrays += ("err",)
    for info, ref in entries:
        pm = load_npy(ref.path)
        found = pixmap_for_region(pm, y0, y1, x0, x1, halo, blocks=map_blocks(ref.path, pm))
        if found is None:
            continue
        slices, local = found
        full_rng = input_range(info.shape, getattr(info.wcs, "bounding_box", None))
        rng = local_range(full_rng, slices)
        if rng is None:
            continue
        if not scanner_maps_corners(pm, full_rng) and scanner_maps_corners(local, rng):
            # the full-frame drizzle keeps the input pixels straddling the mosaic's edges
            rng = without_scanner_clip(local, rng, slices, pm.shape[:2])
        pix = read_pixels(info.path, arrays=arrays, region=slices)
        dq, (sci, err, vr, vp, vf) = match_nans_and_flags(
            pix.dq, pix.data, pix.err, pix.var_rnoise, pix.var_poisson, pix.var_flat
        )
        weight = build_weight(
            dq, vr, weight_type=weight_type, good_bits=good_bits, exptime=time_for_weight(info)
        )
        inputs.append(
            DrizzleInput(
                sci=sci,
                pixmap=local,
                ctx_id=info.index,
                exptime=info.exptime or 1.0,
                weight=weight,
                var_rnoise=vr,
                var_poisson=vp,
                var_flat=vf,
                err=err,
                dq=dq,
                measurement_time=info.meta.get("measurement_time"),
                background_level=info.background_level,
                background_subtracted=info.background_subtracted,
                in_range=rng,
            )
        )
    return inputs
