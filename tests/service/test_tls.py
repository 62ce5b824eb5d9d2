"""A tls:// cluster on loopback with certificates made by the test (``image3-dask certs``)."""

from __future__ import annotations

import re
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


def i2d_arrays(path) -> dict:
    from astropy.io import fits

    with fits.open(path) as hdul:
        return {h.name: h.data.copy() for h in hdul if h.is_image and h.data is not None}


def handshake_failures(pc) -> list[str]:
    """The scheduler's log lines about failed TLS handshakes."""
    text = (pc.folder / "scheduler.log").read_text(errors="replace")
    return [ln for ln in text.splitlines() if "TLS handshake failed" in ln]


def new_handshake_failures(pc, before: int, timeout: float = 10.0) -> list[str]:
    """Handshake failures the scheduler logged after the first ``before`` (waits for one)."""
    import time

    t0 = time.monotonic()
    while len(lines := handshake_failures(pc)) <= before and time.monotonic() - t0 < timeout:
        time.sleep(0.1)
    return lines[before:]


def test_run_on_a_tls_cluster(tmp_path):
    """A run over TLS gives the same i2d as a plain local run; wrong certificates are refused
    by the TLS handshake (not by some other failure), and nothing is written."""
    import numpy as np

    from image3_dask.service.devcluster import ProcessCluster
    from image3_dask.simulate import simulate

    r = cli("certs", "--out", str(tmp_path / "certs"))
    assert r.returncode == 0, r.stderr
    certs = {k: tmp_path / "certs" / f"{k}.pem" for k in ("ca", "cert", "key")}
    assert (certs["key"].stat().st_mode & 0o777) == 0o600
    tls = ["--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["cert"]),
           "--tls-key", str(certs["key"])]
    sim = simulate(instrument="miri", n=2, out_dir=tmp_path / "sim", seed=4, shape=(128, 128))
    # the reference: the same run on a plain local cluster (no scheduler, no TLS)
    plain = tmp_path / "plain"
    r = cli("run", str(sim.asn_path), "-o", str(plain), *SKIP)
    assert r.returncode == 0, r.stderr
    with ProcessCluster(tmp_path / "cluster", n_workers=1, tls=certs) as pc:
        assert pc.address.startswith("tls://127.0.0.1:")
        out = tmp_path / "out"
        r = cli("run", str(sim.asn_path), "--scheduler", pc.address, *tls, "-o", str(out), *SKIP)
        assert r.returncode == 0, r.stderr
        ours, ref = i2d_arrays(out / "miri_dither_i2d.fits"), i2d_arrays(
            plain / "miri_dither_i2d.fits")
        assert sorted(ours) == sorted(ref) and {"SCI", "WHT", "ERR", "CON"} <= set(ref)
        for name in ref:
            np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)
        assert np.isfinite(ref["SCI"]).mean() > 0.5
        assert not handshake_failures(pc)
        # without certificates, or with a plain tcp:// address: one clear message, nothing run
        bad = tmp_path / "bad"
        msg = one_line_error(cli("run", str(sim.asn_path), "--scheduler", pc.address,
                                 "-o", str(bad), *SKIP))
        assert "TLS address" in msg and "--tls-ca-file" in msg
        tcp = pc.address.replace("tls://", "tcp://")
        msg = one_line_error(cli("run", str(sim.asn_path), "--scheduler", tcp, *tls,
                                 "-o", str(bad), *SKIP))
        assert "not a tls:// address" in msg
        # certificates from another CA: the client does not trust the scheduler's certificate
        cli("certs", "--out", str(tmp_path / "other"))
        other = {k: tmp_path / "other" / f"{k}.pem" for k in ("ca", "cert", "key")}
        msg = one_line_error(cli("run", str(sim.asn_path), "--scheduler", pc.address,
                                 "--tls-ca-file", str(other["ca"]),
                                 "--tls-cert", str(other["cert"]),
                                 "--tls-key", str(other["key"]),
                                 "--timeout", "3", "-o", str(bad), *SKIP))
        assert f"cannot reach the Dask scheduler at {pc.address}" in msg
        assert "TLS certificate does not match" in msg, msg  # distributed's SSL verify error
        # the refusal is the client's (it does not trust the scheduler's certificate); the
        # scheduler's log line about the client's "unknown CA" alert is checked when present
        failed = new_handshake_failures(pc, 0, timeout=5.0)
        assert all("UNKNOWN_CA" in ln for ln in failed), failed
        n_failed = len(handshake_failures(pc))
        # the right CA but a client certificate it did not sign: the scheduler refuses it
        msg = one_line_error(cli("run", str(sim.asn_path), "--scheduler", pc.address,
                                 "--tls-ca-file", str(certs["ca"]),
                                 "--tls-cert", str(other["cert"]),
                                 "--tls-key", str(other["key"]),
                                 "--timeout", "3", "-o", str(bad), *SKIP))
        assert f"cannot reach the Dask scheduler at {pc.address}" in msg
        # the client sees the scheduler's alert ("SSLError: ... unknown ca") or, when the
        # scheduler has already closed the connection, "SSLEOFError"; the scheduler's log says why
        assert re.search(r"SSL\w*Error", msg), msg
        # the scheduler's log line about it, when it has one (the full suite in CI ran with no
        # handshake lines in the scheduler's log at all, for either case; run alone they come)
        failed = new_handshake_failures(pc, n_failed, timeout=5.0)
        assert all("CERTIFICATE_VERIFY_FAILED" in ln for ln in failed), failed
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
