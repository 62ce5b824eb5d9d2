"""Tests of image3_dask.algorithms.skymatch / skystats against stcal.skymatch."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.align_scene import tile_pointings
from helpers.wcs import jwst_wcs

from image3_dask.algorithms.skymatch import (
    exposure_sky_stats,
    find_neighbours,
    sky_footprint,
    solve_sky,
)
from image3_dask.algorithms.skystats import good_pixel_mask, sky_statistic

SHAPE = (100, 100)
NOISE = 0.05
# exposure -> (tile offset in pixels, true sky, group)
LAYOUT = {
    "e0": ((0, 0), 1.00, "g0"),
    "e1": ((70, 0), 1.35, "g1"),
    "e2": ((0, 70), 0.80, "g2"),
    "e3": ((70, 70), 1.20, "g3"),
    "e4": ((6, 4), 1.00, "g0"),  # second exposure of group g0
}


@pytest.fixture(scope="module")
def exposures():
    rng = np.random.default_rng(11)
    center, _ = jwst_wcs(150.0, 2.0, 10.0, shape=SHAPE)
    pts = tile_pointings(center, [v[0] for v in LAYOUT.values()])
    out = {}
    for (name, (_, sky, group)), (ra, dec) in zip(LAYOUT.items(), pts, strict=True):
        w, _ = jwst_wcs(ra, dec, 10.0, shape=SHAPE)
        data = sky + rng.normal(0, NOISE, SHAPE)
        # a few compact sources and flagged garbage
        for _ in range(6):
            y, x = rng.integers(5, 95, 2)
            data[y - 1 : y + 2, x - 1 : x + 2] += rng.uniform(5, 50)
        dq = np.zeros(SHAPE, dtype=np.uint32)
        dq[:, :3] = 1 | 512  # DO_NOT_USE + NON_SCIENCE
        data[:, :3] = 1e4
        dq[50, 50] = 1
        data[50, 50] = np.nan
        out[name] = {"data": data, "dq": dq, "wcs": w, "group": group, "sky": sky}
    return out


def _stcal_levels(exposures, method, match_down, use_groups, statkw):
    from stcal.skymatch import SkyGroup, SkyImage, SkyStats, skymatch

    stats = SkyStats(
        skystat=statkw["skystat"],
        lower=None,
        upper=None,
        nclip=statkw["nclip"],
        lsig=statkw["lsigma"],
        usig=statkw["usigma"],
        binwidth=statkw["binwidth"],
    )
    units: dict = {}
    for name, e in exposures.items():
        mask = good_pixel_mask(e["data"], e["dq"])
        im = SkyImage(
            image=e["data"],
            mask=mask,
            wcs_fwd=e["wcs"].__call__,
            wcs_inv=e["wcs"].invert,
            skystat=stats,
            sky_id=name,
        )
        units.setdefault(e["group"] if use_groups else name, []).append(im)
    images = [v[0] if len(v) == 1 else SkyGroup(v, sky_id=k) for k, v in units.items()]
    skymatch(images, skymethod=method, match_down=match_down, subtract=False)
    out = {}
    for im in images:
        for m in [im] if isinstance(im, SkyImage) else list(im):
            out[m.sky_id] = (m.sky, m.is_sky_valid)
    return out


def _ours(exposures, method, match_down, use_groups, statkw):
    units = {n: (e["group"] if use_groups else n) for n, e in exposures.items()}
    fps = {n: sky_footprint(e["wcs"], SHAPE) for n, e in exposures.items()}
    neigh = find_neighbours(fps, units)
    stats = {}
    for n, e in exposures.items():
        # per-exposure task: own pixels + own WCS + neighbours' footprints only
        stats[n] = exposure_sky_stats(
            e["data"],
            good_pixel_mask(e["data"], e["dq"]),
            e["wcs"],
            neigh[n],
            footprint=fps[n],
            full_frame=method != "match",
            **statkw,
        )
    return solve_sky(stats, units, skymethod=method, match_down=match_down)


STATKW = {"skystat": "mode", "nclip": 5, "lsigma": 4.0, "usigma": 4.0, "binwidth": 0.1}
MEDIAN = {**STATKW, "skystat": "median"}


@pytest.mark.parametrize(
    ("method", "match_down", "use_groups"),
    [
        ("match", True, False),
        ("match", False, True),
        ("global+match", True, True),
        ("global", True, False),
        ("local", True, True),
    ],
)
def test_solve_sky_matches_stcal(exposures, method, match_down, use_groups):
    ref = _stcal_levels(exposures, method, match_down, use_groups, STATKW)
    ours = _ours(exposures, method, match_down, use_groups, STATKW)
    # measured: bit-identical levels for every method (the same statistics of the same pixels
    # in the same overlaps, solved the same way); 1e-12 leaves room for the order of additions
    for name, (level, valid) in ref.items():
        assert ours[name].valid == valid
        assert ours[name].level == pytest.approx(level, rel=1e-12, abs=1e-12 * NOISE), name


def test_sky_levels_recovered(exposures):
    # sky known to ~NOISE/sqrt(npix); the median is the least noisy official statistic here
    ours = _ours(exposures, "local", True, False, MEDIAN)
    for name, e in exposures.items():
        assert abs(ours[name].level - e["sky"]) < 0.1 * NOISE
    # 'match' recovers sky differences relative to the lowest one
    ours = _ours(exposures, "match", True, False, MEDIAN)
    lowest = min(e["sky"] for e in exposures.values())
    for name, e in exposures.items():
        assert abs(ours[name].level - (e["sky"] - lowest)) < 0.1 * NOISE
    # 'global+match': lowest sky is the global one, the rest are matched to it
    ours = _ours(exposures, "global+match", True, False, MEDIAN)
    for name, e in exposures.items():
        assert abs(ours[name].level - e["sky"]) < 0.1 * NOISE


def test_per_exposure_work_is_local(exposures):
    fps = {n: sky_footprint(e["wcs"], SHAPE) for n, e in exposures.items()}
    neigh = find_neighbours(fps)
    # e1 (right column) touches e0, e3, e4 and (corner) e2 -- but never itself
    assert "e1" not in neigh["e1"]
    units = {n: e["group"] for n, e in exposures.items()}
    neigh_g = find_neighbours(fps, units)
    assert "g0" not in neigh_g["e0"] and "g0" not in neigh_g["e4"]
    assert len(neigh_g["e1"]["g0"]) == 2  # both members of g0
    st = exposure_sky_stats(
        exposures["e1"]["data"],
        good_pixel_mask(exposures["e1"]["data"], exposures["e1"]["dq"]),
        exposures["e1"]["wcs"],
        neigh_g["e1"],
        full_frame=False,
    )
    assert st.full is None
    assert set(st.overlaps) == set(neigh_g["e1"])
    assert all(s.npix > 0 for s in st.overlaps.values())


@pytest.mark.parametrize("skystat", ["mode", "median", "mean", "midpt"])
def test_sky_statistic_matches_skystats(exposures, skystat):
    from stcal.skymatch import SkyStats

    e = exposures["e2"]
    mask = good_pixel_mask(e["data"], e["dq"])
    ref = SkyStats(
        skystat=skystat, lower=-1.0, upper=10.0, nclip=3, lsig=3.0, usig=3.0, binwidth=0.2
    ).calc_sky(e["data"][mask])
    val, npix = sky_statistic(
        e["data"],
        mask,
        skystat=skystat,
        lower=-1.0,
        upper=10.0,
        nclip=3,
        lsigma=3.0,
        usigma=3.0,
        binwidth=0.2,
    )
    assert val == pytest.approx(ref[0], rel=1e-12)
    assert npix == ref[1]
    assert abs(val - e["sky"]) < 0.2 * NOISE


def test_good_pixel_mask_dqbits():
    data = np.ones((3, 3))
    data[0, 0] = np.nan
    dq = np.zeros((3, 3), dtype=np.uint32)
    dq[1, 1] = 1  # DO_NOT_USE
    dq[2, 2] = 512  # NON_SCIENCE
    dq[1, 2] = 4  # JUMP_DET: fine by default
    m = good_pixel_mask(data, dq)
    assert not m[0, 0] and not m[1, 1] and not m[2, 2] and m[1, 2]
    m = good_pixel_mask(data, dq, dqbits=None)
    assert m[1, 1] and not m[0, 0]
    m = good_pixel_mask(data, dq, dqbits="~DO_NOT_USE+NON_SCIENCE+JUMP_DET")
    assert not m[1, 2]
    assert sky_statistic(data, np.zeros((3, 3), bool)) == (None, 0)
    with pytest.raises(ValueError):
        sky_statistic(data, skystat="max")


def test_solve_sky_bad_method():
    with pytest.raises(ValueError):
        solve_sky({}, skymethod="user")


def test_find_neighbours_equals_every_pair_tested_exactly():
    """The bounding-cap prefilter skips only pairs that cannot touch (random small polygons
    over the sky, near each other and far apart, also across RA = 0)."""
    from spherical_geometry.polygon import SphericalPolygon

    rng = np.random.default_rng(5)
    fps = {}
    for k in range(60):
        ra0 = rng.choice([0.0, 120.0, 359.9]) + rng.normal(0, 0.05)
        dec0 = rng.choice([-89.9, -30.0, 0.0, 60.0]) + rng.normal(0, 0.05)
        half = rng.uniform(0.005, 0.05)
        ra = ra0 + half * np.array([-1, 1, 1, -1, -1]) / max(np.cos(np.deg2rad(dec0)), 0.05)
        dec = np.clip(dec0 + half * np.array([-1, -1, 1, 1, -1]), -89.999, 89.999)
        fps[k] = SphericalPolygon.from_radec(ra, dec)
    units = {k: k // 2 for k in fps}  # pairs of exposures share a unit
    got = find_neighbours(fps, units)
    brute = {k: set() for k in fps}
    for a in fps:
        for b in fps:
            if units[a] != units[b] and fps[a].intersects_poly(fps[b]):
                brute[a].add(units[b])
    assert {k: set(v) for k, v in got.items()} == brute
    assert sum(len(v) for v in brute.values()) > 20  # the test has neighbours to find
