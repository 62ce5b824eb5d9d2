"""TLS for the scheduler, the workers and the clients (``tls://`` addresses).

Dask authenticates both ends of every connection with certificates signed by one certificate
authority (CA): the scheduler, each worker and each client present a certificate and key, and
trust the CA file. :func:`security_from_files` builds the :class:`distributed.Security` of the
``--tls-ca-file/--tls-cert/--tls-key`` options; :func:`make_certificates` writes a private CA and
one certificate for a small deployment or a test (``image3-dask certs``).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from pathlib import Path

from image3_dask.errors import ConfigError

__all__ = ["make_certificates", "security_from_files"]


def _readable(path: str | os.PathLike, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    try:
        with p.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the {what} ({exc.strerror})") from None
    if b"-----BEGIN" not in head:
        raise ConfigError(f"{p}: the {what} is not a PEM file")
    return str(p.resolve())


def _check_pair(crt: str, k: str | None, cert_arg, key_arg) -> None:
    """Load the certificate with its key as the TLS handshake will, naming what is wrong."""
    import ssl

    if k is None:
        with open(crt, "rb") as fh:
            has_key = b"PRIVATE KEY-----" in fh.read()
        if not has_key:
            raise ConfigError(
                f"--tls-cert {cert_arg} holds no private key and --tls-key is missing: give the "
                "certificate's key file with --tls-key (key.pem of `image3-dask certs`)"
            )
    try:
        ssl.create_default_context().load_cert_chain(crt, k)
    except ssl.SSLError as exc:
        what = f"--tls-key {key_arg}" if k else f"the key in --tls-cert {cert_arg}"
        raise ConfigError(
            f"--tls-cert {cert_arg}: cannot be used with {what} ({exc.reason or exc}); give the "
            "certificate and its own private key"
        ) from None
    except OSError as exc:
        raise ConfigError(f"--tls-cert {cert_arg}: cannot be read ({exc})") from None


def security_from_files(
    ca_file: str | os.PathLike | None = None,
    cert: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
):
    """The :class:`distributed.Security` of the ``--tls-*`` options, or ``None`` without them.

    Parameters
    ----------
    ca_file : path-like, optional
        PEM file of the certificate authority that signed the scheduler's and workers'
        certificates.
    cert : path-like, optional
        PEM certificate of this client (may hold the key too).
    key : path-like, optional
        PEM private key of ``cert`` (when not in the same file).

    Returns
    -------
    distributed.Security or None
        Encryption required, for client connections.

    Raises
    ------
    ConfigError
        When only some of the files are given, one is missing or not PEM, the certificate has
        no key (neither in its file nor ``key``), or the key is not the certificate's.
    """
    if not (ca_file or cert or key):
        return None
    if not (ca_file and cert):
        raise ConfigError("TLS needs at least --tls-ca-file and --tls-cert (and --tls-key)")
    from distributed import Security

    ca = _readable(ca_file, "TLS CA file")
    crt = _readable(cert, "TLS certificate")
    k = _readable(key, "TLS key") if key else None
    _check_pair(crt, k, cert, key)
    return Security(tls_ca_file=ca, tls_client_cert=crt, tls_client_key=k, require_encryption=True)


def make_certificates(
    folder: str | os.PathLike,
    hosts: list[str] | tuple[str, ...] = ("127.0.0.1", "localhost"),
    days: int = 365,
) -> dict[str, Path]:
    """Write a private CA and one certificate/key signed by it, valid for ``hosts``.

    One certificate for the scheduler, the workers and the clients is enough for a small
    deployment; give each its own in production (same CA).

    Parameters
    ----------
    folder : path-like
        Where ``ca.pem``, ``cert.pem`` and ``key.pem`` are written (keys with mode 0600).
    hosts : sequence of str
        Host names and IP addresses the certificate is valid for (subject alternative names).
    days : int
        Validity.

    Returns
    -------
    dict
        ``{"ca": path, "cert": path, "key": path}``.

    Notes
    -----
    Uses the ``cryptography`` package when installed, else the ``openssl`` command. The CA's
    private key is not kept: make a new set to add hosts. Each file is written whole to a
    temporary file in ``folder`` and then renamed over the old one, so a failure leaves the
    old files as they were; the key's file is created with mode 0600 (also when it replaces an
    existing, more open file).
    """
    out = Path(folder).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {folder}: is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    hosts = list(hosts) or ["127.0.0.1"]
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _make_certificates_openssl(out, hosts, days)
    return _make_certificates_cryptography(out, hosts, days)


def _ca_name() -> str:
    """A CA name of its own for each set: a peer trusting another set's CA (of the same name)
    then reports an unknown CA, not a signature that fails to verify."""
    import secrets

    return f"image3-dask CA {secrets.token_hex(4)}"


def _install(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, then rename) with ``mode``."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _install_all(paths: dict[str, Path], contents: dict[str, bytes]) -> dict[str, Path]:
    """Install the CA, the certificate and the key (mode 0600) once all are made."""
    for kind in ("ca", "cert", "key"):
        _install(paths[kind], contents[kind], 0o600 if kind == "key" else 0o644)
    return paths


def _make_certificates_openssl(out: Path, hosts: list[str], days: int) -> dict[str, Path]:
    import shutil
    import subprocess
    import tempfile

    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError(
            "making certificates needs the cryptography package or the openssl command"
        )
    sans = []
    for h in hosts:
        try:
            ipaddress.ip_address(h)
            sans.append(f"IP:{h}")
        except ValueError:
            sans.append(f"DNS:{h}")
    paths = {"ca": out / "ca.pem", "cert": out / "cert.pem", "key": out / "key.pem"}
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    with tempfile.TemporaryDirectory(prefix="image3-certs-") as tmp:
        t = Path(tmp)
        (t / "ext.cnf").write_text(
            f"subjectAltName={','.join(sans)}\nbasicConstraints=critical,CA:FALSE\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        cmds = [
            [openssl, "req", "-x509", *ec, "-keyout", str(t / "ca.key"), "-out", str(t / "ca.pem"),
             "-days", str(days), "-subj", f"/CN={_ca_name()}",
             "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"],
            [openssl, "req", *ec, "-keyout", str(t / "key.pem"), "-out", str(t / "req.csr"),
             "-subj", f"/CN={hosts[0]}"],
            [openssl, "x509", "-req", "-in", str(t / "req.csr"), "-CA", str(t / "ca.pem"),
             "-CAkey", str(t / "ca.key"), "-CAcreateserial", "-CAserial", str(t / "ca.srl"),
             "-out", str(t / "cert.pem"),
             "-days", str(days), "-extfile", str(t / "ext.cnf")],
        ]  # fmt: skip
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=t)
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["failed"])[-1]
                raise ConfigError(f"openssl {cmd[1]} failed: {last}")
        contents = {kind: (t / f"{kind}.pem").read_bytes() for kind in ("ca", "cert", "key")}
    return _install_all(paths, contents)


def _make_certificates_cryptography(out: Path, hosts: list[str], days: int) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _ca_name())])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = {"ca": out / "ca.pem", "cert": out / "cert.pem", "key": out / "key.pem"}
    contents = {
        "ca": ca_cert.public_bytes(pem),
        "cert": cert.public_bytes(pem),
        "key": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    return _install_all(paths, contents)
