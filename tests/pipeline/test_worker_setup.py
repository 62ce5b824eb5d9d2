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
