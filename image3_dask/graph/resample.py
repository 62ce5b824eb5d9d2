"""The resample step as a graph: one task per output tile, written into Zarr, then an i2d file.

Each tile task reads, for every exposure whose footprint reaches the tile, only the input pixels
that map into the tile plus the kernel's halo (cropping the pixel map computed once per exposure),
drizzles them with the ``drizzle`` C kernel, and writes SCI, WHT, CON, the variances and ERR of
the tile into the store. A tile starts as soon as the exposures it reads are written (their crf
files, when outlier detection ran), not when the previous step has finished everywhere. A
manifest entry per tile records the fingerprint of its inputs and parameters, so that a rerun
reuses finished tiles. The i2d FITS file is streamed from the store by one task once every tile
is written, while source_catalog reads the store.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from image3_dask.algorithms.drizzle_tile import drizzle_tile, n_ctx_planes
from image3_dask.algorithms.tiles import Tile
from image3_dask.errors import InputError, StepNotAvailableError
from image3_dask.graph.drizzle_inputs import bbox_only, drizzle_inputs_for_region
from image3_dask.graph.handoff import Mosaic, StepData
from image3_dask.graph.plan import (
    GridInfo,
    MosaicPlan,
    PixmapRef,
    exposure_fingerprint,
    make_plan,
    start_pixmaps,
)
from image3_dask.graph.tasks import TaskSpec, resumable
from image3_dask.io.exposures import ExposureInfo
from image3_dask.io.i2d_writer import write_i2d
from image3_dask.io.mosaic_store import MosaicStore, fingerprint

log = logging.getLogger("image3_dask")

__all__ = [
    "GOOD_BITS",
    "ResampleParams",
    "prepare",
    "resample_params",
    "resample_tile",
    "run",
    "submit",
]

#: DQ bits the final resample ignores (jwst's ``resample_step.GOOD_BITS``).
GOOD_BITS = "~DO_NOT_USE+NON_SCIENCE"


@dataclass(frozen=True)
class ResampleParams:
    """The drizzle options implied by the resample step's parameters (as jwst's step sets them)."""

    kernel: str = "square"
    pixfrac: float = 1.0
    fillval: str = "NAN"
    weight_type: str | None = "ivm"
    enable_ctx: bool = True
    enable_var: bool = True
    compute_err: str | None = "from_var"
    report_var: bool = True
    good_bits: str = GOOD_BITS

    @property
    def planes(self) -> list[str]:
        """The store planes the tiles write."""
        planes = ["sci", "wht"]
        if self.enable_ctx:
            planes.append("con")
        if self.compute_err:
            planes.append("err")
        if self.report_var:
            planes += ["var_rnoise", "var_poisson", "var_flat"]
        return planes

    @property
    def i2d_arrays(self) -> list[str]:
        """The i2d model's arrays, in jwst's order."""
        arrays = ["data", "wht"] + (["con"] if self.enable_ctx else [])
        arrays += ["err"] if self.compute_err else []
        return arrays + (["var_poisson", "var_rnoise", "var_flat"] if self.report_var else [])


def resample_params(cfg) -> ResampleParams:
    """:class:`ResampleParams` from the step's parameters (``ctx.config["resample"]``)."""
    enable_err = bool(cfg.get("enable_err", True))
    return ResampleParams(
        kernel=cfg["kernel"],
        pixfrac=float(cfg["pixfrac"]),
        fillval=cfg["fillval"],
        weight_type=cfg["weight_type"],
        enable_ctx=bool(cfg["enable_ctx"]),
        enable_var=enable_err,
        compute_err="from_var" if enable_err else None,
        report_var=enable_err and bool(cfg.get("report_var", True)),
        good_bits=cfg.get("good_bits", GOOD_BITS),
    )


def resample_tile(
    tile: Tile,
    entries: list[tuple[ExposureInfo, PixmapRef]],
    grid: GridInfo,
    params: ResampleParams,
    n_inputs: int,
    store_path: Path,
) -> dict:
    """Task: drizzle the exposures reaching one tile and write the tile's planes to the store.

    Parameters
    ----------
    tile : Tile
        The output tile.
    entries : list of (ExposureInfo, PixmapRef)
        The exposures reaching the tile (with its halo), in association order.
    grid : GridInfo
        Halo, grid shape, pixel scale ratio.
    params : ResampleParams
        Drizzle options.
    n_inputs : int
        Exposures of the whole mosaic (sets the context planes).
    store_path : Path
        The mosaic store.

    Returns
    -------
    dict
        ``tile``, ``n_inputs`` (exposures that had pixels in the tile).
    """
    store = MosaicStore(store_path)
    region = tile.padded(grid.halo, grid.grid_shape)
    inputs = drizzle_inputs_for_region(
        entries,
        region,
        grid.halo,
        weight_type=params.weight_type,
        good_bits=params.good_bits,
        read_var=params.enable_var,
    )
    if inputs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = drizzle_tile(
                inputs,
                (region[1] - region[0], region[3] - region[2]),
                kernel=params.kernel,
                pixfrac=params.pixfrac,
                fillval=params.fillval,
                pixel_scale_ratio=grid.pixel_scale_ratio,
                weight_type=params.weight_type,
                enable_ctx=params.enable_ctx,
                enable_var=params.enable_var,
                compute_err=params.compute_err,
                n_inputs=n_inputs,
                crop=tile.crop_in(region),
            )
        for name in params.planes:
            store.write_tile(name, tile.y0, tile.x0, out[name])
    else:
        _write_empty(store, tile, params.planes, params.fillval, n_ctx_planes(n_inputs))
    return {"tile": tile.name, "n_inputs": len(inputs)}


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


def _tile_fingerprints(exposures: list[ExposureInfo], plan: MosaicPlan, params: ResampleParams):
    base = {
        "params": asdict(params),
        "grid": plan.grid_fp,
        "exposures": [exposure_fingerprint(e) for e in exposures],
    }
    return {
        t.name: fingerprint(
            {**base, "tile": [t.y0, t.y1, t.x0, t.x1], "inputs": plan.overlaps[t.name]}
        )
        for t in plan.tiles
    }


def submit_tiles(
    ctx, data: StepData, cfg: dict, store_path: Path, stage: str = "resample"
) -> tuple[MosaicPlan, dict]:
    """Plan the mosaic and submit one task per tile (after the exposures it reads are written).

    Returns
    -------
    plan : MosaicPlan
        Grid, tiles, pixel maps.
    tiles : dict
        Tile name -> future of its task (a dict ``tile``, ``n_inputs``, ``reused``).
    """
    exposures = data.exposures
    params = resample_params(cfg)
    plan: MosaicPlan = make_plan(ctx, exposures, cfg, stage)
    n_con = n_ctx_planes(len(exposures))
    attrs = {
        "product": ctx.product_name,
        "grid": plan.grid.to_dict(),
        "wcs_header": _fits_header(plan),
        "resample": asdict(params),
        "exposures": [e.name for e in exposures],
    }
    MosaicStore(store_path).create(
        plan.grid.shape, plan.tile_shape, params.planes, n_con_planes=n_con, attrs=_jsonable(attrs)
    )
    fps = _tile_fingerprints(exposures, plan, params)
    by_index = {e.index: e for e in exposures}
    specs = []
    for tile in plan.tiles:
        idx = plan.overlaps[tile.name]
        specs.append(
            TaskSpec(
                "resample-tile",
                tile.name,
                resumable,
                kwargs={
                    "stage": "resample",
                    "name": tile.name,
                    "manifest": store_path,
                    "store_path": store_path,
                    "fp": fps[tile.name],
                    "work": resample_tile,
                    "tile": tile,
                    "entries": [(bbox_only(by_index[i]), plan.pixmaps[i]) for i in idx],
                    "grid": plan.info,
                    "params": params,
                    "n_inputs": len(exposures),
                },
                after=data.after(idx),
            )
        )
    futures = ctx.submit(specs)

    def report() -> None:
        results = ctx.tasks.results(futures)
        reused = sum(1 for r in results if r["reused"])
        if reused:
            log.info("%s: %d of %d tiles reused from an earlier run", stage, reused, len(results))

    ctx.on_finish(report)
    return plan, dict(zip([t.name for t in plan.tiles], futures, strict=True))


def build_i2d_model(exposures: list[ExposureInfo], grid, params: ResampleParams, asn):
    """Task: the i2d ImageModel's metadata, as jwst's ResampleImage fills it.

    Run on a worker (which has the datamodel schemas loaded); the arrays are streamed from
    the store by :func:`write_i2d_task`.
    """
    from stdatamodels.jwst import datamodels

    from image3_dask.io.datamodel_files import open_datamodel
    from image3_dask.io.products import i2d_metadata

    with open_datamodel(exposures[0].source_path or exposures[0].path) as ref:
        model = datamodels.ImageModel(None)
        model.update(ref)
    i2d_metadata(model, exposures, grid, asdict(params), asn)
    return model


def write_i2d_task(
    store_path: Path, model, out: Path, arrays: list[str], tiles: list[dict]
) -> str:
    """Task: stream ``<product>_i2d.fits`` from the mosaic store (written atomically).

    ``tiles`` are the results of the tile tasks; when no input pixel reached any tile the
    file is not written (an all-empty mosaic is an error, not a product).
    """
    if sum(t["n_inputs"] or 0 for t in tiles) == 0:
        raise InputError(
            "resample: no input pixel reached the output grid (all exposures empty or flagged)"
        )
    write_i2d(MosaicStore(store_path), model, out, arrays=arrays)
    return str(out)


def prepare(ctx, exposures: list[ExposureInfo]) -> None:
    """Start the pixel maps of the step's grid (called once the exposures' WCS are final)."""
    start_pixmaps(ctx, exposures, dict(ctx.config["resample"]))


def submit(ctx, data: StepData) -> StepData:
    """The resample step, submitted: tiles into ``<product>_i2d.zarr``, then the i2d FITS file.

    Returns
    -------
    StepData
        ``data`` with the :class:`~image3_dask.graph.handoff.Mosaic` that source_catalog reads.
    """
    cfg = dict(ctx.config["resample"])
    if cfg.get("single"):
        raise StepNotAvailableError(
            "resample.single=true (one mosaic per exposure) is not available; "
            "outlier detection makes its singles per tile"
        )
    data = data.settled()
    store_path = ctx.product_path("i2d", "zarr")
    plan, tiles = submit_tiles(ctx, data, cfg, store_path)
    params = resample_params(cfg)
    out = ctx.product_path("i2d")
    (model,) = ctx.submit(
        [
            TaskSpec(
                "resample-meta",
                ctx.product_name,
                build_i2d_model,
                ([bbox_only(e) for e in data.exposures], plan.grid, params, ctx.asn),
                priority=1,  # source_catalog waits for it
            ),
        ]
    )
    (fits,) = ctx.submit(
        [
            TaskSpec(
                "resample-fits",
                ctx.product_name,
                write_i2d_task,
                (store_path, model, out, params.i2d_arrays, list(tiles.values())),
                # ahead of the catalog's tasks, beside them: queued behind them it was the
                # one task left running at the end of the run
                priority=1,
            )
        ]
    )
    ctx.products["i2d"] = out
    ctx.products["i2d_zarr"] = store_path
    mosaic = Mosaic(
        i2d=out,
        store=store_path,
        model=model,
        shape=tuple(plan.grid.shape),
        tiles=tiles,
        boxes={t.name: (t.y0, t.y1, t.x0, t.x1) for t in plan.tiles},
        fits=fits,
    )
    return data.evolve(mosaic=mosaic)


def run(ctx, exposures: list[ExposureInfo]) -> list[ExposureInfo]:
    """:func:`submit` and wait for its tasks."""
    submit(ctx, StepData(exposures))
    ctx.finish_pending()
    return exposures
