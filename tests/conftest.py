"""Shared fixtures: small simulated data sets and one local Dask cluster for the session."""

from __future__ import annotations

import os
import tempfile

# The official pipeline, where installed, must never reach CRDS or the network in tests.
os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "True")
os.environ.setdefault("CRDS_SERVER_URL", "https://localhost:1")
os.environ.setdefault("CRDS_PATH", tempfile.mkdtemp(prefix="crds_"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def client():
    """A local cluster of two single-threaded worker processes, shared by the session."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        memory_limit="3GB",
    )
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="session")
def small_dither(tmp_path_factory):
    """A 4-exposure MIRI-like dither of 160x160 detectors (simulated, with truth)."""
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("dither")
    return simulate(instrument="miri", n=4, out_dir=out, seed=3, pattern="dither", shape=(160, 160))
