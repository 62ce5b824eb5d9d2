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
    assert main(["config", "-o", str(tmp_path), "--output", "c.toml"]) == 0
    text = (tmp_path / "c.toml").read_text()
    for step in ("tweakreg", "skymatch", "outlier_detection", "resample", "source_catalog"):
        assert f"[steps.{step}]" in text


def test_asn_writes_relative_members(tmp_path, small_dither):
    out = tmp_path / "my_asn.json"
    assert (
        main(
            [
                "asn",
                *map(str, small_dither.cal_paths),
                "--product-name",
                "prod",
                "--output",
                str(out),
            ]
        )
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


# --------------------------------------------------------------------------- dispatch
def test_every_subcommand_has_a_handler():
    from image3_dask.cli import COMMANDS, _build_parser

    sub = next(a for a in _build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


def test_step_overrides_only_with_commands_that_take_parameters(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--out", "x", "--steps.resample.pixfrac=0.5"])
    assert exc.value.code == 2
    assert "only go with `config`, `run`, `strun`, `submit`" in capsys.readouterr().err


@pytest.fixture
def captured_run(monkeypatch):
    """Replace Image3Pipeline.run: record the pipeline's config and the run's arguments."""
    from image3_dask.pipeline.image3 import Image3Pipeline

    calls = []

    def fake_run(self, inputs, output_dir=".", **kwargs):
        calls.append({"config": self.config, "inputs": inputs, "output_dir": output_dir, **kwargs})
        return {"i2d": "x_i2d.fits", "timings": {"resample": 1.0}}

    monkeypatch.setattr(Image3Pipeline, "run", fake_run)
    return calls


def test_run_hands_its_options_to_the_pipeline(captured_run, capsys):
    argv = [
        "run",
        "a.json",
        "-o",
        "out",
        "--workers",
        "2",
        "--memory-limit",
        "1GB",
        "--product-name",
        "p",
        "--keep-work",
        "--mosaic-page-port",
        "8123",
        "--steps.resample.pixfrac=0.5",
    ]
    assert main(argv) == 0
    (call,) = captured_run
    assert call["inputs"] == ["a.json"] and call["output_dir"] == "out"
    assert call["product_name"] == "p" and call["keep_work"] is True
    assert call["mosaic_page"] == 8123 and call["progress"] is True
    assert call["n_workers"] == 2 and call["memory_limit"] == "1GB"
    assert call["scheduler"] is None and call["security"] is None
    assert call["config"]["resample"].pixfrac == 0.5
    assert "i2d: x_i2d.fits" in capsys.readouterr().out


def test_run_defaults_and_no_mosaic_page(captured_run):
    assert main(["-q", "run", "a.json"]) == 0
    assert captured_run[0]["mosaic_page"] == 0  # a free port
    assert captured_run[0]["keep_work"] is False and captured_run[0]["progress"] is False
    assert main(["-q", "run", "a.json", "--no-mosaic-page"]) == 0
    assert captured_run[1]["mosaic_page"] is None


def test_simulate_writes_an_association(tmp_path, capsys):
    out = tmp_path / "sim"
    argv = ["simulate", "--n", "2", "--out", str(out), "--shape", "64", "64", "--seed", "2"]
    assert main(argv) == 0
    asn = json.loads((out / "asn.json").read_text())
    assert len(asn["products"][0]["members"]) == 2
    assert "exposures:   2 in" in capsys.readouterr().out


def test_certs_writes_the_ca_and_a_certificate(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path), "--host", "127.0.0.1", "--days", "2"]) == 0
    for name in ("ca.pem", "cert.pem", "key.pem"):
        assert (tmp_path / name).is_file()
    assert "ca.pem" in capsys.readouterr().out
    assert main(["certs", "--out", str(tmp_path / "x"), "--days", "0"]) == 2
    assert not (tmp_path / "x").exists()


def test_status_reads_the_job_records_of_an_output_folder(tmp_path, capsys):
    records = tmp_path / ".image3-dask-jobs"
    records.mkdir()
    rec = {
        "job": "j1",
        "state": "done",
        "product": "p",
        "output_dir": str(tmp_path),
        "steps": ["resample"],
        "steps_done": ["resample"],
    }
    (records / "j1.json").write_text(json.dumps(rec))
    assert main(["status", "--output-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"j1": rec}
    assert main(["status", "j1", "--output-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rec
    assert main(["status", "j2", "--output-dir", str(tmp_path)]) == 2
    assert "no record of job 'j2'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["cancel", "j1"], "`image3-dask cancel` needs the cluster"),
        (["submit", "a.json"], "`image3-dask submit` needs the cluster"),
        (["status", "j1"], "`image3-dask status` needs the cluster"),
        (["status", "--wait"], "--wait needs a JOB"),
        (["demo", "--scheduler-file", "s.json"], "runs on a local cluster"),
        (["run", "a.json", "--workers", "0"], "--workers 0: give at least 1"),
    ],
)
def test_commands_refuse_bad_options_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
