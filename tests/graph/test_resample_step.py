"""The resample step through the pipeline: tiles == one frame, flux against truth, parity with jwst."""

from __future__ import annotations

import numpy as np
import pytest

from image3_dask.errors import InputError
from image3_dask.pipeline.image3 import Image3Pipeline

ONLY_RESAMPLE = {
    "tweakreg": {"skip": True},
    "skymatch": {"skip": True},
    "outlier_detection": {"skip": True},
    "source_catalog": {"skip": True},
}


def _steps(**resample):
    steps = {k: dict(v) for k, v in ONLY_RESAMPLE.items()}
    steps["resample"] = resample
    return steps


def _open(path):
    from stdatamodels.jwst import datamodels

    return datamodels.open(path)


@pytest.fixture(scope="module")
def clean_field(tmp_path_factory):
    """Noise-free, sky-free exposures of a few isolated stars with exact WCSs (flux truth)."""
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("clean")
    return simulate(
        instrument="miri",
        n=4,
        out_dir=out,
        seed=11,
        pattern="dither",
        shape=(256, 256),
        n_stars=120,
        n_galaxies=0,
        noise=False,
        sky=0.0,
        sky_variation=0.0,
        cosmic_ray_rate=0.0,
        bad_pixel_fraction=0.0,
        pointing_error=0.0,
        roll_error=0.0,
    )


@pytest.mark.parametrize("kernel", ["square", "lanczos3"])
def test_tiled_equals_single_tile(small_dither, client, tmp_path, kernel):
    tiled = Image3Pipeline.call(
        small_dither.asn_path,
        output_dir=tmp_path / "tiled",
        client=client,
        steps=_steps(kernel=kernel, tile_shape=[48, 64]),
        progress=False,
    )
    whole = Image3Pipeline.call(
        small_dither.asn_path,
        output_dir=tmp_path / "whole",
        client=client,
        steps=_steps(kernel=kernel, tile_shape=[4096, 4096]),
        progress=False,
    )
    with _open(tiled["i2d"]) as a, _open(whole["i2d"]) as b:
        assert a.data.shape == b.data.shape
        assert a.data.shape[0] > 48 and a.data.shape[1] > 64  # really several tiles
        for name in ("data", "wht", "con", "err", "var_rnoise", "var_poisson", "var_flat"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert np.isfinite(a.data).mean() > 0.5


def test_flux_of_isolated_stars_conserved(clean_field, client, tmp_path):
    from astropy.coordinates import SkyCoord

    res = Image3Pipeline.call(
        clean_field.asn_path,
        output_dir=tmp_path,
        client=client,
        steps=_steps(tile_shape=[64, 64]),
        progress=False,
    )
    truth = clean_field.truth
    src = truth.sources
    rmax = truth.meta["psf"]["rmax_pixels"] if "psf" in truth.meta else 20.0
    with _open(res["i2d"]) as m:
        data = np.array(m.data, float)
        wht = np.array(m.wht)
        x, y = m.meta.wcs.invert(np.asarray(src["ra"], float), np.asarray(src["dec"], float))
        area_sr = m.meta.photometry.pixelarea_steradians
    coords = SkyCoord(src["ra"], src["dec"], unit="deg")
    r = int(np.ceil(rmax)) + 2
    checked = 0
    yy, xx = np.mgrid[0 : data.shape[0], 0 : data.shape[1]]
    for i in range(len(src)):
        sep = coords[i].separation(coords).arcsec
        sep[i] = np.inf
        if sep.min() < (np.sqrt(2) * r + rmax) * 0.11:  # no neighbour's wing inside the box
            continue
        if not (r < x[i] < data.shape[1] - r and r < y[i] < data.shape[0] - r):
            continue
        box = (np.abs(xx - x[i]) <= r) & (np.abs(yy - y[i]) <= r)
        if (wht[box] <= 0).any():  # must be fully covered
            continue
        flux_jy = np.nansum(data[box]) * area_sr * 1e6
        assert flux_jy == pytest.approx(float(src["flux_jy"][i]), rel=0.005), i
        checked += 1
    assert checked >= 3


def test_i2d_metadata(small_dither, client, tmp_path):
    res = Image3Pipeline.call(
        small_dither.asn_path,
        output_dir=tmp_path,
        client=client,
        steps=_steps(pixfrac=0.8, kernel="square"),
        progress=False,
    )
    with _open(res["i2d"]) as m:
        assert m.meta.resample.pixfrac == 0.8 and m.meta.resample.pointings == 4
        assert m.meta.cal_step.resample == "COMPLETE"
        assert m.meta.wcsinfo.s_region.startswith("POLYGON ICRS")
        assert m.meta.exposure.exposure_time > 0
        assert m.meta.bunit_data == "MJy/sr"
        assert m.con.shape[0] == 1 and np.all(m.con[0][m.wht > 0] > 0)
    ds = __import__("xarray").open_zarr(res["i2d_zarr"], consolidated=False)
    assert set(ds.data_vars) >= {"sci", "wht", "con", "err"}
    assert ds.attrs["wcs_header"]["CTYPE1"] == "RA---TAN"


def test_too_large_grid_is_refused_before_work(small_dither, client, tmp_path):
    with pytest.raises(InputError, match="pixels"):
        Image3Pipeline.call(
            small_dither.asn_path,
            output_dir=tmp_path,
            client=client,
            steps=_steps(max_output_pixels=1000),
            progress=False,
        )
    assert not any(p.name.endswith("_i2d.fits") for p in tmp_path.iterdir())


def test_missing_member_is_one_clear_error(small_dither, tmp_path):
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_dither.asn_path.parent, data)
    asn = json.loads((data / "asn.json").read_text())
    (data / asn["products"][0]["members"][1]["expname"]).unlink()
    with pytest.raises(InputError, match="file not found") as err:
        Image3Pipeline.call(data / "asn.json", output_dir=tmp_path / "out", steps=_steps())
    assert asn["products"][0]["members"][1]["expname"] in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.jwst
def test_parity_with_official_resample(small_dither, client, tmp_path):
    pytest.importorskip("jwst")
    from jwst.resample import ResampleStep

    ours = Image3Pipeline.call(
        small_dither.asn_path,
        output_dir=tmp_path,
        client=client,
        steps=_steps(tile_shape=[64, 64]),
        progress=False,
    )
    official = ResampleStep.call(str(small_dither.asn_path))
    with _open(ours["i2d"]) as m:
        assert m.data.shape == official.data.shape
        np.testing.assert_array_equal(np.isfinite(m.data), np.isfinite(official.data))
        ok = np.isfinite(official.data)
        np.testing.assert_allclose(m.data[ok], official.data[ok], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(m.wht, official.wht, rtol=1e-6, atol=0)
        okerr = np.isfinite(official.err)
        np.testing.assert_allclose(m.err[okerr], official.err[okerr], rtol=1e-6, atol=0)
        np.testing.assert_array_equal(m.con, official.con)
        assert m.meta.exposure.exposure_time == pytest.approx(official.meta.exposure.exposure_time)
        assert m.meta.resample.pointings == official.meta.resample.pointings
        assert m.meta.photometry.pixelarea_steradians == pytest.approx(
            official.meta.photometry.pixelarea_steradians
        )


def test_custom_output_wcs_file(small_dither, client, tmp_path):
    """``output_wcs``: an ASDF file holding a gwcs (and output_shape) defines the grid."""
    import asdf

    first = Image3Pipeline.call(small_dither.asn_path, output_dir=tmp_path / "a", client=client,
                                steps=_steps(), progress=False)
    with _open(first["i2d"]) as m:
        wcs, shape = m.meta.wcs, m.data.shape
        reference = np.array(m.data)
    asdf.AsdfFile({"wcs": wcs}).write_to(tmp_path / "grid.asdf")
    second = Image3Pipeline.call(
        small_dither.asn_path, output_dir=tmp_path / "b", client=client, progress=False,
        steps=_steps(output_wcs=str(tmp_path / "grid.asdf"), output_shape=[shape[1], shape[0]]),
    )
    with _open(second["i2d"]) as m:
        assert m.data.shape == shape
        np.testing.assert_allclose(m.data, reference, rtol=1e-6, equal_nan=True)
    with pytest.raises(InputError, match="output_wcs file not found"):
        Image3Pipeline.call(small_dither.asn_path, output_dir=tmp_path / "c", client=client,
                            steps=_steps(output_wcs=str(tmp_path / "nope.asdf")), progress=False)


@pytest.fixture(scope="module")
def straddling_dither(tmp_path_factory):
    """Issue 13's data: the default grid cuts the last input row of an exposure in two."""
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("straddling")
    return simulate(instrument="miri", n=4, out_dir=out, seed=5, pattern="dither", shape=(256, 256))


_WHOLE_FRAME: dict = {}


@pytest.mark.parametrize(
    "data,output_shape,tile_shape",
    [
        # the grid cropped to 180 x 180: input pixels straddle all four edges
        ("small_dither", [180, 180], [64, 64]),
        ("small_dither", [180, 180], [100, 100]),
        ("small_dither", [180, 180], [48, 64]),
        ("small_dither", [180, 180], [60, 90]),  # divides the grid
        ("small_dither", [180, 180], [45, 45]),  # divides the grid
        # issue 13's case: the default grid, the bottom row of tiles
        ("straddling_dither", None, [64, 64]),
        ("straddling_dither", None, [100, 100]),
    ],
)
def test_tiled_equals_single_tile_at_the_grid_edges(
    request, client, tmp_path_factory, data, output_shape, tile_shape
):
    sim = request.getfixturevalue(data)
    extra = {"output_shape": output_shape} if output_shape else {}

    def call(tiles):
        out = tmp_path_factory.mktemp("edge")
        return Image3Pipeline.call(
            sim.asn_path,
            output_dir=out,
            client=client,
            steps=_steps(tile_shape=tiles, **extra),
            progress=False,
        )["i2d"]

    key = (data, str(output_shape))
    if key not in _WHOLE_FRAME:
        _WHOLE_FRAME[key] = call([4096, 4096])
    tiled = call(tile_shape)
    with _open(tiled) as a, _open(_WHOLE_FRAME[key]) as b:
        assert a.data.shape == b.data.shape
        if output_shape:
            assert a.data.shape == (output_shape[1], output_shape[0])
        for name in ("data", "wht", "con", "err", "var_rnoise", "var_poisson", "var_flat"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_no_input_pixel_refuses_to_write_the_i2d(tmp_path):
    """When no tile had an input pixel the task that writes the i2d refuses before writing, so
    no file is left that would look like a product."""
    from image3_dask.graph.resample import write_i2d_task

    out = tmp_path / "p_i2d.fits"
    empty = [{"tile": "r000c000", "n_inputs": 0}, {"tile": "r000c001", "n_inputs": None}]
    with pytest.raises(InputError, match="no input pixel reached the output grid"):
        write_i2d_task(tmp_path / "missing.zarr", None, out, ["data"], empty)
    assert not out.exists()
