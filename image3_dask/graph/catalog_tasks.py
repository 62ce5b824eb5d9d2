"""Worker tasks of the source_catalog step (the flow that submits them: :mod:`.catalog`).

Single frame: :func:`frame_task`. Tiled: :func:`background_task` (mesh statistics per tile),
:func:`detect_task` (labels per tile and halo), :func:`measure_task` (a group of segments on its
cutout), :func:`segm_task` (final ids into a tile of the ``segm`` plane); then
:func:`write_segm_task` streams ``<product>_segm.fits``.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import QTable

from image3_dask.algorithms.catalog import (
    BackgroundMesh,
    CatalogParams,
    GroupResult,
    IdMap,
    TileDetection,
    coverage_mask,
    detect_tile,
    detection_halo,
    make_source_catalog,
    measure_group,
    mesh_statistics,
    segmentation_tile,
    to_jy,
)
from image3_dask.algorithms.tiles import Tile
from image3_dask.io.catalog_products import (
    SEGM_PLANE,
    ensure_plane,
    segm_model_from_i2d,
    write_segm,
)
from image3_dask.io.mosaic_store import MosaicStore

log = logging.getLogger("image3_dask")

__all__ = [
    "MosaicInfo",
    "RefData",
    "background_task",
    "detect_task",
    "frame_task",
    "measure_task",
    "segm_task",
    "write_segm_task",
]


@dataclass(frozen=True)
class MosaicInfo:
    """What the catalog needs to know about the mosaic (small; sent to tasks).

    Attributes
    ----------
    i2d : Path
        The ``*_i2d.fits`` file.
    store : Path or None
        Its Zarr store (``*_i2d.zarr``) when present and consistent with the file.
    shape : tuple of int
        ``(ny, nx)``.
    pixel_area_sr : float
        ``meta.photometry.pixelarea_steradians`` (MJy/sr -> Jy).
    reference_pixel : tuple of float
        0-based ``(x, y)`` of the WCS reference pixel (``CRPIX - 1``, as jwst).
    wcs : object
        The mosaic gwcs.
    """

    i2d: Path
    store: Path | None
    shape: tuple[int, int]
    pixel_area_sr: float
    reference_pixel: tuple[float, float]
    wcs: Any


@dataclass(frozen=True)
class RefData:
    """Aperture parameters and AB-Vega offset, and where they came from.

    Attributes
    ----------
    aperture_params : dict
        Radii (mosaic pixels), corrections, encircled energies, background annulus.
    abvega_offset : float
        ``m_AB - m_Vega``.
    source : str
        Human-readable origin (logged).
    uncorrected : tuple of str
        What the photometry lacks for want of reference files (empty when corrected).
    """

    aperture_params: dict[str, Any]
    abvega_offset: float
    source: str
    uncorrected: tuple[str, ...] = ()


def _read_window(store_path: Path, window: tuple[slice, slice], pixel_area_sr: float, err=True):
    store = MosaicStore(store_path)
    ys, xs = window
    sci = np.asarray(store.read("sci", ys, xs), dtype=np.float32)
    errv = np.asarray(store.read("err", ys, xs), dtype=np.float32)
    wht = np.asarray(store.read("wht", ys, xs), dtype=np.float32)
    cover = coverage_mask(errv, wht)
    return to_jy(sci, pixel_area_sr), (to_jy(errv, pixel_area_sr) if err else None), cover


def frame_task(
    info: MosaicInfo,
    params: CatalogParams,
    refdata: RefData,
    extra_meta: dict,
    segm_store: Path,
    segm_chunks: tuple[int, int],
) -> QTable:
    """Task: the single-frame catalog of the mosaic; the segmentation goes to ``segm_store``.

    The mosaic is read from its Zarr store when there is one (the i2d FITS file may still be
    being written from it), else from the i2d file.

    Returns
    -------
    astropy.table.QTable
        The catalog (empty when nothing is detected).
    """
    from image3_dask.io.storage import open_fits

    if info.store is not None:
        store = MosaicStore(info.store)
        sci, err, wht = (np.asarray(store.read(p), dtype=np.float32) for p in ("sci", "err", "wht"))
    else:
        with open_fits(info.i2d, memmap=False) as hdul:
            sci = np.asarray(hdul["SCI"].data, dtype=np.float32)
            err = np.asarray(hdul["ERR"].data, dtype=np.float32)
            wht = np.asarray(hdul["WHT"].data, dtype=np.float32) if "WHT" in hdul else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cat, segm = make_source_catalog(
            sci,
            err,
            info.wcs,
            wht=wht,
            pixel_area_sr=info.pixel_area_sr,
            aperture_params=refdata.aperture_params,
            abvega_offset=refdata.abvega_offset,
            reference_pixel=info.reference_pixel,
            params=params,
        )
    del sci, err, wht
    if len(cat):
        cat.meta.update(extra_meta)
        ensure_plane(segm_store, SEGM_PLANE, info.shape, segm_chunks)
        MosaicStore(segm_store).write_tile(SEGM_PLANE, 0, 0, segm.astype(np.uint32))
    return cat


def background_task(
    info: MosaicInfo, tile: Tile, box: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Task: background box statistics of one tile (tile origin on the box grid).

    Returns
    -------
    background, rms : numpy.ndarray
        Box statistics (NaN for rejected boxes).
    n_good : int
        Covered finite pixels of the tile.
    """
    data, _, cover = _read_window(info.store, tile.slices, info.pixel_area_sr, err=False)
    values = data.value
    bkg, rms, _ = mesh_statistics(values, cover, box)
    return bkg, rms, int(np.count_nonzero(np.isfinite(values) & ~cover))


def detect_task(
    info: MosaicInfo, tile: Tile, mesh: BackgroundMesh, params: CatalogParams, labels_path: Path
) -> TileDetection:
    """Task: detect and label one tile (core plus halo); local labels go to ``labels_path``.

    Returns
    -------
    TileDetection
        Summaries for the join; ``labels`` is left empty (it is in the work store).
    """
    halo = detection_halo(params.kernel_fwhm)
    y0, y1, x0, x1 = tile.padded(halo, info.shape)
    win = (slice(y0, y1), slice(x0, x1))
    data, _, cover = _read_window(info.store, win, info.pixel_area_sr, err=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        det = detect_tile(data, cover, mesh, window=win, core=tile.slices, params=params)
    MosaicStore(labels_path).write_tile("labels", tile.y0, tile.x0, det.labels)
    return dataclasses.replace(det, labels=np.zeros((0, 0), np.int32))


def measure_task(
    info: MosaicInfo,
    rows: QTable,
    window: tuple[slice, slice],
    mesh: BackgroundMesh,
    aperture_params: dict,
    params: CatalogParams,
) -> GroupResult:
    """Task: deblend and measure a group of segments on its cutout of the mosaic."""
    data, error, cover = _read_window(info.store, window, info.pixel_area_sr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return measure_group(
            data,
            error,
            cover,
            mesh,
            rows,
            window=window,
            aperture_params=aperture_params,
            params=params,
        )


def segm_task(
    det: TileDetection,
    tile: Tile,
    lut: np.ndarray,
    patches: list,
    idmap: IdMap,
    labels_path: Path,
    segm_store: Path,
) -> str:
    """Task: paint the final source ids of one tile into the segmentation plane."""
    labels = np.asarray(MosaicStore(labels_path).read("labels", *tile.slices), dtype=np.int32)
    out = segmentation_tile(dataclasses.replace(det, labels=labels), lut, patches, idmap)
    MosaicStore(segm_store).write_tile(SEGM_PLANE, tile.y0, tile.x0, out.astype(np.uint32))
    return tile.name


def write_segm_task(i2d_meta, segm_store: Path, out: Path) -> str:
    """Task: ``<product>_segm.fits`` streamed from the segmentation plane of ``segm_store``."""
    write_segm(segm_model_from_i2d(i2d_meta, out.name), segm_store, out)
    log.info("Wrote segmentation map: %s", out.name)
    return str(out)
