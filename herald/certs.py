"""Certificates, made right the first time (with the ``cryptography`` library).

* a CA: ``basicConstraints CA:true``, ``keyCertSign``;
* server certificates: ``serverAuth`` and subject alternative names for every name
  and address clients use (``localhost``, ``127.0.0.1``, ``::1`` by default);
* client certificates: ``clientAuth``, CN = the module's name.

Strict TLS stacks silently refuse a client certificate without the ``clientAuth``
extended key usage; nobody should lose a day to that, so this module never makes one.
Private keys are written with mode 0600, whole or not at all (herald.secretfiles): a
full disk never leaves an empty ``ca.key``. Herald's own TLS directory
(``<data>/tls``) is 0700 and everything in it 0600; its keys are refused at start if
they are links or readable by others.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError
from .secretfiles import (
    PRIVATE_FILE_MODE,
    private_dir,
    read_private,
    write_error,
    write_private,
)

__all__ = [
    "CertPair",
    "create_ca",
    "create_server_cert",
    "create_client_cert",
    "ensure_server_tls",
    "key_strength_problem",
    "load_ca",
    "write_private",
]

CA_DAYS = 3650
LEAF_DAYS = 825  # the most browsers accept for a server certificate
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
# A certificate is public: readable by all where the operator puts it (`herald certs
# --out`), 0600 like everything else inside the data directory.
PUBLIC_FILE_MODE = 0o644


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

    def write(self, cert_path: Path, key_path: Path, *,
              cert_mode: int = PUBLIC_FILE_MODE) -> None:
        """The key (0600), then the certificate (``cert_mode``), each whole or not at
        all; StorageFull/StorageError if the disk refuses."""
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        write_private(key_path, self.key_pem())
        write_private(cert_path, self.cert_pem(), mode=cert_mode)


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


def load_ca(cert_path: Path, key_path: Path, *, ours: bool = False) -> CertPair:
    """A CA and its key. FileNotFoundError if one is missing; ValueError if one is not
    PEM (or not an EC key); ConfigError if the key file is refused (``ours``: Herald's
    own, see herald.secretfiles) or cannot be read."""
    try:
        cert_pem = cert_path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"CA certificate {cert_path}: cannot read it: "
                          f"{exc.strerror or exc}") from None
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(read_private(key_path, "CA key", ours=ours),
                                             password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: expected an EC private key")
    return CertPair(cert, key)


# The weakest private key Herald serves with: 112 bits of security (NIST SP 800-57
# Part 1, acceptable until 2030): RSA of 2048 bits; elliptic curves of 256 bits (P-256,
# what Herald makes; TLS offers nothing between P-224 and it). DSA is no TLS 1.3 key.
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256


def key_strength_problem(pem: bytes) -> str | None:
    """Why the unencrypted PEM private key ``pem`` is too weak to serve TLS with; None
    if it is strong enough, or is not a key this can read (whoever loads it says so)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        return f"an RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size < MIN_EC_BITS:
        return (f"an elliptic-curve key on {key.curve.name} ({key.curve.key_size} bits); "
                f"at least {MIN_EC_BITS} are required (P-256)")
    if isinstance(key, dsa.DSAPrivateKey):
        return "a DSA key; use EC (P-256) or RSA of at least 2048 bits"
    return None


def _have_key(path: Path, what: str) -> bool:
    """Is Herald's own key there? An empty one is not: an older Herald left it so when
    its first start ran out of disk. Any other refusal (a link, a wide mode) stops."""
    try:
        return bool(read_private(path, what, ours=True))
    except FileNotFoundError:
        return False


def ensure_server_tls(tls_dir: Path, names: tuple[str, ...] = DEFAULT_SERVER_NAMES) -> bool:
    """Create ``ca.pem``/``ca.key`` and ``server.pem``/``server.key`` if missing, in a
    private directory (0700, files 0600); check the keys that are there.

    Returns True when anything was created. ConfigError if a key is refused
    (herald.secretfiles); StorageFull/StorageError if the disk refuses a write, which
    leaves no partial file: the next start creates what is missing.
    """
    try:
        private_dir(tls_dir)
    except OSError as exc:
        raise write_error(exc, tls_dir) from exc
    ca_cert, ca_key = tls_dir / "ca.pem", tls_dir / "ca.key"
    server_cert, server_key = tls_dir / "server.pem", tls_dir / "server.key"
    created = False
    if not (_have_key(ca_key, "CA key") and ca_cert.exists()):
        server_cert.unlink(missing_ok=True)  # first: it would be of the old CA
        create_ca().write(ca_cert, ca_key, cert_mode=PRIVATE_FILE_MODE)
        created = True
    if not (_have_key(server_key, "server key") and server_cert.exists()):
        create_server_cert(load_ca(ca_cert, ca_key, ours=True), names).write(
            server_cert, server_key, cert_mode=PRIVATE_FILE_MODE)
        created = True
    return created
