"""Tests of image3_dask.pipeline.context: WCS objects sent to the cluster once, in one piece."""

from __future__ import annotations

import pickle

import numpy as np
from helpers import run_context

from image3_dask.graph.tasks import pickled, unpickle
from image3_dask.io.exposures import read_exposure_info


def test_pickled_is_one_piece_and_round_trips(small_dither):
    wcs = read_exposure_info(small_dither.cal_paths[0]).wcs
    blob = pickled(wcs)
    assert isinstance(blob, bytes)
    # what dask would do with the object itself: its arrays as separate frames
    frames: list = []
    pickle.dumps(wcs, protocol=5, buffer_callback=frames.append)
    assert len(frames) > 20
    frames.clear()
    pickle.dumps(blob, protocol=5, buffer_callback=frames.append)
    assert len(frames) <= 1
    back = unpickle(blob)
    x, y = np.array([0.0, 80.0, 159.0]), np.array([0.0, 80.0, 159.0])
    np.testing.assert_array_equal(back(x, y), wcs(x, y))


def test_pickled_falls_back_to_cloudpickle():
    offset = 3.0
    blob = pickled(lambda v: v + offset)  # a closure: pickle cannot, cloudpickle can
    assert unpickle(blob)(1.0) == 4.0


def test_wcs_futures_send_each_object_once(client, small_dither, tmp_path):
    ctx = run_context(client, small_dither.asn_path, tmp_path)
    wcses = [read_exposure_info(p).wcs for p in small_dither.cal_paths[:2]]
    first = ctx.wcs_futures(wcses)
    again = ctx.wcs_futures([wcses[1], wcses[0]])
    assert again == [first[1], first[0]]  # the same futures: not sent twice
    x, y = np.array([10.0, 100.0]), np.array([20.0, 150.0])
    for w, f in zip(wcses, first, strict=True):
        on_cluster = client.submit(lambda obj, a, b: obj(a, b), f, x, y).result()
        np.testing.assert_array_equal(on_cluster, w(x, y))
