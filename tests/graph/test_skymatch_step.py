"""The skymatch step on the cluster: simulated dither, methods, user sky list, subtract, parity."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from helpers import run_context

from image3_dask.errors import ConfigError
from image3_dask.graph import skymatch
from image3_dask.io.exposures import read_exposures, read_pixels
from image3_dask.pipeline.context import RunContext


def make_ctx(client, sim, out, **params) -> RunContext:
    return run_context(client, sim.asn_path, out, {"skymatch": params})


def truth_sky(sim) -> np.ndarray:
    return np.array([e.sky_mjysr for e in sim.truth.exposures])


def overlap_noise(sim) -> float:
    """Standard error of the median sky over the smallest pairwise overlap of the dither.

    Clipped per-pixel sky noise, over the pixels of half a detector (every pair of the 4-point
    dither overlaps on more than that), times 1.2533 (efficiency of the median).
    """
    from astropy.stats import sigma_clipped_stats

    pix = read_pixels(sim.cal_paths[0], ("data", "dq"))
    sigma = sigma_clipped_stats(pix.data[np.isfinite(pix.data)], sigma=3)[2]
    return 1.2533 * sigma / np.sqrt(0.5 * pix.data.size)


@pytest.fixture(scope="module")
def infos(small_dither):
    return read_exposures(small_dither.cal_paths)


def test_match_recovers_sky_differences(client, small_dither, infos, tmp_path):
    truth = truth_sky(small_dither)
    # skystat='median': the differences are recovered within the noise of the overlap statistics
    ctx = make_ctx(client, small_dither, tmp_path, skystat="median")
    levels = np.array([e.background_level for e in skymatch.run(ctx, infos)])
    tol = 3 * np.sqrt(2) * overlap_noise(small_dither)
    err = np.max(np.abs((levels - levels.min()) - (truth - truth.min())))
    print(f"match/median: max error {err:.2e} MJy/sr, 3-sigma noise {tol:.2e}")
    np.testing.assert_allclose(levels - levels.min(), truth - truth.min(), atol=tol)
    # default skystat='mode' (histogram of 0.1-sigma bins, more sensitive to faint sources)
    ctx = make_ctx(client, small_dither, tmp_path)  # skymethod 'match', match_down
    out = skymatch.run(ctx, infos)
    levels = np.array([e.background_level for e in out])
    err = np.max(np.abs((levels - levels.min()) - (truth - truth.min())))
    print(f"match/mode: max error {err:.2e} MJy/sr ({err / truth.mean():.2%} of the sky)")
    assert levels.min() == 0.0 and np.argmin(levels) == np.argmin(truth)
    assert err < 0.003 * truth.mean()
    for e in out:
        assert e.background_subtracted is False
        assert e.meta["background"] == {
            "level": e.background_level,
            "subtracted": False,
            "method": "match",
        }
        assert e.meta["background_method"] == "match"
        assert e.cal_steps["skymatch"] == "COMPLETE"
    assert set(ctx.products["skymatch"]["exposures"]) == {e.name for e in infos}


def test_global_match_absolute_levels(client, small_dither, infos, tmp_path):
    out = skymatch.run(make_ctx(client, small_dither, tmp_path, skymethod="global+match"), infos)
    levels = np.array([e.background_level for e in out])
    truth = truth_sky(small_dither)
    # the frame statistic of the faintest sky carries some source light: within 1 %
    np.testing.assert_allclose(levels, truth, rtol=0.01)
    local = skymatch.run(make_ctx(client, small_dither, tmp_path, skymethod="local"), infos)
    np.testing.assert_allclose([e.background_level for e in local], truth, rtol=0.01)


def test_subtract_keeps_inputs_and_user_skylist(client, small_dither, infos, tmp_path):
    digest = [hashlib.sha1(p.read_bytes()).hexdigest() for p in small_dither.cal_paths]
    out = skymatch.run(make_ctx(client, small_dither, tmp_path, subtract=True), infos)
    assert [hashlib.sha1(p.read_bytes()).hexdigest() for p in small_dither.cal_paths] == digest
    for e in out:  # level still to subtract from the file pixels; jwst's meta says subtracted
        assert e.background_subtracted is False and e.background_level is not None
        assert e.meta["background"]["subtracted"] is True
    # a re-run with subtract=false on exposures whose sky was subtracted is refused, as jwst does
    done = [e.evolve(background_subtracted=True) for e in out]
    with pytest.raises(ConfigError, match="inconsistent"):
        skymatch.run(make_ctx(client, small_dither, tmp_path), done)

    skylist = tmp_path / "sky.txt"
    skylist.write_text(
        "".join(f"{p.name} {1.5 + i}\n" for i, p in enumerate(small_dither.cal_paths))
    )
    user = skymatch.run(
        make_ctx(client, small_dither, tmp_path, skymethod="user", skylist=str(skylist)), infos
    )
    assert [e.background_level for e in user] == [1.5, 2.5, 3.5, 4.5]
    assert all(e.meta["background_method"] == "user" for e in user)
    with pytest.raises(ConfigError, match="skylist"):
        skymatch.run(make_ctx(client, small_dither, tmp_path, skymethod="user"), infos)


def test_through_pipeline_api(client, small_dither, tmp_path):
    from image3_dask.pipeline.image3 import Image3Pipeline

    skip = {
        s: {"skip": True} for s in ("tweakreg", "outlier_detection", "resample", "source_catalog")
    }
    products = Image3Pipeline.call(
        small_dither.asn_path,
        output_dir=tmp_path,
        client=client,
        steps={**skip, "skymatch": {"skymethod": "global+match"}},
        progress=False,
    )
    levels = [e.background_level for e in products["exposures"]]
    np.testing.assert_allclose(levels, truth_sky(small_dither), rtol=0.01)
    assert set(products["timings"]) == {"skymatch"}


@pytest.mark.jwst
@pytest.mark.parametrize("method", ["match", "global+match", "global", "local"])
def test_parity_with_jwst_skymatch(client, small_dither, infos, tmp_path, method):
    """Sky levels equal jwst's SkyMatchStep (stcal) to 1e-12 relative.

    Measured with jwst 3.0.0: bit-identical for every method (the same sky statistics of the
    same pixels in the same overlaps, solved the same way); 1e-12 leaves room for the order of
    additions only. Any change of the mask, the overlap polygons, the statistic or the solve
    shows as a relative difference of 1e-6 or more.
    """
    pytest.importorskip("jwst")
    from jwst.skymatch import SkyMatchStep

    ours = skymatch.run(make_ctx(client, small_dither, tmp_path, skymethod=method), infos)
    lib = SkyMatchStep.call(str(small_dither.asn_path), skymethod=method)
    scale = float(np.mean(truth_sky(small_dither)))
    worst = 0.0
    with lib:
        for i, e in enumerate(ours):
            model = lib.borrow(i)
            assert model.meta.filename == e.path.name
            ref = model.meta.background.level
            assert model.meta.background.subtracted is False
            assert e.background_level == pytest.approx(ref, rel=1e-12, abs=1e-12 * scale), (
                e.name,
                e.background_level,
                ref,
            )
            worst = max(worst, abs(e.background_level - ref) / max(abs(ref), 1e-12 * scale))
            lib.shelve(model, i, modify=False)
    print(f"{method}: max |ours - jwst| / jwst = {worst:.2e}")
    # the comparison is not vacuous: the levels differ between exposures
    assert np.ptp([e.background_level for e in ours]) > 0.01 * scale or method == "global"


def test_neighbour_parts_and_split():
    # a 16-exposure dither on 2 threads: 15 overlaps each, cut in 3 (48 tasks)
    assert skymatch.neighbour_parts(16, 15, 2) == 3
    assert skymatch.neighbour_parts(16, 2, 2) == 1  # too few overlaps to share the read
    assert skymatch.neighbour_parts(324, 8, 2) == 1  # enough tasks from the exposures
    assert skymatch.neighbour_parts(324, 8, 64) == 2
    pieces = skymatch.split_neighbours({k: [k] for k in "abcdefg"}, 3)
    assert [list(p) for p in pieces] == [["a", "b"], ["c", "d", "e"], ["f", "g"]]
    assert skymatch.split_neighbours({}, 3) == [{}]


@pytest.mark.parametrize("method", ["match", "global+match"])
def test_overlaps_split_between_tasks_give_the_same_levels(
    client, small_dither, infos, tmp_path, monkeypatch, method
):
    """An exposure's overlaps cut into one task each equal one task for all, bit for bit."""
    monkeypatch.setattr(skymatch, "TASKS_PER_THREAD", 0)  # never split
    ctx = make_ctx(client, small_dither, tmp_path / "whole", skymethod=method)
    whole = [e.background_level for e in skymatch.run(ctx, infos)]
    monkeypatch.setattr(skymatch, "TASKS_PER_THREAD", 1000)
    monkeypatch.setattr(skymatch, "MIN_OVERLAPS_PER_TASK", 1)
    ctx = make_ctx(client, small_dither, tmp_path / "split", skymethod=method)
    split = [e.background_level for e in skymatch.run(ctx, infos)]
    assert split == whole and len(set(whole)) > 1
    n = len(infos)
    stats = [f.key for _, f in ctx.tasks._entries if f.key[0] == "skymatch-stats"]
    assert len(stats) == n * (n - 1), stats  # one task per overlap (a dither: all overlap)
