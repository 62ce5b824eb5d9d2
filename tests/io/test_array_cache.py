"""The worker's least-recently-used array cache (remote pixel maps, pixel-map block bounds)."""

from __future__ import annotations

import threading

import numpy as np

from image3_dask.io.array_cache import ArrayCache


def _maker(calls: list, value: int, n: int = 10):
    def make():
        calls.append(value)
        return np.full(n, value, np.int64)  # 8 bytes each

    return make


def test_made_once_then_kept():
    cache, calls = ArrayCache(max_items=2), []
    a = cache.get("a", _maker(calls, 1))
    assert cache.get("a", _maker(calls, 99)) is a and calls == [1]


def test_least_recently_used_goes_first_by_count():
    cache, calls = ArrayCache(max_items=2), []
    cache.get("a", _maker(calls, 1))
    cache.get("b", _maker(calls, 2))
    cache.get("a", _maker(calls, 0))  # a is now the most recent
    cache.get("c", _maker(calls, 3))  # b goes
    assert calls == [1, 2, 3] and len(cache) == 2
    cache.get("a", _maker(calls, 0))
    cache.get("b", _maker(calls, 4))  # made again
    assert calls == [1, 2, 3, 4]


def test_byte_budget_and_an_oversized_newest_array():
    cache, calls = ArrayCache(max_bytes=200), []
    cache.get("a", _maker(calls, 1))  # 80 bytes
    cache.get("b", _maker(calls, 2))  # 160
    assert cache.nbytes == 160
    cache.get("c", _maker(calls, 3))  # 240 > 200: a goes
    assert cache.nbytes == 160 and len(cache) == 2
    cache.get("big", _maker(calls, 4, n=100))  # 800 bytes alone: kept, the rest dropped
    assert len(cache) == 1 and cache.nbytes == 800
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_threads_share_it():
    cache = ArrayCache(max_items=8)
    out: list = []

    def work(k):
        for i in range(200):
            j = (i + k) % 12
            out.append(int(cache.get(f"k{j}", lambda j=j: np.array([j]))[0]) == j)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 800 and all(out) and len(cache) == 8
    assert cache.nbytes == sum(a.nbytes for a in cache._items.values())
