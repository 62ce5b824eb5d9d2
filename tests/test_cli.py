"""The image3-dask command as a user runs it: subcommands, parameters, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from image3_dask.cli import main

SKIP_ALL_BUT_RESAMPLE = [
    "--steps.tweakreg.skip=true",
    "--steps.skymatch.skip=true",
    "--steps.outlier_detection.skip=true",
    "--steps.source_catalog.skip=true",
]


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "image3_dask.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_config_writes_every_step(tmp_path):
    assert main(["config", "-o", str(tmp_path / "c.toml")]) == 0
    text = (tmp_path / "c.toml").read_text()
    for step in ("tweakreg", "skymatch", "outlier_detection", "resample", "source_catalog"):
        assert f"[steps.{step}]" in text


def test_asn_writes_relative_members(tmp_path, small_dither):
    out = tmp_path / "my_asn.json"
    assert (
        main(["asn", *map(str, small_dither.cal_paths), "--product-name", "prod", "-o", str(out)])
        == 0
    )
    asn = json.loads(out.read_text())
    assert asn["products"][0]["name"] == "prod" and len(asn["products"][0]["members"]) == 4


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "nothing_asn.json"], "association file not found"),
        (["run", "x.json", "--steps.resample.pixfrak=1"], "unknown parameter 'pixfrak'"),
        (["run", "x.json", "--steps.resample.kernel=cubic"], "not one of"),
    ],
)
def test_bad_input_is_one_message_and_exit_2(tmp_path, args, message):
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_corrupt_member_names_the_file(tmp_path, small_dither):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_dither.asn_path.parent, data)
    victim = sorted(data.glob("*_cal.fits"))[2]
    victim.write_bytes(b"SIMPLE  = garbage")
    proc = _cli(
        "run", data / "asn.json", "-o", tmp_path / "out", "--workers", "1", *SKIP_ALL_BUT_RESAMPLE
    )
    assert proc.returncode == 2, proc.stderr
    assert victim.name in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_mixed_filters_are_refused(tmp_path, small_dither):
    import shutil

    from stdatamodels.jwst import datamodels

    data = tmp_path / "data"
    shutil.copytree(small_dither.asn_path.parent, data)
    victim = sorted(data.glob("*_cal.fits"))[1]
    with datamodels.open(victim) as m:
        m.meta.instrument.filter = "F1500W"
        m.save(victim)
    proc = _cli("run", data / "asn.json", "-o", tmp_path / "out", *SKIP_ALL_BUT_RESAMPLE)
    assert proc.returncode == 2
    assert "filter is F1500W" in proc.stderr and victim.name in proc.stderr


def test_run_resample_only_end_to_end(tmp_path, small_dither):
    proc = _cli(
        "run",
        small_dither.asn_path,
        "-o",
        tmp_path,
        "--workers",
        "2",
        *SKIP_ALL_BUT_RESAMPLE,
        "--steps.resample.pixfrac=0.9",
        "--report",
        tmp_path / "report.html",
    )
    assert proc.returncode == 0, proc.stderr
    assert "i2d:" in proc.stdout and "Dask dashboard: http://127.0.0.1" in proc.stderr
    assert (tmp_path / "report.html").stat().st_size > 1000
    from stdatamodels.jwst import datamodels

    with datamodels.open(next(tmp_path.glob("*_i2d.fits"))) as m:
        assert m.meta.resample.pixfrac == 0.9
    assert not list(tmp_path.glob("*_work"))  # intermediates removed after success
