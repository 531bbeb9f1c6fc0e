"""Certificates, made right the first time (with the ``cryptography`` library).

* a CA: ``basicConstraints CA:true``, ``keyCertSign``;
* server certificates: ``serverAuth`` and subject alternative names for every name
  and address clients use (``localhost``, ``127.0.0.1``, ``::1`` by default);
* client certificates: ``clientAuth``, CN = the module's name.

Strict TLS stacks silently refuse a client certificate without the ``clientAuth``
extended key usage; nobody should lose a day to that, so this module never makes one.
Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertPair",
    "create_ca",
    "create_server_cert",
    "create_client_cert",
    "ensure_server_tls",
    "load_ca",
    "write_private",
]

CA_DAYS = 3650
LEAF_DAYS = 825  # the most browsers accept for a server certificate
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertPair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, cert_path: Path, key_path: Path) -> None:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        write_private(key_path, self.key_pem())
        cert_path.write_bytes(self.cert_pem())


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (0600), never briefly wider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_ca(common_name: str = "Herald local CA", days: int = CA_DAYS) -> CertPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertPair(cert, key)


def _leaf(
    ca: CertPair, common_name: str, usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName], days: int,
    not_before: datetime.datetime | None = None,
) -> CertPair:
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - datetime.timedelta(minutes=5))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return CertPair(builder.sign(ca.key, hashes.SHA256()), key)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def create_server_cert(
    ca: CertPair, names: tuple[str, ...] | list[str] = DEFAULT_SERVER_NAMES,
    days: int = LEAF_DAYS,
) -> CertPair:
    """A server certificate with ``serverAuth`` and every name as a SAN."""
    if not names:
        raise ValueError("a server certificate needs at least one name")
    return _leaf(ca, names[0], ExtendedKeyUsageOID.SERVER_AUTH,
                 [_general_name(n) for n in names], days)


def create_client_cert(
    ca: CertPair, module: str, days: int = LEAF_DAYS,
    not_before: datetime.datetime | None = None,
) -> CertPair:
    """A client certificate with ``clientAuth`` and CN = ``module``."""
    return _leaf(ca, module, ExtendedKeyUsageOID.CLIENT_AUTH, [], days, not_before)


def load_ca(cert_path: Path, key_path: Path) -> CertPair:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: expected an EC private key")
    return CertPair(cert, key)


def ensure_server_tls(tls_dir: Path, names: tuple[str, ...] = DEFAULT_SERVER_NAMES) -> bool:
    """Create ``ca.pem``/``ca.key`` and ``server.pem``/``server.key`` if missing.

    Returns True when anything was created.
    """
    ca_cert, ca_key = tls_dir / "ca.pem", tls_dir / "ca.key"
    server_cert, server_key = tls_dir / "server.pem", tls_dir / "server.key"
    created = False
    if not (ca_cert.exists() and ca_key.exists()):
        create_ca().write(ca_cert, ca_key)
        created = True
        server_cert.unlink(missing_ok=True)
    if not (server_cert.exists() and server_key.exists()):
        create_server_cert(load_ca(ca_cert, ca_key), names).write(server_cert, server_key)
        created = True
    return created
