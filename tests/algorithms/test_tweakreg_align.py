"""Tests of image3_dask.algorithms.align / global_solve on small synthetic JWST-like WCSs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.table import Table
from helpers.align_scene import (
    observe_catalog,
    pair_residuals,
    perturbed,
    pixel_residuals,
    render,
    star_field,
    tile_pointings,
)
from helpers.wcs import jwst_wcs

from image3_dask.algorithms.align import (
    absolute_align,
    choose_align_mode,
    global_align,
    group_overlaps,
    parse_refcat,
    relative_align,
)
from image3_dask.algorithms.global_pairs import PairMatch
from image3_dask.algorithms.global_solve import solve_global
from image3_dask.algorithms.tweakreg_catalog import make_tweakreg_catalog

SHAPE = (200, 200)


def _rms(a):
    a = np.asarray(a)
    return float(np.sqrt(np.mean(a**2)))


def _abs_rms(wcses, trues):
    return [_rms(np.hypot(*pixel_residuals(w, t))) for w, t in zip(wcses, trues, strict=True)]


def _pair_rms(wcses, trues):
    res = []
    for i in range(len(wcses)):
        for j in range(i + 1, len(wcses)):
            d = pair_residuals(wcses[i], trues[i], wcses[j], trues[j])
            if d.size:
                res.append(d)
    return _rms(np.concatenate(res))


@pytest.fixture(scope="module")
def dither():
    """4-exposure dither; exposure 0 has a perfect pointing, the others ~0.5" errors."""
    rng = np.random.default_rng(42)
    center, cinfo = jwst_wcs(80.0, -69.5, 30.0)
    pts = tile_pointings(center, [(0, 0), (23.3, 11.7), (-17.6, 29.2), (31.1, -19.4)])
    stars = star_field(center, 140, 160, rng, min_sep_pix=12)
    trues, noms, infos, cats = [], [], [], []
    for k, (ra, dec) in enumerate(pts):
        tw, ti = jwst_wcs(ra, dec, 30.0)
        err = (0.0, 0.0, 0.0) if k == 0 else (*rng.normal(0, 0.5, 2), rng.normal(0, 0.01))
        nw, ni = perturbed(ti, *err, SHAPE)
        img, _ = render(tw, stars, rng, SHAPE, sky=0.0, noise=1.0)
        cats.append(
            make_tweakreg_catalog(
                img, None, starfinder="segmentation", kernel_fwhm=2.5, bkg_boxsize=50
            )
        )
        trues.append(tw)
        noms.append(nw)
        infos.append(ni)
    return {"true": trues, "nom": noms, "info": infos, "cat": cats}


@pytest.fixture(scope="module")
def mosaic():
    """3x3 mosaic of 200x200 tiles with 12% overlaps; tile 0 has a perfect pointing."""
    rng = np.random.default_rng(7)
    center, _ = jwst_wcs(80.0, -69.5, 30.0)
    step = 176  # 12% overlap
    offs = [(dx * step, dy * step) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    pts = tile_pointings(center, offs)
    stars = star_field(center, 290, 1500, rng, min_sep_pix=11)
    trues, noms, infos, cats = [], [], [], []
    for k, (ra, dec) in enumerate(pts):
        tw, ti = jwst_wcs(ra, dec, 30.0)
        err = (0.0, 0.0, 0.0) if k == 0 else (*rng.normal(0, 0.5, 2), rng.normal(0, 0.01))
        nw, ni = perturbed(ti, *err, SHAPE)
        trues.append(tw)
        noms.append(nw)
        infos.append(ni)
        cats.append(observe_catalog(tw, stars, rng, noise_pix=0.02, shape=SHAPE))
    return {"true": trues, "nom": noms, "info": infos, "cat": cats, "stars": stars}


def test_dither_relative_official_and_global(dither):
    d = dither
    gids = [f"g{i}" for i in range(4)]
    before = _abs_rms(d["nom"], d["true"])
    assert max(before[1:]) > 2.0  # the pointing errors are several pixels

    rel = relative_align(d["cat"], d["nom"], d["info"], gids)
    assert rel.success
    assert [f["status"] for f in rel.fit_info] == ["REFERENCE"] + ["SUCCESS"] * 3
    rel_rms = _abs_rms(rel.wcs, d["true"])
    assert max(rel_rms) < 0.02, rel_rms
    assert rel.wcs[0] is d["nom"][0]
    assert "v2v3corr" in rel.wcs[1].available_frames
    for fi in rel.fit_info[1:]:
        assert fi["nmatches"] >= 15 and fi["rmse"] < 0.01  # arcsec

    glob = global_align(d["cat"], d["nom"], d["info"], gids, fixed_group="g0")
    assert [f["status"] for f in glob.fit_info] == ["REFERENCE"] + ["SUCCESS"] * 3
    glob_rms = _abs_rms(glob.wcs, d["true"])
    assert max(glob_rms) < 0.02, glob_rms
    frames = glob.wcs[2].available_frames
    assert frames.index("v2v3corr") == frames.index("v2v3") + 1
    assert frames[-1] == "world"

    # parity of the global solution with the official one: < 0.01 pixel
    for wg, wr in zip(glob.wcs, rel.wcs, strict=True):
        dx, dy = pixel_residuals(wg, wr)
        assert _rms(np.hypot(dx, dy)) < 0.01

    # mean gauge: relative alignment is as good
    mean = global_align(d["cat"], d["nom"], d["info"], gids)
    assert all(f["status"] == "SUCCESS" for f in mean.fit_info)
    assert _pair_rms(mean.wcs, d["true"]) < 0.02


def test_mosaic_global_fixes_what_reference_mode_leaves(mosaic, caplog):
    m = mosaic
    gids = list(range(9))
    assert choose_align_mode([w.footprint() for w in m["nom"]]) == "global"
    assert len(group_overlaps([w.footprint() for w in m["nom"]])) == 20  # 12 edges + 8 corners

    with caplog.at_level(logging.WARNING):
        rel = relative_align(m["cat"], m["nom"], m["info"], gids)
    failed = [i for i, f in enumerate(rel.fit_info) if f["status"].startswith("FAILED")]
    assert {2, 5, 6, 7, 8} <= set(failed)  # tiles not touching tile 0 cannot be aligned
    assert any("not aligned" in r.message for r in caplog.records)
    for i in failed:
        assert rel.wcs[i] is m["nom"][i]
    rel_rms = _abs_rms(rel.wcs, m["true"])
    assert max(rel_rms) > 1.0

    glob = global_align(m["cat"], m["nom"], m["info"], gids, fixed_group=0)
    assert all(f["status"] in ("SUCCESS", "REFERENCE") for f in glob.fit_info)
    glob_rms = _abs_rms(glob.wcs, m["true"])
    assert max(glob_rms) < 0.1, glob_rms
    assert _pair_rms(glob.wcs, m["true"]) < 0.1
    assert all(p[2] >= 0 for p in glob.extra["pairs"])

    mean = global_align(m["cat"], m["nom"], m["info"], gids)  # mean gauge
    assert _pair_rms(mean.wcs, m["true"]) < 0.1


def test_global_tolerates_a_bad_pair_and_isolated_group(mosaic, caplog):
    m = mosaic
    # tile 8 gets an empty catalog: it must be left unchanged with a warning
    cats = list(m["cat"])
    cats[8] = cats[8][:0]
    with caplog.at_level(logging.WARNING):
        res = global_align(cats, m["nom"], m["info"], list(range(9)), fixed_group=0)
    assert res.fit_info[8]["status"].startswith("FAILED")
    assert res.wcs[8] is m["nom"][8]
    assert max(_abs_rms(res.wcs[:8], m["true"][:8])) < 0.1


def test_solve_global_recovers_known_transforms():
    rng = np.random.default_rng(3)
    truth_rot = np.deg2rad([0.0, 0.01, -0.02, 0.015])
    truth_shift = np.array([[0, 0], [0.3, -0.2], [-0.4, 0.1], [0.2, 0.5]])
    centers = np.array([[0, 0], [18, 0], [0, 18], [18, 18]], float)
    pts = {}

    def err(g, xy):  # measured = R^-1 (true - t): the correction R xy + t recovers truth
        c, s = np.cos(truth_rot[g]), np.sin(truth_rot[g])
        r = np.array([[c, -s], [s, c]])
        return (xy - truth_shift[g]) @ np.linalg.inv(r).T

    pairs = []
    for a, b in [(0, 1), (0, 2), (1, 3), (2, 3), (0, 3)]:
        mid = 0.5 * (centers[a] + centers[b])
        xy = mid + rng.uniform(-2, 2, (12, 2))
        pts[(a, b)] = xy
        pairs.append(
            PairMatch(
                a,
                b,
                err(a, xy) + rng.normal(0, 2e-4, xy.shape),
                err(b, xy) + rng.normal(0, 2e-4, xy.shape),
            )
        )
    # a mismatched pair with a few sources must be rejected by clipping
    pairs.append(PairMatch(1, 2, rng.uniform(-5, 5, (5, 2)), rng.uniform(-5, 5, (5, 2))))
    sols = solve_global(pairs, 4, fitgeometry="rshift", fixed_group=0, minobj=5)
    assert sols[0].status == "REFERENCE"
    for g in range(1, 4):
        assert sols[g].status == "SUCCESS"
        assert abs(np.deg2rad(sols[g].rotation) - truth_rot[g]) < 5e-5  # truth: 1.7e-4..3.5e-4
        np.testing.assert_allclose(sols[g].shift, truth_shift[g], atol=1e-3)


def test_absolute_align_matches_stcal(dither, tmp_path):
    from stcal.tweakreg import tweakreg as twk

    from image3_dask.algorithms.align import make_corrector

    d = dither
    # reference catalog: true sky positions of the sources of exposure 0
    t0 = d["true"][0]
    ra, dec = t0(np.asarray(d["cat"][0]["x"]), np.asarray(d["cat"][0]["y"]))
    refcat = Table({"ra": ra, "dec": dec})
    # the "relative" result: all exposures shifted together by a common error of 0.6"
    noms = [perturbed(info, 0.6, -0.4, 0.0, SHAPE)[0] for info in d["info"]]
    res = absolute_align(d["cat"][:1], noms[:1], d["info"][:1], refcat)
    assert res.success and res.fit_info[0]["status"] == "SUCCESS"
    assert _rms(np.hypot(*pixel_residuals(res.wcs[0], t0))) < 0.02

    # parity with stcal.absolute_align (which reads the catalog from a file)
    path = tmp_path / "ref.ecsv"
    refcat.write(path)
    corr = [make_corrector(noms[0], d["info"][0], d["cat"][0], "g0", "e0")]
    twk.absolute_align(corr, str(path), ref_wcs=noms[0], ref_wcsinfo=d["info"][0], epoch=2024.0)
    dx, dy = pixel_residuals(res.wcs[0], corr[0].wcs)
    assert _rms(np.hypot(dx, dy)) < 0.01

    # too few reference sources: unchanged, not successful
    few = absolute_align(d["cat"][:1], noms[:1], d["info"][:1], refcat[:5])
    assert not few.success and few.wcs[0] is noms[0]


def test_parse_refcat_variants():
    from astropy.coordinates import SkyCoord

    t = Table({"Ra": [1.0, 2.0], "dEc": [3.0, 4.0]})
    out = parse_refcat(t)
    assert "RA" in out.colnames and "DEC" in out.colnames
    sc = Table({"sky_centroid": SkyCoord([1.0, 2.0], [3.0, 4.0], unit="deg")})
    out = parse_refcat(sc)
    np.testing.assert_allclose(out["DEC"], [3.0, 4.0])
    with pytest.raises(KeyError):
        parse_refcat(Table({"x": [1.0]}))


def test_relative_single_group_is_skipped(dither):
    d = dither
    res = relative_align(d["cat"], d["nom"], d["info"], ["a"] * 4)
    assert not res.success
    assert all(w is n for w, n in zip(res.wcs, d["nom"], strict=True))


def test_choose_align_mode_dither_is_official(dither):
    assert choose_align_mode([w.footprint() for w in dither["nom"]]) == "official"


def test_global_solve_with_pairs_matched_in_parallel_tasks(mosaic, client):
    """The pairs matched by tweakreg-pairs tasks (graph.tweakreg.pair_tasks) give the same fit.

    ``global_align`` runs as a task, which submits one task per batch of pairs (batches of 3
    here: 20 pairs in 7 tasks) and seceded while they run on the cluster.
    """
    from distributed import get_task_stream

    from image3_dask.graph.tweakreg_tasks import pair_tasks

    m = mosaic
    gids = list(range(9))
    serial = global_align(m["cat"], m["nom"], m["info"], gids, apply=False)
    with get_task_stream(client) as ts:
        parallel = client.submit(
            global_align,
            m["cat"],
            m["nom"],
            m["info"],
            gids,
            apply=False,
            map_batches=pair_tasks("t0ken"),
            pair_batch=3,
            pure=False,
        ).result()
    keys = {str(r["key"]) for r in ts.data}
    assert sum("tweakreg-pairs" in k and "t0ken" in k for k in keys) == 7
    assert serial.extra["pairs"] == parallel.extra["pairs"]
    assert len(serial.extra["pairs"]) == 20
    assert len(serial.extra["corrections"]) == 9
    for a, b in zip(serial.extra["corrections"].values(), parallel.extra["corrections"].values(), strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def _square(ra, dec, half=0.02):
    c = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    return np.column_stack([ra + c[:, 0] / np.cos(np.radians(dec)), dec + c[:, 1]])


def test_choose_align_mode_tests_the_farthest_pair_first(monkeypatch):
    from spherical_geometry.polygon import SphericalPolygon

    calls = []
    crosses = SphericalPolygon.intersects_poly

    def counted(self, other):
        calls.append(1)
        return crosses(self, other)

    monkeypatch.setattr(SphericalPolygon, "intersects_poly", counted)
    # an 18x18 mosaic (324 groups, 52 326 pairs): its opposite corners decide at once
    mosaic = [_square(10 + 0.035 * i, 20 + 0.035 * j) for i in range(18) for j in range(18)]
    assert choose_align_mode(mosaic) == "global"
    assert len(calls) == 1
    # a dither: every pair has to be seen to overlap
    calls.clear()
    dither = [_square(10 + 0.001 * i, 20 + 0.0007 * i) for i in range(16)]
    assert choose_align_mode(dither) == "official"
    assert len(calls) == 120
    # groups of several exposures: a group's far member leaves a pair without overlap
    groups = [[_square(10, 20)], [_square(10.01, 20)], [_square(10.02, 20), _square(10.2, 20)]]
    assert choose_align_mode(groups) == "official"
    assert choose_align_mode([*groups, [_square(10.21, 20)]]) == "global"
