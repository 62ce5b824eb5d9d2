"""Careless and hostile associations (issue 13, items 1-3): names that are paths, members that clash.

Product names and association ids become parts of output file names, so they must be plain
names; two members with the same file name in different folders would share their per-exposure
products and task keys. Every entry point (associations, file lists, the Python API, the CLI,
service submission) refuses them with one message naming the association and the bad value,
before a cluster starts or anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image3_dask.errors import InputError
from image3_dask.io.asn import (
    load_association,
    make_association,
    resolve_inputs,
    write_association,
)

BAD_NAMES = [
    "x/../../../escape",
    "../escaped",
    "..",
    ".",
    "sub/x",
    "/tmp/absolute",
    "back\\slash",
    "nul\x00byte",
    "new\nline",
    "",
    ".hidden",
    " padded ",
    "x" * 201,
]
GOOD_NAMES = ["a3001", "o001", "jw01234-o001_t001_miri_f770w", "my.product+v2", "mosaïque"]


def _asn(tmp_path: Path, name="prod", asn_id="a3001", members=("a_cal.fits", "b_cal.fits")) -> Path:
    raw = make_association(list(members), "prod")
    raw["products"][0]["name"] = name
    raw["asn_id"] = asn_id
    return write_association(raw, tmp_path / "x_asn.json")


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_asn_id_with_path_parts_is_refused(tmp_path, bad):
    path = _asn(tmp_path, asn_id=bad)
    with pytest.raises(InputError, match="asn_id") as err:
        load_association(path)
    assert str(path) in str(err.value) and repr(bad) in str(err.value)
    assert "plain name" in str(err.value)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_product_name_with_path_parts_is_refused(tmp_path, bad):
    path = _asn(tmp_path, name=bad)
    with pytest.raises(InputError, match="product name") as err:
        load_association(path)
    assert str(path) in str(err.value) and repr(bad) in str(err.value)


@pytest.mark.parametrize("bad", [["x"], {"a": 1}, True, 1.5])
def test_names_that_are_not_strings_are_refused(tmp_path, bad):
    with pytest.raises(InputError, match="not a string"):
        load_association(_asn(tmp_path, name=bad))
    with pytest.raises(InputError, match="not a string"):
        load_association(_asn(tmp_path, asn_id=bad))


@pytest.mark.parametrize("good", GOOD_NAMES)
def test_plain_names_are_accepted(tmp_path, good):
    from image3_dask.io.asn import check_name

    asn = load_association(_asn(tmp_path, name=good, asn_id=good))
    assert asn.product_name == good and asn.asn_id == good
    assert check_name(good, "product name") == good


def test_missing_names_keep_their_defaults(tmp_path):
    raw = make_association(["a_cal.fits"], "p")
    del raw["products"][0]["name"]
    del raw["asn_id"]
    asn = load_association(write_association(raw, tmp_path / "field_asn.json"))
    assert asn.product_name == "field" and asn.asn_id == "a3001"
    raw["asn_id"] = 7  # a number is a name
    assert load_association(write_association(raw, tmp_path / "n_asn.json")).asn_id == "7"


@pytest.mark.parametrize("bad", ["../x", "/abs/x", "sub/x", "", ".."])
def test_product_name_override_is_checked_for_associations_and_files(tmp_path, bad):
    path = _asn(tmp_path)
    with pytest.raises(InputError, match="product name") as err:
        resolve_inputs(path, product_name=bad)
    assert str(path) in str(err.value) and repr(bad) in str(err.value)
    with pytest.raises(InputError, match="product name"):
        resolve_inputs([tmp_path / "a_cal.fits"], product_name=bad)
    with pytest.raises(InputError, match="product name"):
        make_association(["a_cal.fits"], bad)
    with pytest.raises(InputError, match="asn_id"):
        make_association(["a_cal.fits"], "p", asn_id=bad)


def test_same_file_name_in_two_folders_is_refused_naming_both(tmp_path):
    path = _asn(tmp_path, members=("one/jw_1_cal.fits", "two/jw_1_cal.fits", "jw_2_cal.fits"))
    with pytest.raises(InputError, match="same exposure name") as err:
        load_association(path)
    msg = str(err.value)
    assert str(path) in msg
    assert str(tmp_path / "one" / "jw_1_cal.fits") in msg
    assert str(tmp_path / "two" / "jw_1_cal.fits") in msg
    # the crf names are made from the exposure name: jw_1_cal.fits and jw_1_crf.fits clash too
    path = _asn(tmp_path, members=("one/jw_1_cal.fits", "two/jw_1_crf.fits"))
    with pytest.raises(InputError, match="same exposure name"):
        load_association(path)


def test_same_file_name_in_two_folders_is_refused_for_file_lists(tmp_path):
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "jw_1_cal.fits").write_bytes(b"")
    with pytest.raises(InputError, match="same exposure name") as err:
        resolve_inputs(str(tmp_path / "*" / "jw_1_cal.fits"), product_name="p")
    assert str(tmp_path / "one" / "jw_1_cal.fits") in str(err.value)
    assert str(tmp_path / "two" / "jw_1_cal.fits") in str(err.value)


def test_same_file_listed_twice_is_left_to_the_exposure_check(tmp_path):
    # read_exposures reports "listed twice" with both member numbers; not a name clash
    asn = load_association(_asn(tmp_path, members=("jw_1_cal.fits", "./jw_1_cal.fits")))
    assert len(asn.members) == 2


def _hostile_copy(small_dither, tmp_path: Path, **changes) -> Path:
    data = tmp_path / "data"
    shutil.copytree(small_dither.asn_path.parent, data)
    asn_path = data / small_dither.asn_path.name
    raw = json.loads(asn_path.read_text())
    if "name" in changes:
        raw["products"][0]["name"] = changes["name"]
    if "asn_id" in changes:
        raw["asn_id"] = changes["asn_id"]
    if changes.get("clash"):
        members = raw["products"][0]["members"]
        first = data / members[0]["expname"]
        (data / "copy").mkdir()
        shutil.copy(first, data / "copy" / first.name)
        members.append({"expname": f"copy/{first.name}", "exptype": "science"})
    asn_path.write_text(json.dumps(raw))
    return asn_path


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"asn_id": "x/../../../escape"}, "asn_id"),
        ({"name": "../escaped"}, "product name"),
        ({"name": "/tmp/image3_dask_escaped_abs"}, "product name"),
        ({"name": "sub/x"}, "product name"),
        ({"clash": True}, "same exposure name"),
    ],
)
def test_python_api_refuses_before_a_cluster_starts(
    small_dither, tmp_path, monkeypatch, changes, message
):
    import image3_dask.pipeline.image3 as image3
    from image3_dask.pipeline.image3 import Image3Pipeline

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(image3, "connect", no_cluster)
    asn_path = _hostile_copy(small_dither, tmp_path, **changes)
    before = _tree(tmp_path)
    with pytest.raises(InputError, match=message) as err:
        Image3Pipeline.call(asn_path, output_dir=tmp_path / "out", progress=False)
    assert str(asn_path) in str(err.value)
    assert _tree(tmp_path) == before and not Path("/tmp/image3_dask_escaped_abs_i2d.fits").exists()


def test_python_api_product_name_argument_is_checked(small_dither, tmp_path, monkeypatch):
    import image3_dask.pipeline.image3 as image3
    from image3_dask.pipeline.image3 import Image3Pipeline

    monkeypatch.setattr(image3, "connect", lambda *a, **k: pytest.fail("a cluster was started"))
    with pytest.raises(InputError, match="'../x'"):
        Image3Pipeline().run(
            small_dither.asn_path, output_dir=tmp_path / "out", product_name="../x", progress=False
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "x_i2d.fits").exists()


def test_service_submit_refuses_before_touching_the_cluster(small_dither, tmp_path):
    from image3_dask.service.submit import submit_job

    class NoClient:
        def __getattr__(self, name):
            raise AssertionError(f"the scheduler was asked ({name})")

    asn_path = _hostile_copy(small_dither, tmp_path, name="../escaped")
    with pytest.raises(InputError, match="product name"):
        submit_job(NoClient(), asn_path, tmp_path / "out")
    with pytest.raises(InputError, match="product name"):
        submit_job(NoClient(), small_dither.asn_path, tmp_path / "out", product_name="a/b")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped_i2d.fits").exists()


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "image3_dask.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "changes,extra,message",
    [
        ({"asn_id": "x/../../../escape"}, [], "asn_id"),
        ({"name": "../escaped"}, [], "product name"),
        ({}, ["--product-name", "../x"], "product name"),
        ({"clash": True}, [], "same exposure name"),
    ],
)
def test_cli_refuses_with_one_line_and_writes_nothing(
    small_dither, tmp_path, changes, extra, message
):
    asn_path = _hostile_copy(small_dither, tmp_path, **changes)
    work = tmp_path / "work"
    work.mkdir()
    before = _tree(tmp_path)
    res = _cli("run", str(asn_path), "-o", str(work / "out"), *extra, cwd=work)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and str(asn_path) in lines[0], res.stderr
    assert "Traceback" not in res.stderr and "dashboard" not in res.stderr.lower()
    assert _tree(tmp_path) == before
