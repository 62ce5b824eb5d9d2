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


DEFAULT_STEPS = {  # the default steps (source_catalog skipped to keep the test short)
    "source_catalog": {"skip": True},
    "outlier_detection": {"save_intermediate_results": False},
    "resample": {"tile_shape": [64, 64]},
}


def test_rerun_of_the_default_pipeline_reuses_crf_files_and_tiles(client, sim, tmp_path, caplog):
    """Kill during resample, run again: every crf file and finished tile is reused.

    The run interrupted during resample is reproduced by a finished run whose work folder is
    kept, with two resample tiles then forgotten (and their pixels spoiled) and the i2d removed.
    The crf files are identified by what made them, not by their modification time, so the
    rerun neither rewrites them nor recomputes the tiles that read them.
    """
    out = tmp_path / "out"
    p1 = Image3Pipeline.call(
        sim.asn_path, out, steps=DEFAULT_STEPS, client=client, progress=False, keep_work=True
    )
    ref = _arrays(p1["i2d"])
    crf = sorted(p1["crf"])
    assert len(crf) == 2 and p1["reused"]["crf"] == 0
    crf_state = {p.name: p.stat().st_mtime_ns for p in crf}
    zarr_path = p1["i2d_zarr"]
    manifest = zarr_path.with_name(zarr_path.name + ".manifest") / "resample"
    entries = sorted(manifest.glob("*.json"))
    assert len(entries) >= 4
    before = {p.name: p.stat().st_mtime_ns for p in entries}
    forgotten = {entries[0].name, entries[-1].name}
    store = MosaicStore(zarr_path)
    ty, tx = store.read_chunks("sci")
    for name in forgotten:
        (manifest / name).unlink()
        r, c = int(name[1:4]), int(name[5:8])
        store.write_tile("sci", r * ty, c * tx, np.zeros((ty, tx), np.float32))
    p1["i2d"].unlink()

    with caplog.at_level("INFO", logger="image3_dask"):
        p2 = Image3Pipeline.call(
            sim.asn_path, out, steps=DEFAULT_STEPS, client=client, progress=False, keep_work=True
        )
    assert p2["reused"]["crf"] == 2
    assert "2 of 2 crf files reused from an earlier run" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in crf} == crf_state  # not rewritten
    after = {p.name: p.stat().st_mtime_ns for p in sorted(manifest.glob("*.json"))}
    assert {n for n in after if after[n] != before.get(n)} == forgotten
    assert f"{len(entries) - 2} of {len(entries)} tiles reused" in caplog.text
    got = _arrays(p2["i2d"])
    assert sorted(got) == sorted(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)

    # a crf file changed since it was written (here: touched) is made again, and the tiles
    # reading it are not recomputed, since it is made from the same inputs
    os.utime(crf[0], ns=(crf_state[crf[0].name] - 10**9,) * 2)
    p3 = Image3Pipeline.call(
        sim.asn_path, out, steps=DEFAULT_STEPS, client=client, progress=False, keep_work=True
    )
    assert p3["reused"]["crf"] == 1
    assert crf[0].stat().st_mtime_ns > crf_state[crf[0].name]
    assert crf[1].stat().st_mtime_ns == crf_state[crf[1].name]
    final = {p.name: p.stat().st_mtime_ns for p in sorted(manifest.glob("*.json"))}
    assert final == after
    got = _arrays(p3["i2d"])
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


def test_runs_of_two_products_over_the_same_exposures_lock_the_crf_files(sim, tmp_path):
    """A run of another product writing the same crf files in the folder refuses to start."""
    from image3_dask.pipeline.output_lock import OutputLock

    out = tmp_path / "out"
    other = OutputLock(out, "other_product", _crf_names(sim))
    with other:
        lock = out / f".{_crf_names(sim)[0]}.image3-dask.lock"
        assert lock.read_text() == f"{socket.gethostname()} {os.getpid()} other_product"
        assert oct(lock.stat().st_mode & 0o777) == "0o644"
        with pytest.raises(OutputLockedError, match="is writing file .*_crf.fits") as err:
            Image3Pipeline.call(
                sim.asn_path, out, steps={"source_catalog": {"skip": True}}, progress=False,
                n_workers=1, dashboard_address="127.0.0.1:0",
            )
        assert "product other_product" in str(err.value)
        # nothing of ours left locked or written
        assert sorted(p.name for p in out.iterdir()) == sorted(
            f".{n}.image3-dask.lock" for n in ["other_product", *_crf_names(sim)]
        )
    assert list(out.iterdir()) == []
    # without crf files to write (outlier_detection skipped) the runs do not collide
    with other:
        p = Image3Pipeline.call(
            sim.asn_path, out, steps=SKIP, progress=False, n_workers=1,
            dashboard_address="127.0.0.1:0",
        )
        assert p["i2d"].is_file()


def _crf_names(sim) -> list[str]:
    asn_id = json.loads(sim.asn_path.read_text())["asn_id"]
    return sorted(f"{p.stem.removesuffix('_cal')}_{asn_id}_crf.fits" for p in sim.cal_paths)
