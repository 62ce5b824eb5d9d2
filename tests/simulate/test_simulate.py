"""Tests of the simulator of level-2b exposures (small images, few exposures)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from stdatamodels.jwst import datamodels
from stdatamodels.jwst.datamodels import dqflags

from image3_dask.io.asn import load_association
from image3_dask.simulate import (
    build_true_wcs,
    ee_radius,
    encircled_energy,
    get_instrument,
    get_psf,
    load_truth,
    psf_fwhm_pixels,
    simulate,
    truth_image,
)
from image3_dask.simulate import wcs as simwcs
from image3_dask.simulate.patterns import mosaic_pattern

SHAPE = (160, 176)


@pytest.fixture(scope="module")
def miri_dither(tmp_path_factory):
    out = tmp_path_factory.mktemp("miri_dither")
    return simulate(instrument="miri", n=4, out_dir=out, seed=3, shape=SHAPE, pattern="dither")


def _open(path):
    return datamodels.ImageModel(str(path))


def test_files_association_and_metadata(miri_dither):
    res = miri_dither
    assert len(res.cal_paths) == 4
    assert res.cal_paths[0].name == "jw01234001001_02101_00001_mirimage_cal.fits"
    asn = load_association(res.asn_path)
    assert [p.resolve() for p in asn.members] == [p.resolve() for p in res.cal_paths]
    raw = json.loads(res.asn_path.read_text())
    assert not os.path.isabs(raw["products"][0]["members"][0]["expname"])
    with _open(res.cal_paths[1]) as m:
        m.validate()
        assert m.data.shape == SHAPE
        assert m.meta.instrument.name == "MIRI"
        assert m.meta.instrument.filter == "F770W"
        assert m.meta.exposure.type == "MIR_IMAGE"
        assert m.meta.bunit_data == "MJy/sr" and m.meta.bunit_err == "MJy/sr"
        assert m.meta.observation.exposure_number == "00002"
        assert m.meta.wcsinfo.s_region.startswith("POLYGON ICRS")
        assert m.meta.photometry.pixelarea_steradians > 0
        assert m.meta.cal_step.photom == "COMPLETE"
        assert m.meta.exposure.end_time > m.meta.exposure.start_time
        for name in ("err", "var_poisson", "var_rnoise", "var_flat", "area"):
            assert getattr(m, name).shape == SHAPE
        assert m.meta.wcs.available_frames == ["detector", "v2v3", "v2v3vacorr", "world"]


def test_wcs_round_trip_and_tweakwcs_structure(miri_dither):
    tweakwcs = pytest.importorskip("tweakwcs")
    with _open(miri_dither.cal_paths[0]) as m:
        w = m.meta.wcs
        x = np.array([10.0, 80.0, 170.0])
        y = np.array([5.0, 90.0, 150.0])
        ra, dec = w(x, y)
        x2, y2 = w.invert(ra, dec)
        np.testing.assert_allclose(x2, x, atol=1e-4)
        np.testing.assert_allclose(y2, y, atol=1e-4)
        wi = m.meta.wcsinfo
        corr = tweakwcs.correctors.JWSTWCSCorrector(
            w, {"v2_ref": wi.v2_ref, "v3_ref": wi.v3_ref, "roll_ref": wi.roll_ref}
        )
        corr.set_correction(matrix=[[1, 0], [0, 1]], shift=[0.5, 0.0])
        assert "v2v3corr" in corr.wcs.available_frames
        # the correction moves the sky positions by ~0.5 arcsec
        ra3, dec3 = corr.wcs(x, y)
        sep = np.hypot((ra3 - ra) * np.cos(np.deg2rad(dec)), dec3 - dec) * 3600
        np.testing.assert_allclose(sep, 0.5, rtol=0.02)


def test_written_wcs_differs_by_injected_error(miri_dither):
    truth = miri_dither.truth
    xr, yr = simwcs.reference_pixel(truth.shape)
    for i, path in enumerate(miri_dither.cal_paths):
        e = truth.exposures[i]
        wt = build_true_wcs(truth, i)
        with _open(path) as m:
            ra_w, dec_w = m.meta.wcs(xr, yr)
            assert m.meta.wcsinfo.ra_ref == pytest.approx(e.written_attitude["ra_ref"])
        ra_t, dec_t = wt(xr, yr)
        assert ra_t == pytest.approx(e.true_attitude["ra_ref"], abs=1e-10)
        dra = (ra_w - ra_t) * 3600 * np.cos(np.deg2rad(dec_t))
        ddec = (dec_w - dec_t) * 3600
        assert dra == pytest.approx(e.pointing_error["dra_arcsec"], abs=1e-6)
        assert ddec == pytest.approx(e.pointing_error["ddec_arcsec"], abs=1e-6)
        # roll error: rotation about the reference pixel
        droll = e.written_attitude["roll_ref"] - e.true_attitude["roll_ref"]
        assert droll * 3600 == pytest.approx(e.pointing_error["droll_arcsec"], abs=1e-6)
    # build_true_wcs also accepts the truth path and file names
    w2 = build_true_wcs(miri_dither.truth_path, miri_dither.cal_paths[2].name)
    assert w2(xr, yr) == pytest.approx(build_true_wcs(truth, 2)(xr, yr))


def test_isolated_star_flux(tmp_path):
    res = simulate(
        instrument="miri",
        n=1,
        out_dir=tmp_path,
        seed=3,
        shape=(256, 256),
        n_stars=300,
        n_galaxies=0,
        noise=False,
        sky=0.0,
        cosmic_ray_rate=0.0,
        bad_pixel_fraction=0.0,
        pointing_error=0.0,
    )
    truth = res.truth
    w = build_true_wcs(truth, 0)
    src = truth.sources
    x, y = w.invert(np.asarray(src["ra"]), np.asarray(src["dec"]), with_bounding_box=False)
    half = get_psf("miri").stamp_half_size
    with _open(res.cal_paths[0]) as m:
        data = np.nan_to_num(m.data.astype(float))
        area = m.area.astype(float) * m.meta.photometry.pixelarea_steradians
    checked = 0
    for i in range(len(src)):
        if not (half + 4 < x[i] < 256 - half - 5 and half < y[i] < 256 - half - 1):
            continue
        others = np.hypot(x - x[i], y - y[i])
        others[i] = np.inf
        if others.min() < 2 * half + 2:
            continue
        ix, iy = int(round(x[i])), int(round(y[i]))
        box = np.s_[iy - half : iy + half + 1, ix - half : ix + half + 1]
        flux_jy = (data[box] * area[box]).sum() * 1e6
        assert flux_jy == pytest.approx(src["flux_jy"][i], rel=5e-3)
        checked += 1
    assert checked >= 2


def test_noise_consistent_with_err(miri_dither):
    truth = miri_dither.truth
    pulls = []
    for i, path in enumerate(miri_dither.cal_paths):
        model = truth_image(truth, i)
        e = truth.exposures[i]
        with _open(path) as m:
            good = m.dq == 0
            good[e.cosmic_rays["y"], e.cosmic_rays["x"]] = False
            sky = np.abs(model - e.sky_mjysr) < 1e-3 * e.sky_mjysr
            sel = good & sky
            pulls.append(((m.data - model) / m.err)[sel])
            # ERR is the square root of the summed variances
            v = m.var_poisson + m.var_rnoise + m.var_flat
            np.testing.assert_allclose(m.err[good] ** 2, v[good], rtol=1e-5)
    pulls = np.concatenate(pulls)
    assert pulls.size > 2000
    assert np.std(pulls) == pytest.approx(1.0, abs=0.04)
    assert abs(np.mean(pulls)) < 0.05


def test_sky_levels_differ(miri_dither):
    skies = [e.sky_mjysr for e in miri_dither.truth.exposures]
    assert len(set(skies)) == len(skies)
    for path, s in zip(miri_dither.cal_paths, skies, strict=True):
        with _open(path) as m:
            med = np.nanmedian(m.data[m.dq == 0])
        assert med == pytest.approx(s, rel=0.05)


def test_cosmic_rays_at_recorded_pixels(miri_dither):
    truth = miri_dither.truth
    e = truth.exposures[0]
    cr = e.cosmic_rays
    assert cr["y"].size > 0
    model = truth_image(truth, 0)
    with _open(miri_dither.cal_paths[0]) as m:
        resid = (m.data - model)[cr["y"], cr["x"]]
        err = m.err[cr["y"], cr["x"]]
        assert np.all(m.dq[cr["y"], cr["x"]] == 0)
    # recorded amplitudes are what was added (up to the noise) and well above the noise
    np.testing.assert_allclose(resid, cr["value"], atol=float(6 * err.max()))
    assert np.all(cr["value"] > 5 * err)
    assert np.median(cr["value"] / err) > 20


def test_bad_pixels_flagged(miri_dither):
    e = miri_dither.truth.exposures[1]
    bp = e.bad_pixels
    assert bp["y"].size > 0
    dnu = dqflags.pixel["DO_NOT_USE"]
    with _open(miri_dither.cal_paths[1]) as m:
        dq = m.dq[bp["y"], bp["x"]]
        assert np.all(dq & dnu)
        hot = bp["kind"] == "hot"
        assert np.all(dq[hot] & dqflags.pixel["HOT"])
        assert np.all(dq[~hot] & dqflags.pixel["DEAD"])
        np.testing.assert_allclose(m.data[bp["y"], bp["x"]], bp["value"], rtol=1e-6)
        # MIRI reference columns are flagged and NaN
        assert np.all(m.dq[:, :4] & dqflags.pixel["REFERENCE_PIXEL"])
        assert np.all(np.isnan(m.data[:, :4]))
    # same bad pixels in every exposure of the detector
    bp0 = miri_dither.truth.exposures[0].bad_pixels
    np.testing.assert_array_equal(bp0["x"], bp["x"])


def test_nircam_multi_detector_group_id(tmp_path):
    res = simulate(
        instrument="nircam",
        n=2,
        out_dir=tmp_path,
        seed=2,
        shape=(128, 128),
        n_detectors=2,
        n_stars=10,
        n_galaxies=2,
    )
    assert len(res.cal_paths) == 4
    gids = {}
    for path in res.cal_paths:
        with _open(path) as m:
            o = m.meta.observation
            gid = (
                f"jw{o.program_number}{o.observation_number}{o.visit_number}"
                f"_{o.visit_group}{o.sequence_id}{o.activity_id}_{o.exposure_number}"
            )
            gids.setdefault(gid, []).append(m.meta.instrument.detector)
            assert m.meta.instrument.pupil == "CLEAR"
            assert m.meta.instrument.channel == "SHORT"
            assert m.meta.exposure.type == "NRC_IMAGE"
    assert len(gids) == 2
    assert all(sorted(d) == ["NRCA1", "NRCA2"] for d in gids.values())
    assert [e.group_id for e in res.truth.exposures][::2] == list(gids)
    # detectors of one exposure share the attitude: the sky position of a V2/V3 point agrees
    a1 = res.truth.exposures[0].true_attitude
    a2 = res.truth.exposures[1].true_attitude
    k = ("v2_ref", "v3_ref", "roll_ref", "ra_ref", "dec_ref")
    p1 = simwcs.sky_at(tuple(a1[c] for c in k), 100.0, -500.0)
    p2 = simwcs.sky_at(tuple(a2[c] for c in k), 100.0, -500.0)
    np.testing.assert_allclose(p1, p2, atol=1e-10)


def test_mosaic_overlap(tmp_path):
    res = simulate(
        instrument="miri",
        n=4,
        out_dir=tmp_path,
        seed=4,
        shape=(128, 128),
        pattern="mosaic",
        n_stars=5,
        n_galaxies=0,
        pointing_error=0.0,
        roll_error=0.0,
    )
    truth = res.truth
    tiles = [e.tile for e in truth.exposures]
    assert sorted(tiles) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    w00 = build_true_wcs(truth, tiles.index((0, 0)))
    w01 = build_true_wcs(truth, tiles.index((0, 1)))
    w10 = build_true_wcs(truth, tiles.index((1, 0)))
    (x0, x1), (y0, y1) = simwcs.bounding_box(get_instrument("miri"), truth.shape)
    width, height = x1 - x0, y1 - y0
    # left edge of tile (0, 1), seen in tile (0, 0)
    ra, dec = w01(x0, 0.5 * (y0 + y1))
    xl, _ = w00.invert(ra, dec)
    assert (x1 - xl) / width == pytest.approx(0.12, abs=0.015)
    ra, dec = w10(0.5 * (x0 + x1), y0)
    _, yb = w00.invert(ra, dec)
    assert (y1 - yb) / height == pytest.approx(0.12, abs=0.015)


def test_mosaic_pattern_layout():
    pts = mosaic_pattern(None, (-50, 50, -40, 40), rows=3, cols=4, per_pointing=2)
    assert len(pts) == 24
    assert {p.tile for p in pts} == {(r, c) for r in range(3) for c in range(4)}
    pts = mosaic_pattern(256, (-50, 50, -40, 40))
    assert len(pts) == 256 and max(p.tile for p in pts) == (15, 15)


def test_deterministic(tmp_path):
    kw = dict(instrument="miri", n=2, seed=11, shape=(96, 96), n_stars=20, n_galaxies=5)
    a = simulate(out_dir=tmp_path / "a", **kw)
    b = simulate(out_dir=tmp_path / "b", **kw)
    c = simulate(out_dir=tmp_path / "c", **{**kw, "seed": 12})
    for pa, pb, pc in zip(a.cal_paths, b.cal_paths, c.cal_paths, strict=True):
        with _open(pa) as ma, _open(pb) as mb, _open(pc) as mc:
            np.testing.assert_array_equal(ma.data, mb.data)
            np.testing.assert_array_equal(ma.dq, mb.dq)
            assert not np.array_equal(np.nan_to_num(ma.data), np.nan_to_num(mc.data))
    ta = json.loads(a.truth_path.read_text())
    tb = json.loads(b.truth_path.read_text())
    ta["params"].pop("out_dir", None)
    tb["params"].pop("out_dir", None)
    assert ta == tb


def test_truth_round_trip(miri_dither):
    t = load_truth(miri_dither.truth_path.parent)
    assert t.instrument == "MIRI"
    assert len(t.exposures) == 4
    assert set(t.sources["kind"]) <= {"star", "galaxy"}
    assert t.exposure(miri_dither.cal_paths[3]).exposure_number == 4


def test_psf_model():
    fwhm = psf_fwhm_pixels("miri")
    assert fwhm == pytest.approx(0.269 / 0.11)
    psf = get_psf("miri")
    stamp = psf.pixel_stamp(0.2, -0.3)
    assert stamp.sum() == pytest.approx(1.0)
    r = ee_radius("miri", [0.5, 0.8])
    np.testing.assert_allclose(encircled_energy("miri", r), [0.5, 0.8])
    assert ee_radius("miri", 0.5, unit="arcsec") == pytest.approx(r[0] * 0.11)
    # the half maximum is at FWHM / 2
    assert psf.profile(fwhm / 2) == pytest.approx(psf.profile(0.0) / 2)
    # encircled energy from the pixel stamp agrees with the analytic curve
    half = psf.stamp_half_size
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    inside = np.hypot(xx, yy) <= 6.0
    assert stamp[inside].sum() == pytest.approx(float(psf.encircled_energy(6.0)), abs=0.01)


@pytest.mark.jwst
def test_jwst_resample_runs_on_simulation(tmp_path, monkeypatch):
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "True")
    monkeypatch.setenv("CRDS_PATH", str(tmp_path / "crds"))
    monkeypatch.setenv("CRDS_SERVER_URL", "https://localhost:1")
    pytest.importorskip("jwst")
    from jwst import datamodels as jdm
    from jwst.resample import ResampleStep

    res = simulate(
        instrument="miri", n=2, out_dir=tmp_path / "sim", seed=0, shape=(96, 96), n_stars=20
    )
    with jdm.open(res.cal_paths[0]) as m:
        assert m.meta.instrument.name == "MIRI"
    result = ResampleStep.call(str(res.asn_path), save_results=False)
    try:
        assert result.data.shape[0] > 90 and result.data.shape[1] > 90
        assert np.isfinite(result.data).sum() > 0.5 * result.data.size
        assert result.meta.resample.pixel_scale_ratio == pytest.approx(1.0)
    finally:
        result.close()
