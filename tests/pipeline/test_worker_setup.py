"""The worker preload's malloc tuning: image-sized temporaries stop costing page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
import numpy as np
from image3_dask.pipeline.worker_setup import tune_malloc

def faults_per_array():
    a = np.ones((1024, 1032))  # a MIRI frame in float64, 8.5 MB, as the tasks make them
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        a = np.ones((1024, 1032))
        del a
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20

untuned = faults_per_array()
tuned = tune_malloc()
print(json.dumps({"untuned": untuned, "called": tuned, "tuned": faults_per_array()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_tune_malloc_stops_page_faults_under_the_nannys_trim_threshold():
    # the environment Dask's nanny gives its workers (distributed.nanny.pre-spawn-environ)
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["called"]:
        pytest.skip("not glibc: mallopt unavailable")
    # each 8.5 MB array was its own mmap, every page of it faulted in anew (2080 pages of
    # 4 kB, fewer where the kernel maps huge pages)
    assert result["untuned"] > 200
    # from the heap, reused: no new pages
    assert result["tuned"] < 50


TRIM_PROBE = """
import json
import numpy as np
from image3_dask.pipeline.worker_setup import TrimAfterTask, tune_malloc

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

tune_malloc()
plugin = TrimAfterTask()
out = {}
for limit in (float("inf"), 0.0):
    plugin._limit = limit
    # 24 arrays of 8 MB from the heap, all freed but the last: the free space below it stays
    arrays = [np.ones((1024, 1024)) for _ in range(24)]
    last = arrays.pop()
    del arrays
    before = rss()
    plugin.transition("task", "executing", "memory")
    out[str(limit)] = before - rss()
    del last
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_trim_after_task_gives_back_the_heap_only_above_the_memory_target():
    out = subprocess.run(
        [sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True
    )
    freed = json.loads(out.stdout.strip().splitlines()[-1])
    assert freed["inf"] < 20  # under the target: the heap is kept for the next task
    assert freed["0.0"] > 150  # above it: the ~184 MB left free by the task go back


def test_preload_adds_the_trim_plugin_to_each_worker():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            memory_limit="2GB",
            preload=["image3_dask.pipeline.worker_setup"],
        ) as cluster,
        Client(cluster) as client,
    ):
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
        limits = client.run(
            lambda dask_worker: dask_worker.plugins["image3-dask-trim"]._limit
        )
    assert all("image3-dask-trim" in p for p in plugins.values())
    # the worker's memory target: 60 % of its 2 GB
    assert list(limits.values()) == [pytest.approx(0.6 * 2e9, rel=1e-6)]
