"""The outlier_detection step as a graph: crf files, cosmic-ray recovery, parity with jwst.

Data: the session's 4-exposure MIRI dither (160x160 detectors, cosmic rays recorded in the truth
file), copied with ``meta.background.level`` set to each exposure's true sky level and
``subtracted = False``, which is what skymatch records. Without it the +-10 % sky differences
between the simulated exposures exceed the noise and both this step and jwst's flag almost every
pixel (skymatch is not part of these runs).

Recovery criterion (stated in ``_cr_stats``): a truth cosmic-ray pixel counts when its added
value exceeds 5 times the ERR of that pixel and at least 3 exposures (itself included) have a
usable pixel (inside the detector, no DO_NOT_USE) at the sky position of its centre; it is
recovered when its DQ has the OUTLIER bit in the crf file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_context

from image3_dask.io.asn import load_association
from image3_dask.io.exposures import read_exposures
from image3_dask.pipeline.context import RunContext
from image3_dask.pipeline.image3 import Image3Pipeline

OUTLIER = 16
DO_NOT_USE = 1
SKIP = {"tweakreg": {"skip": True}, "skymatch": {"skip": True}, "source_catalog": {"skip": True}}


def _open(path):
    from stdatamodels.jwst import datamodels

    return datamodels.open(path)


@pytest.fixture(scope="module")
def sky_dither(small_dither, tmp_path_factory):
    """The small dither with the true sky level in ``meta.background`` (as skymatch records it)."""
    src = small_dither.asn_path.parent
    dst = tmp_path_factory.mktemp("sky_dither")
    for e in small_dither.truth.exposures:
        with _open(src / e.filename) as m:
            m.meta.background.level = float(e.sky_mjysr)
            m.meta.background.subtracted = False
            m.meta.background.method = "global"
            m.save(dst / e.filename)
    shutil.copy(small_dither.asn_path, dst / "asn.json")
    return dst / "asn.json"


@pytest.fixture(scope="module")
def runs(sky_dither, client, tmp_path_factory):
    """The pipeline with outlier detection (64x64 tiles, work folder kept) and without it."""
    out = tmp_path_factory.mktemp("pipeline")
    steps = {**SKIP, "resample": {"tile_shape": [64, 64]}}
    with_step = Image3Pipeline.call(
        sky_dither,
        output_dir=out / "with",
        steps=steps,
        client=client,
        progress=False,
        keep_work=True,
    )
    without = Image3Pipeline.call(
        sky_dither,
        output_dir=out / "without",
        client=client,
        progress=False,
        steps={**steps, "outlier_detection": {"skip": True}},
    )
    return with_step, without


def _ctx(client, asn_path, out: Path, **outlier) -> RunContext:
    return run_context(client, asn_path, out, {**SKIP, "outlier_detection": outlier})


def _cr_stats(truth, exposures, dqs, nsigma=5.0, min_cover=3):
    """(counted, recovered) truth CR pixels; see the module docstring for the criterion."""
    errs, dq_in = [], []
    for e in exposures:
        with _open(e.source_path) as m:
            errs.append(np.array(m.err))
            dq_in.append(np.array(m.dq))
    counted = recovered = 0
    for i, (e, et) in enumerate(zip(exposures, truth.exposures, strict=True)):
        cr = et.cosmic_rays
        y = np.asarray(cr["y"], int)
        x = np.asarray(cr["x"], int)
        bright = np.asarray(cr["value"], float) > nsigma * errs[i][y, x]
        ra, dec = e.wcs(x.astype(float), y.astype(float))
        cover = np.zeros(len(x), int)
        for j, o in enumerate(exposures):
            xo, yo = o.wcs.invert(ra, dec, with_bounding_box=False)
            ny, nx = o.shape
            ix = np.round(np.nan_to_num(xo, nan=-9)).astype(int)
            iy = np.round(np.nan_to_num(yo, nan=-9)).astype(int)
            inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
            good = np.zeros(len(x), bool)
            good[inside] = (dq_in[j][iy[inside], ix[inside]] & DO_NOT_USE) == 0
            cover += good
        sel = bright & (cover >= min_cover)
        counted += int(sel.sum())
        recovered += int(((dqs[i][y[sel], x[sel]] & OUTLIER) > 0).sum())
    return counted, recovered


def _source_flag_rate(truth, exposures, dqs):
    """Fraction of true source pixels (truth > 3 ERR, away from CRs) flagged as outliers."""
    from scipy.ndimage import binary_dilation

    from image3_dask.simulate import truth_image

    flagged = total = 0
    for i, (e, et) in enumerate(zip(exposures, truth.exposures, strict=True)):
        with _open(e.source_path) as m:
            err = np.array(m.err)
        src = truth_image(truth, i, include_sky=False)
        crmask = np.zeros(e.shape, bool)
        crmask[np.asarray(et.cosmic_rays["y"], int), np.asarray(et.cosmic_rays["x"], int)] = True
        crmask = binary_dilation(crmask, np.ones((3, 3), bool))
        sel = (src > 3 * np.nan_to_num(err, nan=np.inf)) & ~crmask
        total += int(sel.sum())
        flagged += int(((dqs[i] & OUTLIER) > 0)[sel].sum())
    return flagged / max(total, 1), total


def _crf_dqs(paths):
    out = []
    for p in paths:
        with _open(p) as m:
            out.append(np.array(m.dq))
    return out


def test_pipeline_writes_crf_and_removes_cosmic_rays(runs, small_dither):
    with_step, without = runs
    exposures = with_step["exposures"]
    assert [Path(p).name for p in with_step["crf"]] == [
        f"{e.name}_a3001_crf.fits" for e in exposures
    ]
    assert all(Path(e.path) == Path(p) for e, p in zip(exposures, with_step["crf"], strict=True))
    assert all(e.source_path.name.endswith("_cal.fits") for e in exposures)
    assert "crf" not in without
    median_store = with_step["i2d"].parent / f"{with_step['i2d'].name[:-9]}_work" / "median.zarr"
    import zarr

    median = zarr.open_array(median_store / "median", mode="r")[:]
    with _open(with_step["i2d"]) as a, _open(without["i2d"]) as b:
        grid_wcs = a.meta.wcs
        da, db, err = np.array(a.data), np.array(b.data), np.array(a.err)
    assert da.shape == median.shape  # the same (default) grid: pixel maps shared
    truth = small_dither.truth
    dqs = _crf_dqs(with_step["crf"])
    jumps, residuals = [], []
    for e, et, dq in zip(exposures, truth.exposures, dqs, strict=True):
        cr = et.cosmic_rays
        y, x = np.asarray(cr["y"], int), np.asarray(cr["x"], int)
        keep = (dq[y, x] & OUTLIER) > 0
        gx, gy = grid_wcs.invert(*e.wcs(x[keep].astype(float), y[keep].astype(float)))
        ix, iy = np.round(gx).astype(int), np.round(gy).astype(int)
        ok = (ix >= 0) & (ix < da.shape[1]) & (iy >= 0) & (iy < da.shape[0])
        ix, iy = ix[ok], iy[ok]
        fine = np.isfinite(da[iy, ix]) & np.isfinite(db[iy, ix]) & np.isfinite(median[iy, ix])
        ix, iy = ix[fine], iy[fine]
        jumps.append((db[iy, ix] - da[iy, ix]) / err[iy, ix])
        residuals.append(np.abs(da[iy, ix] - median[iy, ix]) / err[iy, ix])
    jumps, residuals = np.concatenate(jumps), np.concatenate(residuals)
    print(
        f"\n{jumps.size} flagged CR positions on the i2d: without the step the i2d is higher by "
        f"a median {np.median(jumps):.1f} ERR; with it |i2d - median| is {np.median(residuals):.2f}"
        f" ERR (median), {np.percentile(residuals, 99):.2f} (99th percentile)"
    )
    assert jumps.size > 50
    assert np.median(jumps) > 5.0
    assert np.mean(jumps > 1.0) > 0.9
    assert np.median(residuals) < 1.5


def test_cosmic_ray_recovery(runs, small_dither):
    with_step, _ = runs
    exposures = with_step["exposures"]
    counted, recovered = _cr_stats(small_dither.truth, exposures, _crf_dqs(with_step["crf"]))
    print(
        f"\nCR pixels > 5 ERR with >= 3 exposures: {recovered}/{counted} flagged "
        f"({100 * recovered / counted:.2f} %)"
    )
    assert counted >= 40
    assert recovered >= 0.99 * counted


def test_crf_contents(runs):
    with_step, _ = runs
    for e, p in zip(with_step["exposures"], with_step["crf"], strict=True):
        with _open(e.source_path) as cal, _open(p) as crf:
            assert crf.meta.filename == Path(p).name
            assert crf.meta.cal_step.outlier_detection == "COMPLETE"
            assert crf.meta.cal_step.tweakreg == "SKIPPED"
            assert crf.meta.background.level == cal.meta.background.level
            assert crf.meta.background.subtracted is False
            assert crf.meta.background.method == "global"
            new = (crf.dq & OUTLIER) > 0
            assert new.sum() > 10
            assert np.all(crf.dq[new] & DO_NOT_USE)
            assert np.array_equal(
                crf.dq & ~np.uint32(OUTLIER | DO_NOT_USE), cal.dq & ~np.uint32(OUTLIER | DO_NOT_USE)
            )
            bad = (crf.dq & DO_NOT_USE) > 0
            assert np.all(np.isnan(crf.data[bad])) and np.all(np.isnan(crf.err[bad]))
            assert np.array_equal(crf.data[~bad], cal.data[~bad])
            ra0, dec0 = cal.meta.wcs(10.0, 20.0)
            ra1, dec1 = crf.meta.wcs(10.0, 20.0)
            assert (ra0, dec0) == (ra1, dec1)


def test_single_tile_and_intermediate_products(runs, sky_dither, client, tmp_path):
    """One whole-grid tile (passes folded) gives the same flags and median as 64x64 tiles."""
    import zarr

    from image3_dask.graph import outlier

    with_step, _ = runs
    ctx = _ctx(client, sky_dither, tmp_path, save_intermediate_results=True)
    ctx.config.update({"resample": {"tile_shape": [4096, 4096]}})
    exposures = read_exposures(ctx.asn.members)
    out = outlier.run(ctx, exposures)
    for a, b in zip(_crf_dqs([e.path for e in out]), _crf_dqs(with_step["crf"]), strict=True):
        np.testing.assert_array_equal(a, b)
    tiled = zarr.open_array(
        with_step["i2d"].parent / f"{ctx.product_name}_work" / "median.zarr" / "median", mode="r"
    )[:]
    with _open(ctx.products["median"]) as m:
        assert m.meta.filename == f"{ctx.product_name}_median.fits"
        np.testing.assert_array_equal(np.array(m.data), tiled)
    singles = ctx.products["outlier_i2d"]
    assert len(singles) == 4
    assert Path(singles[0]).name == f"{ctx.product_name}_{exposures[0].group_id}_outlier_i2d.fits"
    with _open(singles[0]) as s:
        assert s.data.shape == tiled.shape
        assert np.isfinite(s.data).mean() > 0.3 and np.nanmax(s.wht) > 0


def test_single_exposure_is_skipped_as_jwst(sky_dither, client, tmp_path):
    from image3_dask.graph import outlier

    ctx = _ctx(client, sky_dither, tmp_path)
    exposures = read_exposures(ctx.asn.members[:1])
    out = outlier.run(ctx, exposures)
    assert out == exposures
    (crf,) = ctx.products["crf"]
    with _open(crf) as m, _open(exposures[0].path) as cal:
        assert m.meta.cal_step.outlier_detection == "FAILED"  # what jwst 3.0 records
        np.testing.assert_array_equal(m.dq, cal.dq)


# ---------------------------------------------------------------------------------------------
# parity with the official step
# ---------------------------------------------------------------------------------------------
def _official_dqs(asn_path, **pars):
    from jwst.datamodels import ModelLibrary
    from jwst.outlier_detection import OutlierDetectionStep

    members = load_association(asn_path).members
    step = OutlierDetectionStep(**pars)
    step.in_memory = True
    res = step.run(ModelLibrary([_open(p) for p in members], on_disk=False))
    dqs = []
    with res:
        for i in range(len(res)):
            m = res.borrow(i)
            dqs.append(np.array(m.dq))
            res.shelve(m, i, modify=False)
    return dqs


def _jaccard(ours, theirs) -> tuple[float, int, int]:
    a = np.concatenate([((d & OUTLIER) > 0).ravel() for d in ours])
    b = np.concatenate([((d & OUTLIER) > 0).ravel() for d in theirs])
    return float((a & b).sum() / max((a | b).sum(), 1)), int(a.sum()), int(b.sum())


@pytest.mark.jwst
def test_parity_with_official_step(runs, sky_dither, small_dither):
    pytest.importorskip("jwst")
    with_step, _ = runs
    official = _official_dqs(sky_dither)
    ours = _crf_dqs(with_step["crf"])
    jac, n_ours, n_off = _jaccard(ours, official)
    exposures = with_step["exposures"]
    rate_ours, n_src = _source_flag_rate(small_dither.truth, exposures, ours)
    rate_off, _ = _source_flag_rate(small_dither.truth, exposures, official)
    counted, rec_off = _cr_stats(small_dither.truth, exposures, official)
    print(
        f"\nflagged pixels: ours {n_ours}, official {n_off}, Jaccard {jac:.4f}; "
        f"source pixels flagged: ours {rate_ours:.4%}, official {rate_off:.4%} of {n_src}; "
        f"official CR recovery {rec_off}/{counted}"
    )
    assert jac >= 0.99
    assert rate_ours <= rate_off
    for a, b in zip(ours, official, strict=True):
        np.testing.assert_array_equal(a, b)  # in fact identical


@pytest.mark.jwst
def test_parity_without_resampling(sky_dither, client, tmp_path):
    pytest.importorskip("jwst")
    from image3_dask.graph import outlier

    ctx = _ctx(client, sky_dither, tmp_path, resample_data=False)
    ctx.config.update({"resample": {"tile_shape": [64, 64]}})
    out = outlier.run(ctx, read_exposures(ctx.asn.members))
    ours = _crf_dqs([e.path for e in out])
    official = _official_dqs(sky_dither, resample_data=False)
    jac, n_ours, n_off = _jaccard(ours, official)
    print(f"\nresample_data=false: ours {n_ours}, official {n_off}, Jaccard {jac:.4f}")
    assert n_ours > 0
    for a, b in zip(ours, official, strict=True):
        np.testing.assert_array_equal(a, b)


def test_singles_cache_roundtrip_and_cleanup(runs, tmp_path):
    """Kept singles read back exactly (crop, NaN/zero outside) and are removed after the median."""
    from image3_dask.algorithms.tiles import Tile
    from image3_dask.graph.outlier_tasks import _cache_single, _cached_singles

    rng = np.random.default_rng(3)
    tile = Tile(0, 0, 0, 40, 0, 50)
    sci = np.full(tile.shape, np.nan, np.float32)
    wht = np.zeros(tile.shape, np.float32)
    sci[5:20, 7:31] = rng.normal(size=(15, 24))
    wht[5:20, 7:31] = rng.uniform(0.5, 1, size=(15, 24))
    zero_fill = np.zeros(tile.shape, np.float32)  # fillval=0: no pixel is NaN
    _cache_single(tmp_path, 0, sci, wht)
    _cache_single(tmp_path, 1, zero_fill, np.zeros(tile.shape, np.float32))
    got = list(_cached_singles(tile, [(0, []), (1, []), (2, [])], tmp_path))
    np.testing.assert_array_equal(got[0][1], sci)
    np.testing.assert_array_equal(got[0][2], wht)
    np.testing.assert_array_equal(got[1][1], zero_fill)
    assert got[2][1:] == (None, None)
    with np.load(tmp_path / "g0.npz") as z:
        assert list(z["box"]) == [5, 20, 7, 31]

    with_step, _ = runs
    cache = with_step["i2d"].parent / f"{with_step['i2d'].name[: -len('_i2d.fits')]}_work"
    left = [p for p in (cache / "outlier_singles_cache").glob("*") if p.is_dir()]
    assert (cache / "median.zarr").exists() and left == []
