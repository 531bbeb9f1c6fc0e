"""A client certificate must say it is one: ``clientAuth`` in its extended key usage.

RFC 5280 §4.2.1.12 lets a certificate without the extension serve any purpose, and
OpenSSL accepts one for TLS client authentication; Herald refuses it
(``client_cert_not_for_client_auth``), as the docs say, so that a certificate the CA
issued for something else never becomes an identity by omission. Real handshakes in
memory (test_tls_adapter's ``Pair``) with leaves made here by ``cryptography``, each
signed by the trusted CA, so usage is the only thing wrong. Then the order of the
verdicts: an unknown CA and the dates still come before the usage.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from herald.certs import CertPair, create_ca, create_client_cert, create_server_cert
from herald.server.tls import diagnose

from .test_tls_adapter import Pair

NOW = datetime.datetime.now(datetime.UTC)
_EXPIRED = 10
_UNKNOWN_CA = 20


def leaf(ca: CertPair, name: str, usages: list[x509.ObjectIdentifier] | None, *,
         digital_signature: bool = True,
         not_after: datetime.datetime | None = None) -> CertPair:
    """A leaf signed by ``ca``; ``usages`` None: no extended key usage extension."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=digital_signature, content_commitment=False,
            key_encipherment=not digital_signature, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
            decipher_only=False), critical=True)
    )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return CertPair(builder.sign(ca.key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("usage")
    ca = create_ca("Modules CA")
    ca.write(d / "ca.pem", d / "ca.key")
    ca.write(d / "the-ca.pem", d / "the-ca.key")  # the CA's own certificate, as a client's
    create_server_cert(ca, ["localhost"]).write(d / "server.pem", d / "server.key")
    leaves = {
        "herald-certs": create_client_cert(ca, "inventory"),
        "client-and-server": leaf(ca, "both", [ExtendedKeyUsageOID.SERVER_AUTH,
                                               ExtendedKeyUsageOID.CLIENT_AUTH]),
        "no-extension": leaf(ca, "plain", None),
        "any-usage": leaf(ca, "any", [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]),
        "email": leaf(ca, "mail", [ExtendedKeyUsageOID.EMAIL_PROTECTION]),
        "no-signing": leaf(ca, "encrypt", [ExtendedKeyUsageOID.CLIENT_AUTH],
                           digital_signature=False),
    }
    for name, pair in leaves.items():
        pair.write(d / f"{name}.pem", d / f"{name}.key")
    return d


@pytest.mark.parametrize("cert", ["herald-certs", "client-and-server"])
def test_a_certificate_listing_client_auth_is_trusted(files: Path, cert: str) -> None:
    pair = Pair(files, cert)
    pair.handshake()
    judged = pair.server.client_certificate
    assert judged is not None and judged.trusted, judged


@pytest.mark.parametrize(("cert", "words"), [
    ("no-extension", "client certificate CN=plain has no clientAuth extended key usage "
                     "(it has: none)"),
    ("any-usage", "client certificate CN=any has no clientAuth extended key usage "
                  "(it has: anyExtendedKeyUsage)"),
    ("email", "client certificate CN=mail has no clientAuth extended key usage "
              "(it has: emailProtection)"),
    ("no-signing", "client certificate CN=encrypt has the clientAuth extended key usage, "
                   "but its key usage does not allow TLS client authentication"),
    ("the-ca", "client certificate CN=Modules CA has no clientAuth extended key usage "
               "(it has: none)"),
])
def test_a_certificate_not_for_client_auth_is_refused_saying_why(files: Path, cert: str,
                                                                 words: str) -> None:
    pair = Pair(files, cert)
    pair.handshake()  # completed, never aborted: the HTTP layer says why
    judged = pair.server.client_certificate
    assert judged is not None and judged.problem is not None
    assert judged.problem.code == "client_cert_not_for_client_auth"
    assert judged.problem.message.startswith(words), judged.problem.message
    assert "herald certs client" in judged.problem.message
    assert pair.server.getpeercert() == {}


def test_an_unknown_ca_and_the_dates_still_come_before_the_usage() -> None:
    ca = create_ca("Modules CA")
    no_usage = leaf(ca, "plain", None, not_after=NOW - datetime.timedelta(hours=1)).cert
    expired = diagnose(no_usage, [(_EXPIRED, 0, no_usage)])
    assert expired is not None and expired.code == "client_cert_expired"
    unknown = diagnose(no_usage, [(_UNKNOWN_CA, 0, no_usage), (_EXPIRED, 0, no_usage)])
    assert unknown is not None and unknown.code == "client_cert_unknown_ca"
    usage = diagnose(no_usage, [])
    assert usage is not None and usage.code == "client_cert_not_for_client_auth"
    good = leaf(ca, "good", [ExtendedKeyUsageOID.CLIENT_AUTH]).cert
    assert diagnose(good, []) is None
