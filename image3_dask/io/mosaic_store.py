"""The Zarr v3 store that mosaic tiles are written into as they finish.

One array per product plane (``sci``, ``wht``, ``con``, ``var_rnoise``, ``var_poisson``,
``var_flat``, ``err``, and ``median`` for outlier detection), chunked exactly like the output tiles
so that concurrent tile tasks never write the same chunk. The output grid's WCS is kept in the
group's attributes (an exact FITS TAN header) and beside the store as an ASDF file holding the gwcs.

A manifest records, per tile, the fingerprint of the inputs and parameters it was computed from.
A tile is reused on a rerun only when its manifest entry exists *and* the fingerprint matches:
existence of chunks alone proves nothing (a worker may have died mid-write).

Chunks are compressed with Blosc LZ4 and byte shuffle (:func:`compressors`): on drizzled
float32 tiles it is 3 to 5 times faster than Zarr's default Zstandard and compresses better
(1.5x for SCI, 3x for WHT and variances, measured on the MIRI mosaic benchmark).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np
import zarr

from image3_dask.io.storage import Location, RemotePath, location, zarr_store

__all__ = ["MosaicStore", "PLANES", "compressors", "fingerprint", "atomic_write_text"]

#: dtype and fill value of each 2-D plane. ``con`` is 3-D (planes, y, x).
PLANES: dict[str, tuple[str, Any]] = {
    "sci": ("float32", float("nan")),
    "wht": ("float32", 0.0),
    "con": ("int32", 0),
    "var_rnoise": ("float32", float("nan")),
    "var_poisson": ("float32", float("nan")),
    "var_flat": ("float32", float("nan")),
    "err": ("float32", float("nan")),
    "median": ("float32", float("nan")),
}


def compressors() -> tuple:
    """The Zarr v3 compressors of every mosaic plane: Blosc LZ4 with byte shuffle."""
    from zarr.codecs import BloscCodec

    return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)


def fingerprint(obj: Any) -> str:
    """A stable SHA-256 of a JSON-serialisable description of inputs and parameters."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def atomic_write_text(path: Location, text: str) -> None:
    """Write a text file under a temporary name, then rename it into place (one PUT for objects)."""
    if isinstance(path, RemotePath):
        path.write_text(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class MosaicStore:
    """A Zarr group holding mosaic planes tile by tile, plus a per-tile manifest.

    Parameters
    ----------
    path : path-like or RemotePath
        Folder of the Zarr store (``<product>_i2d.zarr``), local or on an object store.
    """

    def __init__(self, path: str | os.PathLike | RemotePath):
        self.path = location(path)

    @property
    def manifest_dir(self) -> Location:
        """Folder of the manifest entries (one small JSON file per finished tile and stage)."""
        # beside the store, not inside: Zarr (and xarray) warn about foreign folders in a group
        return self.path.with_name(self.path.name + ".manifest")

    def create(
        self,
        shape: tuple[int, int],
        tile_shape: tuple[int, int],
        planes: Iterable[str],
        n_con_planes: int = 1,
        attrs: dict | None = None,
    ) -> None:
        """Create (or reuse, when identical) the arrays of the store.

        An existing array of the same shape, chunks and dtype is kept, so that finished tiles
        survive for a resumed run; anything else is replaced.
        """
        group = zarr.open_group(zarr_store(self.path), mode="a")
        for name in planes:
            dtype, fill = PLANES[name]
            if name == "con":
                ashape = (n_con_planes, *shape)
                chunks = (n_con_planes, *tile_shape)
                dims = ("plane", "y", "x")
            else:
                ashape, chunks, dims = tuple(shape), tuple(tile_shape), ("y", "x")
            if name in group:
                arr = group[name]
                if arr.shape == ashape and arr.chunks == chunks and str(arr.dtype) == dtype:
                    continue
                del group[name]
                self.clear_manifest()
            group.create_array(
                name,
                shape=ashape,
                chunks=chunks,
                dtype=dtype,
                fill_value=fill,
                dimension_names=dims,
                compressors=compressors(),
            )
        if attrs:
            group.attrs.update(attrs)

    def write_tile(self, name: str, y0: int, x0: int, array: np.ndarray) -> None:
        """Write one tile of a plane at ``(y0, x0)``."""
        arr = zarr.open_array(zarr_store(self.path / name), mode="r+")
        if array.ndim == 3:
            arr[:, y0 : y0 + array.shape[1], x0 : x0 + array.shape[2]] = array
        else:
            arr[y0 : y0 + array.shape[0], x0 : x0 + array.shape[1]] = array

    def read(
        self,
        name: str,
        ys: slice = slice(None),
        xs: slice = slice(None),
        plane: int | None = None,
    ) -> np.ndarray:
        """Read a region of a plane (all CON planes for ``con``, or only ``plane`` of them)."""
        arr = zarr.open_array(zarr_store(self.path / name, read_only=True), mode="r")
        if arr.ndim == 3:
            return arr[:, ys, xs] if plane is None else arr[plane, ys, xs]
        return arr[ys, xs]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a plane."""
        return tuple(zarr.open_array(zarr_store(self.path / name, True), mode="r").shape)

    def read_chunks(self, name: str) -> tuple[int, ...]:
        """Chunk shape of a plane (the tile shape)."""
        return tuple(zarr.open_array(zarr_store(self.path / name, True), mode="r").chunks)

    def has(self, name: str) -> bool:
        """Whether the store holds a plane."""
        return (self.path / name / "zarr.json").is_file()

    @property
    def attrs(self) -> dict:
        """The group's attributes."""
        return dict(zarr.open_group(zarr_store(self.path, True), mode="r").attrs)

    # -- manifest ---------------------------------------------------------------------------
    def _entry(self, stage: str, key: str) -> Location:
        return self.manifest_dir / stage / f"{key}.json"

    def mark_done(self, stage: str, key: str, fp: str, info: dict | None = None) -> None:
        """Record that ``key`` (a tile name) of ``stage`` was completed from fingerprint ``fp``."""
        atomic_write_text(self._entry(stage, key), json.dumps({"fingerprint": fp, **(info or {})}))

    def is_done(self, stage: str, key: str, fp: str) -> bool:
        """Whether ``key`` of ``stage`` was completed from the same inputs and parameters."""
        try:
            entry = json.loads(self._entry(stage, key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return entry.get("fingerprint") == fp

    def done_info(self, stage: str, key: str) -> dict:
        """What was recorded with a finished entry."""
        return json.loads(self._entry(stage, key).read_text())

    def clear_manifest(self, stage: str | None = None) -> None:
        """Forget finished tiles (of one stage, or all)."""
        root = self.manifest_dir / stage if stage else self.manifest_dir
        if root.exists():
            for p in sorted(root.rglob("*.json")):
                p.unlink()

    def open_dataset(self):
        """Open the store lazily as an :class:`xarray.Dataset` (dask-backed)."""
        import xarray as xr

        return xr.open_zarr(zarr_store(self.path, True), consolidated=False)
