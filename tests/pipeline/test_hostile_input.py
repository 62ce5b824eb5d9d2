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

from image3_dask.errors import Image3Error, InputError
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


# --- Items 7-9, 12, 15: refused early, in one line, with nothing written -----------------------


@pytest.fixture(scope="module")
def sim256(tmp_path_factory):
    """``image3-dask simulate --shape 256 256``: a 4-exposure MIRI dither."""
    from image3_dask.simulate import simulate

    out = tmp_path_factory.mktemp("sim256")
    return simulate(instrument="miri", n=4, out_dir=out, seed=0, pattern="dither", shape=(256, 256))


def _copy_sim(sim, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(sim.asn_path.parent, data)
    return data / sim.asn_path.name


def _one_line_refusal(res: subprocess.CompletedProcess, *needles: str) -> str:
    """The single stderr line of a refused run (exit 2, no traceback, no cluster started)."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr and "cluster" not in res.stderr.lower(), res.stderr
    for needle in needles:
        assert needle in lines[0], res.stderr
    return lines[0]


@pytest.mark.parametrize(
    "option,needle",
    [
        (["--memory-limit", "abc"], "--memory-limit abc"),
        (["--memory-limit=-1GB"], "--memory-limit -1GB"),
        (["--memory-limit", "1.5"], "--memory-limit 1.5"),  # Dask reads 1.5 as 1 byte
        (["--steps.resample.pixel_scale=0"], "steps.resample.pixel_scale"),
        (["--steps.resample.pixel_scale=nan"], "steps.resample.pixel_scale"),
        (["--steps.resample.pixel_scale=-0.1"], "steps.resample.pixel_scale"),
        (["--steps.resample.output_shape=0,0"], "steps.resample.output_shape"),
        (["--steps.resample.output_shape=-5,10"], "steps.resample.output_shape"),
        (["--steps.resample.pixel_scale_ratio=inf"], "steps.resample.pixel_scale_ratio"),
        (["--steps.resample.crval=53.1,95"], "steps.resample.crval"),
        (["--steps.resample.pixmap_order=2"], "steps.resample.pixmap_order"),
        (["--steps.tweakreg.kernel_fwhm=0"], "steps.tweakreg.kernel_fwhm"),
        (["--steps.tweakreg.searchrad=-1"], "steps.tweakreg.searchrad"),
        (["--steps.skymatch.binwidth=0"], "steps.skymatch.binwidth"),
        (["--steps.outlier_detection.maskpt=1.5"], "steps.outlier_detection.maskpt"),
        (["--steps.outlier_detection.snr=5 -1"], "steps.outlier_detection.snr"),
        (["--steps.outlier_detection.fillval=abc"], "steps.outlier_detection.fillval"),
        (["--steps.source_catalog.npixels=0"], "steps.source_catalog.npixels"),
        (["--steps.source_catalog.aperture_ee1=60"], "aperture_ee1"),  # must increase
        (["--steps.source_catalog.contrast=2"], "steps.source_catalog.contrast"),
    ],
)
def test_cli_refuses_bad_parameters_before_the_cluster(sim256, tmp_path, option, needle):
    asn_path = _copy_sim(sim256, tmp_path)
    before = _tree(tmp_path)
    res = _cli("run", str(asn_path), "-o", str(tmp_path / "out"), *option, cwd=tmp_path)
    _one_line_refusal(res, needle)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("expname", [123, None, "", ["a_cal.fits"]])
def test_cli_refuses_a_member_whose_expname_is_not_a_file_name(sim256, tmp_path, expname):
    asn_path = _copy_sim(sim256, tmp_path)
    raw = json.loads(asn_path.read_text())
    raw["products"][0]["members"][1]["expname"] = expname
    asn_path.write_text(json.dumps(raw))
    before = _tree(tmp_path)
    res = _cli("run", str(asn_path), "-o", str(tmp_path / "out"), cwd=tmp_path)
    _one_line_refusal(res, str(asn_path), "member 1", repr(expname))
    assert _tree(tmp_path) == before


def test_every_range_names_a_numeric_parameter_and_the_defaults_pass():
    from image3_dask.pipeline.config import STEP_PARAMS, PipelineConfig
    from image3_dask.pipeline.step_specs import ORDERED, RANGES, TEXT_FORMATS

    numeric = ("integer", "float", "int_list", "float_list")
    for step, ranges in RANGES.items():
        for name in ranges:
            assert STEP_PARAMS[step][name].kind in numeric, (step, name)
    for step, forms in TEXT_FORMATS.items():
        for name in forms:
            assert STEP_PARAMS[step][name].kind == "string", (step, name)
    for step, rules in ORDERED.items():
        for rule in rules:
            for name in rule.split()[::2]:
                assert name in STEP_PARAMS[step], (step, name)
    config = PipelineConfig()
    config.update(config.to_dict())  # every default is checked as a given value
    config.check()


def test_python_api_refuses_bad_parameters(small_dither, tmp_path, monkeypatch):
    import image3_dask.pipeline.image3 as image3
    from image3_dask.errors import ConfigError
    from image3_dask.pipeline.config import PipelineConfig
    from image3_dask.pipeline.image3 import Image3Pipeline

    monkeypatch.setattr(image3, "connect", lambda *a, **k: pytest.fail("a cluster was started"))
    with pytest.raises(ConfigError, match="steps.resample.pixel_scale"):
        Image3Pipeline.call(
            small_dither.asn_path, output_dir=tmp_path, steps={"resample": {"pixel_scale": 0}}
        )
    config = PipelineConfig()
    config["source_catalog"]["aperture_ee3"] = 40  # set behind update()'s back
    with pytest.raises(ConfigError, match="aperture_ee2 < aperture_ee3|aperture_ee3"):
        Image3Pipeline(config).run(small_dither.asn_path, tmp_path, progress=False)
    with pytest.raises(Image3Error, match="--memory-limit"):
        Image3Pipeline().run(small_dither.asn_path, tmp_path, memory_limit="-3", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_too_large_grid_before_any_step(sim256, tmp_path):
    asn_path = _copy_sim(sim256, tmp_path)
    before = _tree(tmp_path)
    res = _cli(
        "run", str(asn_path), "-o", str(tmp_path / "out"),
        "--steps.resample.max_output_pixels=1000", cwd=tmp_path,
    )  # fmt: skip
    line = _one_line_refusal(res, "steps.resample.max_output_pixels=1000")
    assert "max_pixels=" not in line.replace("max_output_pixels=", "")
    assert _tree(tmp_path) == before


def test_early_grid_estimate_is_close_to_the_grid_and_the_late_check_names_the_parameter(
    sim256,
):
    from image3_dask.algorithms.grid import GridTooLargeError
    from image3_dask.graph.plan import output_grid
    from image3_dask.io.exposures import read_exposures
    from image3_dask.io.precheck import precheck_grid, precheck_members
    from image3_dask.pipeline.config import PipelineConfig

    members = list(sim256.cal_paths)
    params = dict(PipelineConfig()["resample"])
    estimate = precheck_grid(precheck_members(members), params)
    grid = output_grid(read_exposures(members), params)
    assert estimate is not None
    assert abs(estimate[0] - grid.shape[0]) <= 3 and abs(estimate[1] - grid.shape[1]) <= 3
    params["max_output_pixels"] = 1000
    with pytest.raises(GridTooLargeError, match=r"steps\.resample\.max_output_pixels=1000"):
        output_grid(read_exposures(members), params)  # the check after alignment


def test_cli_refuses_an_output_folder_that_is_a_file(sim256, tmp_path):
    asn_path = _copy_sim(sim256, tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    before = _tree(tmp_path)
    for out in ("afile", "afile/sub"):
        res = _cli("run", str(asn_path), "-o", out, cwd=tmp_path)
        _one_line_refusal(res, "is not a directory", out)
    assert _tree(tmp_path) == before and (tmp_path / "afile").read_text() == "not a folder"


def _bad_member(asn_path: Path, kind: str) -> str:
    """Make one member of the association duplicate, truncated or of another filter."""
    from astropy.io import fits

    raw = json.loads(asn_path.read_text())
    members = raw["products"][0]["members"]
    src = asn_path.parent / members[1]["expname"]
    if kind == "duplicate":
        members.append(dict(members[0]))
        needle = "listed twice"
    elif kind == "truncated":
        bad = asn_path.parent / "cut_cal.fits"
        bad.write_bytes(src.read_bytes()[:1_000_000])
        members[1]["expname"] = bad.name
        needle = "truncated"
    else:
        bad = asn_path.parent / "other_cal.fits"
        shutil.copy(src, bad)
        with fits.open(bad, mode="update") as hdul:
            hdul[0].header["FILTER"] = "F1000W"
        members[1]["expname"] = bad.name
        needle = "filter is F1000W"
    asn_path.write_text(json.dumps(raw))
    return needle


@pytest.mark.parametrize("kind", ["duplicate", "truncated", "mixed-filter"])
def test_bad_members_are_refused_before_the_cluster_starts(sim256, tmp_path, monkeypatch, kind):
    import image3_dask.pipeline.image3 as image3
    from image3_dask.pipeline.image3 import Image3Pipeline

    asn_path = _copy_sim(sim256, tmp_path)
    needle = _bad_member(asn_path, kind)
    monkeypatch.setattr(image3, "connect", lambda *a, **k: pytest.fail("a cluster was started"))
    before = _tree(tmp_path)
    with pytest.raises(InputError, match=needle):
        Image3Pipeline().run(asn_path, tmp_path / "out", progress=False)
    assert _tree(tmp_path) == before


def test_cli_refuses_a_truncated_member_in_one_line(sim256, tmp_path):
    asn_path = _copy_sim(sim256, tmp_path)
    _bad_member(asn_path, "truncated")
    res = _cli("run", str(asn_path), "-o", str(tmp_path / "out"), cwd=tmp_path)
    _one_line_refusal(res, "cut_cal.fits", "truncated")
    assert not (tmp_path / "out").exists()


def _certs(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "image3_dask.cli", "certs", *args],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_certs_relative_folder_replaces_an_open_key_with_a_0600_one(tmp_path):
    (tmp_path / "rel").mkdir()
    key = tmp_path / "rel" / "key.pem"
    key.write_text("old key\n")
    key.chmod(0o644)
    res = _certs(tmp_path, "--out", "rel")
    assert res.returncode == 0, res.stderr
    assert key.read_bytes().startswith(b"-----BEGIN") and key.stat().st_mode & 0o777 == 0o600
    for name in ("ca.pem", "cert.pem"):
        assert (tmp_path / "rel" / name).read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == ["ca.pem", "cert.pem", "key.pem"]


def test_certs_failure_leaves_the_existing_key_untouched(tmp_path):
    # no cryptography package and an openssl that fails: nothing may be truncated
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "openssl").write_text("#!/bin/sh\necho 'openssl: broken on purpose' >&2\nexit 1\n")
    (fake / "openssl").chmod(0o755)
    (tmp_path / "certs").mkdir()
    key = tmp_path / "certs" / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nworking\n")
    key.chmod(0o600)
    env = {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    code = (
        "import sys, builtins; real = builtins.__import__\n"
        "def no_crypto(name, *a, **k):\n"
        "    if name.startswith('cryptography'): raise ImportError(name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = no_crypto\n"
        "from image3_dask.cli import main; sys.exit(main(['certs', '--out', 'certs']))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2 and "openssl" in res.stderr and "Traceback" not in res.stderr
    assert key.read_text() == "-----BEGIN PRIVATE KEY-----\nworking\n"
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["key.pem"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_cert_without_its_key_names_the_missing_file(tmp_path):
    assert _certs(tmp_path, "--out", "c").returncode == 0
    other = tmp_path / "other"
    assert _certs(tmp_path, "--out", str(other)).returncode == 0
    tls = ["--tls-ca-file", "c/ca.pem", "--tls-cert", "c/cert.pem"]
    res = _cli("status", "--scheduler", "tls://127.0.0.1:9", *tls, cwd=tmp_path)
    line = _one_line_refusal(res, "--tls-cert c/cert.pem", "--tls-key")
    assert "PEM lib" not in line
    res = _cli(
        "status", "--scheduler", "tls://127.0.0.1:9", *tls, "--tls-key", str(other / "key.pem"),
        cwd=tmp_path,
    )  # fmt: skip
    _one_line_refusal(res, "--tls-cert c/cert.pem", str(other / "key.pem"))


def test_lock_files_are_0644_whatever_the_umask(tmp_path):
    from image3_dask.pipeline.output_lock import OutputLock, lock_path

    old = os.umask(0)
    try:
        with OutputLock(tmp_path, "prod"):
            assert lock_path(tmp_path, "prod").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


# --- Item 10: Ctrl-C to the process group ---------------------------------------------------


def _children(pid: int) -> dict[int, str]:
    """Child processes of ``pid``: pid -> command line."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("when", ["scheduler starting", "workers starting", "steps running"])
def test_ctrl_c_to_the_process_group_is_quiet(sim256, tmp_path, when):
    import signal
    import threading
    import time

    asn_path = _copy_sim(sim256, tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "image3_dask.cli", "run", str(asn_path), "-o", str(out),
         "--workers", "2", "--no-mosaic-page"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a shell job
        # as from a terminal: a suite started in the background (`cmd &` without job control)
        # ignores SIGINT, and the child would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    workers: dict[int, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        workers.update({p: c for p, c in _children(proc.pid).items() if "dask_worker" in c})
        if when == "scheduler starting" and any("Starting a local Dask" in ln for ln in lines):
            break
        if when == "workers starting" and workers:
            break
        # the first step: on these small exposures the later ones end within a second
        if when == "steps running" and any("Step tweakreg running" in ln for ln in lines):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    t0 = time.monotonic()
    code = proc.wait(timeout=60)
    # worker programs inherit the run's stderr: EOF comes when none is left (an orphaned
    # worker would print its "Nanny failed to start" traceback some 30 s later)
    reader.join(timeout=120)
    eof_after = time.monotonic() - t0
    text = "".join(lines)
    assert code == 130, text  # the run's messages tell where the interrupt landed
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert [ln for ln in lines if ln.strip()][-1].strip() == "image3-dask: interrupted", text
    assert eof_after < 20, f"a process held the run's stderr for {eof_after:.0f} s"
    assert not [p for p in workers if _alive(p)], "worker programs outlived the run"
    assert not list(out.glob(".*.lock")) if out.exists() else True


def test_a_cluster_start_cancelled_after_its_workers_were_created_closes_cleanly():
    """Ctrl-C during the local cluster's start cancels Dask's worker-starting task after it
    created the workers and before it listed them: its close must still close them all."""
    import asyncio

    from distributed import Scheduler

    from image3_dask.pipeline import local_cluster as lc

    class SleepingWorker(lc.WorkerProcess):  # a cheap program in place of `dask worker`
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.command = [sys.executable, "-c", "import time; time.sleep(60)"]

    async def main():
        worker = {"cls": SleepingWorker, "options": {"memory_limit": None}}
        sched = {"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0, "dashboard": False}}
        cluster = lc.LocalProcessCluster(
            scheduler=sched, workers={0: worker, 1: worker}, worker=worker, asynchronous=True
        )
        await cluster._start()  # the scheduler
        starting = cluster._correct_state()
        while len(cluster._created) < 2:
            await asyncio.sleep(0)
        starting.cancel()  # what distributed's sync() does on KeyboardInterrupt
        created = list(cluster._created)
        assert not cluster.workers
        await cluster.close()  # was: AssertionError: Status.created (or running)
        return created

    created = asyncio.run(main())
    assert [w.status.name for w in created] == ["closed", "closed"]
    procs = [w.process for w in created if w.process is not None]
    assert all(p.returncode is not None for p in procs)  # no program left running


# --- Item 11: an exposure without a valid pixel -----------------------------------------------


def test_all_nan_exposure_is_named_once_and_the_run_succeeds(sim256, tmp_path):
    import numpy as np
    from astropy.io import fits

    asn_path = _copy_sim(sim256, tmp_path)
    raw = json.loads(asn_path.read_text())
    empty = asn_path.parent / raw["products"][0]["members"][2]["expname"]
    with fits.open(empty, mode="update") as hdul:
        hdul["SCI"].data[:] = np.nan
    res = _cli("run", str(asn_path), "-o", str(tmp_path / "out"), "--no-mosaic-page", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Error determining sky background" not in res.stderr
    said = [ln for ln in res.stderr.splitlines() if "no valid pixels" in ln]
    assert len(said) == 1 and empty.name.replace("_cal.fits", "") in said[0], res.stderr
    assert "Traceback" not in res.stderr
    with fits.open(tmp_path / "out" / f"{raw['products'][0]['name']}_i2d.fits") as hdul:
        assert np.isfinite(hdul["SCI"].data).any()


# --- Item 13: what listens where --------------------------------------------------------------


def _process_tree(pid: int) -> set[int]:
    tree, grew = {pid}, True
    while grew:
        grew = False
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) in tree:
                continue
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid in tree:
                tree.add(int(d.name))
                grew = True
    return tree


def _listening(pids: set[int]) -> list[str]:
    """The local addresses of the TCP sockets listening in ``pids`` (from ``ss``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_dev_cluster_and_local_cluster_listen_on_loopback_only(tmp_path):
    from image3_dask.service.devcluster import ProcessCluster

    with ProcessCluster(tmp_path / "dev", n_workers=1, memory_limit="1GB") as pc:
        pids = set().union(*(_process_tree(p.pid) for p in pc.procs))
        dev = _listening(pids)
    # the local cluster in a process of its own (this one may hold the tests' LocalCluster)
    code = (
        "import json, os, sys; sys.path.insert(0, sys.argv[1]); import test_hostile_input as t\n"
        "from image3_dask.pipeline.cluster import connect\n"
        "with connect(n_workers=1, memory_limit='1GB', dashboard_address='127.0.0.1:0'):\n"
        "    print(json.dumps(t._listening(t._process_tree(os.getpid()))))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    local = json.loads(res.stdout.strip().splitlines()[-1])
    for where, addresses in (("dev cluster", dev), ("local cluster", local)):
        assert len(addresses) >= 3, (where, addresses)  # scheduler, nanny, worker at least
        assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a in addresses), (where, addresses)


def test_readme_recipe_binds_to_loopback():
    text = (Path(__file__).parents[2] / "README.md").read_text()
    recipe = text.split("**A scheduler you start**", 1)[1].split("```", 2)[1]
    sched = [ln for ln in recipe.splitlines() if ln.startswith("dask scheduler")]
    worker = [ln for ln in recipe.splitlines() if ln.startswith("dask worker")]
    assert sched and worker
    for line in sched:
        assert "--host 127.0.0.1" in line and "--dashboard-address 127.0.0.1:8787" in line
    for line in worker:
        assert "--host 127.0.0.1" in line and "--dashboard-address 127.0.0.1:0" in line
