"""Certificates are made right the first time.

What this proves, checked with ``cryptography`` and independently with ``openssl``:

* the CA has ``basicConstraints CA:TRUE`` (critical) and may sign certificates;
* a server certificate has ``serverAuth``, is no CA, and names ``localhost``,
  ``127.0.0.1`` and ``::1`` as subject alternative names (DNS and IP entries);
* a client certificate has ``clientAuth`` (never ``serverAuth``), is no CA, and its
  subject CN is the module's name;
* ``openssl verify -purpose sslserver / sslclient`` accepts each for its purpose and
  refuses it for the other;
* private keys are written with mode 0600; ``ensure_server_tls`` creates the files
  once and then leaves them alone (idempotent), and a new CA means a new server
  certificate.
"""

from __future__ import annotations

import ipaddress
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from herald.certs import (
    DEFAULT_SERVER_NAMES,
    CertPair,
    create_ca,
    create_client_cert,
    create_server_cert,
    ensure_server_tls,
    load_ca,
    write_private,
)

OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module")
def ca() -> CertPair:
    return create_ca()


def extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)  # type: ignore[type-var]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_certificate(ca: CertPair) -> None:
    constraints = extension(ca.cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is True
    usage = extension(ca.cert, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.cert.subject == ca.cert.issuer, "self-signed"
    ca.cert.verify_directly_issued_by(ca.cert)


def test_server_certificate(ca: CertPair) -> None:
    server = create_server_cert(ca)
    cert = server.cert
    cert.verify_directly_issued_by(ca.cert)
    assert extension(cert, x509.BasicConstraints).value.ca is False
    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = extension(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert DEFAULT_SERVER_NAMES == ("localhost", "127.0.0.1", "::1")


def test_server_certificate_with_other_names(ca: CertPair) -> None:
    cert = create_server_cert(ca, ["herald.example", "10.0.0.7"]).cert
    sans = extension(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["herald.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    with pytest.raises(ValueError, match="at least one name"):
        create_server_cert(ca, [])


def test_client_certificate(ca: CertPair) -> None:
    cert = create_client_cert(ca, "inventory").cert
    cert.verify_directly_issued_by(ca.cert)
    assert extension(cert, x509.BasicConstraints).value.ca is False
    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [
        "inventory"]


def test_keys_are_written_0600(tmp_path: Path, ca: CertPair) -> None:
    pair = create_client_cert(ca, "billing")
    pair.write(tmp_path / "out" / "billing.pem", tmp_path / "out" / "billing.key")
    assert mode(tmp_path / "out" / "billing.key") == 0o600
    assert (tmp_path / "out" / "billing.pem").read_bytes() == pair.cert_pem()


def test_write_private_narrows_an_existing_wider_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert mode(path) == 0o600
    assert path.read_bytes() == b"new"


def test_ensure_server_tls_creates_once_then_is_idempotent(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    assert ensure_server_tls(tls) is True
    names = ("ca.pem", "ca.key", "server.pem", "server.key")
    assert all((tls / name).exists() for name in names)
    assert mode(tls / "ca.key") == 0o600 and mode(tls / "server.key") == 0o600
    before = {name: (tls / name).read_bytes() for name in names}

    assert ensure_server_tls(tls) is False
    assert {name: (tls / name).read_bytes() for name in names} == before

    ca = load_ca(tls / "ca.pem", tls / "ca.key")
    server = x509.load_pem_x509_certificate((tls / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca.cert)


def test_ensure_server_tls_replaces_only_what_is_missing(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    ensure_server_tls(tls)
    ca_pem = (tls / "ca.pem").read_bytes()
    (tls / "server.key").unlink()
    assert ensure_server_tls(tls) is True
    assert (tls / "ca.pem").read_bytes() == ca_pem, "the CA is kept"
    assert (tls / "server.key").exists()

    (tls / "ca.key").unlink()
    old_server = (tls / "server.pem").read_bytes()
    assert ensure_server_tls(tls) is True
    assert (tls / "ca.pem").read_bytes() != ca_pem, "a new CA"
    assert (tls / "server.pem").read_bytes() != old_server, "and a server cert it signed"
    ca = load_ca(tls / "ca.pem", tls / "ca.key")
    x509.load_pem_x509_certificate((tls / "server.pem").read_bytes()).verify_directly_issued_by(
        ca.cert)


# --- the same, as OpenSSL sees it ------------------------------------------------------


@pytest.fixture(scope="module")
def openssl_files(tmp_path_factory: pytest.TempPathFactory, ca: CertPair) -> dict[str, Path]:
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("openssl")
    files = {"ca": directory / "ca.pem", "server": directory / "server.pem",
             "client": directory / "client.pem"}
    files["ca"].write_bytes(ca.cert_pem())
    files["server"].write_bytes(create_server_cert(ca).cert_pem())
    files["client"].write_bytes(create_client_cert(ca, "inventory").cert_pem())
    return files


def openssl_verify(
    files: dict[str, Path], which: str, purpose: str
) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(files["ca"]), "-purpose", purpose, str(files[which])],
        capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("which", "purpose"), [("server", "sslserver"),
                                                ("client", "sslclient")])
def test_openssl_accepts_each_for_its_purpose(
    openssl_files: dict[str, Path], which: str, purpose: str
) -> None:
    result = openssl_verify(openssl_files, which, purpose)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": OK" in result.stdout


@pytest.mark.parametrize(("which", "purpose"), [("server", "sslclient"),
                                                ("client", "sslserver")])
def test_openssl_refuses_each_for_the_other_purpose(
    openssl_files: dict[str, Path], which: str, purpose: str
) -> None:
    result = openssl_verify(openssl_files, which, purpose)
    assert result.returncode != 0, result.stdout
    # X509_V_ERR_INVALID_PURPOSE; the wording differs between OpenSSL versions
    assert "error 26 " in result.stdout + result.stderr
    assert "certificate purpose" in result.stdout + result.stderr


def test_openssl_sees_the_names_and_usages(openssl_files: dict[str, Path]) -> None:
    assert OPENSSL is not None
    server = subprocess.run([OPENSSL, "x509", "-noout", "-text", "-in",
                             str(openssl_files["server"])],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert "TLS Web Server Authentication" in server
    assert "DNS:localhost" in server and "IP Address:127.0.0.1" in server
    assert "IP Address:0:0:0:0:0:0:0:1" in server
    client = subprocess.run([OPENSSL, "x509", "-noout", "-subject", "-ext", "extendedKeyUsage",
                             "-in", str(openssl_files["client"])],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert "CN = inventory" in client or "CN=inventory" in client
    assert "TLS Web Client Authentication" in client
    ca = subprocess.run([OPENSSL, "x509", "-noout", "-ext", "basicConstraints", "-in",
                         str(openssl_files["ca"])],
                        capture_output=True, text=True, timeout=60, check=True).stdout
    assert "critical" in ca and "CA:TRUE" in ca
