"""The resample step as a graph: one task per output tile, written into Zarr, then an i2d file.

Each tile task reads, for every exposure whose footprint reaches the tile, only the input pixels
that map into the tile plus the kernel's halo (cropping the pixel map computed once per exposure),
drizzles them with the ``drizzle`` C kernel, and writes SCI, WHT, CON, the variances and ERR of
the tile into the store. A manifest entry per tile records the fingerprint of its inputs and
parameters, so that a rerun reuses finished tiles.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from image3_dask.algorithms.drizzle_tile import (
    DrizzleInput,
    build_weight,
    drizzle_tile,
    n_ctx_planes,
)
from image3_dask.algorithms.outlier_flags import match_nans_and_flags
from image3_dask.algorithms.pixmap import input_range, local_range, pixmap_for_region
from image3_dask.algorithms.tiles import Tile
from image3_dask.graph.plan import MosaicPlan, PixmapRef, make_plan, wcs_fingerprint
from image3_dask.graph.tasks import TaskSpec, run_tasks
from image3_dask.io.exposures import ExposureInfo, read_pixels
from image3_dask.io.i2d_writer import write_i2d
from image3_dask.io.mosaic_store import MosaicStore, fingerprint

log = logging.getLogger("image3_dask")

__all__ = ["run", "resample_tile", "drizzle_inputs_for_region", "resample_params", "GOOD_BITS"]

#: DQ bits the final resample ignores (jwst's ``resample_step.GOOD_BITS``).
GOOD_BITS = "~DO_NOT_USE+NON_SCIENCE"


def resample_params(cfg: dict) -> dict:
    """The drizzle options implied by the resample step's parameters (as jwst's step sets them)."""
    enable_err = bool(cfg.get("enable_err", True))
    return {
        "kernel": cfg["kernel"],
        "pixfrac": float(cfg["pixfrac"]),
        "fillval": cfg["fillval"],
        "weight_type": cfg["weight_type"],
        "enable_ctx": bool(cfg["enable_ctx"]),
        "enable_var": enable_err,
        "compute_err": "from_var" if enable_err else None,
        "report_var": enable_err and bool(cfg.get("report_var", True)),
        "good_bits": cfg.get("good_bits", GOOD_BITS),
    }


def _time_for_weight(info: ExposureInfo) -> float:
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
        pm = np.load(ref.path, mmap_mode="r")
        found = pixmap_for_region(pm, y0, y1, x0, x1, halo)
        if found is None:
            continue
        slices, local = found
        rng = local_range(input_range(info.shape, getattr(info.wcs, "bounding_box", None)), slices)
        if rng is None:
            continue
        pix = read_pixels(info.path, arrays=arrays, region=slices)
        dq, (sci, err, vr, vp, vf) = match_nans_and_flags(
            pix.dq, pix.data, pix.err, pix.var_rnoise, pix.var_poisson, pix.var_flat
        )
        weight = build_weight(
            dq, vr, weight_type=weight_type, good_bits=good_bits, exptime=_time_for_weight(info)
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


def resample_tile(
    tile: Tile,
    entries: list[tuple[ExposureInfo, PixmapRef]],
    plan_info: dict,
    params: dict,
    store_path: Path,
    fp: str,
) -> dict:
    """Task: drizzle the exposures reaching one tile and write the tile's planes to the store."""
    store = MosaicStore(store_path)
    if store.is_done("resample", tile.name, fp):
        return {
            "tile": tile.name,
            "reused": True,
            "n_inputs": store.done_info("resample", tile.name).get("n_inputs"),
        }
    region = tile.padded(plan_info["halo"], plan_info["grid_shape"])
    inputs = drizzle_inputs_for_region(
        entries,
        region,
        plan_info["halo"],
        weight_type=params["weight_type"],
        good_bits=params["good_bits"],
        read_var=params["enable_var"],
    )
    planes = plan_info["planes"]
    if inputs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = drizzle_tile(
                inputs,
                (region[1] - region[0], region[3] - region[2]),
                kernel=params["kernel"],
                pixfrac=params["pixfrac"],
                fillval=params["fillval"],
                pixel_scale_ratio=plan_info["pixel_scale_ratio"],
                weight_type=params["weight_type"],
                enable_ctx=params["enable_ctx"],
                enable_var=params["enable_var"],
                compute_err=params["compute_err"],
                n_inputs=plan_info["n_inputs"],
                crop=tile.crop_in(region),
            )
        for name in planes:
            store.write_tile(name, tile.y0, tile.x0, out[name])
    else:
        _write_empty(store, tile, planes, params["fillval"], plan_info["n_con"])
    store.mark_done("resample", tile.name, fp, {"n_inputs": len(inputs)})
    return {"tile": tile.name, "reused": False, "n_inputs": len(inputs)}


def _write_empty(store: MosaicStore, tile: Tile, planes, fillval, n_con: int) -> None:
    try:
        fill = float(fillval)
    except (TypeError, ValueError):
        fill = np.nan  # "NAN", "INDEF", None
    shape = tile.shape
    for name in planes:
        if name == "con":
            store.write_tile(name, tile.y0, tile.x0, np.zeros((n_con, *shape), np.int32))
        elif name == "wht":
            store.write_tile(name, tile.y0, tile.x0, np.zeros(shape, np.float32))
        elif name == "sci":
            store.write_tile(name, tile.y0, tile.x0, np.full(shape, fill, np.float32))
        else:
            store.write_tile(name, tile.y0, tile.x0, np.full(shape, np.nan, np.float32))


def _planes(params: dict) -> list[str]:
    planes = ["sci", "wht"]
    if params["enable_ctx"]:
        planes.append("con")
    if params["compute_err"]:
        planes.append("err")
    if params["report_var"]:
        planes += ["var_rnoise", "var_poisson", "var_flat"]
    return planes


def run_resample(
    ctx, exposures: list[ExposureInfo], cfg: dict, store_path: Path, stage: str = "resample"
):
    """Plan and run the tile tasks; return the plan, the store and the per-tile results."""
    params = resample_params(cfg)
    plan: MosaicPlan = make_plan(ctx, exposures, cfg, stage)
    planes = _planes(params)
    n_con = n_ctx_planes(len(exposures))
    store = MosaicStore(store_path)
    attrs = {
        "product": ctx.product_name,
        "grid": plan.grid.to_dict(),
        "wcs_header": _fits_header(plan),
        "resample": {k: v for k, v in params.items()},
        "exposures": [e.name for e in exposures],
    }
    store.create(
        plan.grid.shape, plan.tile_shape, planes, n_con_planes=n_con, attrs=_jsonable(attrs)
    )
    base_fp = {
        "params": params,
        "grid": plan.grid_fp,
        "exposures": [
            (
                e.name,
                str(e.path),
                e.path.stat().st_mtime_ns,
                wcs_fingerprint(e.wcs, e.shape),
                e.background_level,
                e.background_subtracted,
            )
            for e in exposures
        ],
    }
    plan_info = {
        "halo": plan.halo,
        "grid_shape": plan.grid.shape,
        "pixel_scale_ratio": plan.grid.pixel_scale_ratio or 1.0,
        "n_inputs": len(exposures),
        "n_con": n_con,
        "planes": planes,
    }
    by_index = {e.index: e for e in exposures}
    tasks = []
    for tile in plan.tiles:
        idx = plan.overlaps[tile.name]
        entries = [(by_index[i], plan.pixmaps[i]) for i in idx]
        fp = fingerprint({**base_fp, "tile": [tile.y0, tile.y1, tile.x0, tile.x1], "inputs": idx})
        tasks.append(
            TaskSpec(
                "resample-tile",
                tile.name,
                resample_tile,
                (tile, entries, plan_info, params, store_path, fp),
            )
        )
    results = run_tasks(
        ctx.client, tasks, ctx.token, label=f"{stage}: tiles", progress=ctx.progress
    )
    reused = sum(1 for r in results if r["reused"])
    if reused:
        log.info("%s: %d of %d tiles reused from an earlier run", stage, reused, len(results))
    return plan, store, results


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _fits_header(plan: MosaicPlan) -> dict:
    """An exact FITS TAN header of the output grid (its transform is a FITS imaging WCS)."""
    from image3_dask.io.products import fits_wcs_keywords

    g = plan.grid
    return {**fits_wcs_keywords(g), "NAXIS1": int(g.shape[1]), "NAXIS2": int(g.shape[0])}


def build_i2d_model(ctx, exposures: list[ExposureInfo], plan: MosaicPlan, params: dict):
    """The i2d ImageModel's metadata, as jwst's ResampleImage fills it (arrays are streamed)."""
    from stdatamodels.jwst import datamodels

    from image3_dask.io.products import i2d_metadata

    with datamodels.open(exposures[0].source_path or exposures[0].path) as ref:
        model = datamodels.ImageModel(None)
        model.update(ref)
    i2d_metadata(model, exposures, plan.grid, params, ctx.asn)
    return model


def run(ctx, exposures: list[ExposureInfo]) -> list[ExposureInfo]:
    """The resample step: tiles into ``<product>_i2d.zarr``, then ``<product>_i2d.fits``."""
    cfg = dict(ctx.config["resample"])
    if cfg.get("single"):
        from image3_dask.errors import StepNotAvailableError

        raise StepNotAvailableError(
            "resample.single=true (one mosaic per exposure) is not available; "
            "outlier detection makes its singles per tile"
        )
    store_path = ctx.product_path("i2d", "zarr")
    plan, store, results = run_resample(ctx, exposures, cfg, store_path)
    params = resample_params(cfg)
    if sum(r["n_inputs"] or 0 for r in results) == 0:
        from image3_dask.errors import InputError

        raise InputError(
            "resample: no input pixel reached the output grid (all exposures empty or flagged)"
        )
    model = build_i2d_model(ctx, exposures, plan, params)
    out = ctx.product_path("i2d")
    arrays = (
        ["data", "wht"]
        + (["con"] if params["enable_ctx"] else [])
        + (["err"] if params["compute_err"] else [])
    )
    if params["report_var"]:
        arrays += ["var_poisson", "var_rnoise", "var_flat"]
    # streamed on a worker while the next step (source_catalog, which reads the Zarr store)
    # runs; the pipeline waits for it before it ends
    ctx.defer(
        "resample: i2d FITS",
        [
            TaskSpec(
                "resample-fits", ctx.product_name, write_i2d_task, (store_path, model, out, arrays)
            )
        ],
    )
    ctx.products["i2d"] = out
    ctx.products["i2d_zarr"] = store_path
    ctx.shared["i2d_plan"] = plan
    ctx.shared["i2d_model"] = (out, model)
    return exposures


def write_i2d_task(store_path: Path, model, out: Path, arrays: list[str]) -> str:
    """Task: stream ``<product>_i2d.fits`` from the mosaic store (written atomically)."""
    write_i2d(MosaicStore(store_path), model, out, arrays=arrays)
    return str(out)
