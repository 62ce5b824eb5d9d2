"""Resuming an interrupted run from the mosaic store's manifest, and the per-product lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from image3_dask.io.mosaic_store import MosaicStore
from image3_dask.pipeline.image3 import Image3Pipeline, OutputLockedError

SKIP = {s: {"skip": True} for s in ("tweakreg", "skymatch", "outlier_detection", "source_catalog")}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("resume_sim")
    return simulate(instrument="miri", n=2, out_dir=out, seed=2, pattern="dither", shape=(128, 128))


def _arrays(path):
    from astropy.io import fits

    with fits.open(path) as hdul:
        return {h.name: np.array(h.data) for h in hdul if h.is_image and h.data is not None}


def test_rerun_recomputes_only_tiles_without_a_valid_manifest_entry(client, sim, tmp_path):
    out = tmp_path / "out"
    steps = {**SKIP, "resample": {"tile_shape": [64, 64]}}
    p1 = Image3Pipeline.call(
        sim.asn_path, out, steps=steps, client=client, progress=False, keep_work=True
    )
    ref = _arrays(p1["i2d"])
    zarr_path = p1["i2d_zarr"]
    manifest = zarr_path.with_name(zarr_path.name + ".manifest") / "resample"
    entries = sorted(manifest.glob("*.json"))
    assert len(entries) >= 6
    before = {p.name: p.stat().st_mtime_ns for p in entries}
    # an interrupted run: one tile never recorded, one recorded from other inputs, and the
    # pixels of both spoiled (as a worker dying mid-write would leave them)
    missing, stale = entries[0], entries[3]
    missing.unlink()
    stale.write_text(json.dumps({"fingerprint": "from-an-older-run", "n_inputs": 2}))
    store = MosaicStore(zarr_path)
    ty, tx = store.read_chunks("sci")
    for p in (missing, stale):
        r, c = int(p.stem[1:4]), int(p.stem[5:8])
        store.write_tile("sci", r * ty, c * tx, np.zeros((ty, tx), np.float32))
    (p1["i2d"]).unlink()

    p2 = Image3Pipeline.call(sim.asn_path, out, steps=steps, client=client, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in sorted(manifest.glob("*.json"))}
    assert sorted(after) == sorted(before)
    recomputed = {n for n in after if after[n] != before.get(n)}
    assert recomputed == {missing.name, stale.name}
    got = _arrays(p2["i2d"])
    assert sorted(got) == sorted(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    assert not (out / "miri_dither_work").exists()  # removed after the successful rerun


def test_second_run_on_the_same_product_is_refused(sim, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".miri_dither.image3-dask.lock"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")  # a live run holds the product
    with pytest.raises(OutputLockedError, match="another run .* is writing product miri_dither"):
        Image3Pipeline.call(
            sim.asn_path, out, steps=SKIP, progress=False, n_workers=1,
            dashboard_address="127.0.0.1:0",
        )
    r = subprocess.run(
        [sys.executable, "-m", "image3_dask.cli", "-q", "run", str(sim.asn_path), "-o", str(out),
         "--workers", "1", "--dashboard-address", "127.0.0.1:0",
         *[f"--steps.{s}.skip=true" for s in SKIP]],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("image3-dask: error: "), r.stderr
    assert "another run" in errors[0] and str(out) in errors[0]
    assert sorted(p.name for p in out.iterdir()) == [lock.name]  # nothing else written
    assert lock.read_text() == f"{socket.gethostname()} {os.getpid()}"  # not taken over


def test_lock_of_a_dead_run_is_taken_over(client, sim, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = out / ".miri_dither.image3-dask.lock"
    lock.write_text(f"{socket.gethostname()} {dead.pid}")
    p = Image3Pipeline.call(sim.asn_path, out, steps=SKIP, client=client, progress=False)
    assert p["i2d"].is_file() and not lock.exists()
