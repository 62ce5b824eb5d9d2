"""Tests of the array-level resample algorithms (grid, tiles, pixmap, drizzle_tile)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from astropy.modeling import models as m
from gwcs import wcs as gw
from helpers.wcs import distorted_wcs

from image3_dask.algorithms.drizzle_tile import (
    KERNELS,
    DrizzleInput,
    build_weight,
    drizzle_tile,
    kernel_halo,
    n_ctx_planes,
)
from image3_dask.algorithms.grid import (
    GridTooLargeError,
    OutputGrid,
    compute_output_grid,
    grid_from_wcs,
    sregion_footprint,
)
from image3_dask.algorithms.pixmap import (
    CHECKED_STEPSIZE,
    checked_pixmap,
    exposure_pixmap,
    input_range,
    local_range,
    pixmap_blocks,
    pixmap_error,
    pixmap_for_region,
)
from image3_dask.algorithms.tiles import (
    Tile,
    auto_tile_shape,
    footprint_bbox,
    overlapping,
    plan_tiles,
)
from image3_dask.errors import InputError
from image3_dask.io.dq_flags import jwst_pixel_flags

SHAPE = (128, 128)
GOOD_BITS = "~DO_NOT_USE+NON_SCIENCE"
REF_INFO = {"ra_ref": 10.0, "dec_ref": 20.0, "roll_ref": 30.0, "v3yangle": 0.0, "vparity": -1}


# three rotated, dithered exposures
POINTINGS = [(10.0, 20.0, 30.0), (10.001, 20.001, 35.0), (9.999, 20.002, 40.0)]


@pytest.fixture(scope="module")
def wcss():
    return [distorted_wcs(*p) for p in POINTINGS]


@pytest.fixture(scope="module")
def exposures():
    rng = np.random.default_rng(42)
    out = []
    for _ in POINTINGS:
        sci = rng.normal(1.0, 0.1, SHAPE).astype(np.float32)
        dq = np.zeros(SHAPE, np.uint32)
        dq[rng.integers(0, 128, 60), rng.integers(0, 128, 60)] = 1  # DO_NOT_USE
        dq[rng.integers(0, 128, 60), rng.integers(0, 128, 60)] = 4  # JUMP_DET: still good
        out.append(
            {
                "sci": sci,
                "dq": dq,
                "var_rnoise": rng.uniform(0.01, 0.02, SHAPE).astype(np.float32),
                "var_poisson": rng.uniform(0.01, 0.02, SHAPE).astype(np.float32),
                "var_flat": rng.uniform(0.001, 0.002, SHAPE).astype(np.float32),
            }
        )
    return out


def _inputs(exps, wcss, pixmaps, region, halo, **extra):
    y0, y1, x0, x1 = region
    res = []
    for i, e in enumerate(exps):
        cut = pixmap_for_region(pixmaps[i], y0, y1, x0, x1, halo)
        if cut is None:
            continue
        sl, lp = cut
        w = build_weight(e["dq"][sl], e["var_rnoise"][sl], weight_type="ivm", good_bits=GOOD_BITS)
        res.append(
            DrizzleInput(
                sci=e["sci"][sl],
                pixmap=lp,
                ctx_id=i,
                exptime=100.0,
                weight=w,
                var_rnoise=e["var_rnoise"][sl],
                var_poisson=e["var_poisson"][sl],
                var_flat=e["var_flat"][sl],
                in_range=local_range(input_range(SHAPE, wcss[i].bounding_box), sl),
                **extra,
            )
        )
    return res


def _tiled(exps, wcss, pixmaps, shape, tile_shape, kernel, psr=1.0, pixfrac=1.0):
    halo = kernel_halo(kernel, pixfrac, psr)
    mosaic = {}
    for tile in plan_tiles(shape, tile_shape):
        region = tile.padded(halo, shape)
        res = drizzle_tile(
            _inputs(exps, wcss, pixmaps, region, halo),
            (region[1] - region[0], region[3] - region[2]),
            kernel=kernel,
            pixfrac=pixfrac,
            pixel_scale_ratio=psr,
            n_inputs=len(exps),
            crop=tile.crop_in(region),
        )
        for key, val in res.items():
            if key not in mosaic:
                mosaic[key] = np.zeros(val.shape[:-2] + tuple(shape), dtype=val.dtype)
            mosaic[key][..., tile.y0 : tile.y1, tile.x0 : tile.x1] = val
    return mosaic


# ---------------------------------------------------------------- grid


def test_grid_defaults_and_roundtrip(wcss):
    g = compute_output_grid(wcss, [SHAPE] * 3, ref_wcsinfo=REF_INFO)
    assert g.wcs.array_shape == g.shape
    assert g.pixel_scale == pytest.approx(0.1, rel=1e-4)
    assert g.pixel_scale_ratio == 1.0
    assert g.rotation == pytest.approx(30.0)
    # every input corner falls inside the grid
    for w in wcss:
        x, y = g.wcs.invert(*w(np.array([0, 127, 127, 0]), np.array([0, 0, 127, 127])))
        assert np.all((x > -0.5) & (x < g.shape[1] - 0.5) & (y > -0.5) & (y < g.shape[0] - 0.5))
    g2 = OutputGrid.from_dict(g.to_dict())
    g3 = pickle.loads(pickle.dumps(g))
    xy = (np.array([0.0, 50.0, 200.0]), np.array([0.0, 80.0, 150.0]))
    for other in (g2, g3):
        assert other.shape == g.shape
        np.testing.assert_allclose(other.wcs(*xy), g.wcs(*xy), rtol=0, atol=1e-12)


def test_grid_without_wcsinfo_follows_detector(wcss):
    g = compute_output_grid(wcss, [SHAPE] * 3)
    assert g.rotation == pytest.approx(30.0, abs=1e-3)
    ref = compute_output_grid(wcss, [SHAPE] * 3, ref_wcsinfo=REF_INFO)
    assert abs(g.shape[0] - ref.shape[0]) <= 1 and abs(g.shape[1] - ref.shape[1]) <= 1


def test_grid_matches_stcal_wcs_from_sregions(wcss):
    from stcal.alignment.util import compute_s_region_imaging, compute_scale, wcs_from_sregions

    sregions = [compute_s_region_imaging(copy.deepcopy(w), SHAPE, center=False) for w in wcss]
    for w, sreg in zip(wcss, sregions, strict=True):
        np.testing.assert_array_equal(
            sregion_footprint(w, SHAPE), np.array(sreg.split()[2:], dtype=float).reshape(4, 2)
        )
    for kw in ({}, {"rotation": 0.0}, {"pixel_scale_ratio": 0.7}, {"output_shape": (150, 170)}):
        g = compute_output_grid(wcss, [SHAPE] * 3, ref_wcsinfo=REF_INFO, **kw)
        g_s = compute_output_grid(wcss, [SHAPE] * 3, ref_wcsinfo=REF_INFO, sregions=sregions, **kw)
        ratio = kw.get("pixel_scale_ratio", 1.0)
        pscale = compute_scale(wcss[0], (10.0, 20.0)) * ratio
        ref = wcs_from_sregions(
            sregions,
            ref_wcs=wcss[0],
            ref_wcsinfo=REF_INFO,
            pscale_ratio=ratio,
            pscale=pscale,
            rotation=kw.get("rotation"),
            shape=kw.get("output_shape"),
        )
        for grid in (g, g_s):
            assert grid.shape == ref.array_shape
            assert grid.crpix == tuple(ref.forward_transform.crpix)
            assert grid.crval == tuple(ref.forward_transform.crval)
            assert grid.pixel_scale == 3600 * pscale


def test_grid_too_large_names_bad_exposure(wcss):
    bad = distorted_wcs(12.0, 21.0, 30.0)  # a wrong pointing, 2 degrees away
    names = ["a_cal.fits", "b_cal.fits", "c_cal.fits", "bad_cal.fits"]
    with pytest.raises(GridTooLargeError, match="bad_cal.fits") as exc:
        compute_output_grid(
            [*wcss, bad], [SHAPE] * 4, ref_wcsinfo=REF_INFO, names=names, max_pixels=10**7
        )
    assert isinstance(exc.value, InputError)
    assert "a_cal.fits" not in str(exc.value)
    g = compute_output_grid(wcss, [SHAPE] * 3, ref_wcsinfo=REF_INFO, max_pixels=10**7)
    assert g.npix < 10**7


def test_grid_from_custom_wcs(wcss):
    g = compute_output_grid(wcss, [SHAPE] * 3, ref_wcsinfo=REF_INFO)
    c = grid_from_wcs(g.wcs, (100, 90))
    assert c.shape == (100, 90) and g.wcs.array_shape == g.shape  # input not modified
    assert c.pixel_scale == pytest.approx(g.pixel_scale, rel=1e-5)  # mean area
    assert c.crpix == g.crpix and c.pixel_scale_ratio is None


@pytest.mark.jwst
def test_grid_matches_jwst(wcss, monkeypatch, tmp_path):
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "True")
    monkeypatch.setenv("CRDS_SERVER_URL", "http://localhost:1")
    monkeypatch.setenv("CRDS_PATH", str(tmp_path / "crds"))
    pytest.importorskip("jwst")
    from jwst.assign_wcs.util import update_s_region_imaging
    from jwst.datamodels import ModelLibrary
    from jwst.resample.resample_utils import resampled_wcs_from_models
    from stdatamodels.jwst import datamodels

    models = []
    for i, w in enumerate(wcss):
        mod = datamodels.ImageModel(SHAPE)
        mod.meta.wcs = w
        info = mod.meta.wcsinfo
        info.ra_ref, info.dec_ref, info.roll_ref = 10.0, 20.0, POINTINGS[i][2]
        info.v3yangle, info.vparity = 0.0, -1
        mod.meta.filename = f"e{i}_cal.fits"
        mod.meta.group_id = str(i)
        update_s_region_imaging(mod)
        models.append(mod)
    lib = ModelLibrary(models, on_disk=False)
    cases = [
        {},
        {"rotation": 0.0},
        {"pixel_scale_ratio": 0.7},
        {"pixel_scale": 0.05},
        {"crpix": (50.0, 60.0), "crval": (10.0005, 20.0005)},
        {"output_shape": (150, 170)},
    ]
    for kw in cases:
        jkw = dict(kw)
        if "pixel_scale" in jkw:
            jkw["pixel_scale"] = jkw["pixel_scale"] / 3600.0
        wj, _, ps, psr = resampled_wcs_from_models(lib, **jkw)
        g = compute_output_grid(wcss, [SHAPE] * 3, ref_wcsinfo=REF_INFO, **kw)
        tj = wj.forward_transform
        assert g.shape == wj.array_shape, kw
        assert g.crpix == tuple(tj.crpix), kw
        assert g.crval == tuple(tj.crval), kw
        assert g.pixel_scale == 3600 * ps and g.pixel_scale_ratio == psr, kw
        np.testing.assert_array_equal(np.reshape(g.pc, (2, 2)), tj.pc)
        assert g.wcs.bounding_box.bounding_box() == wj.bounding_box.bounding_box(), kw


# ---------------------------------------------------------------- pixmap


@pytest.fixture(scope="module")
def grid(wcss):
    return compute_output_grid(wcss, [SHAPE] * 3, ref_wcsinfo=REF_INFO)


@pytest.fixture(scope="module")
def pixmaps(wcss, grid):
    return [exposure_pixmap(w, grid.wcs, SHAPE) for w in wcss]


@pytest.mark.parametrize(("stepsize", "order"), [(1, 1), (8, 1), (8, 3)])
def test_pixmap_equals_stcal(wcss, grid, stepsize, order):
    from stcal.resample.utils import calc_pixmap

    w = copy.deepcopy(wcss[1])
    w.bounding_box = ((3.5, 120.5), (-0.5, 127.5))  # partial bbox: NaN outside
    bbox_before = w.bounding_box.bounding_box()
    mine = exposure_pixmap(w, grid.wcs, SHAPE, stepsize=stepsize, order=order)
    assert w.bounding_box.bounding_box() == bbox_before
    assert grid.wcs.bounding_box is not None
    ref = calc_pixmap(w, grid.wcs, SHAPE, stepsize=stepsize, order=order)
    np.testing.assert_array_equal(mine, ref)
    assert np.all(np.isnan(mine[:, :3])) and np.all(np.isfinite(mine[:, 4:120]))


def _rippled(w, amplitude: float, period: float):
    """``w`` with a sinusoidal ripple of ``amplitude`` pixels along x in front (no spline fits it)."""
    ripple = (m.Shift(0) + m.Sine1D(amplitude=amplitude, frequency=1.0 / period)) & m.Identity(1)
    out = gw.WCS([(w.input_frame, ripple | w.forward_transform), (w.output_frame, None)])
    out.bounding_box = w.bounding_box.bounding_box(order="F")
    return out


def test_checked_pixmap_is_within_its_bound_and_honours_the_bbox(wcss, grid):
    w = copy.deepcopy(wcss[1])
    w.bounding_box = ((3.5, 120.5), (-0.5, 127.5))
    exact = exposure_pixmap(w, grid.wcs, SHAPE)
    pm, err = checked_pixmap(w, grid.wcs, SHAPE, max_error=0.01)
    assert err is not None and err <= 0.01
    np.testing.assert_array_equal(np.isnan(pm), np.isnan(exact))
    # the check's estimate bounds the true error (smooth distortion: the spline is near exact)
    assert np.nanmax(np.abs(pm - exact)) < 1e-6


def test_checked_pixmap_falls_back_to_exact_when_the_spline_misses(wcss, grid):
    # a ripple of period 9 px between 16-px nodes: the spline is off by ~0.05 px
    w = _rippled(wcss[0], amplitude=0.05, period=9.0)
    exact = exposure_pixmap(w, grid.wcs, SHAPE)
    spline = exposure_pixmap(w, grid.wcs, SHAPE, stepsize=CHECKED_STEPSIZE, order=3)
    true_err = np.nanmax(np.hypot(*(spline - exact).transpose(2, 0, 1)))
    measured = pixmap_error(spline, w, grid.wcs, CHECKED_STEPSIZE)
    assert true_err > 0.01 and measured > 0.01
    pm, err = checked_pixmap(w, grid.wcs, SHAPE, max_error=0.01)
    assert err == measured
    np.testing.assert_array_equal(pm, exact)
    # with a looser bound the interpolated map is kept
    pm, err = checked_pixmap(w, grid.wcs, SHAPE, max_error=1.0)
    np.testing.assert_array_equal(pm, spline)


def test_checked_pixmap_max_error_zero_is_the_exact_map(wcss, grid):
    pm, err = checked_pixmap(wcss[2], grid.wcs, SHAPE, max_error=0.0)
    assert err is None
    np.testing.assert_array_equal(pm, exposure_pixmap(wcss[2], grid.wcs, SHAPE))


def test_pixmap_error_finds_a_local_defect(wcss, grid):
    pm = exposure_pixmap(wcss[0], grid.wcs, SHAPE)
    assert pixmap_error(pm, wcss[0], grid.wcs, CHECKED_STEPSIZE) < 1e-9
    bad = pm.copy()
    nodes = np.linspace(0, SHAPE[1] - 1, 10)  # 128 px: 10 nodes, the fewest stcal places
    c = int(np.rint(nodes[:2].mean()))  # centre of the first sparse cell
    bad[c, c, 0] += 0.02
    assert pixmap_error(bad, wcss[0], grid.wcs, CHECKED_STEPSIZE) == pytest.approx(0.02, rel=1e-6)
    bad[c, c, 0] = np.nan  # a hole where the WCS is defined
    assert pixmap_error(bad, wcss[0], grid.wcs, CHECKED_STEPSIZE) == np.inf


def test_pixmap_for_region(pixmaps):
    pm = pixmaps[0]
    sl, local = pixmap_for_region(pm, 40, 80, 60, 100, halo=3)
    np.testing.assert_array_equal(local[..., 0], pm[sl][..., 0] - 60)
    np.testing.assert_array_equal(local[..., 1], pm[sl][..., 1] - 40)
    # every pixel landing in the grown region is inside the crop
    x, y = pm[..., 0], pm[..., 1]
    inside = (x >= 56.5) & (x <= 102.5) & (y >= 36.5) & (y <= 82.5)
    mask = np.zeros(inside.shape, bool)
    mask[sl] = True
    assert inside.any() and np.all(mask[inside])
    assert pixmap_for_region(pm, 5000, 5010, 5000, 5010, halo=3) is None
    assert local_range((4, 120, 0, 127), sl) == (
        max(4, sl[1].start) - sl[1].start,
        min(120, sl[1].stop - 1) - sl[1].start,
        0,
        sl[0].stop - 1 - sl[0].start,
    )
    assert input_range(SHAPE, ((3.5, 120.5), (-0.5, 127.5))) == (4, 121, 0, 127)


# ---------------------------------------------------------------- tiles


def test_plan_tiles_cover_grid_once():
    tiles = plan_tiles((130, 200), (64, 64))
    cover = np.zeros((130, 200), int)
    for t in tiles:
        cover[t.slices] += 1
    assert np.all(cover == 1)
    assert len(tiles) == 3 * 4
    assert tiles[5].name == "r001c001" and tiles[-1].shape == (2, 8)
    t = Tile(0, 1, 0, 64, 64, 128)
    region = t.padded(5, (130, 200))
    assert region == (0, 69, 59, 133)
    assert t.crop_in(region) == (slice(0, 64), slice(5, 69))


def test_auto_tile_shape():
    small = auto_tile_shape(2 * 1024**3, (20000, 20000), 8)
    big = auto_tile_shape(16 * 1024**3, (20000, 20000), 8)
    assert small[0] == small[1] and small[0] % 64 == 0
    assert big[0] > small[0]
    assert auto_tile_shape(16 * 1024**3, (300, 500), 2) == (300, 500)  # never beyond the grid
    assert auto_tile_shape(2 * 1024**3, (20000, 20000), 40)[0] < small[0]


def test_footprint_bbox_and_overlap(wcss, grid, pixmaps):
    bb = footprint_bbox(wcss[2], SHAPE, grid.wcs)
    pm = pixmaps[2]
    assert bb[0] < np.nanmin(pm[..., 0]) and bb[1] > np.nanmax(pm[..., 0])
    assert bb[2] < np.nanmin(pm[..., 1]) and bb[3] > np.nanmax(pm[..., 1])
    tiles = plan_tiles(grid.shape, (32, 32))
    for t in tiles:
        cut = pixmap_for_region(pm, t.y0, t.y1, t.x0, t.x1, halo=2)
        if cut is not None:  # a tile reached by pixels is reported as overlapping
            assert overlapping(bb, t, halo=2)
    assert not overlapping((1e4, 1e4 + 5, 0, 5), tiles[0], halo=2)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize(
    ("weight_type", "good_bits"),
    [("ivm", GOOD_BITS), ("ivm", 0), ("ivm", None), ("exptime", "~DO_NOT_USE"), (None, 4)],
)
def test_build_weight_equals_stcal(exposures, weight_type, good_bits):
    from stcal.resample.utils import build_driz_weight

    e = dict(exposures[0])
    e["var_rnoise"] = e["var_rnoise"].copy()
    e["var_rnoise"][0, :5] = [0, np.inf, np.nan, -1, 1]
    model = {"data": e["sci"], "dq": e["dq"], "var_rnoise": e["var_rnoise"]}
    model.update({"measurement_time": 90.0, "exposure_time": 100.0})
    ref = build_driz_weight(
        model, weight_type=weight_type, good_bits=good_bits, flag_name_map=jwst_pixel_flags()
    )
    mine = build_weight(
        e["dq"], e["var_rnoise"], weight_type=weight_type, good_bits=good_bits, exptime=90.0
    )
    assert mine.dtype == np.float32
    np.testing.assert_array_equal(mine, ref)
    if good_bits == GOOD_BITS:
        assert np.all(mine[e["dq"] == 1] == 0) and np.all(mine[e["dq"] == 4] > 0)


# ---------------------------------------------------------------- drizzle


@pytest.mark.parametrize("kernel", KERNELS)
def test_tiled_equals_full_frame(exposures, wcss, grid, pixmaps, kernel):
    full = drizzle_tile(
        _inputs(exposures, wcss, pixmaps, (0, grid.shape[0], 0, grid.shape[1]), 1e9),
        grid.shape,
        kernel=kernel,
        n_inputs=3,
    )
    tiled = _tiled(exposures, wcss, pixmaps, grid.shape, (48, 80), kernel)
    assert set(full) == {"sci", "wht", "con", "var_rnoise", "var_poisson", "var_flat", "err"}
    assert full["con"].shape == (1, *grid.shape)
    for key, val in full.items():
        assert val.dtype == (np.int32 if key == "con" else np.float32)
        # bit-for-bit equal (same contributions in the same order)
        np.testing.assert_array_equal(tiled[key], val, err_msg=f"{kernel} {key}")
    assert np.isnan(full["sci"]).any() and (full["wht"] > 0).mean() > 0.5


def test_tiled_equals_full_frame_other_scale(exposures, wcss):
    g = compute_output_grid(wcss, [SHAPE] * 3, ref_wcsinfo=REF_INFO, pixel_scale_ratio=0.6)
    pms = [exposure_pixmap(w, g.wcs, SHAPE) for w in wcss]
    for kernel, pixfrac in (("square", 0.7), ("lanczos3", 1.0)):
        region = (0, g.shape[0], 0, g.shape[1])
        full = drizzle_tile(
            _inputs(exposures, wcss, pms, region, 1e9),
            g.shape,
            kernel=kernel,
            pixfrac=pixfrac,
            pixel_scale_ratio=0.6,
            n_inputs=3,
        )
        tiled = _tiled(exposures, wcss, pms, g.shape, (100, 90), kernel, psr=0.6, pixfrac=pixfrac)
        for key, val in full.items():
            np.testing.assert_array_equal(tiled[key], val, err_msg=f"{kernel} {key}")


def test_context_more_than_32_inputs():
    from drizzle.resample import Drizzle

    n = 34
    rng = np.random.default_rng(3)
    out_shape = (20, 24)
    inputs = []
    for k in range(n):
        y, x = np.indices((6, 6), dtype=float)
        pm = np.dstack([x + rng.uniform(0, 17), y + rng.uniform(0, 13)])
        inputs.append(
            DrizzleInput(
                sci=rng.normal(size=(6, 6)).astype(np.float32), pixmap=pm, ctx_id=k, exptime=1.0
            )
        )
    ref = Drizzle(kernel="square", out_shape=out_shape, fillval="NAN", max_ctx_id=n - 1)
    for inp in inputs:
        ref.add_image(inp.sci, exptime=1.0, pixmap=inp.pixmap, in_units="cps")
    out = drizzle_tile(inputs, out_shape, n_inputs=n, enable_var=False, compute_err=False)
    assert n_ctx_planes(n) == 2 and out["con"].shape == (2, *out_shape)
    np.testing.assert_array_equal(out["con"], ref.out_ctx)
    np.testing.assert_array_equal(out["sci"], ref.out_img)
    # bits decode to the exposures whose pixels reach each output pixel
    for k in (0, 31, 32, 33):
        bit = (out["con"][k // 32].view(np.uint32) >> np.uint32(k % 32)) & 1
        px, py = inputs[k].pixmap[..., 0], inputs[k].pixmap[..., 1]
        cy, cx = int(round(py[3, 3])), int(round(px[3, 3]))
        assert bit[cy, cx] == 1
        assert bit.sum() >= 25 and bit.sum() <= 49
    # a tile that only sees exposures 32 and 33 still sets bits in plane 1
    sub = drizzle_tile(inputs[32:], out_shape, n_inputs=n, enable_var=False, compute_err=False)
    assert not sub["con"][0].any()
    np.testing.assert_array_equal(sub["con"][1] != 0, (ref.out_ctx[1] != 0))


def test_flux_conservation(wcss):
    w = wcss[1]
    g = compute_output_grid([w], [SHAPE], ref_wcsinfo=REF_INFO, pixel_scale_ratio=0.6)
    y, x = np.indices(SHAPE)
    sb = (50.0 * np.exp(-((x - 60.3) ** 2 + (y - 70.8) ** 2) / (2 * 2.0**2))).astype(np.float32)
    pm = exposure_pixmap(w, g.wcs, SHAPE)
    from stcal.resample.utils import compute_mean_pixel_area

    area_in = compute_mean_pixel_area(w, shape=SHAPE)
    area_out = (g.pixel_scale / 3600 / 180 * np.pi) ** 2
    flux_in = sb.sum(dtype=float) * area_in
    for kernel, pixfrac in (("square", 1.0), ("square", 0.5), ("turbo", 1.0)):
        inp = DrizzleInput(sci=sb, pixmap=pm, ctx_id=0, exptime=1.0)
        out = drizzle_tile([inp], g.shape, kernel=kernel, pixfrac=pixfrac, pixel_scale_ratio=0.6)
        flux_out = np.nansum(out["sci"], dtype=float) * area_out
        assert flux_out == pytest.approx(flux_in, rel=5e-3), (kernel, pixfrac)


def test_fillval_and_background(exposures, wcss, grid, pixmaps):
    region = (0, grid.shape[0], 0, grid.shape[1])
    base = drizzle_tile(_inputs(exposures, wcss, pixmaps, region, 1e9), grid.shape, fillval=0)
    empty = base["wht"] == 0
    assert np.all(base["sci"][empty] == 0) and np.all(np.isnan(base["err"][empty]))
    sub = drizzle_tile(
        _inputs(
            exposures,
            wcss,
            pixmaps,
            region,
            1e9,
            background_level=0.25,
            background_subtracted=False,
        ),
        grid.shape,
        fillval=0,
    )
    ok = ~empty
    np.testing.assert_allclose(sub["sci"][ok], base["sci"][ok] - 0.25, atol=2e-6)
    np.testing.assert_array_equal(sub["var_rnoise"], base["var_rnoise"])


@pytest.mark.filterwarnings("ignore:Kernel .* is not a flux-conserving")
@pytest.mark.parametrize(
    ("kernel", "psr", "weight_type"),
    [
        ("square", 1.0, "ivm"),
        ("lanczos3", 1.0, "ivm"),
        ("square", 0.7, "exptime"),
        ("gaussian", 0.7, "ivm"),
    ],
)
def test_parity_with_stcal_resample(exposures, wcss, kernel, psr, weight_type):
    from stcal.resample import Resample

    class JwstLikeResample(Resample):
        dq_flag_name_map = jwst_pixel_flags()

    g = compute_output_grid(wcss, [SHAPE] * 3, ref_wcsinfo=REF_INFO, pixel_scale_ratio=psr)
    official = JwstLikeResample(
        {"wcs": g.wcs, "pixel_scale": g.pixel_scale, "pixel_scale_ratio": g.pixel_scale_ratio},
        n_input_models=3,
        kernel=kernel,
        fillval="NAN",
        weight_type=weight_type,
        good_bits=GOOD_BITS,
        enable_ctx=True,
        enable_var=True,
        compute_err="from_var",
    )
    levels = [None, 0.5, 0.2]
    mine_inputs = []
    for i, e in enumerate(exposures):
        model = {
            "data": e["sci"],
            "dq": e["dq"],
            "var_rnoise": e["var_rnoise"],
            "var_poisson": e["var_poisson"],
            "var_flat": e["var_flat"],
            "filename": f"e{i}_cal.fits",
            "group_id": str(i),
            "wcs": wcss[i],
            "exposure_time": 100.0,
            "start_time": 0.0,
            "end_time": 1.0,
            "duration": 100.0,
            "measurement_time": 90.0 + i,
            "pixelarea_steradians": (0.1 / 206265) ** 2,
            "level": levels[i],
            "subtracted": i == 2,
        }
        official.add_model(model)
        weight = build_weight(
            e["dq"],
            e["var_rnoise"],
            weight_type=weight_type,
            good_bits=GOOD_BITS,
            exptime=90.0 + i,
        )
        mine_inputs.append(
            DrizzleInput(
                sci=e["sci"],
                pixmap=exposure_pixmap(wcss[i], g.wcs, SHAPE),
                ctx_id=i,
                exptime=100.0,
                measurement_time=90.0 + i,
                weight=weight,
                var_rnoise=e["var_rnoise"],
                var_poisson=e["var_poisson"],
                var_flat=e["var_flat"],
                background_level=levels[i],
                background_subtracted=i == 2,
                in_range=input_range(SHAPE, wcss[i].bounding_box),
            )
        )
    official.finalize()
    ref = official.output_model
    mine = drizzle_tile(
        mine_inputs,
        g.shape,
        kernel=kernel,
        pixel_scale_ratio=g.pixel_scale_ratio,
        weight_type=weight_type,
        n_inputs=3,
    )
    pairs = {"data": "sci", "wht": "wht", "con": "con", "err": "err"}
    pairs.update({v: v for v in ("var_rnoise", "var_poisson", "var_flat")})
    for theirs, ours in pairs.items():
        np.testing.assert_array_equal(mine[ours], ref[theirs], err_msg=theirs)


def test_pixmap_for_region_with_blocks_cuts_the_same_crop():
    """Block bounds only skip blocks that cannot reach the region: every cut is unchanged."""
    ny, nx = 300, 333  # not multiples of the block side
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    th = 0.4
    pm = np.dstack(
        [
            np.cos(th) * x - np.sin(th) * y + 120 + 2e-4 * x * y,
            np.sin(th) * x + np.cos(th) * y + 10 - 3e-4 * x * x,
        ]
    )
    pm[:3] = np.nan  # rows outside the bounding box
    pm[96:160, 32:96, 0] = np.nan  # a hole in x only: four whole blocks
    pm[200:210, 300:, 1] = np.nan  # a hole in y only, in the short last column of blocks
    blocks = pixmap_blocks(pm, block=32)
    assert blocks.shape == (10, 11, 4)
    assert np.isnan(blocks[3:5, 1:3]).all()
    cell = pm[192:224, 320:333]  # the short last column of blocks, with the y hole
    ok = np.isfinite(cell).all(axis=-1)
    expect = [cell[ok, 0].min(), cell[ok, 0].max(), cell[ok, 1].min(), cell[ok, 1].max()]
    np.testing.assert_array_equal(blocks[6, 10], expect)
    rng = np.random.default_rng(3)
    cut = 0
    for _ in range(400):
        y0, x0 = rng.integers(-60, 420), rng.integers(-60, 480)
        y1, x1 = y0 + rng.integers(1, 150), x0 + rng.integers(1, 150)
        halo = float(rng.choice([0.0, 2.0, 5.5]))
        full = pixmap_for_region(pm, y0, y1, x0, x1, halo)
        fast = pixmap_for_region(pm, y0, y1, x0, x1, halo, blocks=blocks, block=32)
        if full is None:
            assert fast is None
            continue
        cut += 1
        assert fast[0] == full[0]
        np.testing.assert_array_equal(fast[1], full[1])
    assert cut > 150
