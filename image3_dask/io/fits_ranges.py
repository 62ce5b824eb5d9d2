"""Rows of FITS image extensions on an object store, each array fetched by one range request.

astropy reads a lazily opened object header by header, each read pulling a read-ahead block,
every time a file is opened. Tile tasks open the same few files again and again, so a worker
keeps each file's layout (:func:`fits_layout`: where each image extension's data starts, its
shape, type and scaling), read once per worker and object version, and then fetches the rows
a task needs: one range request per array, all arrays of a read sent together
(:func:`read_rows`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from image3_dask.io.storage import RemotePath, open_fits

__all__ = ["ImageLayout", "fits_layout", "read_rows"]

#: Layouts a worker process keeps (one per object version; a few kB each).
LAYOUT_CACHE = 512

_cache: OrderedDict[str, dict[str, ImageLayout]] = OrderedDict()
_lock = threading.Lock()
_BITPIX = {8: "u1", 16: "i2", 32: "i4", 64: "i8", -32: "f4", -64: "f8"}


@dataclass(frozen=True)
class ImageLayout:
    """Where a 2-D image extension's pixels are in its file, and how to decode them."""

    offset: int
    shape: tuple[int, int]
    dtype: str  # big-endian numpy type of the stored values
    bzero: float
    bscale: float

    def row_range(self, rows: slice) -> tuple[int, int, int]:
        """``(first row, start byte, end byte)`` of ``rows``."""
        y0, y1, _ = rows.indices(self.shape[0])
        row_bytes = self.shape[1] * np.dtype(self.dtype).itemsize
        return y0, self.offset + y0 * row_bytes, self.offset + max(y0, y1) * row_bytes

    def decode(self, raw: bytes, n_rows: int) -> np.ndarray:
        """The values of ``n_rows`` rows, scaled as astropy would (``BZERO``, ``BSCALE``)."""
        arr = np.frombuffer(raw, dtype=self.dtype).reshape(n_rows, self.shape[1])
        if self.bscale == 1 and self.bzero == 0:
            return arr.astype(arr.dtype.newbyteorder("="))
        kind = np.dtype(self.dtype)
        if self.bscale == 1 and kind.kind == "i" and self.bzero == 2 ** (8 * kind.itemsize - 1):
            # FITS's unsigned-integer convention (DQ arrays): flip the sign bit
            unsigned = np.dtype(f"u{kind.itemsize}")
            return (arr.astype(kind.newbyteorder("=")).view(unsigned) ^ unsigned.type(
                2 ** (8 * kind.itemsize - 1)
            )).astype(unsigned)
        return arr * self.bscale + self.bzero


def fits_layout(path: RemotePath) -> dict[str, ImageLayout]:
    """The 2-D image extensions of an object, by ``EXTNAME`` (the first of each name).

    Cached per worker process by URL and ETag (one HEAD request per call).
    """
    info = path.info()
    key = f"{path} {info.get('ETag') or info.get('etag') or ''} {info.get('size')}"
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    layout: dict[str, ImageLayout] = {}
    with open_fits(path, memmap=False, lazy_load_hdus=True) as hdul:
        for hdu in hdul:
            h = hdu.header
            if not hdu.is_image or h.get("NAXIS") != 2 or hdu.name in layout:
                continue
            dtype = _BITPIX.get(int(h["BITPIX"]))
            offset = getattr(hdu, "_data_offset", None)
            if dtype is None or offset is None:
                continue
            layout[hdu.name] = ImageLayout(
                offset=int(offset),
                shape=(int(h["NAXIS2"]), int(h["NAXIS1"])),
                dtype=">" + dtype,
                bzero=float(h.get("BZERO", 0) or 0),
                bscale=float(h.get("BSCALE", 1) or 1),
            )
    with _lock:
        _cache[key] = layout
        while len(_cache) > LAYOUT_CACHE:
            _cache.popitem(last=False)
    return layout


def read_rows(
    path: RemotePath, names: list[str], rows: slice
) -> dict[str, np.ndarray | None]:
    """Rows ``rows`` of the image extensions ``names`` (None for those the file lacks).

    The arrays' byte ranges are fetched together (fsspec ``cat_ranges``, concurrent requests).
    """
    layout = fits_layout(path)
    present = [n for n in names if n in layout]
    spans = [layout[n].row_range(rows) for n in present]
    raw = path._call(
        "read it",
        path.fs.cat_ranges,
        [path.key] * len(present),
        [s for _, s, _ in spans],
        [e for _, _, e in spans],
    )
    out: dict[str, np.ndarray | None] = dict.fromkeys(names)
    for name, (_, start, end), data in zip(present, spans, raw, strict=True):
        if isinstance(data, BaseException):
            raise data
        row_bytes = layout[name].shape[1] * np.dtype(layout[name].dtype).itemsize
        out[name] = layout[name].decode(data, (end - start) // row_bytes)
    return out
