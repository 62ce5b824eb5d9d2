"""Quirks of real stage-2 products (issue #15 item 5): image3-dask against jwst and the truth.

Archive ``*_cal.fits`` files carry what a plain simulation does not; the simulator writes each
(``simulate(subarray=, dq_extras=, image2_background=, visits=)``) and these tests run both
pipelines on them:

- ``quirky``: one MIRI association with all of them at once (two visits whose exposure numbers
  both start at 1, full-frame and subarray members of different shapes, image2's DQ bits and
  NaNs, a ``NON_SCIENCE`` block, an image2-subtracted background); the whole pipeline against
  jwst's ``Image3Pipeline`` and the truth, tweakreg's source catalogs against jwst's.
- Named subarrays (MIRI SUB256, NIRCam SUB160P) have the gwcs jwst's ``assign_wcs`` builds.
- NIRCam's eight short-wave detectors: grouped by exposure as jwst groups them, and tweakreg
  (where the grouping matters) equal to jwst's.
- Visits of different roll: skymatch levels equal to jwst's.
- ``meta.background`` already set: skymatch accepts and refuses what jwst does and finds the
  same levels; a recorded level with skymatch skipped through both pipelines; an undefined
  ``subtracted`` with skymatch skipped, where the truth wins over jwst.
- A reference file without the mosaic's row (the i2d of BRIGHTSKY/SUB256 members is named by
  its first member's subarray): a warning and no catalog, as jwst.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import QTable
from helpers import compare_catalogs
from helpers.parity import run_both

from image3_dask.simulate import build_true_wcs, simulate

pytestmark = pytest.mark.jwst

#: Full-frame (here: the 256x256 simulated detector) and subarray members, in two visits.
QUIRKY = dict(
    instrument="miri", n=4, pattern="dither", shape=(256, 256), seed=11, n_stars=3000,
    n_galaxies=300, visits=2, dq_extras=True, image2_background="bkg_subtract",
    subarray=[
        None,
        {"xstart": 33, "ystart": 17, "xsize": 192, "ysize": 224},
        None,
        {"xstart": 1, "ystart": 41, "xsize": 200, "ysize": 216},
    ],
)


@pytest.fixture(scope="module")
def quirky(tmp_path_factory, client):
    """The quirky association, jwst's products and ours (official alignment)."""
    pytest.importorskip("jwst")
    root = tmp_path_factory.mktemp("quirky")
    return run_both(root, simulate(out_dir=root / "sim", **QUIRKY), client)


def test_quirky_files_are_what_real_ones_are(quirky):
    """The simulator wrote every quirk (else the parity below would prove nothing)."""
    from stdatamodels.jwst import datamodels
    from stdatamodels.jwst.datamodels import dqflags

    from image3_dask.io.exposures import read_exposures

    f = dqflags.pixel
    sim = quirky["sim"]
    shapes, numbers, groups = [], [], []
    for p in sim.cal_paths:
        with datamodels.open(p) as m:
            shapes.append(m.data.shape)
            numbers.append(m.meta.observation.exposure_number)
            assert m.meta.cal_step.bkg_subtract == "COMPLETE"
            dnu = (m.dq & f["DO_NOT_USE"]) > 0
            assert np.array_equal(np.isnan(m.data), dnu)  # NaN exactly where DO_NOT_USE
            for name in ("SATURATED", "JUMP_DET", "NON_SCIENCE", "OTHER_BAD_PIXEL", "HOT"):
                assert ((m.dq & f[name]) > 0).any(), name
            # NON_SCIENCE without DO_NOT_USE keeps finite values a careless step would use
            ns = ((m.dq & f["NON_SCIENCE"]) > 0) & ~dnu
            assert ns.sum() > 500 and np.isfinite(m.data[ns]).all()
    assert shapes == [(256, 256), (224, 192), (256, 256), (216, 200)]
    assert numbers == ["00001", "00002", "00001", "00002"]
    groups = [e.group_id for e in read_exposures(sim.cal_paths)]
    assert groups == [e.group_id for e in sim.truth.exposures]
    assert len(set(groups)) == 4


def _crf_pairs(quirky):
    names = sorted(p.name for p in quirky["jwst"].glob("*_crf.fits"))
    assert len(names) == 4
    assert names == sorted(p.name for p in quirky["ours"].glob("*_crf.fits"))
    return [(quirky["jwst"] / n, quirky["ours"] / n) for n in names]


def test_quirky_tweakreg_skymatch_outlier_equal_jwst_and_truth(quirky):
    """Aligned WCSs, sky levels, crf SCI and DQ equal jwst's; WCSs and sky match the truth."""
    from stdatamodels.jwst import datamodels

    sim = quirky["sim"]
    worst_px = worst_sky = 0.0
    ours_levels, true_sky, resid = [], [], []
    for theirs, ours in _crf_pairs(quirky):
        with datamodels.open(theirs) as a, datamodels.open(ours) as b:
            assert b.data.shape == a.data.shape
            ny, nx = a.data.shape
            y, x = np.mgrid[0:ny:15, 0:nx:15].astype(float)
            # forward transforms compared on the sky (a round trip through the inverse would add
            # the simulator's fitted inverse distortion, good to ~1e-5 px on a full frame)
            ra, dec = a.meta.wcs(x, y)
            rb, db = b.meta.wcs(x, y)
            sep = np.hypot((rb - ra) * np.cos(np.deg2rad(dec)), db - dec) * 3600 / 0.11
            worst_px = max(worst_px, float(np.nanmax(sep)))
            la, lb = a.meta.background.level, b.meta.background.level
            worst_sky = max(worst_sky, abs(lb - la))
            np.testing.assert_array_equal(b.dq, a.dq, err_msg=ours.name)
            np.testing.assert_array_equal(b.data, a.data, err_msg=ours.name)
            name = ours.name.split("_a3001_crf")[0] + "_cal.fits"
            e = sim.truth.exposure(name)
            ours_levels.append(lb)
            true_sky.append(e.sky_mjysr - e.background_subtracted)
            # on the sky (arcsec): with visits of different rolls a common sky offset is not a
            # common pixel offset
            rt, dt = build_true_wcs(sim.truth, name)(x, y)
            resid.append(np.stack([(rb - rt) * np.cos(np.deg2rad(dt)), db - dt], -1) * 3600)
    rms = _relative_rms(resid) / 0.11  # MIRI pixels
    d_ours = np.array(ours_levels) - ours_levels[0]
    d_true = np.array(true_sky) - true_sky[0]
    print(f"\nWCS vs jwst {worst_px:.2g} px, vs truth {rms:.3g} px rms; sky vs jwst {worst_sky:.2g}"
          " MJy/sr"
          f"; sky differences vs truth {np.abs(d_ours - d_true).max():.2g} MJy/sr")
    assert worst_px < 1e-6
    assert worst_sky < 1e-12
    assert rms < 0.05
    assert np.abs(d_ours - d_true).max() < 0.01


def test_quirky_i2d_and_catalog_equal_jwst(quirky):
    """The mosaic and the catalog equal jwst's; no NON_SCIENCE or NaN pixel leaks in."""
    from stdatamodels.jwst import datamodels

    with datamodels.open(next(quirky["jwst"].glob("*_i2d.fits"))) as a, datamodels.open(
        quirky["products"]["i2d"]
    ) as b:
        assert a.data.shape == b.data.shape
        assert np.array_equal(a.wht > 0, b.wht > 0)
        assert np.array_equal(np.isfinite(a.data), np.isfinite(b.data))
        data = (a.wht > 0) & np.isfinite(a.data)
        d = np.abs(b.data - a.data)[data] / a.err[data]
        wht = np.abs(b.wht - a.wht)[data] / a.wht[data]
        print(f"\ni2d: {data.sum()} pixels; |SCI diff|/ERR max {d.max():.2g}, "
              f"WHT max rel diff {wht.max():.2g}")
        assert d.max() < 1e-3
        assert wht.max() < 1e-4
        assert np.array_equal(a.con, b.con)
    ref = QTable.read(next(quirky["jwst"].glob("*_cat.ecsv")))
    cat = QTable.read(quirky["products"]["cat"])
    compare_catalogs(cat, ref, exact=False, max_sep_px=1e-4)
    assert len(ref) > 30


def _relative_rms(resid: list[np.ndarray]) -> float:
    """RMS (arcsec) of sky residuals ``[(dra cos(dec), ddec), ...]``, common offset removed."""
    r = np.concatenate([a.reshape(-1, 2) for a in resid])
    r = r - np.nanmean(r, axis=0)  # relative alignment: a common offset remains
    return float(np.sqrt(np.nanmean((r**2).sum(-1))))


@pytest.mark.parametrize(
    "instrument, name, start, size, aperture",
    [("miri", "SUB256", (413, 51), 256, "MIRIM_SUB256"),
     ("nircam", "SUB160P", (1889, 1889), 160, "NRCB1_SUB160P")],
)
def test_named_subarray_wcs_is_assign_wcs_one(tmp_path, instrument, name, start, size, aperture):
    """A named subarray: meta.subarray and the gwcs jwst's assign_wcs builds from the full
    frame; NIRCam's corner subarray holds the detector's reference pixels on two sides."""
    pytest.importorskip("jwst")
    from astropy.modeling import bind_bounding_box
    from jwst.assign_wcs.util import bounding_box_from_subarray, subarray_transform
    from stdatamodels.jwst import datamodels
    from stdatamodels.jwst.datamodels import dqflags

    from image3_dask.simulate import get_instrument
    from image3_dask.simulate.wcs import distortion_model, make_wcs, v23tosky

    sim = simulate(
        instrument, n=1, out_dir=tmp_path, seed=2, subarray=name, n_stars=20, n_galaxies=0,
        detectors=["NRCB1"] if instrument == "nircam" else None,
    )
    inst = get_instrument(instrument)
    e = sim.truth.exposures[0]
    det = inst.detectors[e.detector]
    coeffs = sim.truth.detectors[e.detector]["distortion"]
    x0, y0 = start[0] - 1, start[1] - 1
    with datamodels.open(sim.cal_paths[0]) as m:
        sub = m.meta.subarray
        assert (sub.name, sub.xstart, sub.ystart, sub.xsize, sub.ysize) == (
            name, *start, size, size)
        assert m.data.shape == (size, size) and m.meta.aperture.name == aperture
        # jwst's construction: subarray shift | full-frame distortion, subarray bounding box
        dist = subarray_transform(m) | distortion_model(inst, det, inst.shape, coeffs)
        bind_bounding_box(dist, bounding_box_from_subarray(m, order="F"), order="F")
        wi = m.meta.wcsinfo
        att = (wi.v2_ref, wi.v3_ref, wi.roll_ref, wi.ra_ref, wi.dec_ref)
        sky = v23tosky(att)
        y, x = np.mgrid[-0.5:size:17.0, -0.5:size:17.0]
        ra, dec = m.meta.wcs(x, y)
        ra2, dec2 = sky(*dist(x, y))
        np.testing.assert_allclose(ra, ra2, rtol=0, atol=1e-12)
        np.testing.assert_allclose(dec, dec2, rtol=0, atol=1e-12)
        edge = size - 0.5
        assert m.meta.wcs.bounding_box.bounding_box(order="F") == ((-0.5, edge), (-0.5, edge))
        assert np.isnan(m.meta.wcs(-1.0, 10.0)[0])  # outside the subarray
        # the same sky as the full-frame detector's pixel (x + xstart - 1, y + ystart - 1)
        full = make_wcs(inst, det, inst.shape, att, coeffs)
        np.testing.assert_allclose(full(x + x0, y + y0)[1], dec, atol=1e-12)
        # meta.wcsinfo is referred to the subarray's centre, as SIAF subarray apertures are
        c = (size - 1) / 2.0
        assert (wi.crpix1, wi.crpix2) == (c + 1, c + 1)
        assert np.allclose(dist(c, c), (wi.v2_ref, wi.v3_ref), atol=1e-9)
        # reference pixels: those of the full detector that fall in the subarray
        ref = (m.dq & dqflags.pixel["REFERENCE_PIXEL"]) > 0
        yy, xx = np.mgrid[0:size, 0:size]
        ny, nx = inst.shape
        c_, r_ = inst.ref_columns, inst.ref_rows
        expect = (xx + x0 < c_) | (xx + x0 >= nx - c_) | (yy + y0 < r_) | (yy + y0 >= ny - r_)
        assert np.array_equal(ref, expect)
        assert np.isnan(m.data[ref]).all() and ((m.dq[ref] & 1) > 0).all()
        assert ref.any() == (instrument == "nircam")


@pytest.fixture(scope="module")
def nircam8(tmp_path_factory, client):
    """Two exposures (in two visits, both exposure 1) of the eight NIRCam SW detectors."""
    root = tmp_path_factory.mktemp("nircam8")
    return simulate(
        "nircam", n=2, out_dir=root, seed=5, shape=(128, 128), n_detectors=8, n_stars=3000,
        n_galaxies=100, visits=2, dq_extras=True, dither_scale=0.1,
    )


def test_nircam_eight_detectors_grouped_as_jwst(nircam8, tmp_path):
    """Our exposure groups are jwst's ModelLibrary groups: names, members and order, with the
    members listed detector by detector (exposures interleaved), the second visit's first."""
    pytest.importorskip("jwst")
    from jwst.datamodels import ModelLibrary

    from image3_dask.io.asn import make_association, resolve_inputs, write_association
    from image3_dask.io.exposures import read_exposures

    # jw01234001002_02101_00001_nrca1_cal.fits: detector, then visit 002 before 001
    paths = sorted(nircam8.cal_paths, key=lambda p: (p.name.split("_")[3], -int(p.name[12])))
    interleaved = write_association(
        make_association(paths, "nrc", asn_id="a3002", relative_to=nircam8.asn_path.parent),
        nircam8.asn_path.parent / "interleaved_asn.json",
    )
    infos = read_exposures(resolve_inputs(interleaved).members)
    ours: dict[str, list[int]] = {}
    for e in infos:
        ours.setdefault(e.group_id, []).append(e.index)
    lib = ModelLibrary(str(interleaved), on_disk=True)
    theirs = {g: list(v) for g, v in lib.group_indices.items()}
    assert list(ours.items()) == list(theirs.items())
    assert len(ours) == 2 and all(len(v) == 8 for v in ours.values())
    assert next(iter(ours)).startswith("jw01234001002")  # the second visit came first
    assert ours[next(iter(ours))] == list(range(0, 16, 2))  # interleaved members


def test_nircam_eight_detectors_tweakreg_equal_jwst(client, nircam8, tmp_path):
    """tweakreg aligns each exposure's eight detectors as one group, as jwst does."""
    pytest.importorskip("jwst")
    from jwst.tweakreg import TweakRegStep

    from image3_dask.graph import tweakreg
    from image3_dask.io.asn import resolve_inputs
    from image3_dask.io.exposures import read_exposures
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.context import RunContext

    config = PipelineConfig()
    config.update({"tweakreg": {"align_mode": "official"}})
    ctx = RunContext(client=client, config=config, asn=resolve_inputs(nircam8.asn_path),
                     output_dir=tmp_path, work_dir=tmp_path / "work", progress=False)
    infos = read_exposures(nircam8.cal_paths)
    ours = tweakreg.run(ctx, infos)
    lib = TweakRegStep.call(str(nircam8.asn_path), output_dir=str(tmp_path))
    y, x = np.mgrid[0:128:16, 0:128:16].astype(float)
    worst = moved = 0.0
    resid, before = [], []
    with lib:
        for i, o in enumerate(ours):
            model = lib.borrow(i)
            assert model.meta.filename == o.path.name
            assert model.meta.cal_step.tweakreg == o.cal_steps["tweakreg"] == "COMPLETE"
            ra, dec = o.wcs(x, y)
            xj, yj = model.meta.wcs.invert(ra, dec)
            worst = max(worst, float(np.nanmax(np.hypot(xj - x, yj - y))))
            x0, y0 = infos[i].wcs.invert(ra, dec)
            moved = max(moved, float(np.nanmax(np.hypot(x0 - x, y0 - y))))
            rt, dt = build_true_wcs(nircam8.truth, i)(x, y)
            resid.append(np.stack([(ra - rt) * np.cos(np.deg2rad(dt)), dec - dt], -1) * 3600)
            r0, d0 = infos[i].wcs(x, y)
            before.append(np.stack([(r0 - rt) * np.cos(np.deg2rad(dt)), d0 - dt], -1) * 3600)
            lib.shelve(model, i, modify=False)
    rms, rms0 = (_relative_rms(r) / 0.031 for r in (resid, before))  # NIRCam SW pixels
    print(f"\n8 detectors x 2: ours vs jwst {worst:.2g} px (exposures moved {moved:.2g} px), "
          f"vs truth {rms:.3g} px rms (before {rms0:.3g})")
    assert moved > 0.1
    assert worst < 0.01
    # jwst's default separation (1") keeps only ~25 sources of these 4" crops: the shift is
    # found, the group's rotation only to ~40" (both pipelines alike)
    assert rms < 0.1 * rms0


def test_rotated_visits_skymatch_equal_jwst(client, tmp_path):
    """Visits at position angles 8 degrees apart: the same sky levels as jwst's skymatch.

    Both read the files' WCSs here. After tweakreg the two pipelines' WCSs differ by ~1e-8 px,
    and with rotated overlaps that can change the vertex order of spherical_geometry's
    intersection polygons, hence which edge pixels gwcs's polygon scan includes (in a test run,
    65 of 36000 pixels of one overlap, levels 5e-5 MJy/sr apart, 1e-3 of the i2d ERR); jwst is
    as sensitive to it as we are, so the whole-pipeline comparison above keeps one roll.
    """
    pytest.importorskip("jwst")
    from jwst.skymatch import SkyMatchStep

    from image3_dask.graph import skymatch
    from image3_dask.io.asn import resolve_inputs
    from image3_dask.io.exposures import read_exposures
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.context import RunContext

    sim = simulate("miri", n=4, out_dir=tmp_path / "sim", seed=6, shape=(128, 128),
                   n_stars=300, n_galaxies=20, visits=2, visit_roll=8.0, dq_extras=True,
                   pointing_error=0.0, roll_error=0.0)
    ctx = RunContext(client=client, config=PipelineConfig(), asn=resolve_inputs(sim.asn_path),
                     output_dir=tmp_path, work_dir=tmp_path / "work", progress=False)
    ours = [e.background_level for e in skymatch.run(ctx, read_exposures(sim.cal_paths))]
    lib = SkyMatchStep.call(str(sim.asn_path))
    with lib:
        theirs = []
        for i in range(len(lib)):
            model = lib.borrow(i)
            theirs.append(model.meta.background.level)
            lib.shelve(model, i, modify=False)
    truth = np.array([e.sky_mjysr for e in sim.truth.exposures])
    print(f"\nrotated visits: levels {ours} (jwst {theirs}); truth differences "
          f"{truth - truth.min()}")
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    # within 0.25 % of the 8 MJy/sr sky (the noise of 128x128 overlaps)
    assert np.abs((np.array(ours) - ours[int(np.argmin(truth))]) - (truth - truth.min())).max() < 0.02


@pytest.mark.parametrize(
    "mode, subtract, accepted",
    [("subtracted", False, False), ("subtracted", True, True), ("recorded", False, True),
     ("undefined", False, False)],
)
def test_background_already_set(client, tmp_path, mode, subtract, accepted):
    """meta.background from earlier processing: skymatch refuses and accepts what jwst does."""
    pytest.importorskip("jwst")
    from jwst.skymatch import SkyMatchStep

    from image3_dask.errors import ConfigError, InputError
    from image3_dask.graph import skymatch
    from image3_dask.io.asn import resolve_inputs
    from image3_dask.io.exposures import read_exposures
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.context import RunContext

    sim = simulate("miri", n=2, out_dir=tmp_path / "sim", seed=4, shape=(96, 96), n_stars=200,
                   n_galaxies=0, image2_background=mode)
    config = PipelineConfig()
    config.update({"skymatch": {"subtract": subtract}})
    ctx = RunContext(client=client, config=config, asn=resolve_inputs(sim.asn_path),
                     output_dir=tmp_path, work_dir=tmp_path / "work", progress=False)
    if not accepted:
        with pytest.raises(ValueError):
            SkyMatchStep.call(str(sim.asn_path), subtract=subtract)
        with pytest.raises((ConfigError, InputError)):
            skymatch.run(ctx, read_exposures(sim.cal_paths))
        return
    lib = SkyMatchStep.call(str(sim.asn_path), subtract=subtract)
    ours = skymatch.run(ctx, read_exposures(sim.cal_paths))
    with lib:
        for i, o in enumerate(ours):
            model = lib.borrow(i)
            bg = model.meta.background
            assert o.meta["background"]["level"] == pytest.approx(bg.level, rel=1e-9, abs=1e-12)
            assert o.meta["background"]["subtracted"] is bg.subtracted is subtract
            assert o.cal_steps["skymatch"] == model.meta.cal_step.skymatch
            lib.shelve(model, i, modify=False)


def test_recorded_background_whole_pipeline(client, tmp_path):
    """A level recorded by an earlier skymatch, skymatch skipped: outlier flags and mosaic as
    jwst's (resample subtracts the recorded level, outlier detection adds it to the blot).

    (``subtracted`` files with ``subtract=True`` through the whole pipeline gave jwst's crf and
    i2d as well, within 4e-7 of the ERR; left out for time, the levels are checked above.)
    """
    pytest.importorskip("jwst")
    from jwst.pipeline import Image3Pipeline as Theirs
    from stdatamodels.jwst import datamodels

    from image3_dask.pipeline.image3 import Image3Pipeline as Ours

    sim = simulate("miri", n=3, out_dir=tmp_path / "sim", seed=8, shape=(128, 128),
                   n_stars=300, n_galaxies=30, image2_background="recorded", dq_extras=True)
    steps = {"tweakreg": {"skip": True}, "skymatch": {"skip": True},
             "source_catalog": {"skip": True}}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        Theirs.call(str(sim.asn_path), output_dir=str(tmp_path / "jwst"), save_results=True,
                    steps=steps)
    ours = Ours.call(sim.asn_path, output_dir=tmp_path / "ours", client=client, progress=False,
                     steps=steps)
    flagged = 0
    for theirs in sorted((tmp_path / "jwst").glob("*_crf.fits")):
        with datamodels.open(theirs) as a, datamodels.open(tmp_path / "ours" / theirs.name) as b:
            np.testing.assert_array_equal(b.dq, a.dq)
            np.testing.assert_array_equal(b.data, a.data)
            assert b.meta.background.level == pytest.approx(a.meta.background.level, rel=1e-12)
            assert b.meta.background.subtracted == a.meta.background.subtracted
            flagged += int(((a.dq & datamodels.dqflags.pixel["OUTLIER"]) > 0).sum())
    with datamodels.open(next((tmp_path / "jwst").glob("*_i2d.fits"))) as a, datamodels.open(
        ours["i2d"]
    ) as b:
        data = (a.wht > 0) & np.isfinite(a.data)
        assert np.array_equal(np.isfinite(a.data), np.isfinite(b.data))
        d = np.abs(b.data - a.data)[data] / a.err[data]
        print(f"\nrecorded: {flagged} outliers; i2d |SCI diff|/ERR max {d.max():.2g}, sky "
              f"{np.nanmedian(a.data):.3g} MJy/sr")
        assert d.max() < 1e-3
        # a level left in (or taken twice off) the mosaic would show in its median
        assert abs(np.nanmedian(b.data)) < 0.2


def test_reference_file_without_the_mosaic_row(quirky, client, tmp_path, caplog):
    """An APCORR file with no row for the mosaic's subarray: jwst warns and makes no catalog,
    and so does image3-dask (it used to fail the run with an InputError)."""
    import logging
    import shutil

    import stdatamodels.jwst.datamodels as dm
    from jwst.source_catalog import SourceCatalogStep

    from image3_dask.pipeline.image3 import Image3Pipeline as Ours
    from image3_dask.simulate.refs import write_reference_files

    apcorr, abvega = write_reference_files("miri", tmp_path / "refs")
    with dm.open(apcorr) as m:  # keep the FULL rows only: the mosaic is GENERIC
        table = m.apcorr_table
        m.apcorr_table = table[table["subarray"] == "FULL"]
        m.save(tmp_path / "apcorr_full_only.fits")
    refs = {"override_apcorr": str(tmp_path / "apcorr_full_only.fits"),
            "override_abvegaoffset": str(abvega)}
    with caplog.at_level(logging.WARNING):
        theirs = SourceCatalogStep.call(str(next(quirky["jwst"].glob("*_i2d.fits"))), **refs)
    assert theirs is None
    assert "Source catalog will not be created" in caplog.text
    caplog.clear()
    out = tmp_path / "ours"
    out.mkdir()
    for p in quirky["ours"].glob("*_i2d.*"):
        (shutil.copytree if p.is_dir() else shutil.copy)(p, out / p.name)
    skip = {s: {"skip": True} for s in ("tweakreg", "skymatch", "outlier_detection", "resample")}
    with caplog.at_level(logging.WARNING, logger="image3_dask"):
        products = Ours.call(quirky["sim"].asn_path, output_dir=out, client=client,
                             progress=False, steps={**skip, "source_catalog": refs})
    assert "APCORR data missing for MIRI F770W GENERIC" in caplog.text
    assert "Source catalog will not be created" in caplog.text
    assert not list(out.glob("*_cat.ecsv")) and not products.get("cat")


def test_undefined_background_skymatch_skipped_follows_truth(client, tmp_path):
    """A level with ``subtracted`` undefined and skymatch skipped: truth wins over jwst.

    jwst 3.0's resample takes the level as not subtracted (``not None``) and subtracts it, but
    its outlier detection adds it back to the blot only when ``subtracted is False``: the sky is
    then compared with a sky-free blot and, on these files, jwst flagged 14924, 15000 and 15073
    of 16384 pixels as outliers, leaving 1129 mosaic pixels with data (25879 here). image3-dask
    reads the level as not subtracted in every step: only cosmic rays and bad pixels are flagged.
    """
    from stdatamodels.jwst import datamodels

    from image3_dask.pipeline.image3 import Image3Pipeline as Ours

    sim = simulate("miri", n=3, out_dir=tmp_path / "sim", seed=8, shape=(128, 128),
                   n_stars=300, n_galaxies=30, image2_background="undefined")
    steps = {"tweakreg": {"skip": True}, "skymatch": {"skip": True},
             "source_catalog": {"skip": True}}
    products = Ours.call(sim.asn_path, output_dir=tmp_path / "ours", client=client,
                         progress=False, steps=steps)
    outlier = datamodels.dqflags.pixel["OUTLIER"]
    for crf in sorted((tmp_path / "ours").glob("*_crf.fits")):
        with datamodels.open(crf) as m:
            flagged = (m.dq & outlier) > 0
            e = sim.truth.exposure(crf.name.split("_a3001_crf")[0] + "_cal.fits")
            hit = np.zeros(m.dq.shape, bool)
            hit[e.cosmic_rays["y"], e.cosmic_rays["x"]] = True
            assert flagged.mean() < 0.03
            assert hit[flagged].sum() > 0.5 * hit.sum()  # the cosmic rays are what is flagged
    with datamodels.open(products["i2d"]) as m:
        assert np.isfinite(m.data).mean() > 0.8
        assert abs(np.nanmedian(m.data)) < 0.2  # the level was subtracted once


def test_quirky_tweakreg_catalogs_equal_jwst(quirky, tmp_path):
    """tweakreg's source catalogs of image2-like files (NaN saturated cores, DO_NOT_USE and
    NON_SCIENCE pixels, subarrays) are jwst's: the DQ is read as jwst's catalog mask reads it."""
    from astropy.table import Table
    from jwst.tweakreg import TweakRegStep

    from image3_dask.graph.tweakreg_tasks import catalog_task, finder_params
    from image3_dask.io.exposures import read_exposure_info
    from image3_dask.pipeline.config import PipelineConfig

    sim = quirky["sim"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        TweakRegStep.call(str(sim.asn_path), save_catalogs=True, output_dir=str(tmp_path))
    params = finder_params(dict(PipelineConfig()["tweakreg"]))
    total, worst = 0, 0.0
    for path in sim.cal_paths:
        theirs = Table.read(tmp_path / path.name.replace("_cal.fits", "_cal_cat.ecsv"))
        bbox = read_exposure_info(path).wcs.bounding_box.bounding_box(order="F")
        ours = catalog_task(path, path.name, params, bbox)
        assert len(ours) == len(theirs) > 10, path.name
        d = np.hypot(np.asarray(ours["x"]) - theirs["x"], np.asarray(ours["y"]) - theirs["y"])
        worst = max(worst, float(d.max()))
        total += len(ours)
    print(f"\ntweakreg catalogs: {total} sources, positions within {worst:.2g} px of jwst's")
    assert worst < 1e-6
