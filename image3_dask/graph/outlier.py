"""The outlier_detection step (jwst 3.0, imaging) as a graph: median per output tile.

The official step drizzles every exposure group onto the whole output grid, keeps all of these
"singles" to take one median, blots the median back onto every exposure and flags the pixels
that disagree with it. Here the median is computed tile by tile, so that a worker never holds
more than one tile times the number of groups overlapping it (tasks in
:mod:`image3_dask.graph.outlier_tasks`):

1. ``outlier-weights`` (one task per output tile): drizzle each overlapping group into the tile
   (in memory), keep it for step 3, and summarise its weights;
2. ``outlier-threshold`` (one task per group, after the weights of the tiles it reaches):
   the group's ``maskpt`` weight threshold over the *whole* single image, exactly as stcal;
3. ``outlier-median`` (one task per tile, after the thresholds of its groups): mask the
   pixels below their group's threshold, take the NaN-median across groups and write it into
   the work store (``<work_dir>/median.zarr``, plane ``median``);
4. ``outlier-flag`` (one task per exposure, after the median tiles it reaches): blot the
   median, flag the outliers and write ``<exposure>_<asn_id>_crf.fits``.

Nothing here waits: each task follows only the tasks whose results it reads, and the step
hands the flag tasks to the resample step (:attr:`StepData.written`), whose tiles start as soon
as the exposures they read are flagged. When the grid is a single tile, steps 1-3 fold into one
task (the thresholds of a whole-grid tile are those of the whole single images). The pixel maps
come from :func:`~image3_dask.graph.plan.make_plan`, shared with the resample step when it uses
the same grid (the defaults).

With ``resample_data=false`` the median is that of the exposures themselves (thresholds per
exposure, median per tile of the detector grid) and the flags compare each exposure with it,
as ``median_without_resampling`` / ``flag_model_crs`` do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from image3_dask.algorithms.tiles import Tile, plan_tiles
from image3_dask.errors import ConfigError, InputError
from image3_dask.graph.drizzle_inputs import bbox_only
from image3_dask.graph.handoff import StepData
from image3_dask.graph.outlier_tasks import (
    GroupEntries,
    OutlierParams,
    copy_as_crf,
    exposure_threshold,
    flag_exposure,
    flag_exposure_median,
    group_threshold,
    median_exposures_tile,
    median_tile_task,
    subtracts_sky_now,
    weights_tile,
    write_median,
    write_single,
)
from image3_dask.graph.plan import (
    MosaicPlan,
    exposure_fingerprint,
    make_plan,
    start_pixmaps,
)
from image3_dask.graph.tasks import TaskSpec, resumable, with_wcs
from image3_dask.io.exposures import ExposureInfo
from image3_dask.io.mosaic_store import MosaicStore, fingerprint

log = logging.getLogger("image3_dask")

__all__ = [
    "exposure_groups",
    "grid_params",
    "outlier_params",
    "prepare",
    "run",
    "submit",
]

#: Default tile side of the detector grid when ``resample_data=false``.
DETECTOR_TILE = 256

#: Grid pixels beyond the drizzle halo that a blot reads around an exposure's footprint.
BLOT_MARGIN = 2


# --------------------------------------------------------------------------------------------
# parameters and groups
# --------------------------------------------------------------------------------------------
def outlier_params(cfg) -> OutlierParams:
    """The step's options from its parameters (``ctx.config["outlier_detection"]``).

    Raises
    ------
    ConfigError
        When ``snr`` or ``scale`` is not two numbers.
    """
    try:
        return OutlierParams.from_config(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def grid_params(params: OutlierParams, resample_cfg: dict | None = None) -> dict:
    """Parameters for :func:`make_plan`: jwst's default output grid for outlier detection.

    The official step builds its ``ResampleImage`` with the default grid (``pixel_scale_ratio``
    1, no rotation, shape, crpix, crval or custom WCS) whatever the resample step's parameters.
    Tile size and the size limit, which exist only in image3-dask, come from the resample step.

    Parameters
    ----------
    params : OutlierParams
        The step's options.
    resample_cfg : dict, optional
        The resample step's parameters (``tile_shape``, ``max_output_pixels``).

    Returns
    -------
    dict
        The keys that :func:`~image3_dask.graph.plan.output_grid` and ``make_plan`` read.
    """
    resample_cfg = resample_cfg or {}
    return {
        "output_wcs": "",
        "output_shape": None,
        "crpix": None,
        "crval": None,
        "rotation": None,
        "pixel_scale": None,
        "pixel_scale_ratio": 1.0,
        "kernel": params.kernel,
        "pixfrac": params.pixfrac,
        "pixmap_stepsize": params.pixmap_stepsize,
        "pixmap_order": params.pixmap_order,
        "pixmap_max_error": params.pixmap_max_error,
        "tile_shape": resample_cfg.get("tile_shape"),
        "max_output_pixels": resample_cfg.get("max_output_pixels"),
    }


def exposure_groups(exposures: list[ExposureInfo]) -> list[tuple[str, list[ExposureInfo]]]:
    """Exposures by ``group_id``, groups in order of first appearance (as ModelLibrary).

    Parameters
    ----------
    exposures : list of ExposureInfo
        The association's exposures.

    Returns
    -------
    list of (str, list of ExposureInfo)
        One entry per exposure group (detectors exposed together form one single image).
    """
    groups: dict[str, list[ExposureInfo]] = {}
    for e in exposures:
        groups.setdefault(e.group_id, []).append(e)
    return list(groups.items())


def _tile_groups(
    plan: MosaicPlan, tile: Tile, groups: list[tuple[str, list[ExposureInfo]]]
) -> GroupEntries:
    """The groups with an exposure reaching ``tile``, with those exposures and pixel maps.

    The exposures are :func:`bbox_only` copies (``groups`` should hold them already).
    """
    idx = set(plan.overlaps[tile.name])
    out: GroupEntries = []
    for gi, (_, members) in enumerate(groups):
        entries = [(e, plan.pixmaps[e.index]) for e in members if e.index in idx]
        if entries:
            out.append((gi, entries))
    return out


def _crf_meta(info: ExposureInfo, status: str) -> dict:
    """``meta.background``, ``meta.cal_step`` and ``s_region`` of a crf file, as jwst records them.

    tweakreg and skymatch leave their status in ``info.cal_steps`` and what jwst would write
    in ``info.meta`` (``background``, ``s_region``); a step that did not run in this
    pipeline is recorded as ``SKIPPED``, as stpipe does, and the file's own ``meta.background``
    is then kept.
    """
    cal_steps = {
        "tweakreg": info.cal_steps.get("tweakreg", "SKIPPED"),
        "skymatch": info.cal_steps.get("skymatch", "SKIPPED"),
        "outlier_detection": status,
    }
    return {
        "background": dict(info.meta.get("background") or {}),
        "cal_steps": cal_steps,
        "s_region": info.meta.get("s_region"),
    }


def _crf_path(ctx, info: ExposureInfo, save: bool) -> Path:
    path = ctx.exposure_product_path(info.name, "crf")
    return path if save else ctx.work_dir / "crf" / path.name


def _base_fp(params: OutlierParams, exposures: list[ExposureInfo], grid_fp: str = "") -> dict:
    return {
        "params": params.fingerprint(),
        "grid": grid_fp,
        "exposures": [exposure_fingerprint(e) for e in exposures],
    }


# --------------------------------------------------------------------------------------------
# the flow (resample_data=true)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Outputs:
    """Where the step writes: crf file and crf metadata per exposure, the median store."""

    crf: dict[int, Path]
    meta: dict[int, dict]
    store: Path
    #: fingerprint of what makes each crf file (its resume key and its ``content_fp``)
    fp: dict[int, str]


def _flag_spec(
    e: ExposureInfo, sent: dict, out: _Outputs, work, after: list, **kwargs
) -> TaskSpec:
    """The task flagging exposure ``e`` and writing its crf file, reused when still valid.

    ``sent``: the exposure's ``info`` and ``wcs`` task arguments (``ctx.exposure_kwargs``).
    """
    return TaskSpec(
        "outlier-flag",
        e.name,
        resumable,
        kwargs={
            "stage": "outlier-flag",
            "name": e.name,
            "manifest": out.store,
            "fp": out.fp[e.index],
            "outputs": [out.crf[e.index]],
            "work": with_wcs,
            "task": work,
            **sent,
            "crf_path": out.crf[e.index],
            "crf_meta": out.meta[e.index],
            **kwargs,
        },
        after=after,
    )


def _submit_resampled(
    ctx, data: StepData, params: OutlierParams, out: _Outputs, plan: MosaicPlan
) -> dict:
    exposures = data.exposures
    groups = exposure_groups(exposures)
    MosaicStore(out.store).create(
        plan.grid.shape, plan.tile_shape, ["median"], attrs={"product": ctx.product_name}
    )
    grid = plan.info
    base = _base_fp(params, exposures, plan.grid_fp)
    light_groups = [(gid, [bbox_only(e) for e in members]) for gid, members in groups]
    tile_groups = {t.name: _tile_groups(plan, t, light_groups) for t in plan.tiles}
    tiles = [t for t in plan.tiles if tile_groups[t.name]]

    def tile_fp(t: Tile, stage: str, extra=None) -> str:
        idx = [[gi, [e.index for e, _ in ent]] for gi, ent in tile_groups[t.name]]
        return fingerprint(
            {**base, "stage": stage, "tile": [t.y0, t.y1, t.x0, t.x1], "in": idx, "x": extra}
        )

    def reads(t: Tile) -> list:
        return data.after(plan.overlaps[t.name])

    single_stores: dict[int, Path] | None = None
    if params.save_intermediate_results:
        single_stores = {}
        for gi in range(len(groups)):
            single_stores[gi] = ctx.work_dir / "outlier_singles" / f"{gi:04d}.zarr"
            MosaicStore(single_stores[gi]).create(plan.grid.shape, plan.tile_shape, ["sci", "wht"])

    thresholds: dict[int, object] | None = None
    weights: dict[str, object] = {}
    cache_dir: Path | None = None
    if len(plan.tiles) > 1:
        stats_dir = ctx.work_dir / "outlier_weights"
        cache_dir = ctx.work_dir / "outlier_singles_cache"
        specs = [
            TaskSpec(
                "outlier-weights",
                t.name,
                resumable,
                kwargs={
                    "stage": "outlier-weights",
                    "name": t.name,
                    "manifest": out.store,
                    "fp": tile_fp(t, "weights"),
                    "work": weights_tile,
                    "tile": t,
                    "groups": tile_groups[t.name],
                    "grid": grid,
                    "params": params,
                    "stats_path": stats_dir / f"{t.name}.npz",
                    "cache_dir": cache_dir,
                    "cache_tag": tile_fp(t, "weights"),
                },
                after=reads(t),
            )
            for t in tiles
        ]
        weights = dict(zip([t.name for t in tiles], ctx.submit(specs), strict=True))
        reach: dict[int, list] = {gi: [] for gi in range(len(groups))}
        for t in tiles:
            for gi, _ in tile_groups[t.name]:
                reach[gi].append(weights[t.name])
        specs = [
            TaskSpec(
                "outlier-threshold",
                groups[gi][0],
                group_threshold,
                kwargs={
                    "group": gi, "weights": futs, "maskpt": params.maskpt, "stats_dir": stats_dir
                },
            )
            for gi, futs in reach.items()
        ]
        thresholds = dict(zip(reach, ctx.submit(specs), strict=True))
    specs = []
    for t in tiles:
        mine = None if thresholds is None else {gi: thresholds[gi] for gi, _ in tile_groups[t.name]}
        specs.append(
            TaskSpec(
                "outlier-median",
                t.name,
                resumable,
                kwargs={
                    "stage": "outlier-median",
                    "name": t.name,
                    "manifest": out.store,
                    "store_path": out.store,
                    # the thresholds are in the fingerprint through the weights' inputs
                    "fp": tile_fp(t, "median"),
                    "work": median_tile_task,
                    "tile": t,
                    "groups": tile_groups[t.name],
                    "thresholds": mine,
                    "grid": grid,
                    "params": params,
                    "single_stores": single_stores,
                    "cache_dir": cache_dir,
                    "cache_tag": tile_fp(t, "weights"),
                },
                after=[weights[t.name]] if t.name in weights else reads(t),
            )
        )
    medians = dict(zip([t.name for t in tiles], ctx.submit(specs), strict=True))

    def report() -> None:
        if thresholds is not None:
            values = dict(
                zip(thresholds, ctx.tasks.results(list(thresholds.values())), strict=True)
            )
        else:
            values = {}
            for r in ctx.tasks.results(list(medians.values())):
                values.update({gi: v for gi, v in r.get("thresholds") or []})
        for gi, (gid, _) in enumerate(groups):
            log.info("outlier_detection: group %s weight threshold %s", gid, values.get(gi))

    ctx.on_finish(report)

    if params.save_intermediate_results:
        assert single_stores is not None
        drz = {
            "pixfrac": params.pixfrac,
            "kernel": params.kernel,
            "fillval": params.fillval,
            "weight_type": params.weight_type,
        }
        specs, outs = [], []
        for gi, (gid, members) in enumerate(groups):
            path = ctx.product_path(f"{gid}_outlier_i2d")
            outs.append(path)
            specs.append(
                TaskSpec(
                    "outlier-single-i2d",
                    gid,
                    write_single,
                    (members, plan.grid, drz, ctx.asn, single_stores[gi], path),
                    after=list(medians.values()),
                )
            )
        med_out = ctx.product_path("median")
        specs.append(
            TaskSpec(
                "outlier-median-fits",
                ctx.product_name,
                write_median,
                (groups[0][1], plan.grid, drz, ctx.asn, out.store, med_out),
                after=list(medians.values()),
            )
        )
        ctx.submit(specs)
        ctx.products["outlier_i2d"] = outs
        ctx.products["median"] = med_out
    specs = []
    sent = ctx.exposure_kwargs(exposures)
    for e in exposures:
        ref = plan.pixmaps[e.index]
        reached = [
            medians[t.name] for t in plan.tiles_reached(ref.bbox, BLOT_MARGIN) if t.name in medians
        ]
        specs.append(
            _flag_spec(
                e,
                sent[e.index],
                out,
                flag_exposure,
                reached + data.after([e.index]),
                ref=ref,
                store_path=out.store,
                grid_shape=plan.grid.shape,
                params=params,
            )
        )
    return dict(zip([e.index for e in exposures], ctx.submit(specs), strict=True))


# --------------------------------------------------------------------------------------------
# the flow (resample_data=false)
# --------------------------------------------------------------------------------------------
def _submit_unresampled(ctx, data: StepData, params: OutlierParams, out: _Outputs) -> dict:
    exposures = data.exposures
    shapes = {e.shape for e in exposures}
    if len(shapes) != 1:
        raise InputError(
            "outlier_detection with resample_data=false needs exposures of one shape; got "
            + ", ".join(f"{e.name} {e.shape}" for e in exposures)
        )
    shape = exposures[0].shape
    ts = ctx.config["resample"].get("tile_shape")
    tile_shape = (
        (int(ts[0]), int(ts[1]))
        if ts
        else (min(DETECTOR_TILE, shape[0]), min(DETECTOR_TILE, shape[1]))
    )
    tiles = plan_tiles(shape, tile_shape)
    MosaicStore(out.store).create(
        shape, tile_shape, ["median"], attrs={"product": ctx.product_name}
    )
    everyone = data.after([e.index for e in exposures])
    thr = ctx.submit(
        [
            TaskSpec(
                "outlier-threshold",
                e.name,
                exposure_threshold,
                kwargs={"info": e, "params": params},
                after=data.after([e.index]),
            )
            for e in exposures
        ]
    )
    base = _base_fp(params, exposures)
    lights = [bbox_only(e) for e in exposures]
    medians = ctx.submit(
        [
            TaskSpec(
                "outlier-median",
                t.name,
                _median_exposures_resumable,
                kwargs={
                    "base_fp": base,
                    "tile": t,
                    "exposures": lights,
                    "thresholds": thr,
                    "params": params,
                    "store_path": out.store,
                },
                after=everyone,
            )
            for t in tiles
        ]
    )

    def report() -> None:
        for e, v in zip(exposures, ctx.tasks.results(thr), strict=True):
            log.info("outlier_detection: %s weight threshold %s", e.name, v)

    ctx.on_finish(report)
    if params.save_intermediate_results:
        med_out = ctx.product_path("median")
        ctx.submit(
            [
                TaskSpec(
                    "outlier-median-fits",
                    ctx.product_name,
                    write_median,
                    (exposures[:1], None, {}, ctx.asn, out.store, med_out, exposures[0].wcs),
                    after=medians,
                )
            ]
        )
        ctx.products["median"] = med_out
    sent = ctx.exposure_kwargs(exposures)
    specs = [
        _flag_spec(
            e, sent[e.index], out, flag_exposure_median, medians, store_path=out.store, params=params
        )
        for e in exposures
    ]
    return dict(zip([e.index for e in exposures], ctx.submit(specs), strict=True))


def _median_exposures_resumable(
    base_fp: dict, tile: Tile, thresholds: list[float], store_path: Path, **kwargs
) -> dict:
    """Task: :func:`median_exposures_tile`, reused when done from the same thresholds."""
    fp = fingerprint({**base_fp, "tile": [tile.y0, tile.y1, tile.x0, tile.x1], "thr": thresholds})
    return resumable(
        manifest=store_path,
        stage="outlier-median",
        name=tile.name,
        fp=fp,
        work=median_exposures_tile,
        tile=tile,
        thresholds=thresholds,
        store_path=store_path,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------------------------
def prepare(ctx, exposures: list[ExposureInfo]) -> None:
    """Start the pixel maps of the step's grid (called once the exposures' WCS are final)."""
    params = outlier_params(dict(ctx.config["outlier_detection"]))
    if params.resample_data and len(exposures) >= 2:
        start_pixmaps(ctx, exposures, grid_params(params, dict(ctx.config["resample"])))


def submit(ctx, data: StepData) -> StepData:
    """The outlier_detection step, submitted: flag tasks writing the crf files.

    Parameters
    ----------
    ctx : RunContext
        The run (client, parameters, folders).
    data : StepData
        The exposures after tweakreg and skymatch.

    Returns
    -------
    StepData
        The exposures reading their pixels from their crf files (``path``; ``source_path``
        still names the original cal file), and the tasks writing them (``written``).
        Unchanged when the step is not done (fewer than two exposures, as jwst) and the crf
        files are not saved.
    """
    params = outlier_params(dict(ctx.config["outlier_detection"]))
    plan = None
    if params.resample_data and len(data.exposures) >= 2:
        # planned from the WCS while the previous step's tasks (the sky solve) finish
        plan = make_plan(
            ctx,
            data.exposures,
            grid_params(params, dict(ctx.config["resample"])),
            "outlier_detection",
        )
    data = data.settled()
    exposures = data.exposures
    save = bool(ctx.config["outlier_detection"].get("save_results", True))
    crf_paths = {e.index: _crf_path(ctx, e, save) for e in exposures}
    if len(exposures) < 2:
        # jwst: warn, record FAILED, and the pipeline still saves the (unchanged) crf files
        log.warning("Input only contains %d exposures", len(exposures))
        log.warning("Outlier detection will be skipped")
        if save:
            specs = [
                TaskSpec(
                    "outlier-crf",
                    e.name,
                    copy_as_crf,
                    kwargs={
                        "info": e,
                        "crf_path": crf_paths[e.index],
                        "crf_meta": _crf_meta(e, "FAILED"),
                    },
                    after=data.after([e.index]),
                )
                for e in exposures
            ]
            ctx.submit(specs)
            ctx.products["crf"] = [crf_paths[e.index] for e in exposures]
        return data
    meta = {e.index: _crf_meta(e, "COMPLETE") for e in exposures}
    # a crf file depends on the parameters, the grid and every exposure (through the median)
    base = _base_fp(params, exposures, plan.grid_fp if plan is not None else "")
    outputs = _Outputs(
        crf=crf_paths,
        meta=meta,
        store=ctx.work_dir / "median.zarr",
        fp={
            e.index: fingerprint(
                {
                    **base,
                    "stage": "outlier-flag",
                    "exposure": e.index,
                    "crf": str(crf_paths[e.index]),
                    "meta": meta[e.index],
                }
            )
            for e in exposures
        },
    )
    if plan is not None:
        written = _submit_resampled(ctx, data, params, outputs, plan)
    else:
        written = _submit_unresampled(ctx, data, params, outputs)

    def report() -> None:
        results = ctx.tasks.results([written[e.index] for e in exposures])
        flagged = {r["name"]: r["n_flagged"] for r in results}
        log.info(
            "outlier_detection: %d pixels flagged in %d exposures",
            sum(flagged.values()),
            len(flagged),
        )
        reused = sum(1 for r in results if r.get("reused"))
        if reused:
            log.info(
                "outlier_detection: %d of %d crf files reused from an earlier run",
                reused,
                len(results),
            )
        ctx.products.setdefault("reused", {})["crf"] = reused
        ctx.products["outlier_flagged"] = flagged

    ctx.on_finish(report)
    if save:
        ctx.products["crf"] = [crf_paths[e.index] for e in exposures]
    return data.evolve(
        exposures=[
            e.evolve(
                path=crf_paths[e.index],
                content_fp=outputs.fp[e.index],
                background_subtracted=e.background_subtracted or subtracts_sky_now(e),
            )
            for e in exposures
        ],
        written=written,
    )


def run(ctx, exposures: list[ExposureInfo]) -> list[ExposureInfo]:
    """:func:`submit` and wait for its tasks; return the exposures reading their crf files."""
    out = submit(ctx, StepData(exposures))
    ctx.finish_pending()
    return out.exposures
