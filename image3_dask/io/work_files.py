"""Arrays of the work folder (pixel maps ``.npy``, outlier singles and weight summaries ``.npz``).

Local files are written under a temporary name and renamed, and pixel maps are read as memory
maps (a tile task touches only the rows it needs). On an object store each file is one object
written by a single PUT; a worker keeps the last pixel maps it read in memory
(:data:`PIXMAP_CACHE_BYTES`), since the tiles of one exposure often run on the same worker.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import numpy as np

from image3_dask.io.array_cache import ArrayCache
from image3_dask.io.storage import Location, RemotePath

__all__ = ["load_npy", "load_npz", "save_npy", "save_npz"]

#: Bytes of remote pixel maps a worker process keeps in memory.
PIXMAP_CACHE_BYTES = 256 * 2**20

_cache = ArrayCache(max_bytes=PIXMAP_CACHE_BYTES)


def _write(path: Location, write) -> None:
    if isinstance(path, RemotePath):
        buf = io.BytesIO()
        write(buf)
        path.write_bytes(buf.getvalue())
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def save_npy(path: Location, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy``, whole or not at all."""
    _write(path, lambda fh: np.save(fh, array))


def save_npz(path: Location, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz``, whole or not at all."""
    _write(path, lambda fh: np.savez(fh, **arrays))


def load_npy(path: Location) -> np.ndarray:
    """A read-only ``.npy`` array: a memory map for local files, from memory for objects.

    An object is read whole once per worker process and kept (least recently used first
    out, :data:`PIXMAP_CACHE_BYTES` in all), keyed by its URL and ETag (one HEAD request).
    """
    if not isinstance(path, RemotePath):
        return np.load(path, mmap_mode="r")
    info = path.info()
    key = f"{path} {info.get('ETag') or info.get('etag') or info.get('size')}"

    def read() -> np.ndarray:
        arr = np.load(io.BytesIO(path.read_bytes()))
        arr.setflags(write=False)
        return arr

    return _cache.get(key, read)


def load_npz(path: Location) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, in memory."""
    src = io.BytesIO(path.read_bytes()) if isinstance(path, RemotePath) else path
    with np.load(src) as z:
        return {k: z[k] for k in z.files}
