"""Files of the source_catalog step: reference tables in, ``_cat.ecsv`` and ``_segm.fits`` out.

* ``override_apcorr`` (an ApcorrModel FITS file) and ``override_abvegaoffset`` (an
  ABVegaOffsetModel ASDF file) are read with stdatamodels into the plain tables that
  :mod:`image3_dask.algorithms.catalog.refdata` selects rows from.
* :func:`read_i2d_meta` reads the metadata and WCS of an ``*_i2d.fits`` mosaic without its
  arrays (stdatamodels would load every extension), so that the client never holds a mosaic.
* :func:`write_catalog` writes the catalog as the official step does (an astropy QTable in
  ECSV, with its metadata), under a temporary name renamed into place.
* :func:`write_segm` writes ``<product>_segm.fits``: a SegmentationMapModel whose metadata is
  copied from the mosaic as jwst's ``SourceCatalogStep`` does (primary-header metadata, then
  ``meta.wcs`` and ``meta.wcsinfo``); the headers come from stdatamodels (via
  :func:`image3_dask.io.i2d_writer.template_headers`, as for the i2d) and the ``SCI`` array is
  streamed a strip of rows at a time from a Zarr plane, so the map never has to fit in memory.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from astropy.io import fits
from astropy.table import QTable, Table

from image3_dask.errors import InputError
from image3_dask.io.atomic import atomic_output
from image3_dask.io.i2d_writer import append_asdf_hdu, stream_image_hdu, template_headers
from image3_dask.io.mosaic_store import MosaicStore, compressors
from image3_dask.io.storage import Location, RemotePath, location, open_fits, zarr_store

__all__ = [
    "SEGM_PLANE",
    "ensure_plane",
    "read_abvega_table",
    "read_apcorr_table",
    "read_i2d_meta",
    "segm_model_from_i2d",
    "write_catalog",
    "write_segm",
]

#: Name of the segmentation plane in a mosaic store.
SEGM_PLANE = "segm"

# uint32 values are stored in FITS as int32 with BZERO = 2**31 (what astropy writes).
_UINT32_BZERO = np.uint32(2**31)


def read_apcorr_table(path: str | os.PathLike, what: str = "override_apcorr") -> Table:
    """Read the ``apcorr_table`` of an APCORR reference file (an ApcorrModel FITS file).

    Parameters
    ----------
    path : path-like
        ``override_apcorr``, or the file CRDS gave.
    what : str
        How error messages name the file.

    Returns
    -------
    astropy.table.Table
        Columns ``eefraction, radius, apcorr, skyin, skyout`` plus the selector columns
        (``filter``, ``pupil`` or ``subarray``).

    Raises
    ------
    InputError
        When the file is missing, unreadable or holds no aperture-correction table.
    """
    from stdatamodels.jwst import datamodels

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with datamodels.open(path) as model:
                table = getattr(model, "apcorr_table", None)
                table = None if table is None else Table(np.array(table))
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the file's fault
        raise InputError(
            f"{path}: {what} is not a readable APCORR (ApcorrModel) file: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if table is None or len(table) == 0:
        raise InputError(f"{path}: {what} holds no apcorr_table")
    missing = {"eefraction", "radius", "apcorr", "skyin", "skyout"} - set(table.colnames)
    if missing:
        raise InputError(f"{path}: {what} table lacks columns {sorted(missing)}")
    return table


def read_abvega_table(path: str | os.PathLike, what: str = "override_abvegaoffset") -> Table:
    """Read the ``abvega_offset`` table of an ABVEGAOFFSET file (ABVegaOffsetModel ASDF).

    Parameters
    ----------
    path : path-like
        ``override_abvegaoffset``, or the file CRDS gave.
    what : str
        How error messages name the file.

    Returns
    -------
    astropy.table.Table
        Column ``abvega_offset`` plus selector columns (``filter``, ``pupil``, ``detector``).

    Raises
    ------
    InputError
        When the file is missing, unreadable or holds no offset table.
    """
    from stdatamodels.jwst.datamodels import ABVegaOffsetModel

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with ABVegaOffsetModel(str(path)) as model:
                table = model.abvega_offset
                table = None if table is None else Table(table)
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            f"{path}: {what} is not a readable ABVEGAOFFSET "
            f"(ABVegaOffsetModel) file: {type(exc).__name__}: {exc}"
        ) from None
    if table is None or len(table) == 0 or "abvega_offset" not in table.colnames:
        raise InputError(f"{path}: {what} holds no abvega_offset table")
    return table


def read_i2d_meta(path: str | os.PathLike) -> tuple[Any, tuple[int, int]]:
    """Metadata (an ImageModel without arrays) and shape of an ``*_i2d.fits`` mosaic.

    Only the headers and the ASDF extension are read. A file whose ASDF tree cannot be
    read on its own (e.g. written by another tool) is opened with stdatamodels instead.

    Parameters
    ----------
    path : path-like
        The mosaic.

    Returns
    -------
    model : stdatamodels.jwst.datamodels.ImageModel
        Model holding ``meta`` (with ``meta.wcs``); its arrays are not the mosaic's.
    shape : tuple of int
        ``(ny, nx)`` of the ``SCI`` extension.

    Raises
    ------
    InputError
        When the file cannot be read as an i2d mosaic.
    """
    import asdf
    from stdatamodels.jwst import datamodels

    from image3_dask.io.datamodel_files import open_datamodel

    path = location(path)
    try:
        with open_fits(path, memmap=True, lazy_load_hdus=True) as hdul:
            sci = hdul["SCI"].header
            shape = (int(sci["NAXIS2"]), int(sci["NAXIS1"]))
            raw = hdul["ASDF"].data["ASDF_METADATA"][0].tobytes() if "ASDF" in hdul else None
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: not a readable i2d mosaic ({exc})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if raw is None:
                raise ValueError("no ASDF extension")
            with asdf.open(io.BytesIO(raw), lazy_load=False, memmap=False) as af:
                meta = af.tree["meta"]
                model = datamodels.ImageModel()
                model._instance["meta"] = meta  # noqa: SLF001 - as write_i2d builds trees
                _ = model.meta.wcs  # resolved now, while the file is open
                model = model.copy()
        except Exception:  # noqa: BLE001 - fall back to the full reader
            with open_datamodel(path) as full:
                model = datamodels.ImageModel()
                model.update(full)
                model.meta.wcs = full.meta.wcs
                model.meta.wcsinfo = full.meta.wcsinfo
    return model, shape


def segm_model_from_i2d(i2d_meta, filename: str):
    """The metadata of ``<product>_segm.fits`` as jwst's SourceCatalogStep sets it.

    Parameters
    ----------
    i2d_meta : stdatamodels.jwst.datamodels.ImageModel
        The mosaic's metadata (:func:`read_i2d_meta`).
    filename : str
        ``meta.filename`` of the segmentation map.

    Returns
    -------
    stdatamodels.jwst.datamodels.SegmentationMapModel
        Model with 1x1 data (the array is streamed by :func:`write_segm`).
    """
    from stdatamodels.jwst import datamodels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = datamodels.SegmentationMapModel(np.zeros((1, 1), np.uint32))
        model.update(i2d_meta, only="PRIMARY")
        model.meta.wcs = i2d_meta.meta.wcs
        model.meta.wcsinfo = i2d_meta.meta.wcsinfo
        model.meta.filename = filename
        # the catalog's reference files (no FITS keywords, so not copied with the header)
        refs = i2d_meta.meta.ref_file.instance
        model.meta.ref_file.instance.update(
            {k: dict(refs[k]) for k in ("apcorr", "abvegaoffset") if k in refs}
        )
    return model


def write_catalog(catalog: QTable, out_path: str | os.PathLike | RemotePath) -> Location:
    """Write the catalog as ECSV (jwst: ``catalog.write(path, format="ascii.ecsv")``).

    Parameters
    ----------
    catalog : astropy.table.QTable
        The source catalog with its metadata.
    out_path : path-like
        ``<product>_cat.ecsv``; written under a temporary name, then renamed.

    Returns
    -------
    Path
        ``out_path``.
    """
    out_path = location(out_path)
    with atomic_output(out_path, ".ecsv") as tmp:
        catalog.write(tmp, format="ascii.ecsv", overwrite=True)
    return out_path


def ensure_plane(
    store_path: str | os.PathLike,
    name: str,
    shape: tuple[int, int],
    chunks: tuple[int, int],
    dtype: str = "uint32",
) -> None:
    """Create (or recreate when different) a 2-D plane chunked like the catalog tiles.

    Parameters
    ----------
    store_path : path-like
        Zarr group (the mosaic store, or a work store that is created if missing).
    name : str
        Plane name (e.g. :data:`SEGM_PLANE`).
    shape, chunks : tuple of int
        Plane shape and chunk (tile) shape.
    dtype : str
        Data type.
    """
    group = zarr.open_group(zarr_store(location(store_path)), mode="a")
    if name in group:
        arr = group[name]
        if arr.shape == tuple(shape) and arr.chunks == tuple(chunks) and str(arr.dtype) == dtype:
            return
        del group[name]
    group.create_array(
        name,
        shape=tuple(shape),
        chunks=tuple(chunks),
        dtype=dtype,
        fill_value=0,
        dimension_names=("y", "x"),
        compressors=compressors(),
    )


def write_segm(
    model,
    store_path: str | os.PathLike,
    out_path: str | os.PathLike | RemotePath,
    plane: str = SEGM_PLANE,
    rows_per_strip: int | None = None,
) -> Location:
    """Write ``<product>_segm.fits`` from a segmentation plane, one strip of rows at a time.

    Parameters
    ----------
    model : stdatamodels.jwst.datamodels.SegmentationMapModel
        Metadata of the product (:func:`segm_model_from_i2d`); its array is ignored.
    store_path : path-like
        Zarr group holding ``plane``.
    out_path : path-like
        Final file name (written under a temporary name, then renamed).
    plane : str
        Plane holding the source ids (uint32).
    rows_per_strip : int, optional
        Rows read at a time (default: the plane's chunk height).

    Returns
    -------
    Path
        ``out_path``.
    """
    out_path = location(out_path)
    store = MosaicStore(store_path)
    shape = store.shape(plane)
    step = int(rows_per_strip or store.read_chunks(plane)[0])
    spool = None if isinstance(out_path, RemotePath) else out_path.parent
    headers, asdf_bytes = template_headers(model, ["data"], spool)

    def read_rows(ys: slice) -> np.ndarray:
        strip = np.asarray(store.read(plane, ys))
        return (strip.astype(np.uint32) - _UINT32_BZERO).view(np.int32)

    with atomic_output(out_path) as tmp:
        fits.PrimaryHDU(header=headers[0][1]).writeto(tmp, overwrite=True)
        for name, header in headers[1:]:
            if name != "SCI":
                continue
            header = header.copy()
            header["BZERO"] = 2**31
            header["BSCALE"] = 1
            stream_image_hdu(tmp, header, shape, read_rows, ">i4", step)
        append_asdf_hdu(tmp, asdf_bytes)
    return out_path
