"""The outlier_detection step (jwst 3.0, imaging) as a graph: median per output tile.

The official step drizzles every exposure group onto the whole output grid, keeps all of these
"singles" to take one median, blots the median back onto every exposure and flags the pixels
that disagree with it. Here the median is computed tile by tile, so that a worker never holds
more than one tile times the number of groups overlapping it:

1. ``outlier-weights`` (one task per output tile): drizzle each overlapping group into the tile
   (in memory) and summarise its weights (:func:`~image3_dask.algorithms.median.weight_stats`,
   written to a small ``.npz`` file per tile);
2. ``outlier-threshold`` (one task per group): merge the group's summaries over all tiles and
   compute its ``maskpt`` weight threshold over the *whole* single image, exactly as stcal does;
3. ``outlier-median`` (one task per tile): drizzle the groups again, mask the pixels below their
   group's threshold, take the NaN-median across groups and write it into the work store
   (``<work_dir>/median.zarr``, plane ``median``; one manifest entry per tile);
4. ``outlier-flag`` (one task per exposure): read only the part of the median store that the
   exposure's pixel map reaches, blot it, flag the outliers and write
   ``<exposure>_<asn_id>_crf.fits``.

When the grid is a single tile, steps 1-3 fold into one task (the thresholds of a whole-grid
tile are those of the whole single images). The pixel maps come from :func:`make_plan`, so
when the resample step uses the same grid (the defaults) it reuses them.

With ``resample_data=false`` the median is that of the exposures themselves (thresholds per
exposure, median per tile of the detector grid) and the flags compare each exposure with it,
as ``median_without_resampling`` / ``flag_model_crs`` do.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from image3_dask.algorithms.blot import blot_median, blot_region_bounds
from image3_dask.algorithms.drizzle_tile import build_weight, drizzle_tile
from image3_dask.algorithms.median import (
    WeightStats,
    combine_weight_stats,
    median_tile,
    weight_stats,
    weight_threshold,
)
from image3_dask.algorithms.outlier_flags import flag_outliers, match_nans_and_flags, parse_pair
from image3_dask.algorithms.tiles import Tile, plan_tiles
from image3_dask.errors import ConfigError, InputError
from image3_dask.graph.plan import MosaicPlan, PixmapRef, make_plan, wcs_fingerprint
from image3_dask.graph.resample import _time_for_weight, drizzle_inputs_for_region
from image3_dask.graph.tasks import TaskSpec, run_tasks
from image3_dask.io.crf import open_for_crf, save_model_atomic, update_crf_model
from image3_dask.io.exposures import ExposureInfo, read_pixels
from image3_dask.io.mosaic_store import MosaicStore, fingerprint

log = logging.getLogger("image3_dask")

__all__ = [
    "exposure_groups",
    "flag_exposure",
    "grid_params",
    "median_tile_task",
    "outlier_params",
    "run",
    "weights_tile",
]

#: Default tile side of the detector grid when ``resample_data=false``.
DETECTOR_TILE = 256

GroupEntries = list[tuple[int, list[tuple[ExposureInfo, PixmapRef]]]]


# --------------------------------------------------------------------------------------------
# parameters and groups
# --------------------------------------------------------------------------------------------
def outlier_params(cfg: dict) -> dict:
    """The options of the step implied by its parameters (``ctx.config["outlier_detection"]``).

    Parameters
    ----------
    cfg : dict
        The step's parameters (jwst names).

    Returns
    -------
    dict
        Normalised options; ``snr`` and ``scale`` are checked to be pairs of numbers.

    Raises
    ------
    ConfigError
        When ``snr`` or ``scale`` is not two numbers.
    """
    for name in ("snr", "scale"):
        try:
            parse_pair(cfg[name])
        except ValueError as exc:
            raise ConfigError(f"steps.outlier_detection.{name}: {exc}") from None
    return {
        "weight_type": cfg["weight_type"],
        "pixfrac": float(cfg["pixfrac"]),
        "kernel": cfg["kernel"],
        "fillval": cfg["fillval"],
        "good_bits": cfg["good_bits"],
        "maskpt": float(cfg["maskpt"]),
        "snr": cfg["snr"],
        "scale": cfg["scale"],
        "backg": float(cfg["backg"] or 0.0),
        "resample_data": bool(cfg["resample_data"]),
        "save_intermediate_results": bool(cfg["save_intermediate_results"]),
        "pixmap_stepsize": float(cfg.get("pixmap_stepsize") or 1.0),
        "pixmap_order": int(cfg.get("pixmap_order") or 1),
    }


def grid_params(params: dict, resample_cfg: dict | None = None) -> dict:
    """Parameters for :func:`make_plan`: jwst's default output grid for outlier detection.

    The official step builds its ``ResampleImage`` with the default grid (``pixel_scale_ratio``
    1, no rotation, shape, crpix, crval or custom WCS) whatever the resample step's parameters.
    Tile size and the size limit, which exist only in image3-dask, come from the resample step.

    Parameters
    ----------
    params : dict
        From :func:`outlier_params`.
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
        "kernel": params["kernel"],
        "pixfrac": params["pixfrac"],
        "pixmap_stepsize": params["pixmap_stepsize"],
        "pixmap_order": params["pixmap_order"],
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


@dataclass(frozen=True)
class _BBoxOnly:
    """Stands for an exposure's gwcs in tile tasks, which only need its bounding box."""

    bounding_box: tuple | None


def light(info: ExposureInfo) -> ExposureInfo:
    """A copy of ``info`` whose WCS is reduced to its bounding box (cheap to send to tasks).

    Pickling a gwcs costs ~10 ms and tens of kB; a tile task receives every exposure that
    overlaps it, and only :func:`drizzle_inputs_for_region` reads the WCS, for its bounding box.
    """
    bb = getattr(info.wcs, "bounding_box", None)
    if bb is not None:
        try:
            bb = bb.bounding_box(order="F")
        except AttributeError:
            pass
        bb = tuple(tuple(float(v) for v in interval) for interval in bb)
    return info.evolve(wcs=_BBoxOnly(bb))


def _tile_groups(
    plan: MosaicPlan, tile: Tile, groups: list[tuple[str, list[ExposureInfo]]]
) -> GroupEntries:
    """The groups with an exposure reaching ``tile``, with those exposures and pixel maps.

    The exposures are :func:`light` copies (``groups`` should hold them already).
    """
    idx = set(plan.overlaps[tile.name])
    out: GroupEntries = []
    for gi, (_, members) in enumerate(groups):
        entries = [(e, plan.pixmaps[e.index]) for e in members if e.index in idx]
        if entries:
            out.append((gi, entries))
    return out


def _exposure_fp(e: ExposureInfo) -> list:
    return [
        e.name,
        str(e.path),
        e.path.stat().st_mtime_ns,
        wcs_fingerprint(e.wcs, e.shape),
        e.background_level,
        e.background_subtracted,
    ]


# --------------------------------------------------------------------------------------------
# tasks (resample_data=True)
# --------------------------------------------------------------------------------------------
def _singles(
    tile: Tile, groups: GroupEntries, plan_info: dict, params: dict
) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None]]:
    """Drizzle every group of ``groups`` into ``tile`` alone; yield ``(group, sci, wht)``.

    One group's input crops are held at a time; the outputs are cropped to the tile.
    """
    region = tile.padded(plan_info["halo"], plan_info["grid_shape"])
    shape = (region[1] - region[0], region[3] - region[2])
    for gi, entries in groups:
        inputs = drizzle_inputs_for_region(
            entries,
            region,
            plan_info["halo"],
            weight_type=params["weight_type"],
            good_bits=params["good_bits"],
            read_var=False,
        )
        if not inputs:
            yield gi, None, None
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = drizzle_tile(
                inputs,
                shape,
                kernel=params["kernel"],
                pixfrac=params["pixfrac"],
                fillval=params["fillval"],
                pixel_scale_ratio=plan_info["pixel_scale_ratio"],
                weight_type=params["weight_type"],
                enable_ctx=False,
                enable_var=False,
                compute_err=None,
                crop=tile.crop_in(region),
            )
        del inputs
        yield gi, out["sci"], out["wht"]


def _cache_single(tile_dir: Path, gi: int, sci: np.ndarray, wht: np.ndarray) -> None:
    """Keep one group's single over a tile for the median pass (cropped to where it has data).

    Outside the saved box the single is ``sci=NaN, wht=0`` (no input reached those pixels).
    """
    has = (wht != 0) | np.isfinite(sci)
    rows, cols = np.flatnonzero(has.any(axis=1)), np.flatnonzero(has.any(axis=0))
    box = (
        np.array([rows[0], rows[-1] + 1, cols[0], cols[-1] + 1], np.int64)
        if rows.size
        else np.zeros(4, np.int64)
    )
    y0, y1, x0, x1 = (int(v) for v in box)
    _save_npz(
        tile_dir / f"g{gi}.npz", {"box": box, "sci": sci[y0:y1, x0:x1], "wht": wht[y0:y1, x0:x1]}
    )


def _cached_singles(
    tile: Tile, groups: GroupEntries, tile_dir: Path
) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None]]:
    """The singles that :func:`weights_tile` kept in ``tile_dir``, as :func:`_singles` yields them."""
    for gi, _ in groups:
        path = tile_dir / f"g{gi}.npz"
        if not path.is_file():
            yield gi, None, None
            continue
        with np.load(path) as z:
            y0, y1, x0, x1 = (int(v) for v in z["box"])
            sci = np.full(tile.shape, np.nan, np.float32)
            wht = np.zeros(tile.shape, np.float32)
            sci[y0:y1, x0:x1] = z["sci"]
            wht[y0:y1, x0:x1] = z["wht"]
        yield gi, sci, wht


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def weights_tile(
    tile: Tile,
    groups: GroupEntries,
    plan_info: dict,
    params: dict,
    stats_path: Path,
    store_path: Path,
    fp: str,
    cache_dir: Path | None = None,
) -> dict:
    """Task (pass 1): weight summaries of each group's single drizzle over one tile.

    The summaries (:class:`~image3_dask.algorithms.median.WeightStats`) are saved in
    ``stats_path`` as arrays ``v<group>`` (values) and ``c<group>`` (counts). With
    ``cache_dir``, the singles themselves are kept in ``cache_dir/<tile>/`` (cropped to where
    they have data), so that the median pass reads them instead of drizzling them again.

    Returns
    -------
    dict
        ``tile``, ``groups`` (indices with weights in the tile), ``reused``.
    """
    store = MosaicStore(store_path)
    if store.is_done("outlier-weights", tile.name, fp) and stats_path.is_file():
        return {
            "tile": tile.name,
            "groups": store.done_info("outlier-weights", tile.name)["groups"],
            "reused": True,
        }
    arrays: dict[str, np.ndarray] = {}
    found = []
    tile_dir = None if cache_dir is None else cache_dir / tile.name
    if tile_dir is not None:
        shutil.rmtree(tile_dir, ignore_errors=True)
    for gi, sci, wht in _singles(tile, groups, plan_info, params):
        if wht is None:
            continue
        if tile_dir is not None:
            _cache_single(tile_dir, gi, sci, wht)
        ws = weight_stats(wht)
        if ws.npix:
            arrays[f"v{gi}"] = ws.values
            arrays[f"c{gi}"] = ws.counts
            found.append(gi)
    if tile_dir is not None:
        tile_dir.mkdir(parents=True, exist_ok=True)
        (tile_dir / "complete").write_text(fp)
    _save_npz(stats_path, arrays)
    store.mark_done("outlier-weights", tile.name, fp, {"groups": found})
    return {"tile": tile.name, "groups": found, "reused": False}


def group_threshold(group: int, stats_paths: list[Path], maskpt: float) -> float:
    """Task: one group's weight threshold from its summaries over all tiles.

    Parameters
    ----------
    group : int
        Group index.
    stats_paths : list of Path
        The ``.npz`` files of the tiles where the group has weights.
    maskpt : float
        Step parameter ``maskpt``.

    Returns
    -------
    float
        ``stcal compute_weight_threshold`` of the group's whole single image (NaN when it has
        no weight at all).
    """
    stats = []
    for p in stats_paths:
        with np.load(p) as z:
            if f"v{group}" in z:
                stats.append(WeightStats(z[f"v{group}"], z[f"c{group}"]))
    return weight_threshold(combine_weight_stats(stats), maskpt)


def median_tile_task(
    tile: Tile,
    groups: GroupEntries,
    thresholds: dict[int, float] | None,
    plan_info: dict,
    params: dict,
    store_path: Path,
    fp: str,
    singles: dict[int, Path] | None = None,
    cache_dir: Path | None = None,
    cache_fp: str = "",
) -> dict:
    """Task (pass 2): median of the groups' single drizzles over one tile, into the store.

    Parameters
    ----------
    tile : Tile
        The output tile.
    groups : list
        ``(group index, [(exposure, pixel map)])`` of the groups reaching the tile.
    thresholds : dict or None
        Weight threshold of each group over its whole single image; None only when the tile is
        the whole grid (the thresholds are then computed here, exactly).
    plan_info : dict
        ``halo``, ``grid_shape``, ``pixel_scale_ratio``.
    params : dict
        From :func:`outlier_params`.
    store_path : Path
        The work store (plane ``median``).
    fp : str
        Fingerprint of the inputs, for the manifest.
    singles : dict, optional
        Group index -> store of that group's single (planes ``sci``, ``wht``), to save the
        singles (``save_intermediate_results``).
    cache_dir : Path, optional
        Where :func:`weights_tile` kept the singles; read from there when complete and written
        for ``cache_fp`` (the weights task's fingerprint), and removed once the median is
        written; drizzled again otherwise.
    cache_fp : str
        Fingerprint of the weights task whose singles may be read.

    Returns
    -------
    dict
        ``tile``, ``n_groups`` (groups with data in the tile), ``thresholds`` (when computed
        here), ``reused``.
    """
    store = MosaicStore(store_path)
    if store.is_done("outlier-median", tile.name, fp):
        info = store.done_info("outlier-median", tile.name)
        return {"tile": tile.name, "n_groups": info["n_groups"], "thresholds": None, "reused": True}
    ty, tx = tile.shape
    n = len(groups)
    sci = np.full((n, ty, tx), np.nan, np.float32)
    wht = np.zeros((n, ty, tx), np.float32)
    used = np.zeros(n, bool)
    tile_dir = None if cache_dir is None else cache_dir / tile.name
    marker = None if tile_dir is None else tile_dir / "complete"
    if marker is not None and marker.is_file() and marker.read_text() == cache_fp:
        source = _cached_singles(tile, groups, tile_dir)
    else:
        source = _singles(tile, groups, plan_info, params)
    for k, (gi, s, w) in enumerate(source):
        if s is None:
            continue
        sci[k], wht[k], used[k] = s, w, True
        if singles is not None:
            sub = MosaicStore(singles[gi])
            sub.write_tile("sci", tile.y0, tile.x0, s)
            sub.write_tile("wht", tile.y0, tile.x0, w)
        del s, w
    gids = [gi for gi, _ in groups]
    computed = None
    if thresholds is None:
        computed = {
            gi: weight_threshold(weight_stats(wht[k]), params["maskpt"])
            for k, gi in enumerate(gids)
        }
        thr = [computed[gi] for gi in gids]
    else:
        thr = [thresholds[gi] for gi in gids]
    if used.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = median_tile(sci[used], wht[used], np.asarray(thr)[used])
    else:
        med = np.full((ty, tx), np.nan, np.float32)
    del sci, wht
    store.write_tile("median", tile.y0, tile.x0, med)
    store.mark_done("outlier-median", tile.name, fp, {"n_groups": int(used.sum())})
    if tile_dir is not None:
        shutil.rmtree(tile_dir, ignore_errors=True)
    return {
        "tile": tile.name,
        "n_groups": int(used.sum()),
        "thresholds": computed,
        "reused": False,
    }


def _subtract_now(info: ExposureInfo) -> bool:
    """Whether skymatch ran with ``subtract=True`` and the level is still in ``info.path``.

    jwst then subtracts the level from the SCI array before outlier detection; here the crf file
    is where that happens (see :mod:`image3_dask.graph.skymatch`).
    """
    bkg = info.meta.get("background") or {}
    return (
        bool(bkg.get("subtracted"))
        and not info.background_subtracted
        and info.background_level is not None
    )


def _backg(info: ExposureInfo, params: dict) -> float:
    """Background added to the blot: the sky level when not subtracted, else ``backg`` (jwst)."""
    if info.background_subtracted is False and info.background_level is not None:
        return float(info.background_level)
    return float(params["backg"])


def _model_arrays(model) -> dict[str, np.ndarray | None]:
    out: dict[str, np.ndarray | None] = {}
    for name in ("data", "dq", "err", "var_rnoise", "var_poisson", "var_flat"):
        out[name] = np.asarray(getattr(model, name)) if name in model.instance else None
    return out


def _flag_and_write(
    info: ExposureInfo, reference: np.ndarray, params: dict, crf_path: Path, crf_meta: dict
) -> dict:
    """Flag one exposure against ``reference`` (blot or median) and write its crf file."""
    model = open_for_crf(info.path)
    try:
        a = _model_arrays(model)
        subtract = _subtract_now(info)
        if subtract:  # jwst flags the sky-subtracted SCI with the step's backg
            a["data"] = a["data"] - float(info.background_level)
            backg = float(params["backg"])
        else:
            backg = _backg(info, params)
        mask, dq = flag_outliers(
            a["data"],
            a["err"],
            a["dq"],
            reference,
            snr=params["snr"],
            scale=params["scale"],
            backg=backg if params["resample_data"] else 0.0,
            resample_data=params["resample_data"],
        )
        dq, (data, err, vr, vp, vf) = match_nans_and_flags(
            dq, a["data"], a["err"], a["var_rnoise"], a["var_poisson"], a["var_flat"]
        )
        arrays = {
            "data": data,
            "dq": dq,
            "err": err,
            "var_rnoise": vr,
            "var_poisson": vp,
            "var_flat": vf,
        }
        _save_crf(model, info, arrays, crf_path, crf_meta)
    finally:
        model.close()
    n = int(np.count_nonzero(mask))
    log.info("%s: %d pixels marked as outliers", info.name, n)
    return {"name": info.name, "n_flagged": n, "crf": str(crf_path), "subtracted": subtract}


def flag_exposure(
    info: ExposureInfo,
    ref: PixmapRef,
    store_path: Path,
    grid_shape: tuple[int, int],
    params: dict,
    crf_path: Path,
    crf_meta: dict,
) -> dict:
    """Task: blot the median onto one exposure, flag its outliers, write its crf file.

    Only the part of the median store that the exposure's pixel map reaches is read
    (:func:`~image3_dask.algorithms.blot.blot_region_bounds`).

    Returns
    -------
    dict
        ``name``, ``n_flagged`` (new outliers), ``crf`` (path).
    """
    pm = np.load(ref.path, mmap_mode="r")
    bounds = blot_region_bounds(pm, grid_shape)
    if bounds is None:
        blot = np.full(info.shape, np.nan, np.float32)
    else:
        ys, xs = bounds
        region = MosaicStore(store_path).read("median", ys, xs)
        blot = blot_median(region, (ys.start, xs.start), pm, grid_shape)
    del pm
    return _flag_and_write(info, blot, params, crf_path, crf_meta)


# --------------------------------------------------------------------------------------------
# tasks (resample_data=False)
# --------------------------------------------------------------------------------------------
def _exposure_weight(
    info: ExposureInfo, params: dict, region: tuple[slice, slice] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SCI and ``build_driz_weight`` of an exposure (region), as ``median_without_resampling``."""
    pix = read_pixels(info.path, arrays=("data", "dq", "var_rnoise"), region=region)
    if _subtract_now(info):
        pix.data = pix.data - float(info.background_level)
    w = build_weight(
        pix.dq,
        pix.var_rnoise,
        weight_type=params["weight_type"],
        good_bits=params["good_bits"],
        exptime=_time_for_weight(info),
    )
    return pix.data, w


def exposure_threshold(info: ExposureInfo, params: dict) -> float:
    """Task: weight threshold of one whole exposure (``resample_data=false``)."""
    _, w = _exposure_weight(info, params)
    return weight_threshold(weight_stats(w), params["maskpt"])


def median_exposures_tile(
    tile: Tile,
    exposures: list[ExposureInfo],
    thresholds: list[float],
    params: dict,
    store_path: Path,
    fp: str,
) -> dict:
    """Task: median of the exposures over one tile of the detector grid (``resample_data=false``)."""
    store = MosaicStore(store_path)
    if store.is_done("outlier-median", tile.name, fp):
        return {"tile": tile.name, "reused": True}
    ty, tx = tile.shape
    sci = np.empty((len(exposures), ty, tx), np.float32)
    wht = np.empty((len(exposures), ty, tx), np.float32)
    for k, e in enumerate(exposures):
        sci[k], wht[k] = _exposure_weight(e, params, tile.slices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = median_tile(sci, wht, thresholds)
    del sci, wht
    store.write_tile("median", tile.y0, tile.x0, med)
    store.mark_done("outlier-median", tile.name, fp)
    return {"tile": tile.name, "reused": False}


def flag_exposure_median(
    info: ExposureInfo, store_path: Path, params: dict, crf_path: Path, crf_meta: dict
) -> dict:
    """Task: flag one exposure against the median of the exposures (``resample_data=false``)."""
    median = MosaicStore(store_path).read("median")
    return _flag_and_write(info, median, params, crf_path, crf_meta)


def _save_crf(
    model, info: ExposureInfo, arrays: dict | None, crf_path: Path, crf_meta: dict
) -> None:
    """Put the new arrays, tweakreg's WCS and skymatch's metadata in ``model``; write the crf."""
    update_crf_model(
        model,
        arrays=arrays,
        wcs=info.wcs,
        background=crf_meta["background"],
        cal_steps=crf_meta["cal_steps"],
        s_region=crf_meta["s_region"],
        filename=crf_path.name,
    )
    save_model_atomic(model, crf_path)


def copy_as_crf(info: ExposureInfo, crf_path: Path, crf_meta: dict) -> dict:
    """Task: write the crf file of an exposure whose pixels are unchanged (step not done)."""
    model = open_for_crf(info.path)
    try:
        arrays = None
        if _subtract_now(info):
            arrays = {"data": np.asarray(model.data) - float(info.background_level)}
        _save_crf(model, info, arrays, crf_path, crf_meta)
    finally:
        model.close()
    return {"name": info.name, "n_flagged": 0, "crf": str(crf_path)}


# --------------------------------------------------------------------------------------------
# intermediate products
# --------------------------------------------------------------------------------------------
class _PlaneAlias:
    """A read-only view of a :class:`MosaicStore` whose plane names are mapped to others."""

    def __init__(self, store: MosaicStore, alias: dict[str, str]):
        self._store = store
        self._alias = alias

    def _name(self, name: str) -> str:
        return self._alias.get(name, name)

    def has(self, name: str) -> bool:
        return self._store.has(self._name(name))

    def shape(self, name: str) -> tuple[int, ...]:
        return self._store.shape(self._name(name))

    def read_chunks(self, name: str) -> tuple[int, ...]:
        return self._store.read_chunks(self._name(name))

    def read(
        self,
        name: str,
        ys: slice = slice(None),
        xs: slice = slice(None),
        plane: int | None = None,
    ) -> np.ndarray:
        return self._store.read(self._name(name), ys, xs, plane=plane)


def _intermediate_model(members: list[ExposureInfo], grid, params: dict, asn, wcs=None):
    """ImageModel metadata of a single or of the median (from the group's first exposure)."""
    from stdatamodels.jwst import datamodels

    from image3_dask.io.products import i2d_metadata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with datamodels.open(members[0].source_path or members[0].path) as ref:
            model = datamodels.ImageModel(None)
            model.update(ref)
    if grid is not None:
        i2d_metadata(model, members, grid, params, asn)
    else:
        model.meta.wcs = wcs
    return model


def write_single(
    members: list[ExposureInfo], grid, params: dict, asn, single_store: Path, out: Path
) -> str:
    """Task: stream one group's single drizzle from its store to ``*_outlier_i2d.fits``."""
    from image3_dask.io.i2d_writer import write_i2d

    model = _intermediate_model(members, grid, params, asn)
    model.meta.filename = out.name
    write_i2d(MosaicStore(single_store), model, out, arrays=["data", "wht"])
    return str(out)


def write_median(
    members: list[ExposureInfo], grid, params: dict, asn, store_path: Path, out: Path, wcs=None
) -> str:
    """Task: stream the median from the work store to ``<product>_median.fits``."""
    from image3_dask.io.i2d_writer import write_i2d

    model = _intermediate_model(members, grid, params, asn, wcs=wcs)
    model.meta.filename = out.name
    write_i2d(_PlaneAlias(MosaicStore(store_path), {"sci": "median"}), model, out, arrays=["data"])
    return str(out)


# --------------------------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------------------------
def _crf_meta(ctx, info: ExposureInfo, status: str) -> dict:
    """``meta.background``, ``meta.cal_step`` and ``s_region`` of a crf file, as jwst records them.

    tweakreg and skymatch leave what jwst would write in ``info.meta`` (``cal_step_tweakreg``,
    ``cal_step_skymatch``, ``background``, ``s_region``); a step that did not run in this
    pipeline is recorded as ``SKIPPED``, as stpipe does, and the file's own ``meta.background``
    is then kept.
    """
    cal_steps = {
        "tweakreg": info.meta.get("cal_step_tweakreg", "SKIPPED"),
        "skymatch": info.meta.get("cal_step_skymatch", "SKIPPED"),
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


def _base_fp(params: dict, exposures: list[ExposureInfo], grid_fp: str = "") -> dict:
    return {
        "params": {k: params[k] for k in sorted(params) if k != "save_intermediate_results"},
        "grid": grid_fp,
        "exposures": [_exposure_fp(e) for e in exposures],
    }


def _run_resampled(ctx, exposures, params, store_path: Path, crf_paths, crf_metas):
    groups = exposure_groups(exposures)
    gp = grid_params(params, dict(ctx.config["resample"]))
    plan: MosaicPlan = make_plan(ctx, exposures, gp, stage="outlier_detection")
    store = MosaicStore(store_path)
    store.create(plan.grid.shape, plan.tile_shape, ["median"], attrs={"product": ctx.product_name})
    plan_info = {
        "halo": plan.halo,
        "grid_shape": plan.grid.shape,
        "pixel_scale_ratio": plan.grid.pixel_scale_ratio or 1.0,
    }
    base = _base_fp(params, exposures, plan.grid_fp)
    light_groups = [(gid, [light(e) for e in members]) for gid, members in groups]
    tile_groups = {t.name: _tile_groups(plan, t, light_groups) for t in plan.tiles}
    tiles = [t for t in plan.tiles if tile_groups[t.name]]
    label = "outlier_detection"

    singles: dict[int, Path] | None = None
    if params["save_intermediate_results"]:
        singles = {}
        for gi in range(len(groups)):
            singles[gi] = ctx.work_dir / "outlier_singles" / f"{gi:04d}.zarr"
            MosaicStore(singles[gi]).create(plan.grid.shape, plan.tile_shape, ["sci", "wht"])

    def tile_fp(t: Tile, stage: str, extra=None) -> str:
        idx = [[gi, [e.index for e, _ in ent]] for gi, ent in tile_groups[t.name]]
        return fingerprint(
            {**base, "stage": stage, "tile": [t.y0, t.y1, t.x0, t.x1], "in": idx, "x": extra}
        )

    thresholds: dict[int, float] | None = None
    cache_dir: Path | None = None
    if len(plan.tiles) > 1:
        stats_dir = ctx.work_dir / "outlier_weights"
        cache_dir = ctx.work_dir / "outlier_singles_cache"
        tasks = [
            TaskSpec(
                "outlier-weights",
                t.name,
                weights_tile,
                (
                    t,
                    tile_groups[t.name],
                    plan_info,
                    params,
                    stats_dir / f"{t.name}.npz",
                    store_path,
                    tile_fp(t, "weights"),
                    cache_dir,
                ),
            )
            for t in tiles
        ]
        res = run_tasks(
            ctx.client, tasks, ctx.token, label=f"{label}: weights", progress=ctx.progress
        )
        by_group: dict[int, list[Path]] = {gi: [] for gi in range(len(groups))}
        for r in res:
            for gi in r["groups"]:
                by_group[gi].append(stats_dir / f"{r['tile']}.npz")
        tasks = [
            TaskSpec(
                "outlier-threshold",
                groups[gi][0],
                group_threshold,
                (gi, paths, params["maskpt"]),
            )
            for gi, paths in by_group.items()
        ]
        thr = run_tasks(
            ctx.client, tasks, ctx.token, label=f"{label}: thresholds", progress=ctx.progress
        )
        thresholds = dict(zip(by_group, thr, strict=True))
    tasks = [
        TaskSpec(
            "outlier-median",
            t.name,
            median_tile_task,
            (
                t,
                tile_groups[t.name],
                thresholds,
                plan_info,
                params,
                store_path,
                tile_fp(t, "median", thresholds),
                singles,
                cache_dir,
                tile_fp(t, "weights"),
            ),
        )
        for t in tiles
    ]
    res = run_tasks(ctx.client, tasks, ctx.token, label=f"{label}: median", progress=ctx.progress)
    if thresholds is None:
        thresholds = {}
        for r in res:
            thresholds.update(r["thresholds"] or {})
    for gi, (gid, _) in enumerate(groups):
        log.info("outlier_detection: group %s weight threshold %s", gid, thresholds.get(gi))
    ctx.shared["outlier_thresholds"] = {groups[gi][0]: v for gi, v in thresholds.items()}

    tasks = []
    if params["save_intermediate_results"]:
        assert singles is not None
        drz = {
            "pixfrac": params["pixfrac"],
            "kernel": params["kernel"],
            "fillval": params["fillval"],
            "weight_type": params["weight_type"],
        }
        outs = []
        for gi, (gid, members) in enumerate(groups):
            out = ctx.product_path(f"{gid}_outlier_i2d")
            outs.append(out)
            tasks.append(
                TaskSpec(
                    "outlier-single-i2d",
                    gid,
                    write_single,
                    (members, plan.grid, drz, ctx.asn, singles[gi], out),
                )
            )
        med_out = ctx.product_path("median")
        tasks.append(
            TaskSpec(
                "outlier-median-fits",
                ctx.product_name,
                write_median,
                (groups[0][1], plan.grid, drz, ctx.asn, store_path, med_out),
            )
        )
        ctx.products["outlier_i2d"] = outs
        ctx.products["median"] = med_out
    tasks += [
        TaskSpec(
            "outlier-flag",
            e.name,
            flag_exposure,
            (
                e,
                plan.pixmaps[e.index],
                store_path,
                plan.grid.shape,
                params,
                crf_paths[e.index],
                crf_metas[e.index],
            ),
        )
        for e in exposures
    ]
    res = run_tasks(ctx.client, tasks, ctx.token, label=f"{label}: flag", progress=ctx.progress)
    return [r for r in res if isinstance(r, dict)]


def _run_unresampled(ctx, exposures, params, store_path: Path, crf_paths, crf_metas):
    shapes = {e.shape for e in exposures}
    if len(shapes) != 1:
        raise InputError(
            "outlier_detection with resample_data=false needs exposures of one shape; got "
            + ", ".join(f"{e.name} {e.shape}" for e in exposures)
        )
    shape = exposures[0].shape
    label = "outlier_detection"
    ts = ctx.config["resample"].get("tile_shape")
    tile_shape = (
        (int(ts[0]), int(ts[1]))
        if ts
        else (min(DETECTOR_TILE, shape[0]), min(DETECTOR_TILE, shape[1]))
    )
    tiles = plan_tiles(shape, tile_shape)
    store = MosaicStore(store_path)
    store.create(shape, tile_shape, ["median"], attrs={"product": ctx.product_name})
    tasks = [
        TaskSpec("outlier-weights", e.name, exposure_threshold, (e, params)) for e in exposures
    ]
    thr = run_tasks(ctx.client, tasks, ctx.token, label=f"{label}: weights", progress=ctx.progress)
    ctx.shared["outlier_thresholds"] = {e.name: v for e, v in zip(exposures, thr, strict=True)}
    base = _base_fp(params, exposures)
    tasks = [
        TaskSpec(
            "outlier-median",
            t.name,
            median_exposures_tile,
            (
                t,
                [light(e) for e in exposures],
                thr,
                params,
                store_path,
                fingerprint({**base, "tile": [t.y0, t.y1, t.x0, t.x1], "thr": thr}),
            ),
        )
        for t in tiles
    ]
    run_tasks(ctx.client, tasks, ctx.token, label=f"{label}: median", progress=ctx.progress)
    tasks = []
    if params["save_intermediate_results"]:
        med_out = ctx.product_path("median")
        tasks.append(
            TaskSpec(
                "outlier-median-fits",
                ctx.product_name,
                write_median,
                (exposures[:1], None, params, ctx.asn, store_path, med_out, exposures[0].wcs),
            )
        )
        ctx.products["median"] = med_out
    tasks += [
        TaskSpec(
            "outlier-flag",
            e.name,
            flag_exposure_median,
            (e, store_path, params, crf_paths[e.index], crf_metas[e.index]),
        )
        for e in exposures
    ]
    res = run_tasks(ctx.client, tasks, ctx.token, label=f"{label}: flag", progress=ctx.progress)
    return [r for r in res if isinstance(r, dict)]


def run(ctx, exposures: list[ExposureInfo]) -> list[ExposureInfo]:
    """The outlier_detection step: flag outliers, write crf files, return the updated exposures.

    Parameters
    ----------
    ctx : RunContext
        The run (client, parameters, folders).
    exposures : list of ExposureInfo
        The exposures after tweakreg and skymatch.

    Returns
    -------
    list of ExposureInfo
        The exposures reading their pixels from their crf files (``path``); ``source_path``
        still names the original cal file. Unchanged when the step is not done (fewer than
        two exposures, as jwst).
    """
    params = outlier_params(dict(ctx.config["outlier_detection"]))
    save = bool(ctx.config["outlier_detection"].get("save_results", True))
    crf_paths = {e.index: _crf_path(ctx, e, save) for e in exposures}
    if len(exposures) < 2:
        # jwst: warn, record FAILED, and the pipeline still saves the (unchanged) crf files
        log.warning("Input only contains %d exposures", len(exposures))
        log.warning("Outlier detection will be skipped")
        if save:
            tasks = [
                TaskSpec(
                    "outlier-crf",
                    e.name,
                    copy_as_crf,
                    (e, crf_paths[e.index], _crf_meta(ctx, e, "FAILED")),
                )
                for e in exposures
            ]
            run_tasks(
                ctx.client, tasks, ctx.token, label="outlier_detection: crf", progress=ctx.progress
            )
            ctx.products["crf"] = [crf_paths[e.index] for e in exposures]
        return exposures
    crf_metas = {e.index: _crf_meta(ctx, e, "COMPLETE") for e in exposures}
    store_path = ctx.work_dir / "median.zarr"
    if params["resample_data"]:
        results = _run_resampled(ctx, exposures, params, store_path, crf_paths, crf_metas)
    else:
        results = _run_unresampled(ctx, exposures, params, store_path, crf_paths, crf_metas)
    flagged = {r["name"]: r["n_flagged"] for r in results if "n_flagged" in r}
    log.info(
        "outlier_detection: %d pixels flagged in %d exposures",
        sum(flagged.values()),
        len(flagged),
    )
    ctx.shared["outlier_flagged"] = flagged
    if save:
        ctx.products["crf"] = [crf_paths[e.index] for e in exposures]
    subtracted = {r["name"] for r in results if r.get("subtracted")}
    return [
        e.evolve(path=crf_paths[e.index], background_subtracted=True)
        if e.name in subtracted
        else e.evolve(path=crf_paths[e.index])
        for e in exposures
    ]
