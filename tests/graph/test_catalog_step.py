"""The source_catalog step through the pipeline: products, truth, tiled == single frame, jwst parity.

Data: a simulated 4-point MIRI F770W dither (192x192 detectors, ~60 stars and a few galaxies in
the mosaic, fluxes 1.5e-7..3e-4 Jy) without pointing errors, sky differences or cosmic rays
(tweakreg, skymatch and outlier_detection are skipped), resampled in 64x64 tiles.

Aperture corrections: an APCORR file (MirImgApcorrModel) built in the test from the simulator's
PSF (Moffat, FWHM 2.45 px) convolved with four 1-pixel boxes (detector pixel, drizzle footprint,
output pixel, exact-aperture pixel), ``apcorr = 1 / eefraction``, background annulus 22-30 px
(beyond the PSF truncation radius of 19.6 px). S/N of a truth star: ``0.7 F / (sigma_pix *
sqrt(pi r70^2))``, its flux in the 70 % aperture over the i2d ERR in that aperture.

"Tuned" detection: ``snr_threshold=2, npixels=10, bkg_boxsize=64`` (jwst's default
``snr_threshold=3, npixels=25`` thresholds the convolved image with the unconvolved RMS and
misses sources of S/N 10-30; both are measured and printed, run with ``-s`` to see them).
"""

from __future__ import annotations

import logging
import shutil

import astropy.units as u
import numpy as np
import pytest
from astropy.table import QTable, Table
from helpers import compare_catalogs
from scipy.ndimage import uniform_filter1d
from scipy.spatial import cKDTree

from image3_dask.algorithms.catalog import apcorr_table_from_psf, catalog_colnames
from image3_dask.errors import InputError
from image3_dask.pipeline.image3 import Image3Pipeline

SKIP = {s: {"skip": True} for s in ("tweakreg", "skymatch", "outlier_detection")}
TUNED = {"snr_threshold": 2.0, "npixels": 10, "bkg_boxsize": 64}
ABVEGA = 4.1
FIGURES: dict[str, float] = {}


def _figure(name: str, value) -> None:
    FIGURES[name] = value
    print(f"FIGURE {name} = {value}")


def effective_ee(step: float = 0.05, half: float = 32.0, nbox: int = 4):
    """Encircled energy of the simulator's PSF as aperture photometry sees it on the mosaic."""
    from image3_dask.simulate import get_psf

    psf = get_psf("miri")
    g = np.arange(-half, half + step / 2, step)
    img = psf.profile(np.hypot(g[None, :], g[:, None])) * step * step
    n = int(round(1.0 / step))
    for _ in range(nbox):
        for ax in (0, 1):
            img = uniform_filter1d(img, n, axis=ax, mode="constant")
    r = np.hypot(g[None, :], g[:, None]).ravel()
    order = np.argsort(r)
    cum = np.cumsum(img.ravel()[order])
    grid = np.linspace(0.0, half, 4001)
    ee = np.interp(grid, r[order], cum) / cum[-1]
    return lambda radius: np.interp(radius, grid, ee)


def _write_refs(folder, subarray: str):
    """APCORR (FITS) and ABVEGAOFFSET (ASDF) reference files made with stdatamodels."""
    import stdatamodels.jwst.datamodels as dm

    tab = apcorr_table_from_psf(
        effective_ee(),
        eefractions=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
        selectors={"filter": "F770W", "subarray": subarray},
        skyin=22.0,
        skyout=30.0,
    )
    ap = dm.MirImgApcorrModel()
    ap.apcorr_table = np.array(
        [tuple(r) for r in tab],
        dtype=[
            ("filter", "S12"),
            ("subarray", "S15"),
            ("eefraction", "<f4"),
            ("radius", "<f4"),
            ("apcorr", "<f4"),
            ("skyin", "<f4"),
            ("skyout", "<f4"),
        ],
    )
    ap_path = folder / "apcorr_miri.fits"
    ap.save(ap_path)
    ab = dm.ABVegaOffsetModel()
    ab.abvega_offset = Table({"filter": ["F770W", "F1000W"], "abvega_offset": [ABVEGA, 4.7]})
    ab.meta.instrument.name = "MIRI"
    ab_path = folder / "abvega_miri.asdf"
    ab.save(ab_path)
    return str(ap_path), str(ab_path)


def _read_segm(path):
    from astropy.io import fits

    return np.asarray(fits.getdata(path, "SCI"))


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("catfield")
    return simulate(
        instrument="miri",
        n=4,
        out_dir=out / "sim",
        seed=5,
        pattern="dither",
        shape=(192, 192),
        n_stars=1000,
        n_galaxies=60,
        flux_range_jy=(1.5e-7, 3e-4),
        sky_variation=0.0,
        cosmic_ray_rate=0.0,
        pointing_error=0.0,
        roll_error=0.0,
    )


def _copy_mosaic(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.glob("*_i2d.*"):
        (shutil.copytree if p.is_dir() else shutil.copy)(p, dst / p.name)


@pytest.fixture(scope="module")
def runs(field, client, tmp_path_factory):
    """The pipeline (resample + catalog, single frame), then the catalog step alone
    (resample skipped: it uses the i2d already in the output folder) with tiled=always, and
    again with jwst's default detection parameters."""
    root = tmp_path_factory.mktemp("catruns")
    ap, ab = _write_refs(root, "GENERIC")
    refs = {"override_apcorr": ap, "override_abvegaoffset": ab}
    out = {"root": root, "refs": refs}
    out["single"] = Image3Pipeline.call(
        field.asn_path,
        output_dir=root / "single",
        client=client,
        progress=False,
        steps={
            **SKIP,
            "resample": {"tile_shape": [64, 64]},
            "source_catalog": {**refs, **TUNED, "tiled": "never"},
        },
    )
    _copy_mosaic(root / "single", root / "tiled")
    with pytest.MonkeyPatch.context() as mp:
        # the tiles' segments measured in several pieces each (test_measure_groups)
        mp.setattr("image3_dask.graph.catalog.MEASURE_TASKS_PER_THREAD", 16)
        out["tiled"] = Image3Pipeline.call(
            field.asn_path,
            output_dir=root / "tiled",
            client=client,
            progress=False,
            steps={
                **SKIP,
                "resample": {"skip": True},
                "source_catalog": {**refs, **TUNED, "tiled": "always"},
            },
        )
    # jwst's default detection parameters, the catalog step alone on the same i2d
    _copy_mosaic(root / "single", root / "default")
    out["default"] = Image3Pipeline.call(
        field.asn_path,
        output_dir=root / "default",
        client=client,
        progress=False,
        steps={**SKIP, "resample": {"skip": True}, "source_catalog": {**refs, "tiled": "never"}},
    )
    out["default_cat"] = QTable.read(out["default"]["cat"])
    return out


@pytest.fixture(scope="module")
def truth_xy(field, runs):
    from stdatamodels.jwst import datamodels

    src = field.truth.sources
    with datamodels.open(runs["single"]["i2d"]) as m:
        x, y = m.meta.wcs.invert(
            np.asarray(src["ra"], float), np.asarray(src["dec"], float), with_bounding_box=False
        )
        err = np.array(m.err, float)
        wht = np.array(m.wht)
        area = m.meta.photometry.pixelarea_steradians
    cat = QTable.read(runs["single"]["cat"])
    r70 = float(cat.meta["aperture_params"]["aperture_radii"][2])
    ny, nx = err.shape
    xi = np.clip(np.round(x).astype(int), 3, nx - 4)
    yi = np.clip(np.round(y).astype(int), 3, ny - 4)
    covered = np.array(
        [(wht[j - 3 : j + 4, i - 3 : i + 4] > 0).all() for i, j in zip(xi, yi, strict=True)]
    )
    inside = (x > 8) & (y > 8) & (x < nx - 9) & (y < ny - 9) & covered
    sigma = err[yi, xi] * 1e6 * area
    snr = 0.7 * np.asarray(src["flux_jy"]) / (sigma * np.sqrt(np.pi * r70**2))
    xy = np.transpose([x, y])
    dist, _ = cKDTree(xy).query(xy, k=2)
    return {
        "x": x,
        "y": y,
        "snr": np.where(inside, snr, 0.0),
        "inside": inside,
        "star": np.asarray(src["kind"]) == "star",
        "flux": np.asarray(src["flux_jy"]),
        "nn": dist[:, 1],
    }


def _match(cat, t, radius=1.5):
    d, idx = cKDTree(np.transpose([cat["xcentroid"], cat["ycentroid"]])).query(
        np.transpose([t["x"], t["y"]])
    )
    return d, idx, d < radius


# --------------------------------------------------------------------------- products
@pytest.mark.jwst
def test_pipeline_writes_catalog_and_segmentation(runs):
    pytest.importorskip("jwst")
    from jwst import datamodels as jdm

    res = runs["single"]
    assert res["cat"].name == "miri_dither_cat.ecsv" and res["cat"].is_file()
    assert res["segm"].name == "miri_dither_segm.fits" and res["segm"].is_file()
    cat = QTable.read(res["cat"])
    assert cat.colnames == catalog_colnames()
    assert cat["aper_total_flux"].unit == u.Jy and len(cat) > 30
    assert cat.meta["abvega_offset"] == pytest.approx(ABVEGA)
    assert cat.meta["kron_params"] == (2.5, 1.4, 0.0)
    np.testing.assert_allclose(
        cat["aper_total_vegamag"] - cat["aper_total_abmag"], -ABVEGA, equal_nan=True
    )
    with jdm.open(res["segm"]) as segm, jdm.open(res["i2d"]) as i2d:
        assert type(segm).__name__ == "SegmentationMapModel"
        assert segm.data.dtype == np.uint32 and segm.data.shape == i2d.data.shape
        assert set(np.unique(segm.data)) - {0} == set(np.asarray(cat["label"]))
        assert segm.meta.filename == "miri_dither_segm.fits"
        assert segm.meta.source_catalog == "miri_dither_cat.ecsv"
        assert segm.meta.instrument.filter == i2d.meta.instrument.filter
        assert segm.meta.wcsinfo.crpix1 == i2d.meta.wcsinfo.crpix1
        assert segm.meta.wcs(10.0, 20.0) == pytest.approx(i2d.meta.wcs(10.0, 20.0))
    # the segmentation plane is kept in the mosaic's Zarr store too
    from image3_dask.io.mosaic_store import MosaicStore

    assert np.array_equal(MosaicStore(res["i2d_zarr"]).read("segm"), _read_segm(res["segm"]))
    assert not list(res["cat"].parent.glob(".*.partial")) and not list(
        res["cat"].parent.glob(".*.ecsv")
    )


# --------------------------------------------------------------------------- truth
def test_completeness_default_and_tuned(runs, truth_xy):
    t = truth_xy
    sel = t["inside"] & t["star"] & (t["snr"] > 10)
    assert sel.sum() >= 20
    out = {}
    for name in ("single", "default"):
        cat = QTable.read(runs["single"]["cat"]) if name == "single" else runs["default_cat"]
        _, _, ok = _match(cat, t)
        out[name] = ok[sel].mean()
    _figure("n_truth_stars_snr_gt_10", int(sel.sum()))
    _figure("completeness_snr_gt_10_default(snr_threshold=3,npixels=25)", round(out["default"], 3))
    _figure("completeness_snr_gt_10_tuned(snr_threshold=2,npixels=10)", round(out["single"], 3))
    assert out["single"] >= 0.95
    assert out["default"] <= out["single"]


def test_centroids_and_fluxes_of_isolated_stars(runs, truth_xy):
    t = truth_xy
    cat = QTable.read(runs["single"]["cat"])
    d, idx, ok = _match(cat, t)
    nn_cat = np.asarray(cat["nn_dist"].value)[idx]
    iso = t["inside"] & t["star"] & ok & (t["nn"] > 15) & (nn_cat > 10)
    dpos = np.hypot(
        np.asarray(cat["xcentroid"])[idx] - t["x"], np.asarray(cat["ycentroid"])[idx] - t["y"]
    )
    rel = np.asarray(cat["aper_total_flux"].to_value(u.Jy))[idx] / t["flux"] - 1.0
    sel = iso & (t["snr"] >= 100)
    _figure("isolated_stars_snr_ge_100", int(sel.sum()))
    _figure("centroid_error_max_px(snr>=100)", round(float(dpos[sel].max()), 4))
    _figure("flux_error_max(snr>=100)", round(float(np.abs(rel[sel]).max()), 4))
    _figure("flux_error_median(snr>=100)", round(float(np.median(rel[sel])), 4))
    mid = iso & (t["snr"] >= 20) & (t["snr"] < 100)
    if mid.any():
        _figure("centroid_error_max_px(20<=snr<100)", round(float(dpos[mid].max()), 4))
        _figure("flux_error_max(20<=snr<100)", round(float(np.abs(rel[mid]).max()), 4))
    assert sel.sum() >= 6
    assert dpos[sel].max() < 0.05
    assert np.abs(rel[sel]).max() < 0.02


# --------------------------------------------------------------------------- tiled
def test_tiled_equals_single_frame(runs):
    a = QTable.read(runs["single"]["cat"])
    b = QTable.read(runs["tiled"]["cat"])
    assert len(a) == len(b) > 30 and a.colnames == b.colnames
    for name in a.colnames:
        if name.startswith("sky_") and name != "sky_orientation":
            sep = a[name].separation(b[name]).to_value(u.arcsec)
            assert np.array_equal(np.isnan(a[name].ra), np.isnan(b[name].ra)), name
            assert np.nanmax(sep) < 1e-9, name
            continue
        av = np.asarray(getattr(a[name], "value", a[name]), dtype=float)
        bv = np.asarray(getattr(b[name], "value", b[name]), dtype=float)
        np.testing.assert_allclose(bv, av, rtol=1e-9, atol=1e-15, equal_nan=True, err_msg=name)
    sa, sb = _read_segm(runs["single"]["segm"]), _read_segm(runs["tiled"]["segm"])
    assert np.array_equal(sa, sb)
    # several tiles, and segments cut by tile borders (joined)
    assert sa.shape[0] > 128 and sa.shape[1] > 128
    crossing = 0
    for lab in np.unique(sa[sa > 0]):
        yy, xx = np.nonzero(sa == lab)
        crossing += (yy.min() // 64 != yy.max() // 64) or (xx.min() // 64 != xx.max() // 64)
    assert crossing >= 2


# --------------------------------------------------------------------------- jwst parity
@pytest.mark.jwst
@pytest.mark.parametrize("detection", ["tuned", "default"])
def test_parity_with_jwst_source_catalog_step(runs, detection):
    """jwst's SourceCatalogStep on our i2d: every column it writes, source by source.

    Both codes measure the same i2d. With jwst's default parameters (``bkg_boxsize=1000``:
    one background box over this mosaic) the catalogs are bit-identical, every column. With
    the tuned ``bkg_boxsize=64`` our background mesh (tileable, ``estimate_background``) differs
    from photutils' Background2D by ~1e-7 of the background, which moves centroids by up to
    2e-6 px, isophotal fluxes by 2e-6 and orientations of nearly round sources by 1e-3 degree:
    every column is then held to ``helpers.catalog_tolerance`` (5-10x those figures). Same
    sources, labels, NaNs, dtypes, units and metadata either way. ``-s`` prints the figures.
    """
    pytest.importorskip("jwst")
    from jwst.source_catalog import SourceCatalogStep

    kwargs = TUNED if detection == "tuned" else {}
    ours_path = runs["single" if detection == "tuned" else "default"]["cat"]
    ref = SourceCatalogStep.call(
        str(runs["single"]["i2d"]), save_results=False, **runs["refs"], **kwargs
    )
    cat = QTable.read(ours_path)
    worst = compare_catalogs(cat, ref, exact=detection == "default")
    _figure(f"jwst_parity_{detection}_n_sources", len(ref))
    for name, value in worst.items():
        if value:
            _figure(f"jwst_parity_{detection}_max|diff|_{name}", f"{value:.2g}")
    assert len(ref) >= (30 if detection == "tuned" else 10)


# --------------------------------------------------------------------------- reference data
def _meta(instrument="MIRI", filt="F770W", pupil=None, subarray="FULL"):
    from stdatamodels.jwst import datamodels

    m = datamodels.ImageModel()
    m.meta.instrument.name = instrument
    m.meta.instrument.filter = filt
    if pupil:
        m.meta.instrument.pupil = pupil
    m.meta.subarray.name = subarray
    m.meta.resample.pixel_scale_ratio = 1.0
    return m


def test_refdata_sources_and_errors(runs, tmp_path, caplog):
    from image3_dask.graph.catalog_refdata import resolve_refdata
    from image3_dask.io.crds_refs import References
    from image3_dask.pipeline.config import PipelineConfig

    cfg = dict(PipelineConfig()["source_catalog"])
    # exposures marked by the simulator, no override: documented defaults, said in the log line
    ref = resolve_refdata(cfg, _meta(), References(simulated=True))
    assert "defaults for simulated MIRI F770W" in ref.source and ref.abvega_offset > 3
    assert not ref.uncorrected
    # the same instrument/filter on unmarked (real) exposures: jwst's fallback
    ref = resolve_refdata(cfg, _meta())
    assert ref.abvega_offset == 0.0 and "fallback" in ref.source and len(ref.uncorrected) == 2
    # real instrument/filter without override: jwst's fallback, with jwst's warnings
    with caplog.at_level(logging.WARNING, logger="image3_dask"):
        ref = resolve_refdata(cfg, _meta("NIRCAM", "F444W", pupil="CLEAR"))
    assert list(ref.aperture_params["aperture_radii"]) == [1.0, 2.0, 3.0]
    assert ref.abvega_offset == 0.0 and "fallback" in ref.source
    assert "APCorrModel reference file was not input" in caplog.text
    # override files: read with stdatamodels, selected by the mosaic's filter/subarray
    refs = runs["refs"]
    ref = resolve_refdata({**cfg, **refs}, _meta(subarray="GENERIC"))
    assert ref.abvega_offset == pytest.approx(ABVEGA)
    assert ref.aperture_params["bkg_aperture_inner_radius"] == pytest.approx(22.0)
    # unreadable or unmatched files: InputError naming the file
    bad = tmp_path / "garbage.fits"
    bad.write_text("not a FITS file")
    for key in ("override_apcorr", "override_abvegaoffset"):
        with pytest.raises(InputError, match="garbage.fits"):
            resolve_refdata({**cfg, key: str(bad)}, _meta())
    with pytest.raises(InputError, match="apcorr_miri.fits"):
        resolve_refdata({**cfg, **refs}, _meta(subarray="SUB256"))
    with pytest.raises(InputError, match="missing.asdf"):
        resolve_refdata({**cfg, "override_abvegaoffset": str(tmp_path / "missing.asdf")}, _meta())


def test_bad_override_fails_the_pipeline_with_the_file_name(runs, field, client, tmp_path):
    _copy_mosaic(runs["root"] / "single", tmp_path)
    bad = tmp_path / "broken_apcorr.fits"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match="broken_apcorr.fits"):
        Image3Pipeline.call(
            field.asn_path,
            output_dir=tmp_path,
            client=client,
            progress=False,
            steps={
                **SKIP,
                "resample": {"skip": True},
                "source_catalog": {"override_apcorr": str(bad)},
            },
        )
    assert not (tmp_path / "miri_dither_cat.ecsv").exists()


def test_measure_groups():
    """Segments grouped by the tile of their first pixel, cut into about ``want`` pieces;
    a segment larger than a tile on its own."""
    from image3_dask.algorithms.tiles import plan_tiles
    from image3_dask.graph.catalog import _groups

    tiles = plan_tiles((100, 100), (50, 50))
    n = 30
    y = np.r_[np.arange(0, 45, 3), np.arange(0, 45, 3)][:n]
    x = np.r_[np.full(15, 5), np.full(15, 60)][:n]
    size = np.full(n, 4)
    size[0] = 60  # larger than a tile
    parents = QTable(
        {
            "parent_id": np.arange(1, n + 1),
            "seed_y": y,
            "seed_x": x,
            "bbox_ymin": y,
            "bbox_ymax": y + size - 1,
            "bbox_xmin": x,
            "bbox_xmax": x + 3,
        }
    )
    one = _groups(parents, tiles, (50, 50), 2)
    assert [name for name, _ in one] == ["r000c000", "r000c000-s1", "r000c001"]
    many = _groups(parents, tiles, (50, 50), 2, want=6)
    names = [name for name, _ in many]
    assert len(set(names)) == len(names) == 7  # 3 + 3 pieces, and the big segment
    assert names[0] == "r000c000 1/3" and "r000c000-s1" in names
    ids = sorted(int(i) for _, rows in many for i in rows["parent_id"])
    assert ids == list(range(1, n + 1))


def test_mode_and_tile_choice():
    from image3_dask.graph.catalog import BYTES_PER_PIXEL, catalog_tile_shape, choose_catalog_mode

    big = (20000, 20000)
    assert choose_catalog_mode("auto", big, 4 * 2**30, True)[0] is True
    assert choose_catalog_mode("auto", (2000, 2000), 4 * 2**30, True)[0] is False
    assert choose_catalog_mode("auto", big, None, True)[0] is False  # unlimited workers
    assert choose_catalog_mode("auto", big, 4 * 2**30, False)[0] is False  # no store: cannot tile
    assert choose_catalog_mode("never", big, 4 * 2**30, True)[0] is False
    assert choose_catalog_mode("always", (100, 100), 4 * 2**30, True)[0] is True
    # a mosaic that fits is still tiled on a cluster of several threads, to keep them busy...
    box = (1000, 1000)
    assert choose_catalog_mode("auto", (3730, 3740), 4 * 2**30, True, threads=2, box=box)[0] is True
    # ...but not on one thread, with a single background box, or without the store
    assert choose_catalog_mode("auto", (3730, 3740), 4 * 2**30, True, threads=1, box=box)[0] is False
    assert choose_catalog_mode("auto", (900, 1000), 4 * 2**30, True, threads=8, box=box)[0] is False
    assert choose_catalog_mode("auto", (3730, 3740), 4 * 2**30, False, threads=8, box=box)[0] is False
    assert choose_catalog_mode("never", (3730, 3740), 4 * 2**30, True, threads=8, box=box)[0] is False
    with pytest.raises(InputError):
        choose_catalog_mode("always", (100, 100), None, False)
    assert BYTES_PER_PIXEL * 2000 * 2000 < 0.5 * 4 * 2**30
    # tiles are whole background boxes covering at least a store chunk
    assert catalog_tile_shape((5000, 7000), (1000, 1000), (2048, 2048)) == (3000, 3000)
    assert catalog_tile_shape((238, 228), (64, 64), (64, 64)) == (64, 64)
    assert catalog_tile_shape((238, 228), (238, 228), (64, 64)) == (238, 228)
    # capped by memory (a tile plus halo and measurement windows), down to whole boxes
    assert catalog_tile_shape((20000, 20000), (1000, 1000), (8192, 8192), 4_000_000) == (
        2000,
        2000,
    )
    assert catalog_tile_shape((20000, 20000), (1000, 1000), (8192, 8192), 10) == (1000, 1000)
