"""The tweakreg step on the cluster: simulated dither and mosaic, files, absolute alignment, parity."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from astropy.table import Table
from helpers import run_context

from image3_dask.errors import InputError
from image3_dask.graph import tweakreg
from image3_dask.io.exposures import read_exposures
from image3_dask.pipeline.context import RunContext
from image3_dask.simulate import build_true_wcs

SKIP_OTHERS = {s: {"skip": True} for s in ("skymatch", "outlier_detection", "resample", "source_catalog")}


@pytest.fixture(scope="module")
def dense_dither(tmp_path_factory):
    """4-point MIRI dither, 256x256 detectors, ~120 stars each (enough for 15 matches)."""
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("tw_dither")
    return simulate(instrument="miri", n=4, out_dir=out, seed=3, pattern="dither",
                    shape=(256, 256), n_stars=3000, n_galaxies=300)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """3x3 MIRI mosaic of 256x256 tiles with 12% overlaps."""
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("tw_mosaic")
    return simulate(instrument="miri", n=None, rows=3, cols=3, overlap=0.12, out_dir=out, seed=5,
                    pattern="mosaic", shape=(256, 256), n_stars=3000, n_galaxies=300)


def make_ctx(client, sim, out, **params) -> RunContext:
    return run_context(client, sim.asn_path, out, {"tweakreg": params})


def residual(sim, wcses, step=8, mean_removed=True) -> float:
    """RMS (pixels) of corrected-vs-true positions on a pixel grid, common mean offset removed."""
    ny, nx = sim.truth.shape
    y, x = np.mgrid[4:ny - 4:step, 4:nx - 4:step].astype(float)
    d = []
    for i, w in enumerate(wcses):
        ra, dec = w(x, y)
        xt, yt = build_true_wcs(sim.truth, i).invert(ra, dec)
        d.append(np.stack([xt - x, yt - y], axis=-1).reshape(-1, 2))
    d = np.array(d)  # (exposure, point, 2); NaN outside the bounding box
    if mean_removed:
        d = d - np.nanmean(d, axis=(0, 1))
    return float(np.sqrt(np.nanmean((d**2).sum(axis=-1))))


@pytest.fixture(scope="module")
def dither_run(client, dense_dither, tmp_path_factory):
    """One official-mode run with ``save_catalogs``; a catfile listing the saved catalogs."""
    out = tmp_path_factory.mktemp("tw_run")
    infos = read_exposures(dense_dither.cal_paths)
    ctx = make_ctx(client, dense_dither, out, save_catalogs=True, align_mode="official")
    result = tweakreg.run(ctx, infos)
    catfile = out / "catfile.txt"
    catfile.write_text("# custom catalogs\n" + "\n".join(
        f"{p.name} {p.name.replace('.fits', '_cat.ecsv')}" for p in dense_dither.cal_paths) + "\n")
    return infos, result, ctx, catfile


def test_dither_official_reaches_002_pixel(dense_dither, dither_run):
    infos, out, ctx, _ = dither_run
    before = residual(dense_dither, [e.wcs for e in infos])
    after = residual(dense_dither, [e.wcs for e in out])
    print(f"official: residual {before:.3f} -> {after:.4f} px (default starfinder 'iraf')")
    assert before > 1.0
    assert after < 0.02
    rep = ctx.products["tweakreg"]
    assert rep["mode"] == "official"
    assert [fi["status"] for fi in rep["exposures"].values()] == ["REFERENCE"] + ["SUCCESS"] * 3
    assert json.loads(ctx.product_path("tweakreg", "json").read_text())["mode"] == "official"
    for e, o in zip(infos, out, strict=True):
        assert o.cal_steps["tweakreg"] == "COMPLETE"
        if o.wcs is not e.wcs:  # corrected: new gwcs frame and s_region
            assert o.meta["s_region"] != e.meta["s_region"]
            assert o.wcsinfo["s_region"] == o.meta["s_region"]
            assert "v2v3corr" in o.wcs.available_frames


def test_saved_catalogs_and_custom_catalogs(client, dense_dither, dither_run, tmp_path):
    infos, first, ctx, catfile = dither_run
    names = sorted(p.name for p in ctx.output_dir.glob("*_cat.ecsv"))
    assert names == sorted(p.name.replace(".fits", "_cat.ecsv") for p in dense_dither.cal_paths)
    cat = Table.read(ctx.output_dir / names[0])
    assert {"x", "y"} <= set(cat.colnames) and len(cat) > 15
    # the saved catalogs given back through a catfile: same alignment, nothing re-saved
    ctx2 = make_ctx(client, dense_dither, tmp_path, use_custom_catalogs=True, catfile=str(catfile),
                    align_mode="auto")
    second = tweakreg.run(ctx2, infos)
    assert ctx2.products["tweakreg"]["mode"] == "official"  # auto: all groups overlap
    assert not list(tmp_path.glob("*_cat.ecsv"))
    for a, b in zip(first, second, strict=True):
        ra1, dec1 = a.wcs(100.0, 120.0)
        ra2, dec2 = b.wcs(100.0, 120.0)
        assert abs(ra1 - ra2) < 1e-9 and abs(dec1 - dec2) < 1e-9


def test_dither_global_mode(client, dense_dither, dither_run, tmp_path):
    infos, _, _, catfile = dither_run
    ctx = make_ctx(client, dense_dither, tmp_path, use_custom_catalogs=True, catfile=str(catfile),
                   align_mode="global")
    out = tweakreg.run(ctx, infos)
    after = residual(dense_dither, [e.wcs for e in out])
    print(f"global: residual -> {after:.4f} px")
    assert ctx.products["tweakreg"]["mode"] == "global"
    assert after < 0.02


def test_mosaic_global_below_01_pixel(client, mosaic, tmp_path):
    infos = read_exposures(mosaic.cal_paths)
    ctx = make_ctx(client, mosaic, tmp_path)  # align_mode auto
    out = tweakreg.run(ctx, infos)
    rep = ctx.products["tweakreg"]
    after = residual(mosaic, [e.wcs for e in out])
    print(f"3x3 mosaic ({rep['mode']}): {residual(mosaic, [e.wcs for e in infos]):.3f} -> {after:.4f} px")
    assert rep["mode"] == "global"
    assert after < 0.1
    assert all(fi["status"] == "SUCCESS" for fi in rep["exposures"].values())


def test_absolute_refcat_and_gaia(client, dense_dither, dither_run, tmp_path, monkeypatch):
    infos, _, _, catfile = dither_run
    src = dense_dither.truth.sources
    stars = src[src["kind"] == "star"]
    near = np.hypot((stars["ra"] - 53.16) * np.cos(np.deg2rad(-27.78)), stars["dec"] + 27.78) < 0.015
    ref = Table({"RA": np.asarray(stars["ra"][near], float), "DEC": np.asarray(stars["dec"][near], float)})
    ref.write(tmp_path / "ref.ecsv", format="ascii.ecsv")
    ctx = make_ctx(client, dense_dither, tmp_path, abs_refcat=str(tmp_path / "ref.ecsv"),
                   use_custom_catalogs=True, catfile=str(catfile))
    out = tweakreg.run(ctx, infos)
    assert ctx.products["tweakreg"]["absolute"] is True
    before = residual(dense_dither, [e.wcs for e in infos], mean_removed=False)
    absolute = residual(dense_dither, [e.wcs for e in out], mean_removed=False)
    print(f"absolute alignment: {before:.3f} -> {absolute:.4f} px (no mean removed)")
    assert absolute < 0.05
    assert all(e.wcs.name.startswith("FIT-LVL3-") for e in out)
    # Gaia catalogs are fetched from the catalog service (tests/io/test_gaia.py); unreachable here
    monkeypatch.setenv("ASTROMETRIC_CATALOG_URL", "http://127.0.0.1:9")
    for name in ("GAIADR3", "gaiadr2"):
        with pytest.raises(InputError, match="cannot reach the catalog service http://127.0.0.1:9"):
            tweakreg.run(make_ctx(client, dense_dither, tmp_path, abs_refcat=name), infos)


def test_single_group_is_skipped(client, dense_dither, tmp_path, caplog):
    infos = read_exposures(dense_dither.cal_paths[:1])
    ctx = make_ctx(client, dense_dither, tmp_path)
    with caplog.at_level(logging.WARNING, logger="image3_dask"):
        out = tweakreg.run(ctx, infos)
    assert "Skipping 'TweakRegStep'" in caplog.text
    assert out[0].wcs is infos[0].wcs and out[0].cal_steps["tweakreg"] == "SKIPPED"


def test_too_few_sources_leaves_wcs(client, dense_dither, tmp_path, caplog):
    infos = read_exposures(dense_dither.cal_paths)
    ctx = make_ctx(client, dense_dither, tmp_path, align_mode="official", snr_threshold=1e6)
    with caplog.at_level(logging.WARNING, logger="image3_dask"):
        out = tweakreg.run(ctx, infos)
    assert "No sources found" in caplog.text
    assert all(o.wcs is e.wcs for o, e in zip(out, infos, strict=True))


def test_through_pipeline_api(client, dense_dither, dither_run, tmp_path):
    from image3_dask.pipeline.image3 import Image3Pipeline

    catfile = dither_run[3]
    products = Image3Pipeline.call(
        dense_dither.asn_path, output_dir=tmp_path, client=client, progress=False,
        steps={**SKIP_OTHERS, "tweakreg": {"use_custom_catalogs": True, "catfile": str(catfile)}},
    )
    assert residual(dense_dither, [e.wcs for e in products["exposures"]]) < 0.02
    assert products["tweakreg_json"].is_file()
    assert set(products["timings"]) == {"tweakreg"}


@pytest.mark.jwst
def test_parity_with_jwst_tweakreg(dense_dither, dither_run, tmp_path):
    pytest.importorskip("jwst")
    from jwst.tweakreg import TweakRegStep

    infos, ours = dither_run[:2]
    lib = TweakRegStep.call(str(dense_dither.asn_path), output_dir=str(tmp_path))
    ny, nx = dense_dither.truth.shape
    y, x = np.mgrid[0:ny:16, 0:nx:16].astype(float)
    worst = 0.0
    with lib:
        for i, o in enumerate(ours):
            model = lib.borrow(i)
            assert model.meta.filename == o.path.name
            ra, dec = o.wcs(x, y)
            xj, yj = model.meta.wcs.invert(ra, dec)
            worst = max(worst, float(np.nanmax(np.hypot(xj - x, yj - y))))
            if o.wcs is not infos[i].wcs:
                assert model.meta.wcsinfo.s_region == o.meta["s_region"]
            lib.shelve(model, i, modify=False)
    print(f"max |ours - jwst| = {worst:.2e} px")
    assert worst < 0.01


def test_correction_batches_cover_every_exposure_once_in_order():
    from image3_dask.graph.tweakreg import _correction_batches

    assert _correction_batches([], 2) == []
    # 16 exposures, 2 threads: 4 batches of 4 (two per thread)
    assert _correction_batches(list(range(16)), 2) == [list(range(k, k + 4)) for k in (0, 4, 8, 12)]
    # few exposures: no batch smaller than 4, except the last
    assert _correction_batches([3, 5, 9], 8) == [[3, 5, 9]]
    # hundreds on a small cluster: batches of at most 8
    todo = list(range(0, 648, 2))
    batches = _correction_batches(todo, 2)
    assert max(map(len, batches)) == 8 and len(batches) == 41
    assert [i for b in batches for i in b] == todo


def test_reference_batches_keep_groups_whole_and_in_order():
    from image3_dask.graph.tweakreg_tasks import reference_batches

    gids = ["a", "b", "a", "c", "b", "d", "e", "c"]
    assert reference_batches(gids, 2) == ([0, 2], [[1, 3, 4, 7], [5, 6]])
    assert reference_batches(gids, 10) == ([0, 2], [[1, 4], [3, 7], [5], [6]])
    assert reference_batches(gids, 1) == ([0, 2], [[1, 3, 4, 5, 6, 7]])
    ref, batches = reference_batches([f"g{i}" for i in range(16)], 4)
    assert ref == [0] and [len(b) for b in batches] == [4, 4, 3, 4]
    assert sorted(i for b in batches for i in b) == list(range(1, 16))


def _catalogs(sim, infos):
    from image3_dask.graph.tweakreg_tasks import catalog_task

    return [catalog_task(e.path, e.name, {}, None) for e in infos]


def test_batched_alignment_equals_one_alignment_of_all_groups(dense_dither, dither_run):
    """The step's batches give jwst's reference-group fits bit for bit."""
    from image3_dask.graph.tweakreg_tasks import (
        align_batch_task,
        align_task,
        merge_align_batches,
        refcat_task,
        reference_batches,
    )

    infos, out, ctx, _ = dither_run
    assert ctx.products["tweakreg"]["align_tasks"] == 3  # the step took the batched path
    cats = _catalogs(dense_dither, infos)
    args = (cats, [e.wcs for e in infos], [e.wcsinfo for e in infos],
            [e.group_id for e in infos], [e.name for e in infos])
    params = dict(ctx.config["tweakreg"])
    whole = align_task(*args, align_mode="official", params=params)
    reference, batches = reference_batches(args[3], 2)
    assert reference == [0] and batches == [[1, 2], [3]]
    refcat = refcat_task(cats[:1], args[1][:1], args[2][:1], args[3][0], args[4][:1])
    parts = [
        align_batch_task(*([v[i] for i in b] for v in args), refcat=refcat, params=params)
        for b in batches
    ]
    merged = merge_align_batches(args[3], reference, batches, parts)
    assert [fi["status"] for fi in merged["fit_info"]] == ["REFERENCE"] + ["SUCCESS"] * 3
    assert merged["fit_info"][0] == whole["fit_info"][0]
    y, x = np.mgrid[0:256:32, 0:256:32].astype(float)
    for k in range(1, 4):
        for key in ("matrix", "shift", "rmse", "nmatches"):
            np.testing.assert_array_equal(merged["fit_info"][k][key], whole["fit_info"][k][key])
        np.testing.assert_array_equal(merged["wcs"][k](x, y), whole["wcs"][k](x, y))
        np.testing.assert_array_equal(out[k].wcs(x, y), whole["wcs"][k](x, y))
    assert merged["wcs"][0] is None and whole["wcs"][0] is None


def test_batch_falls_back_where_it_cannot_vouch_for_its_fits(dense_dither, dither_run,
                                                             monkeypatch):
    """No reference sources (tweakwcs would take another reference), or a skipped alignment."""
    from image3_dask.graph.tweakreg_tasks import (
        align_batch_task,
        merge_align_batches,
        refcat_task,
    )

    infos, _, ctx, _ = dither_run
    cats = _catalogs(dense_dither, infos)
    args = (cats, [e.wcs for e in infos], [e.wcsinfo for e in infos],
            [e.group_id for e in infos], [e.name for e in infos])
    params = dict(ctx.config["tweakreg"])
    assert refcat_task([cats[0][:0]], args[1][:1], args[2][:1], args[3][0], args[4][:1]) is None
    rest = tuple(v[1:] for v in args)
    part = align_batch_task(*rest, refcat=None, params=params)
    assert not part["exact"]
    assert merge_align_batches(args[3], [0], [[1, 2, 3]], [part]) is None
    refcat = refcat_task(cats[:1], args[1][:1], args[2][:1], args[3][0], args[4][:1])
    assert align_batch_task(*rest, refcat=refcat, params=params)["exact"]
    # stcal's check finds a correction too large: jwst then skips the whole alignment
    from stcal.tweakreg import tweakreg as twk

    monkeypatch.setattr(twk, "_is_wcs_correction_small", lambda *a, **k: False)
    assert not align_batch_task(*rest, refcat=refcat, params=params)["exact"]
