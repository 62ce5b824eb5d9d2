"""Tests of image3_dask.algorithms.outlier (median, blot, flagging) on synthetic dithers."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import median_full_frame, median_of_exposures
from helpers.outlier_scene import (
    SIGMA,
    drizzle_singles,
    ivm_weight,
    make_scene,
    pixmap_of,
    tiles,
)
from helpers.wcs import tan_wcs
from stcal.outlier_detection.median import nanmedian3D
from stcal.outlier_detection.utils import (
    compute_weight_threshold,
    flag_crs,
    flag_resampled_crs,
    gwcs_blot,
)

from image3_dask.algorithms.outlier import (
    DO_NOT_USE,
    OUTLIER,
    WeightStats,
    blot_median,
    blot_region_bounds,
    combine_weight_stats,
    flag_outliers,
    match_nans_and_flags,
    median_tile,
    nanmedian_stack,
    weight_stats,
    weight_threshold,
)

MASKPT = 0.7


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=1)


@pytest.fixture(scope="module")
def singles(scene):
    return drizzle_singles(scene)


@pytest.fixture(scope="module")
def median(singles):
    sci, wht = singles
    return median_full_frame(sci, wht, MASKPT)


def _official_median(sci, wht, maskpt):
    """What jwst median_with_resampling does with whole singles."""
    cube = sci.copy()
    for g in range(cube.shape[0]):
        thr = compute_weight_threshold(wht[g], maskpt)
        cube[g][wht[g] < thr] = np.nan
    return nanmedian3D(cube)


# --------------------------------------------------------------------------- median


def test_weight_stats_merge_is_exact(singles):
    _, wht = singles
    for w in wht:
        full = weight_stats(w)
        parts = [weight_stats(w[ys, xs]) for ys, xs in tiles(w.shape, 37, 41)]
        merged = combine_weight_stats(parts)
        # tree order does not matter
        merged2 = combine_weight_stats(
            [combine_weight_stats(parts[:5]), combine_weight_stats(parts[5:])]
        )
        for m in (merged, merged2):
            np.testing.assert_array_equal(m.values, full.values)
            np.testing.assert_array_equal(m.counts, full.counts)
        assert merged.npix == np.count_nonzero(np.isfinite(w) & (w != 0))


def test_weight_threshold_matches_stcal(singles):
    _, wht = singles
    for w in wht:
        ours = weight_threshold(weight_stats(w), MASKPT)
        ref = compute_weight_threshold(w, MASKPT)
        # exact on this data; the documented bound is a few float ulps
        assert abs(ours - ref) <= 1e-6 * abs(ref)
        np.testing.assert_array_equal(w < ours, w < ref)


def test_weight_threshold_empty_is_nan():
    thr = weight_threshold(combine_weight_stats([]), MASKPT)
    assert np.isnan(thr)
    assert np.isnan(weight_threshold(weight_stats(np.zeros((4, 4))), MASKPT))
    assert WeightStats.empty().npix == 0


def test_weight_stats_quantised_error_bound(singles):
    _, wht = singles
    for bits in (6, 10):
        for w in wht:
            exact = weight_threshold(weight_stats(w), MASKPT)
            approx = weight_threshold(weight_stats(w, mantissa_bits=bits), MASKPT)
            assert abs(approx - exact) <= 2.0 ** -(bits + 1) * exact
            nz = w[w > 0]
            binades = int(np.floor(np.log2(nz.max())) - np.floor(np.log2(nz.min()))) + 2
            assert len(weight_stats(w, mantissa_bits=bits).values) <= binades * 2**bits


def test_tiled_median_equals_full_frame(singles, median):
    sci, wht = singles
    ngroups = sci.shape[0]
    shape = sci.shape[1:]
    # phase 1: per-tile weight statistics per group
    tile_list = list(tiles(shape, 40, 33))
    per_group = [[] for _ in range(ngroups)]
    for ys, xs in tile_list:
        for g in range(ngroups):
            per_group[g].append(weight_stats(wht[g, ys, xs]))
    # phase 2: thresholds per group over the full grid
    thresholds = [weight_threshold(combine_weight_stats(s), MASKPT) for s in per_group]
    # phase 3: median per tile, leaving out groups not covering the tile
    tiled = np.full(shape, np.nan, np.float32)
    for ys, xs in tile_list:
        use = [g for g in range(ngroups) if np.any(wht[g, ys, xs] > 0)]
        tiled[ys, xs] = median_tile(
            sci[use][:, ys, xs], wht[use][:, ys, xs], [thresholds[g] for g in use]
        )
    np.testing.assert_array_equal(tiled, median)
    assert tiled.dtype == np.float32
    # and equal to the official recipe on whole singles
    np.testing.assert_array_equal(median, _official_median(sci, wht, MASKPT))
    assert np.isfinite(median).mean() > 0.6
    # thresholds computed per tile instead (the naive tiled approach) do differ
    naive = np.full(shape, np.nan, np.float32)
    for ys, xs in tile_list:
        w = wht[:, ys, xs]
        naive[ys, xs] = median_tile(
            sci[:, ys, xs], w, [compute_weight_threshold(wg, MASKPT) for wg in w]
        )
    assert not np.array_equal(naive, median, equal_nan=True)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 8, 16, 33])
def test_nanmedian_stack_equals_numpy_bit_for_bit(k):
    rng = np.random.default_rng(k)
    shape = (k, 70, 53)
    cube = (rng.normal(size=shape) * rng.choice([1.0, 1e30, 1e-30], size=shape)).astype(np.float32)
    cube[rng.random(shape) < 0.3] = np.nan
    cube[rng.random(shape) < 0.01] = np.inf
    cube[rng.random(shape) < 0.01] = -np.inf
    cube[:, :4] = np.nan  # all-NaN pixels
    ours = nanmedian_stack(cube, block_rows=16)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, nanmedian3D(cube.copy()))
    assert np.isnan(ours[:4]).all() and (~np.isnan(ours[4:])).mean() > 0.6


def test_nanmedian_stack_of_no_layers_is_nan():
    assert np.isnan(nanmedian_stack(np.empty((0, 3, 4), np.float32))).all()
    with pytest.raises(ValueError, match="stack"):
        nanmedian_stack(np.zeros((3, 4), np.float32))


def test_median_tile_does_not_modify_inputs(singles):
    sci, wht = singles
    s0, w0 = sci[:, :20, :20].copy(), wht[:, :20, :20].copy()
    median_tile(s0, w0, [1e9] * 4)
    np.testing.assert_array_equal(s0, sci[:, :20, :20])
    with pytest.raises(ValueError):
        median_tile(s0, w0, [1.0])


# --------------------------------------------------------------------------- blot


def test_blot_region_equals_full_grid_blot(scene, median):
    for exp in scene.exposures:
        pixmap = pixmap_of(exp, scene)
        ref = gwcs_blot(median, scene.grid_wcs, exp.sci.shape, exp.wcs, fillval=np.nan)
        ys, xs = blot_region_bounds(pixmap, scene.grid_shape)
        assert (ys.stop - ys.start) * (xs.stop - xs.start) < median.size
        got = blot_median(median[ys, xs], (ys.start, xs.start), pixmap, scene.grid_shape)
        np.testing.assert_array_equal(got, ref)
        # any larger region gives the same
        big = (slice(max(ys.start - 3, 0), ys.stop + 2), slice(max(xs.start - 1, 0), xs.stop))
        got2 = blot_median(median[big], (big[0].start, big[1].start), pixmap, scene.grid_shape)
        np.testing.assert_array_equal(got2, ref)
        # a region too small is refused
        with pytest.raises(ValueError):
            blot_median(
                median[ys.start + 1 : ys.stop, xs],
                (ys.start + 1, xs.start),
                pixmap,
                scene.grid_shape,
            )


def test_blot_exposure_partly_off_grid(scene, median):
    # a grid cut to the central 90x70 pixels: exposures hang over all edges
    sub = median[30:120, 40:110]
    gny, gnx = sub.shape
    # grid wcs whose pixel (0, 0) is pixel (40, 30) of the scene grid
    full = scene.grid_shape
    sub_wcs = tan_wcs(((full[1] - 1) / 2.0 - 40, (full[0] - 1) / 2.0 - 30), 0.0, sub.shape)
    for exp in scene.exposures:
        pixmap = pixmap_of(exp, type(scene)(scene.exposures, sub_wcs, sub.shape, None))
        ref = gwcs_blot(sub, sub_wcs, exp.sci.shape, exp.wcs, fillval=np.nan)
        ys, xs = blot_region_bounds(pixmap, (gny, gnx))
        got = blot_median(sub[ys, xs], (ys.start, xs.start), pixmap, (gny, gnx))
        np.testing.assert_array_equal(got, ref)
        assert np.isnan(got).any() and np.isfinite(got).any()


def test_blot_nan_pixmap_and_no_overlap():
    median = np.arange(100, dtype=np.float32).reshape(10, 10)
    pm = np.zeros((3, 4, 2))
    pm[..., 0] = np.arange(4)[None, :] + 2.5
    pm[..., 1] = np.arange(3)[:, None] + 3.25
    pm[0, 0] = np.nan
    pm[1, 1] = [9.5, 9.5]  # last column/row of the grid: drizzle uses f00 only
    ys, xs = blot_region_bounds(pm, (10, 10))
    got = blot_median(median[ys, xs], (ys.start, xs.start), pm, (10, 10))
    from drizzle.resample import blot_image

    pm_ref = pm.copy()
    pm_ref[np.isnan(pm_ref)] = -1
    ref = blot_image(median, pm_ref, fillval=np.nan, iscale=1.0, interp="linear")
    np.testing.assert_array_equal(got, ref)
    assert np.isnan(got[0, 0])
    assert got[1, 1] == median[9, 9]
    off = np.full((2, 2, 2), -5.0)
    assert blot_region_bounds(off, (10, 10)) is None
    assert np.isnan(blot_median(median[:1, :1], (0, 0), off, (10, 10))).all()


# --------------------------------------------------------------------------- flagging


def _blots(scene, median):
    out = []
    for exp in scene.exposures:
        pixmap = pixmap_of(exp, scene)
        ys, xs = blot_region_bounds(pixmap, scene.grid_shape)
        out.append(blot_median(median[ys, xs], (ys.start, xs.start), pixmap, scene.grid_shape))
    return out


def test_flag_parity_with_stcal(scene, median):
    for exp, blot in zip(scene.exposures, _blots(scene, median), strict=True):
        for backg in (0.0, 0.3):
            mask, dq = flag_outliers(exp.sci, exp.err, exp.dq, blot, backg=backg)
            ref = flag_resampled_crs(exp.sci, exp.err, blot, 5.0, 4.0, 1.2, 0.7, backg)
            np.testing.assert_array_equal(mask, ref)
        mask, dq = flag_outliers(
            exp.sci, exp.err, exp.dq, blot, snr=(3.0, 2.5), scale="1.0 0.5", backg=0.0
        )
        np.testing.assert_array_equal(
            mask, flag_resampled_crs(exp.sci, exp.err, blot, 3.0, 2.5, 1.0, 0.5, 0.0)
        )
        mask, dq = flag_outliers(exp.sci, exp.err, exp.dq, blot, resample_data=False)
        np.testing.assert_array_equal(mask, flag_crs(exp.sci, exp.err, blot, 5.0))
        # DQ: outliers get DO_NOT_USE|OUTLIER, NaN pixels DO_NOT_USE, rest untouched
        expect = exp.dq | mask.astype(np.uint32) * (DO_NOT_USE | OUTLIER)
        expect[np.isnan(exp.sci) | np.isnan(exp.err)] |= DO_NOT_USE
        np.testing.assert_array_equal(dq, expect)
        assert dq.dtype == np.uint32


def test_match_nans_and_flags():
    dq = np.array([[0, 1], [0, 0]], np.uint32)
    data = np.array([[1.0, 2.0], [np.nan, 4.0]], np.float32)
    err = np.array([[1.0, 1.0], [1.0, np.nan]], np.float32)
    dq2, (d2, e2, none) = match_nans_and_flags(dq, data, err, None)
    np.testing.assert_array_equal(dq2, [[0, 1], [1, 1]])
    assert np.isnan(d2).sum() == 3 and np.isnan(e2).sum() == 3 and none is None
    assert data[0, 1] == 2.0  # input untouched


def _near(mask):
    """Pixels within the 3x3 neighbourhood of a True pixel."""
    out = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def cr_recovery(scene, median):
    """Per-CR table and false-flag counts of the full tiled flow on ``scene``."""
    ngroups = len(scene.exposures)
    sci, wht = drizzle_singles(scene)
    thr = np.array([weight_threshold(weight_stats(w), MASKPT) for w in wht])
    ngood = (wht >= thr[:, None, None]).sum(0)
    # grid positions of every CR, to find CRs coinciding across exposures
    gpos = []
    for k, exp in enumerate(scene.exposures):
        pm = pixmap_of(exp, scene)
        y, x = exp.cr_yx.T
        gpos.append(np.stack([pm[y, x, 0], pm[y, x, 1], np.full(len(y), k)], 1))
    gpos = np.concatenate(gpos)
    rows = []
    false_star = star_pix = false_sky = sky_pix = 0
    for k, (exp, blot) in enumerate(zip(scene.exposures, _blots(scene, median), strict=True)):
        mask, dq = flag_outliers(exp.sci, exp.err, exp.dq, blot)
        assert np.all((dq[mask] & (DO_NOT_USE | OUTLIER)) == (DO_NOT_USE | OUTLIER))
        pm = pixmap_of(exp, scene)
        star = (exp.truth - exp.truth.min()) > 5 * SIGMA
        near_star = _near(star)
        cr = np.zeros(mask.shape, bool)
        cr[exp.cr_yx[:, 0], exp.cr_yx[:, 1]] = True
        near_cr = _near(cr)
        false_star += (mask & star & ~near_cr).sum()
        star_pix += (star & ~near_cr).sum()
        false_sky += (mask & ~near_star & ~near_cr).sum()
        sky_pix += (~near_star & ~near_cr).sum()
        for (y, x), amp in zip(exp.cr_yx, exp.cr_amp, strict=True):
            gx, gy = pm[y, x]
            others = gpos[:, 2] != k
            dist = np.hypot(gpos[others, 0] - gx, gpos[others, 1] - gy).min()
            n = ngood[int(round(gy)), int(round(gx))]
            rows.append((amp, n, dist, near_star[y, x], mask[y, x]))
    assert ngroups == 4
    return np.array(rows), (false_star, star_pix, false_sky, sky_pix)


@pytest.mark.parametrize("psf_sigma", [1.3, 0.8])
def test_cr_recovery_and_star_false_flags(psf_sigma):
    scene = make_scene(seed=2, ncr=120, cr_amp_range=(5.0, 60.0), psf_sigma=psf_sigma)
    sci, wht = drizzle_singles(scene)
    median = median_full_frame(sci, wht, MASKPT)
    rows, (false_star, star_pix, false_sky, sky_pix) = cr_recovery(scene, median)
    amp, n, dist, near_star, hit = rows.T
    hit = hit.astype(bool)
    # "clean" CRs: all 4 exposures overlap, no CR of another exposure within 3 grid
    # pixels, not in the 3x3 neighbourhood of a star pixel (> 5 sigma)
    clean = (n == 4) & (dist > 3) & ~near_star.astype(bool)
    rec = {lo: hit[clean & (amp > lo)].mean() for lo in (5, 6, 10)}
    print(
        f"\nclean CRs: {int((clean & (amp > 5)).sum())}; recovery >5σ {rec[5]:.4f}, "
        f">6σ {rec[6]:.4f}, >10σ {rec[10]:.4f}; all CRs >5σ: {hit[amp > 5].mean():.4f} "
        f"(of {int((amp > 5).sum())}); in 4-overlap: {hit[(n == 4) & (amp > 5)].mean():.4f}"
        f"\nfalse flags on star pixels {false_star}/{star_pix}, on sky {false_sky}/{sky_pix}"
    )
    assert rec[10] >= 0.99
    assert rec[6] >= 0.98
    assert rec[5] >= 0.95
    assert false_star <= 0.01 * star_pix
    assert false_sky <= 1e-4 * sky_pix + 2


# --------------------------------------------------------------------------- resample_data=False


def test_median_of_exposures_tiled_and_flags():
    scene = make_scene(seed=3, aligned=True)
    sci = np.stack([e.sci for e in scene.exposures])
    wht = np.stack([ivm_weight(e) for e in scene.exposures])
    full = median_of_exposures(sci, wht, MASKPT)
    # official recipe (median_without_resampling)
    np.testing.assert_array_equal(full, _official_median(sci, wht, MASKPT))
    # tiled with whole-exposure thresholds
    shape = sci.shape[1:]
    stats = [
        combine_weight_stats(weight_stats(w[ys, xs]) for ys, xs in tiles(shape, 50, 45))
        for w in wht
    ]
    thr = [weight_threshold(s, MASKPT) for s in stats]
    tiled = np.empty(shape, np.float32)
    for ys, xs in tiles(shape, 50, 45):
        tiled[ys, xs] = median_of_exposures(sci[:, ys, xs], wht[:, ys, xs], MASKPT, thr)
    np.testing.assert_array_equal(tiled, full)
    found = total = 0
    for exp in scene.exposures:
        mask, dq = flag_outliers(exp.sci, exp.err, exp.dq, full, resample_data=False)
        np.testing.assert_array_equal(mask, flag_crs(exp.sci, exp.err, full, 5.0))
        strong = exp.cr_amp > 8.0
        found += mask[exp.cr_yx[strong, 0], exp.cr_yx[strong, 1]].sum()
        total += strong.sum()
    assert found / total >= 0.99
