"""The Zarr mosaic store, its manifest, and the streamed i2d FITS writer."""

import os

import numpy as np
import pytest

from image3_dask.io.i2d_writer import write_i2d
from image3_dask.io.mosaic_store import MosaicStore, fingerprint

PLANES = ["sci", "wht", "con", "err", "var_rnoise", "var_poisson", "var_flat"]


def _fill(store, shape, tile):
    rng = np.random.default_rng(0)
    full = {p: rng.normal(size=shape).astype("f4") for p in PLANES if p != "con"}
    full["con"] = rng.integers(0, 2**31 - 1, size=(2, *shape)).astype("i4")
    for y0 in range(0, shape[0], tile[0]):
        for x0 in range(0, shape[1], tile[1]):
            for p in PLANES:
                a = full[p]
                t = a[..., y0 : y0 + tile[0], x0 : x0 + tile[1]]
                store.write_tile(p, y0, x0, t)
    return full


def test_tiles_round_trip_and_xarray(tmp_path):
    store = MosaicStore(tmp_path / "p_i2d.zarr")
    store.create((70, 90), (32, 32), PLANES, n_con_planes=2, attrs={"product": "p"})
    full = _fill(store, (70, 90), (32, 32))
    np.testing.assert_array_equal(store.read("sci"), full["sci"])
    np.testing.assert_array_equal(store.read("con"), full["con"])
    ds = store.open_dataset()
    assert ds["sci"].dims == ("y", "x") and ds["con"].shape == (2, 70, 90)
    assert ds.attrs["product"] == "p"
    assert ds["sci"].data.chunksize == (32, 32)


def test_manifest_needs_matching_fingerprint(tmp_path):
    store = MosaicStore(tmp_path / "s.zarr")
    store.create((10, 10), (5, 5), ["sci"])
    fp = fingerprint({"pixfrac": 1.0, "inputs": ["a", "b"]})
    assert not store.is_done("resample", "r000c000", fp)
    store.mark_done("resample", "r000c000", fp)
    assert store.is_done("resample", "r000c000", fp)
    assert not store.is_done("resample", "r000c000", fingerprint({"pixfrac": 0.5, "inputs": ["a", "b"]}))
    # a different grid (shape) invalidates the arrays and the manifest
    store.create((12, 10), (5, 5), ["sci"])
    assert not store.is_done("resample", "r000c000", fp)


def test_i2d_streamed_is_a_valid_image_model(tmp_path):
    from stdatamodels.jwst import datamodels

    store = MosaicStore(tmp_path / "p_i2d.zarr")
    store.create((70, 90), (32, 32), PLANES, n_con_planes=2)
    full = _fill(store, (70, 90), (32, 32))
    model = datamodels.ImageModel()
    model.meta.instrument.name = "MIRI"
    model.meta.bunit_data = "MJy/sr"
    out = write_i2d(store, model, tmp_path / "p_i2d.fits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p_i2d.fits", "p_i2d.zarr"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by others, not mkstemp's 0600
    with datamodels.open(out) as m:
        assert isinstance(m, datamodels.ImageModel)
        np.testing.assert_array_equal(m.data, full["sci"])
        np.testing.assert_array_equal(m.wht, full["wht"])
        np.testing.assert_array_equal(m.con, full["con"])
        np.testing.assert_array_equal(m.var_flat, full["var_flat"])
        assert m.meta.instrument.name == "MIRI" and m.meta.bunit_data == "MJy/sr"


def test_i2d_failure_leaves_no_file(tmp_path, monkeypatch):
    from stdatamodels.jwst import datamodels

    store = MosaicStore(tmp_path / "p_i2d.zarr")
    store.create((20, 20), (10, 10), ["sci", "wht"])

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "read", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_i2d(store, datamodels.ImageModel(), tmp_path / "p_i2d.fits")
    assert [p.name for p in tmp_path.iterdir()] == ["p_i2d.zarr"]


def test_i2d_strips_hold_one_plane_and_few_rows(tmp_path, monkeypatch):
    """A strip read for the FITS file is one plane (never all CON planes) of at most STRIP_BYTES."""
    from stdatamodels.jwst import datamodels

    import image3_dask.io.i2d_writer as writer

    store = MosaicStore(tmp_path / "p_i2d.zarr")
    store.create((70, 90), (32, 32), PLANES, n_con_planes=2)
    full = _fill(store, (70, 90), (32, 32))
    monkeypatch.setattr(writer, "STRIP_BYTES", 4 * 90 * 10)  # 10 rows of one plane
    reads = []
    original = MosaicStore.read

    def spy(self, name, ys=slice(None), xs=slice(None), plane=None):
        out = original(self, name, ys, xs, plane=plane)
        reads.append(out.shape)
        return out

    monkeypatch.setattr(MosaicStore, "read", spy)
    out = writer.write_i2d(store, datamodels.ImageModel(), tmp_path / "p_i2d.fits")
    assert reads and all(len(s) == 2 and s[0] <= 10 for s in reads)
    with datamodels.open(out) as m:
        np.testing.assert_array_equal(m.con, full["con"])
        np.testing.assert_array_equal(m.data, full["sci"])
