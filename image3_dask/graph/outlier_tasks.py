"""Worker tasks of the outlier_detection step (the flow that submits them: :mod:`.outlier`).

With ``resample_data=true``, per output tile: :func:`weights_tile` (each exposure group's
single drizzle and its weight summary), per group :func:`group_threshold` (the ``maskpt``
threshold over the whole single), per tile :func:`median_tile_task` (the median into the work
store), and per exposure :func:`flag_exposure` (blot, flag, crf file). With
``resample_data=false``, per exposure :func:`exposure_threshold`, per detector tile
:func:`median_exposures_tile`, per exposure :func:`flag_exposure_median`.
"""

from __future__ import annotations

import logging
import posixpath
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
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
from image3_dask.algorithms.tiles import Tile
from image3_dask.graph.drizzle_inputs import drizzle_inputs_for_region, time_for_weight
from image3_dask.graph.plan import GridInfo, PixmapRef
from image3_dask.io.crf import open_for_crf, write_crf
from image3_dask.io.exposures import ExposureInfo, read_pixels
from image3_dask.io.mosaic_store import MosaicStore
from image3_dask.io.storage import Location, location, rmtree
from image3_dask.io.work_files import load_npy, load_npz, save_npz

log = logging.getLogger("image3_dask")

__all__ = [
    "GroupEntries",
    "OutlierParams",
    "copy_as_crf",
    "subtracts_sky_now",
    "exposure_threshold",
    "flag_exposure",
    "flag_exposure_median",
    "group_threshold",
    "median_exposures_tile",
    "median_tile_task",
    "weights_tile",
    "write_median",
    "write_single",
]


@dataclass(frozen=True)
class OutlierParams:
    """The outlier_detection step's options (jwst names), as its tasks use them."""

    weight_type: str = "ivm"
    pixfrac: float = 1.0
    kernel: str = "square"
    fillval: str = "NAN"
    good_bits: str = "~DO_NOT_USE"
    maskpt: float = 0.7
    snr: str = "5.0 4.0"
    scale: str = "1.2 0.7"
    backg: float = 0.0
    resample_data: bool = True
    save_intermediate_results: bool = False
    pixmap_stepsize: float = 1.0
    pixmap_order: int = 1
    pixmap_max_error: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> OutlierParams:
        """From the step's parameters (``ctx.config["outlier_detection"]``).

        Raises
        ------
        ValueError
            When ``snr`` or ``scale`` is not two numbers (the message names the parameter).
        """
        for name in ("snr", "scale"):
            try:
                parse_pair(cfg[name])
            except ValueError as exc:
                raise ValueError(f"steps.outlier_detection.{name}: {exc}") from None
        return cls(
            weight_type=cfg["weight_type"],
            pixfrac=float(cfg["pixfrac"]),
            kernel=cfg["kernel"],
            fillval=cfg["fillval"],
            good_bits=cfg["good_bits"],
            maskpt=float(cfg["maskpt"]),
            snr=cfg["snr"],
            scale=cfg["scale"],
            backg=float(cfg["backg"] or 0.0),
            resample_data=bool(cfg["resample_data"]),
            save_intermediate_results=bool(cfg["save_intermediate_results"]),
            pixmap_stepsize=float(cfg.get("pixmap_stepsize") or 1.0),
            pixmap_order=int(cfg.get("pixmap_order") or 1),
            pixmap_max_error=float(cfg.get("pixmap_max_error") or 0.0),
        )

    def fingerprint(self) -> dict:
        """What the step's products depend on (not whether intermediates are saved)."""
        out = asdict(self)
        out.pop("save_intermediate_results")
        return out


#: ``(group index, [(exposure, pixel map)])`` of the exposure groups reaching a tile.
GroupEntries = list[tuple[int, list[tuple[ExposureInfo, PixmapRef]]]]


def _drizzle_groups(
    tile: Tile, groups: GroupEntries, grid: GridInfo, params: OutlierParams
) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None]]:
    """Drizzle every group of ``groups`` into ``tile`` alone; yield ``(group, sci, wht)``.

    One group's input crops are held at a time; the outputs are cropped to the tile.
    """
    region = tile.padded(grid.halo, grid.grid_shape)
    shape = (region[1] - region[0], region[3] - region[2])
    for gi, entries in groups:
        inputs = drizzle_inputs_for_region(
            entries,
            region,
            grid.halo,
            weight_type=params.weight_type,
            good_bits=params.good_bits,
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
                kernel=params.kernel,
                pixfrac=params.pixfrac,
                fillval=params.fillval,
                pixel_scale_ratio=grid.pixel_scale_ratio,
                weight_type=params.weight_type,
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
    """The singles that :func:`weights_tile` kept in ``tile_dir``, as :func:`_drizzle_groups` yields them."""
    for gi, _ in groups:
        path = tile_dir / f"g{gi}.npz"
        if not path.is_file():
            yield gi, None, None
            continue
        z = load_npz(path)
        y0, y1, x0, x1 = (int(v) for v in z["box"])
        sci = np.full(tile.shape, np.nan, np.float32)
        wht = np.zeros(tile.shape, np.float32)
        sci[y0:y1, x0:x1] = z["sci"]
        wht[y0:y1, x0:x1] = z["wht"]
        yield gi, sci, wht


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    save_npz(path, arrays)


def weights_tile(
    tile: Tile,
    groups: GroupEntries,
    grid: GridInfo,
    params: OutlierParams,
    stats_path: Path,
    cache_dir: Path | None = None,
    cache_tag: str = "",
) -> dict:
    """Task (pass 1): weight summaries of each group's single drizzle over one tile.

    The summaries (:class:`~image3_dask.algorithms.median.WeightStats`) are saved in
    ``stats_path`` as arrays ``v<group>`` (values) and ``c<group>`` (counts). With
    ``cache_dir``, the singles themselves are kept in ``cache_dir/<tile>/`` (cropped to where
    they have data) and marked complete with ``cache_tag``, so that the median pass reads them
    instead of drizzling them again.

    Returns
    -------
    dict
        ``tile``, ``stats`` (``stats_path``), ``groups`` (indices with weights in the tile).
    """
    arrays: dict[str, np.ndarray] = {}
    found = []
    tile_dir = None if cache_dir is None else cache_dir / tile.name
    if tile_dir is not None:
        rmtree(tile_dir)
    for gi, sci, wht in _drizzle_groups(tile, groups, grid, params):
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
        (tile_dir / "complete").write_text(cache_tag)
    _save_npz(stats_path, arrays)
    return {"tile": tile.name, "stats": str(stats_path), "groups": found}


def group_threshold(
    group: int, weights: list[dict], maskpt: float, stats_dir: Location | None = None
) -> float:
    """Task: one group's weight threshold from its summaries over all tiles.

    Parameters
    ----------
    group : int
        Group index.
    weights : list of dict
        The results of :func:`weights_tile` for the tiles the group may reach.
    maskpt : float
        Step parameter ``maskpt``.
    stats_dir : Path or RemotePath, optional
        Folder of the summaries (default: the paths in ``weights``).

    Returns
    -------
    float
        ``stcal compute_weight_threshold`` of the group's whole single image (NaN when it has
        no weight at all).
    """
    stats = []
    for w in weights:
        if group not in w["groups"]:
            continue
        name = w["stats"]
        # the folder of the summaries (it carries an object store's options; results hold names)
        z = load_npz(location(name) if stats_dir is None else stats_dir / posixpath.basename(name))
        stats.append(WeightStats(z[f"v{group}"], z[f"c{group}"]))
    return weight_threshold(combine_weight_stats(stats), maskpt)


def median_tile_task(
    tile: Tile,
    groups: GroupEntries,
    thresholds: dict[int, float] | None,
    grid: GridInfo,
    params: OutlierParams,
    store_path: Path,
    single_stores: dict[int, Path] | None = None,
    cache_dir: Path | None = None,
    cache_tag: str = "",
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
    grid : GridInfo
        Halo, grid shape, pixel scale ratio.
    params : OutlierParams
        The step's options.
    store_path : Path
        The work store (plane ``median``).
    single_stores : dict, optional
        Group index -> store of that group's single drizzle (planes ``sci``, ``wht``), to save
        them as products (``save_intermediate_results``).
    cache_dir : Path, optional
        Where :func:`weights_tile` kept the singles: read from there when marked complete with
        ``cache_tag`` (the same inputs), drizzled again otherwise; removed once the median is
        written.
    cache_tag : str
        What the cached singles must have been made from.

    Returns
    -------
    dict
        ``tile``, ``n_groups`` (groups with data in the tile), ``thresholds`` (when computed
        here, as a list of ``[group, threshold]``).
    """
    ty, tx = tile.shape
    n = len(groups)
    sci = np.full((n, ty, tx), np.nan, np.float32)
    wht = np.zeros((n, ty, tx), np.float32)
    used = np.zeros(n, bool)
    tile_dir = None if cache_dir is None else cache_dir / tile.name
    marker = None if tile_dir is None else tile_dir / "complete"
    if marker is not None and marker.is_file() and marker.read_text() == cache_tag:
        source = _cached_singles(tile, groups, tile_dir)
    else:
        source = _drizzle_groups(tile, groups, grid, params)
    for k, (gi, s, w) in enumerate(source):
        if s is None:
            continue
        sci[k], wht[k], used[k] = s, w, True
        if single_stores is not None:
            sub = MosaicStore(single_stores[gi])
            sub.write_tile("sci", tile.y0, tile.x0, s)
            sub.write_tile("wht", tile.y0, tile.x0, w)
        del s, w
    gids = [gi for gi, _ in groups]
    computed = None
    if thresholds is None:
        computed = [
            [gi, weight_threshold(weight_stats(wht[k]), params.maskpt)] for k, gi in enumerate(gids)
        ]
        thr = [t for _, t in computed]
    else:
        thr = [thresholds[gi] for gi in gids]
    if used.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = median_tile(sci[used], wht[used], np.asarray(thr)[used])
    else:
        med = np.full((ty, tx), np.nan, np.float32)
    del sci, wht
    MosaicStore(store_path).write_tile("median", tile.y0, tile.x0, med)
    if tile_dir is not None:
        rmtree(tile_dir)
    return {"tile": tile.name, "n_groups": int(used.sum()), "thresholds": computed}


def subtracts_sky_now(info: ExposureInfo) -> bool:
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


def _blot_background(info: ExposureInfo, params: OutlierParams) -> float:
    """Background added to the blot: the sky level when not subtracted, else ``backg`` (jwst)."""
    if info.background_subtracted is False and info.background_level is not None:
        return float(info.background_level)
    return float(params.backg)


def _model_arrays(model) -> dict[str, np.ndarray | None]:
    out: dict[str, np.ndarray | None] = {}
    for name in ("data", "dq", "err", "var_rnoise", "var_poisson", "var_flat"):
        out[name] = np.asarray(getattr(model, name)) if name in model.instance else None
    return out


def _flag_and_write(
    info: ExposureInfo, reference: np.ndarray, params: OutlierParams, crf_path: Path, crf_meta: dict
) -> dict:
    """Flag one exposure against ``reference`` (blot or median) and write its crf file."""
    model = open_for_crf(info.path)
    try:
        a = _model_arrays(model)
        subtract = subtracts_sky_now(info)
        if subtract:  # jwst flags the sky-subtracted SCI with the step's backg
            a["data"] = a["data"] - float(info.background_level)
            backg = float(params.backg)
        else:
            backg = _blot_background(info, params)
        mask, dq = flag_outliers(
            a["data"],
            a["err"],
            a["dq"],
            reference,
            snr=params.snr,
            scale=params.scale,
            backg=backg if params.resample_data else 0.0,
            resample_data=params.resample_data,
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
        write_crf(model, crf_path, arrays=arrays, wcs=info.wcs, **crf_meta)
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
    params: OutlierParams,
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
    pm = load_npy(ref.path)
    bounds = blot_region_bounds(pm, grid_shape)
    if bounds is None:
        blot = np.full(info.shape, np.nan, np.float32)
    else:
        ys, xs = bounds
        region = MosaicStore(store_path).read("median", ys, xs)
        blot = blot_median(region, (ys.start, xs.start), pm, grid_shape)
    del pm
    return _flag_and_write(info, blot, params, crf_path, crf_meta)


def _exposure_weight(
    info: ExposureInfo, params: OutlierParams, region: tuple[slice, slice] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SCI and ``build_driz_weight`` of an exposure (region), as ``median_without_resampling``."""
    pix = read_pixels(info.path, arrays=("data", "dq", "var_rnoise"), region=region)
    if subtracts_sky_now(info):
        pix.data = pix.data - float(info.background_level)
    w = build_weight(
        pix.dq,
        pix.var_rnoise,
        weight_type=params.weight_type,
        good_bits=params.good_bits,
        exptime=time_for_weight(info),
    )
    return pix.data, w


def exposure_threshold(info: ExposureInfo, params: OutlierParams) -> float:
    """Task: weight threshold of one whole exposure (``resample_data=false``)."""
    _, w = _exposure_weight(info, params)
    return weight_threshold(weight_stats(w), params.maskpt)


def median_exposures_tile(
    tile: Tile,
    exposures: list[ExposureInfo],
    thresholds: list[float],
    params: OutlierParams,
    store_path: Path,
) -> dict:
    """Task: median of the exposures over one tile of the detector grid (``resample_data=false``)."""
    ty, tx = tile.shape
    sci = np.empty((len(exposures), ty, tx), np.float32)
    wht = np.empty((len(exposures), ty, tx), np.float32)
    for k, e in enumerate(exposures):
        sci[k], wht[k] = _exposure_weight(e, params, tile.slices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = median_tile(sci, wht, thresholds)
    del sci, wht
    MosaicStore(store_path).write_tile("median", tile.y0, tile.x0, med)
    return {"tile": tile.name}


def flag_exposure_median(
    info: ExposureInfo, store_path: Path, params: OutlierParams, crf_path: Path, crf_meta: dict
) -> dict:
    """Task: flag one exposure against the median of the exposures (``resample_data=false``)."""
    median = MosaicStore(store_path).read("median")
    return _flag_and_write(info, median, params, crf_path, crf_meta)


def copy_as_crf(info: ExposureInfo, crf_path: Path, crf_meta: dict) -> dict:
    """Task: write the crf file of an exposure whose pixels are unchanged (step not done)."""
    model = open_for_crf(info.path)
    try:
        arrays = None
        if subtracts_sky_now(info):
            arrays = {"data": np.asarray(model.data) - float(info.background_level)}
        write_crf(model, crf_path, arrays=arrays, wcs=info.wcs, **crf_meta)
    finally:
        model.close()
    return {"name": info.name, "n_flagged": 0, "crf": str(crf_path)}


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


def _intermediate_model(members: list[ExposureInfo], grid, drizzle_options: dict, asn, wcs=None):
    """ImageModel metadata of a single or of the median (from the group's first exposure)."""
    from stdatamodels.jwst import datamodels

    from image3_dask.io.datamodel_files import open_datamodel
    from image3_dask.io.products import i2d_metadata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_datamodel(members[0].source_path or members[0].path) as ref:
            model = datamodels.ImageModel(None)
            model.update(ref)
    if grid is not None:
        i2d_metadata(model, members, grid, drizzle_options, asn)
    else:
        model.meta.wcs = wcs
    return model


def write_single(
    members: list[ExposureInfo], grid, drizzle_options: dict, asn, single_store: Path, out: Path
) -> str:
    """Task: stream one group's single drizzle from its store to ``*_outlier_i2d.fits``."""
    from image3_dask.io.i2d_writer import write_i2d

    model = _intermediate_model(members, grid, drizzle_options, asn)
    model.meta.filename = out.name
    write_i2d(MosaicStore(single_store), model, out, arrays=["data", "wht"])
    return str(out)


def write_median(
    members: list[ExposureInfo],
    grid,
    drizzle_options: dict,
    asn,
    store_path: Path,
    out: Path,
    wcs=None,
) -> str:
    """Task: stream the median from the work store to ``<product>_median.fits``."""
    from image3_dask.io.i2d_writer import write_i2d

    model = _intermediate_model(members, grid, drizzle_options, asn, wcs=wcs)
    model.meta.filename = out.name
    write_i2d(_PlaneAlias(MosaicStore(store_path), {"sci": "median"}), model, out, arrays=["data"])
    return str(out)
