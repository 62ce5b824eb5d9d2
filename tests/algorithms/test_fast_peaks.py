"""Tests of image3_dask.algorithms.fast_peaks: the same peaks as photutils' own check."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from photutils.detection import find_peaks, peakfinder

from image3_dask.algorithms.fast_peaks import fast_ring_verification, verify_ring_candidates

ORIGINAL = peakfinder._verify_ring_candidates


def _inputs(data, radius):
    """The arguments ``_fast_circular_peaks`` passes for ``radius`` (every ring candidate)."""
    idx = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(idx, idx)
    footprint = (xx**2 + yy**2) <= radius**2
    size = len(idx)
    needs = np.ones(data.shape, bool)  # check every pixel, not only photutils' candidates
    return footprint, size // 2, size, needs


@pytest.mark.parametrize("radius", [2, 2.5, 3, 3.7, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_verdicts_as_photutils_on_every_pixel(radius, dtype):
    rng = np.random.default_rng(int(radius * 10))
    # coarse values give many ties; negative values make the border's 0 matter
    data = np.round(rng.normal(0.0, 2.0, (37, 41))).astype(dtype)
    data[5, 7] = 50.0
    data[0, :] = -3.0
    footprint, half, size, needs = _inputs(data, radius)
    ours = np.zeros(data.shape, bool)
    theirs = np.zeros(data.shape, bool)
    verify_ring_candidates(data, ours, needs, footprint, half, size)
    ORIGINAL(data, theirs, needs, footprint, half, size)
    assert theirs.any() and not theirs.all()
    np.testing.assert_array_equal(ours, theirs)


def test_leaves_non_candidates_alone():
    data = np.zeros((9, 9))
    data[4, 4] = 1.0
    mask = np.zeros(data.shape, bool)
    mask[0, 0] = True  # set before: kept
    needs = np.zeros(data.shape, bool)
    needs[4, 4] = needs[4, 6] = True
    footprint, half, size, _ = _inputs(data, 2)
    verify_ring_candidates(data, mask, needs, footprint, half, size)
    assert sorted(zip(*np.nonzero(mask), strict=True)) == [(0, 0), (4, 4)]


@pytest.mark.parametrize("min_separation", [2, 3.5])
def test_find_peaks_in_context_equals_photutils(min_separation):
    rng = np.random.default_rng(7)
    data = rng.normal(0.0, 1.0, (120, 90))
    yy, xx = np.mgrid[:120, :90]
    for y, x in rng.uniform(0, 90, (25, 2)):
        data += 20 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0)
    ref = find_peaks(data, 0.5, min_separation=min_separation)
    with fast_ring_verification() as installed:
        assert installed
        assert peakfinder._verify_ring_candidates is verify_ring_candidates
        got = find_peaks(data, 0.5, min_separation=min_separation)
    assert peakfinder._verify_ring_candidates is ORIGINAL
    assert len(got) == len(ref) > 20
    for col in ("x_peak", "y_peak", "peak_value"):
        np.testing.assert_array_equal(got[col], ref[col])


def test_context_is_reentrant_and_shared_by_threads():
    entered, release = threading.Barrier(3), threading.Event()

    def hold():
        with fast_ring_verification():
            entered.wait()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait()
    with fast_ring_verification():
        pass  # a third user leaving does not take the function from the other two
    assert peakfinder._verify_ring_candidates is verify_ring_candidates
    release.set()
    for t in threads:
        t.join()
    assert peakfinder._verify_ring_candidates is ORIGINAL


def test_a_photutils_with_another_helper_is_left_alone(monkeypatch):
    def other(data, mask):  # a different signature: not the function this replaces
        raise AssertionError

    monkeypatch.setattr(peakfinder, "_verify_ring_candidates", other)
    with fast_ring_verification() as installed:
        assert not installed
        assert peakfinder._verify_ring_candidates is other
    assert peakfinder._verify_ring_candidates is other


def test_scoped_patch_restores_after_an_error_and_survives_a_failing_factory():
    import types

    from image3_dask.patches import ScopedPatch

    mod = types.ModuleType("scoped_patch_target")
    mod.f = lambda: "original"
    import sys

    sys.modules[mod.__name__] = mod
    try:
        patch = ScopedPatch(mod.__name__, "f", lambda orig: lambda: "fast", callable)
        with pytest.raises(RuntimeError), patch as installed:
            assert installed and mod.f() == "fast"
            raise RuntimeError
        assert mod.f() == "original"

        def broken(orig):
            raise ValueError("cannot build")

        with ScopedPatch(mod.__name__, "f", broken, callable) as installed:
            assert not installed and mod.f() == "original"
    finally:
        del sys.modules[mod.__name__]
