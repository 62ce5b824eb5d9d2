"""Stream a mosaic from its Zarr store into an ``*_i2d.fits`` ImageModel file.

stdatamodels writes a FITS file from arrays held in memory. A mosaic may not fit in one process,
so the file is assembled here: the headers and the ASDF metadata extension come from
stdatamodels (a model with the same metadata and 1x1 arrays is saved first), then every image
extension is streamed from the store one strip of tiles at a time with the full-size header.

The ASDF tree of the final file carries the metadata but no references to the image arrays, and
no ``_fits_hash``: stdatamodels then reads the arrays from the SCI, ERR, ... extensions named in
the ImageModel schema, as it does for any FITS file. The file is written under a temporary name
and renamed only once complete, so a file under the final name is always whole.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import asdf
import numpy as np
from astropy.io import fits

from image3_dask.io.atomic import atomic_output
from image3_dask.io.mosaic_store import MosaicStore
from image3_dask.io.storage import Location, RemotePath, location

__all__ = ["I2D_ARRAYS", "append_asdf_hdu", "stream_image_hdu", "template_headers", "write_i2d"]

#: Datamodel attribute -> (store plane, FITS dtype).
I2D_ARRAYS = {
    "data": ("sci", ">f4"),
    "err": ("err", ">f4"),
    "con": ("con", ">i4"),
    "wht": ("wht", ">f4"),
    "var_poisson": ("var_poisson", ">f4"),
    "var_rnoise": ("var_rnoise", ">f4"),
    "var_flat": ("var_flat", ">f4"),
}

#: Bytes of one strip read from the store at a time (rows of one plane): the writer runs on a
#: worker alongside other tasks, so a strip of a 10,000-pixel-wide mosaic stays ~64 MB.
STRIP_BYTES = 64 * 2**20


def template_headers(model, arrays: list[str], workdir: Path | None):
    """Save ``model`` with 1x1 arrays and return its HDU headers and ASDF tree."""
    for attr in arrays:
        shape = (1, 1, 1) if attr == "con" else (1, 1)
        dtype = np.int32 if attr == "con" else np.float32
        setattr(model, attr, np.zeros(shape, dtype))
    fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".template_", suffix=".fits")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(tmp, overwrite=True)
        with fits.open(tmp) as hdul:
            headers = [(hdu.name, hdu.header.copy()) for hdu in hdul if hdu.name != "ASDF"]
    finally:
        os.unlink(tmp)
    # The ASDF tree of the model itself (meta, gwcs with its binary blocks), without arrays.
    tree = {k: v for k, v in model._instance.items() if k not in arrays and k != "_fits_hash"}
    buf = io.BytesIO()
    asdf.AsdfFile(tree).write_to(buf)
    return headers, buf.getvalue()


def stream_image_hdu(
    path: Path,
    header: fits.Header,
    shape: tuple[int, ...],
    read_rows: Callable[[slice], np.ndarray],
    dtype: str,
    rows_per_strip: int,
) -> None:
    """Append an image HDU of ``shape`` to ``path``, reading and writing a strip of rows at a time.

    Parameters
    ----------
    path : Path
        FITS file being written (its primary HDU already there).
    header : astropy.io.fits.Header
        Header of the extension (NAXIS/BITPIX are set here from ``shape`` and ``dtype``).
    shape : tuple of int
        ``(ny, nx)`` or ``(nplanes, ny, nx)``.
    read_rows : callable
        ``read_rows(slice_of_rows)`` returns those rows; for a 3-D shape it is called as
        ``read_rows(slice_of_rows, k)`` and returns those rows of plane ``k`` only (so that a
        strip never holds all the planes).
    dtype : str
        Big-endian FITS dtype of the data (``">f4"``, ``">i4"``).
    rows_per_strip : int
        Rows per read.
    """
    header = header.copy()
    header["NAXIS"] = len(shape)
    for i, n in enumerate(shape[::-1]):
        header[f"NAXIS{i + 1}"] = n
    for i in range(len(shape) + 1, 4):
        header.remove(f"NAXIS{i}", ignore_missing=True)
    header["BITPIX"] = -32 if dtype == ">f4" else 32
    ny = shape[-2]
    stream = fits.StreamingHDU(str(path), header)  # a str: astropy appends only to named files
    for k in range(shape[0] if len(shape) == 3 else 1):
        for y0 in range(0, ny, rows_per_strip):
            rows = slice(y0, min(ny, y0 + rows_per_strip))
            strip = read_rows(rows, k) if len(shape) == 3 else read_rows(rows)
            stream.write(np.ascontiguousarray(strip, dtype=dtype))
    stream.close()


def append_asdf_hdu(path: Path, asdf_bytes: bytes) -> None:
    """Append the ``ASDF`` metadata extension of a JWST datamodel FITS file."""
    data = np.frombuffer(asdf_bytes, np.uint8)[None, :]
    col = fits.Column(array=data, format=f"{data.shape[1]}B", name="ASDF_METADATA")
    with fits.open(path, mode="append") as hdul:
        hdul.append(fits.BinTableHDU.from_columns([col], name="ASDF"))


def write_i2d(
    store: MosaicStore,
    model,
    out_path: str | os.PathLike | RemotePath,
    arrays: list[str] | None = None,
    rows_per_strip: int | None = None,
) -> Location:
    """Write ``<product>_i2d.fits`` from the planes of a mosaic store.

    Parameters
    ----------
    store : MosaicStore
        Store holding the finished planes.
    model : stdatamodels.jwst.datamodels.ImageModel
        Model holding the metadata of the product (its arrays are ignored and replaced).
    out_path : path-like or RemotePath
        Final file name (an object is written from a local spool file once complete).
    arrays : list of str, optional
        Datamodel attributes to write (default: those of :data:`I2D_ARRAYS` present in the store).
    rows_per_strip : int, optional
        Rows read from the store at a time (default: the store's tile height).

    Returns
    -------
    Path
        ``out_path``, written atomically.
    """
    out_path = location(out_path)
    if arrays is None:
        arrays = [a for a, (plane, _) in I2D_ARRAYS.items() if store.has(plane)]
    spool = None if isinstance(out_path, RemotePath) else out_path.parent
    headers, asdf_bytes = template_headers(model, arrays, spool)
    by_attr = {}
    schema_ext = {
        "data": "SCI",
        "err": "ERR",
        "con": "CON",
        "wht": "WHT",
        "var_poisson": "VAR_POISSON",
        "var_rnoise": "VAR_RNOISE",
        "var_flat": "VAR_FLAT",
    }
    for attr in arrays:
        by_attr[schema_ext[attr]] = attr
    with atomic_output(out_path) as tmp:
        fits.PrimaryHDU(header=headers[0][1]).writeto(tmp, overwrite=True)
        for name, header in headers[1:]:
            attr = by_attr.get(name)
            if attr is None:
                continue
            plane, dtype = I2D_ARRAYS[attr]
            shape = store.shape(plane)
            step = rows_per_strip or min(
                store.read_chunks(plane)[-2], max(1, STRIP_BYTES // (4 * shape[-1]))
            )
            stream_image_hdu(
                tmp,
                header,
                shape,
                lambda ys, k=None, p=plane: store.read(p, ys, plane=k),
                dtype,
                step,
            )
        append_asdf_hdu(tmp, asdf_bytes)
    return out_path
