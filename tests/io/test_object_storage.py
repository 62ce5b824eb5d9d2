"""Inputs and outputs on object storage, against a real S3-compatible server (moto's, on 127.0.0.1).

The server runs in its own process (``tests/helpers/s3_server.py``) and logs every request, so the
tests see what went over the wire: ranged reads, objects written once, aborted uploads.
The client library is never mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import moto  # noqa: F401
    import s3fs  # noqa: F401
except ImportError:
    if os.environ.get("IMAGE3_REQUIRE_S3"):  # CI: the [test] extra installs them
        raise
    pytest.skip("needs moto[server] and s3fs (the [test] extra)", allow_module_level=True)

from helpers.s3_server import S3Server  # noqa: E402

from image3_dask.io.storage import RemotePath, location  # noqa: E402

SECRET = "image3-test-secret-7f3a9c"  # must never appear in logs, products or task keys
BUCKET = "image3-data"
SKIP_FOR_SPEED = {"tweakreg": {"skip": True}}
RESAMPLE_ONLY = {
    **{s: {"skip": True} for s in ("tweakreg", "skymatch", "outlier_detection", "source_catalog")},
    "resample": {"tile_shape": [64, 64]},
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The S3 server, its bucket holding a simulated 3-exposure dither under ``sim/``."""
    import s3fs

    from image3_dask.simulate import simulate

    folder = tmp_path_factory.mktemp("s3")
    server = S3Server(folder)
    options = {
        "key": "AKIAIMAGE3DASKTEST",
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": server.endpoint},
    }
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(BUCKET)
    sim = simulate(
        instrument="miri", n=3, out_dir=folder / "sim", seed=2, pattern="dither", shape=(128, 128)
    )
    fs.put(f"{folder / 'sim'}/", f"{BUCKET}/sim/", recursive=True)
    server.options, server.fs, server.sim = options, fs, sim
    yield server
    server.stop()


def _arrays_local(path) -> dict[str, np.ndarray]:
    from astropy.io import fits

    with fits.open(path) as hdul:
        return {h.name: np.array(h.data) for h in hdul if h.is_image and h.data is not None}


def _arrays(path, fs) -> dict[str, np.ndarray]:
    import io

    from astropy.io import fits

    if not isinstance(path, RemotePath):
        return _arrays_local(path)
    with fits.open(io.BytesIO(fs.cat_file(path.path))) as hdul:
        return {h.name: np.array(h.data) for h in hdul if h.is_image and h.data is not None}


def _assert_same_products(got: dict, ref: dict, fs) -> None:
    for kind in ("i2d", "segm"):
        a, b = _arrays(got[kind], fs), _arrays(ref[kind], fs)
        assert sorted(a) == sorted(b), kind
        for name in b:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{kind} {name}")
    for g, r in zip(got["crf"], ref["crf"], strict=True):
        a, b = _arrays(g, fs), _arrays(r, fs)
        for name in b:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"crf {name}")
    text = {}
    for key, p in (("got", got["cat"]), ("ref", ref["cat"])):
        raw = fs.cat_file(p.path).decode() if isinstance(p, RemotePath) else Path(p).read_text()
        text[key] = [ln for ln in raw.splitlines() if "date" not in ln.lower()]
    assert text["got"] == text["ref"]


@pytest.fixture(scope="module")
def local_run(s3, client, tmp_path_factory):
    from image3_dask.pipeline.image3 import Image3Pipeline

    out = tmp_path_factory.mktemp("local_out")
    return Image3Pipeline.call(
        s3.sim.asn_path, out, steps=SKIP_FOR_SPEED, client=client, progress=False
    )


@pytest.fixture(scope="module")
def s3_run(s3, client, local_run):
    """The run with association and products on S3, its log, and the scheduler's task keys."""
    import logging

    from distributed import get_task_stream

    from image3_dask.pipeline.image3 import Image3Pipeline

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(logging.DEBUG)
    logger = logging.getLogger()
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # everything image3-dask and Dask log while it runs
    mark = s3.mark()
    try:
        with get_task_stream(client) as stream:
            products = Image3Pipeline.call(
                f"s3://{BUCKET}/sim/asn.json",
                f"s3://{BUCKET}/out",
                steps=SKIP_FOR_SPEED,
                client=client,
                progress=False,
                storage_options=s3.options,
            )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    log_text = "\n".join(f"{r.getMessage()} {r.args!r}" for r in records)
    keys = [str(t.get("key")) for t in stream.data]
    return products, log_text, keys, s3.read_log()[mark:]


def test_pipeline_on_s3_gives_the_local_products(s3, local_run, s3_run):
    products, _, _, requests = s3_run
    assert isinstance(products["i2d"], RemotePath)
    assert str(products["i2d"]) == f"s3://{BUCKET}/out/miri_dither_i2d.fits"
    _assert_same_products(products, local_run, s3.fs)
    names = {p.rsplit("/", 1)[-1] for p in s3.fs.find(f"{BUCKET}/out")}
    assert "miri_dither_i2d.fits" in names and "miri_dither_cat.ecsv" in names
    assert not any("_work/" in p for p in s3.fs.find(f"{BUCKET}/out"))  # removed after success
    assert not any(n.startswith(".miri_dither.") for n in names)  # lock released
    # every product was written once, under its final name (no temporary keys, no renames)
    puts = [r["key"] for r in requests if r["method"] == "PUT" and "partNumber" not in r["query"]]
    assert not [k for k in puts if "partial" in k or k.endswith(".tmp")]
    assert sum(k.endswith("_i2d.fits") for k in puts) == 1


def test_members_are_read_by_ranged_reads(s3, s3_run):
    _, _, _, requests = s3_run
    size = s3.fs.info(f"{BUCKET}/sim/{s3.sim.cal_paths[0].name}")["size"]
    member_gets = [
        r for r in requests if r["method"] == "GET" and r["key"].endswith("_cal.fits")
    ]
    ranged = [r for r in member_gets if r["range"]]
    assert ranged, "no ranged read of a member"
    # the tile tasks read rows of the crf files, never whole files
    crf_gets = [r for r in requests if r["method"] == "GET" and r["key"].endswith("_crf.fits")]
    assert crf_gets and all(r["range"] for r in crf_gets)
    assert max(r["sent"] for r in crf_gets) < size


def test_storage_options_never_appear_in_logs_products_or_task_keys(s3, s3_run):
    products, log_text, keys, _ = s3_run
    assert keys and not any(SECRET in k for k in keys)
    assert SECRET not in log_text
    assert SECRET not in repr(products) and SECRET not in str(products)
    for path in s3.fs.find(f"{BUCKET}/out"):
        assert SECRET.encode() not in s3.fs.cat_file(path), path


@pytest.fixture(scope="module")
def resample_ref(s3, client, tmp_path_factory):
    """The i2d arrays of a local run of resample alone (tiles of 64 px)."""
    from image3_dask.pipeline.image3 import Image3Pipeline

    out = tmp_path_factory.mktemp("resample_ref")
    p = Image3Pipeline.call(s3.sim.asn_path, out, steps=RESAMPLE_ONLY, client=client, progress=False)
    return _arrays_local(p["i2d"])


def test_mixed_local_inputs_remote_output_and_back(s3, client, resample_ref, tmp_path):
    from image3_dask.pipeline.image3 import Image3Pipeline

    steps = RESAMPLE_ONLY
    up = Image3Pipeline.call(
        s3.sim.asn_path, f"s3://{BUCKET}/mixed-up", steps=steps, client=client, progress=False,
        storage_options=s3.options,
    )
    down = Image3Pipeline.call(
        f"s3://{BUCKET}/sim/asn.json", tmp_path, steps=steps, client=client, progress=False,
        storage_options=s3.options,
    )
    assert isinstance(up["i2d"], RemotePath) and isinstance(down["i2d"], Path)
    ref = resample_ref
    for got in (_arrays(up["i2d"], s3.fs), _arrays(down["i2d"], s3.fs)):
        for name in ref:
            np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


def test_resume_on_s3_reuses_the_finished_tiles(s3, client, resample_ref):
    from image3_dask.io.mosaic_store import MosaicStore
    from image3_dask.pipeline.image3 import Image3Pipeline

    steps = RESAMPLE_ONLY
    out = f"s3://{BUCKET}/resume"
    p1 = Image3Pipeline.call(
        f"s3://{BUCKET}/sim/asn.json", out, steps=steps, client=client, progress=False,
        keep_work=True, storage_options=s3.options,
    )
    ref = _arrays(p1["i2d"], s3.fs)
    for name in resample_ref:
        np.testing.assert_array_equal(ref[name], resample_ref[name], err_msg=name)
    manifest = f"{BUCKET}/resume/miri_dither_i2d.zarr.manifest/resample"
    entries = sorted(s3.fs.ls(manifest, detail=False, refresh=True))
    assert len(entries) >= 6
    before = {e: s3.fs.info(e)["ETag"] + str(s3.fs.info(e)["LastModified"]) for e in entries}
    # as an interrupted run leaves it: one tile never recorded, one recorded from other inputs,
    # the pixels of both spoiled, no i2d
    missing, stale = entries[0], entries[3]
    s3.fs.rm_file(missing)
    s3.fs.pipe_file(stale, json.dumps({"fingerprint": "older", "n_inputs": 3}).encode())
    before[stale] = "rewritten"
    store = MosaicStore(location(p1["i2d_zarr"]))
    ty, tx = store.read_chunks("sci")
    for e in (missing, stale):
        name = e.rsplit("/", 1)[-1]
        r, c = int(name[1:4]), int(name[5:8])
        store.write_tile("sci", r * ty, c * tx, np.zeros((ty, tx), np.float32))
    s3.fs.rm_file(p1["i2d"].path)
    s3.fs.invalidate_cache()

    p2 = Image3Pipeline.call(
        f"s3://{BUCKET}/sim/asn.json", out, steps=steps, client=client, progress=False,
        storage_options=s3.options,
    )
    s3.fs.invalidate_cache()
    after = {
        e: s3.fs.info(e)["ETag"] + str(s3.fs.info(e)["LastModified"])
        for e in sorted(s3.fs.ls(manifest, detail=False, refresh=True))
    }
    assert sorted(after) == sorted(before)
    recomputed = {e for e in after if after[e] != before[e]}
    assert recomputed == {missing, stale}
    got = _arrays(p2["i2d"], s3.fs)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    assert not s3.fs.exists(f"{BUCKET}/resume/miri_dither_work")


def test_a_second_run_on_the_same_s3_product_is_refused(s3, client):
    from image3_dask.pipeline.image3 import Image3Pipeline, OutputLockedError

    s3.fs.pipe_file(f"{BUCKET}/locked/.miri_dither.image3-dask.lock", b"otherhost 4242 miri_dither")
    with pytest.raises(OutputLockedError, match="another run .otherhost 4242. is writing product"):
        Image3Pipeline.call(
            f"s3://{BUCKET}/sim/asn.json", f"s3://{BUCKET}/locked", steps=SKIP_FOR_SPEED,
            progress=False, client=client, storage_options=s3.options,
        )
    assert s3.fs.cat_file(f"{BUCKET}/locked/.miri_dither.image3-dask.lock") == (
        b"otherhost 4242 miri_dither"
    )


def test_lock_objects_are_created_by_a_conditional_write(s3):
    from image3_dask.io.storage import create_exclusive

    path = location(f"s3://{BUCKET}/cond/.x.lock", s3.options)
    mark = s3.mark()
    assert create_exclusive(path, "a 1 x") is True
    assert create_exclusive(path, "b 2 x") is False  # the server refused the second PUT
    assert s3.fs.cat_file(path.path) == b"a 1 x"
    puts = [r for r in s3.read_log()[mark:] if r["method"] == "PUT"]
    assert [r["status"] for r in puts] == ["200", "412"]


def test_an_interrupted_upload_leaves_nothing_under_the_final_key(s3, tmp_path, monkeypatch):
    import boto3

    from image3_dask.io import storage
    from image3_dask.io.atomic import atomic_output

    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * 2**20))
    dest = location(f"s3://{BUCKET}/up/product_i2d.fits", s3.options)

    real_open = open

    class Dies:
        def __init__(self, f):
            self.f, self.n = f, 0

        def read(self, n):
            self.n += 1
            if self.n == 3:  # two parts sent, then the process is interrupted
                raise KeyboardInterrupt
            return self.f.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(storage, "open", lambda p, m="r": Dies(real_open(p, m)), raising=False)
    with pytest.raises(KeyboardInterrupt):
        storage.upload(src, dest, part_size=5 * 2**20)
    monkeypatch.undo()
    assert not s3.fs.exists(dest.path)
    s3c = boto3.client(
        "s3", endpoint_url=s3.endpoint, aws_access_key_id="x", aws_secret_access_key="y",
        region_name="us-east-1",
    )
    assert not s3c.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    parts = [r for r in s3.read_log() if "partNumber" in r["query"] and r["method"] == "PUT"]
    assert parts  # a multipart upload had started

    # a product whose writing fails is never uploaded at all
    with pytest.raises(RuntimeError), atomic_output(dest) as tmp:
        tmp.write_bytes(b"SIMPLE  = half a file")
        raise RuntimeError("writer died")
    assert not s3.fs.exists(dest.path)


def _cli(*args, env_extra=None, drop=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in drop}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
        **(env_extra or {}),
    )
    return subprocess.run(
        [sys.executable, "-m", "image3_dask.cli", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


ASN = f"s3://{BUCKET}/sim/asn.json"


@pytest.mark.parametrize(
    ("out", "creds", "named", "message"),
    [
        ("s3://no-such-bucket/out", True, "s3://no-such-bucket/out", "bucket 'no-such-bucket' does not exist"),
        (f"s3://{BUCKET}/out2", False, ASN, "no credentials"),
    ],
)
def test_unusable_stores_are_one_clear_error(s3, out, creds, named, message):
    """The command line, credentials and endpoint from the AWS_* variables."""
    env = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    if creds:
        env.update(AWS_ACCESS_KEY_ID="AKIAIMAGE3", AWS_SECRET_ACCESS_KEY=SECRET)
    r = _cli("run", ASN, "--output-dir", out, env_extra=env)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert named in r.stderr and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert SECRET not in r.stderr + r.stdout


@pytest.mark.parametrize(
    ("inputs", "out", "named", "message"),
    [
        ("s3://no-such-bucket/asn.json", None, "s3://no-such-bucket/asn.json", "association file not found"),
        (ASN, "nosuchfs://x/out", "nosuchfs://x/out", "cannot use this storage"),
        (f"s3://{BUCKET}/sim/missing_asn.json", None, "missing_asn.json", "not found"),
        (ASN, "https://example.org/out", "https://example.org/out", "read only"),
    ],
)
def test_bad_urls_are_named(s3, tmp_path, inputs, out, named, message):
    from image3_dask.errors import InputError
    from image3_dask.pipeline.image3 import Image3Pipeline

    with pytest.raises(InputError) as err:
        Image3Pipeline().run(inputs, out or tmp_path, progress=False, storage_options=s3.options)
    assert named in str(err.value) and message in str(err.value)
    assert SECRET not in str(err.value)


def test_storage_options_json_is_checked_without_echoing_it():
    import argparse

    from image3_dask.cli.options import storage_options
    from image3_dask.errors import ConfigError

    with pytest.raises(ConfigError, match="--storage-options: not valid JSON") as err:
        storage_options(argparse.Namespace(storage_options='{"secret": "' + SECRET))
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError, match="a JSON object is expected"):
        storage_options(argparse.Namespace(storage_options='["x"]'))
    got = storage_options(argparse.Namespace(storage_options='{"anon": true}'))
    assert got == {"anon": True}


def test_remote_pixels_equal_local_ones_and_cost_one_request_per_array(s3):
    from image3_dask.io.exposures import read_pixels

    local = s3.sim.cal_paths[1]
    remote = location(f"s3://{BUCKET}/sim/{local.name}", s3.options)
    region = (slice(30, 70), slice(5, 100))
    arrays = ("data", "dq", "err", "var_rnoise")
    read_pixels(remote, arrays, region)  # the worker learns the file's layout once
    mark = s3.mark()
    got, ref = read_pixels(remote, arrays, region), read_pixels(local, arrays, region)
    for name in ("data", "dq", "err", "var_rnoise", "var_poisson"):
        a, b = getattr(got, name), getattr(ref, name)
        if b is None:
            assert a is None
            continue
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    gets = [r for r in s3.read_log()[mark:] if r["method"] == "GET"]
    assert len(gets) == len(arrays)
    assert sum(r["sent"] for r in gets) == len(arrays) * 40 * 128 * 4  # exactly the 40 rows


def test_https_style_inputs_are_read_only_urls(s3, client, resample_ref, tmp_path):
    """http(s):// inputs: the server's objects read as plain web resources, products local."""
    from image3_dask.pipeline.image3 import Image3Pipeline

    for key in s3.fs.find(f"{BUCKET}/sim"):
        s3.fs.chmod(key, acl="public-read")  # then the server answers anonymous GETs
    url = f"{s3.endpoint}/{BUCKET}/sim/asn.json"
    p = Image3Pipeline.call(url, tmp_path, steps=RESAMPLE_ONLY, client=client, progress=False)
    got = _arrays_local(p["i2d"])
    for name in resample_ref:
        np.testing.assert_array_equal(got[name], resample_ref[name], err_msg=name)


def test_a_submitted_job_reads_and_writes_s3(s3, client, resample_ref):
    """``submit``: the options travel in the job's task; its record (on S3 too) holds none."""
    import time

    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.service.status import get_job
    from image3_dask.service.submit import submit_job

    config = PipelineConfig()
    config.update(RESAMPLE_ONLY)
    rec = submit_job(
        client, ASN, f"s3://{BUCKET}/job", config, job_id="s3-job", storage_options=s3.options
    )
    assert rec["output_dir"] == f"s3://{BUCKET}/job" and rec["inputs"] == ASN
    t0 = time.monotonic()
    while (rec := get_job(client, "s3-job"))["state"] not in ("done", "failed"):
        assert time.monotonic() - t0 < 120, rec
        time.sleep(0.2)
    assert rec["state"] == "done", rec
    assert rec["products"]["i2d"] == f"s3://{BUCKET}/job/miri_dither_i2d.fits"
    got = _arrays(location(rec["products"]["i2d"], s3.options), s3.fs)
    for name in resample_ref:
        np.testing.assert_array_equal(got[name], resample_ref[name], err_msg=name)
    record = s3.fs.cat_file(f"{BUCKET}/job/.image3-dask-jobs/s3-job.json")
    assert json.loads(record)["state"] == "done"
    assert SECRET.encode() not in record and SECRET not in repr(get_job(client, "s3-job"))


def _break_tile(name: str | None) -> None:
    """On a worker: make resample's tile task fail for tile ``name`` (None: repair it)."""
    import image3_dask.graph.resample as resample

    real = resample.__dict__.setdefault("_real_resample_tile", resample.resample_tile)
    if name is None:
        resample.resample_tile = real
        return

    def broken(**kwargs):
        if kwargs["tile"].name == name:
            raise RuntimeError(f"worker lost while writing {name}")
        return real(**kwargs)

    resample.resample_tile = broken  # tasks name their function; workers look it up here


def test_a_run_that_failed_during_resample_resumes_on_s3(s3, client, resample_ref):
    from image3_dask.pipeline.image3 import Image3Pipeline

    out, manifest = f"s3://{BUCKET}/failed", f"{BUCKET}/failed/miri_dither_i2d.zarr.manifest/resample"
    client.run(_break_tile, "r001c001")
    try:
        with pytest.raises(Exception, match="r001c001"):
            Image3Pipeline.call(ASN, out, steps=RESAMPLE_ONLY, client=client, progress=False,
                                storage_options=s3.options)
    finally:
        client.run(_break_tile, None)
    s3.fs.invalidate_cache()
    done = {e: s3.fs.info(e)["ETag"] + str(s3.fs.info(e)["LastModified"])
            for e in s3.fs.ls(manifest, detail=False, refresh=True)}
    assert done and not any(e.endswith("r001c001.json") for e in done)
    assert not s3.fs.exists(f"{BUCKET}/failed/miri_dither_i2d.fits")
    assert s3.fs.exists(f"{BUCKET}/failed/miri_dither_work")  # kept for the rerun
    assert not s3.fs.exists(f"{BUCKET}/failed/.miri_dither.image3-dask.lock")  # released

    p = Image3Pipeline.call(ASN, out, steps=RESAMPLE_ONLY, client=client, progress=False,
                            storage_options=s3.options)
    s3.fs.invalidate_cache()
    after = {e: s3.fs.info(e)["ETag"] + str(s3.fs.info(e)["LastModified"])
             for e in s3.fs.ls(manifest, detail=False, refresh=True)}
    assert all(after[e] == done[e] for e in done)  # finished tiles reused, not rewritten
    assert any(e.endswith("r001c001.json") for e in after)
    got = _arrays(p["i2d"], s3.fs)
    for name in resample_ref:
        np.testing.assert_array_equal(got[name], resample_ref[name], err_msg=name)


def test_members_resolve_relative_to_the_association_and_keep_the_options_home(s3):
    from image3_dask.io.asn import load_association

    asn = {
        "asn_type": "image3", "asn_id": "a3001",
        "products": [{"name": "p", "members": [
            {"expname": "a_cal.fits", "exptype": "science"},
            {"expname": "../other/b_cal.fits", "exptype": "science"},
            {"expname": "s3://elsewhere/c_cal.fits", "exptype": "science"},
            {"expname": "https://example.org/d_cal.fits", "exptype": "science"},
        ]}],
    }
    s3.fs.pipe_file(f"{BUCKET}/asns/x/asn.json", json.dumps(asn).encode())
    got = load_association(f"s3://{BUCKET}/asns/x/asn.json", s3.options)
    assert [str(m) for m in got.members] == [
        f"s3://{BUCKET}/asns/x/a_cal.fits",
        f"s3://{BUCKET}/asns/other/b_cal.fits",
        "s3://elsewhere/c_cal.fits",
        "https://example.org/d_cal.fits",
    ]
    assert [bool(m.storage_options) for m in got.members] == [True, True, True, False]
    assert SECRET not in repr(got)


def test_locations_local_paths_stay_paths_and_urls_keep_their_options_private():
    import pickle

    from image3_dask.io.storage import StorageError

    assert location("file:///data/x/asn.json") == Path("/data/x/asn.json")
    assert location("rel/asn.json") == Path("rel/asn.json")
    p = location("s3://bucket/a/b/asn.json", {"secret": SECRET})
    assert isinstance(p, RemotePath) and p.storage_options == {"secret": SECRET}
    assert SECRET not in repr(p) and SECRET not in str(p) and SECRET not in f"{p}"
    assert p == location("s3://bucket/a/b/asn.json") and hash(p) == hash(RemotePath(str(p)))
    assert str(p.parent / "../c/x_cal.fits") == "s3://bucket/a/c/x_cal.fits"
    assert (p.name, p.stem, p.suffix) == ("asn.json", "asn", ".json")
    assert pickle.loads(pickle.dumps(p)).storage_options == {"secret": SECRET}  # for the workers
    with pytest.raises(StorageError, match="s3://: not a URL"):
        location("s3://")
