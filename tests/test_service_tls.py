"""A tls:// cluster on loopback with certificates made by the test (``image3-dask certs``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SKIP = [
    f"--steps.{s}.skip=true" for s in ("tweakreg", "skymatch", "outlier_detection", "source_catalog")
]
CLI = [sys.executable, "-m", "image3_dask.cli"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("image3-dask: error: "), r.stderr
    return lines[0]


def test_run_on_a_tls_cluster(tmp_path):
    from stdatamodels.jwst import datamodels

    from image3_dask.service.devcluster import ProcessCluster
    from image3_dask.simulate import simulate

    r = cli("certs", "--out", str(tmp_path / "certs"))
    assert r.returncode == 0, r.stderr
    certs = {k: tmp_path / "certs" / f"{k}.pem" for k in ("ca", "cert", "key")}
    assert (certs["key"].stat().st_mode & 0o777) == 0o600
    tls = ["--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["cert"]),
           "--tls-key", str(certs["key"])]
    sim = simulate(instrument="miri", n=2, out_dir=tmp_path / "sim", seed=4, shape=(128, 128))
    with ProcessCluster(tmp_path / "cluster", n_workers=1, tls=certs) as pc:
        assert pc.address.startswith("tls://127.0.0.1:")
        out = tmp_path / "out"
        r = cli("run", str(sim.asn_path), "--scheduler", pc.address, *tls, "-o", str(out), *SKIP)
        assert r.returncode == 0, r.stderr
        with datamodels.open(out / "miri_dither_i2d.fits") as m:
            assert m.data.ndim == 2
        # without certificates, or with a plain tcp:// address: one clear message, nothing run
        bad = tmp_path / "bad"
        msg = one_line_error(cli("run", str(sim.asn_path), "--scheduler", pc.address,
                                 "-o", str(bad), *SKIP))
        assert "TLS address" in msg and "--tls-ca-file" in msg
        tcp = pc.address.replace("tls://", "tcp://")
        msg = one_line_error(cli("run", str(sim.asn_path), "--scheduler", tcp, *tls,
                                 "-o", str(bad), *SKIP))
        assert "not a tls:// address" in msg
        # certificates from another CA are rejected by the scheduler
        cli("certs", "--out", str(tmp_path / "other"))
        other = ["--tls-ca-file", str(tmp_path / "other/ca.pem"),
                 "--tls-cert", str(tmp_path / "other/cert.pem"),
                 "--tls-key", str(tmp_path / "other/key.pem")]
        msg = one_line_error(cli("run", str(sim.asn_path), "--scheduler", pc.address, *other,
                                 "--timeout", "3", "-o", str(bad), *SKIP))
        assert "cannot reach the Dask scheduler" in msg
        assert not bad.exists()


def test_tls_options_are_checked(tmp_path):
    msg = one_line_error(cli("status", "--scheduler", "tls://127.0.0.1:1",
                             "--tls-ca-file", str(tmp_path / "nope.pem"),
                             "--tls-cert", str(tmp_path / "nope.pem")))
    assert "nope.pem: TLS CA file not found" in msg
    (tmp_path / "x.pem").write_text("not a certificate")
    msg = one_line_error(cli("status", "--scheduler", "tls://127.0.0.1:1",
                             "--tls-ca-file", str(tmp_path / "x.pem"),
                             "--tls-cert", str(tmp_path / "x.pem")))
    assert "not a PEM file" in msg
    msg = one_line_error(cli("status", "--scheduler", "tls://127.0.0.1:1",
                             "--tls-cert", str(tmp_path / "x.pem")))
    assert "--tls-ca-file" in msg
