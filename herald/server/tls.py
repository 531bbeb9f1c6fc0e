"""TLS for Herald's listeners: TLS 1.2+ with forward-secret AEAD ciphers only.

Two server contexts, one policy:

* ``server_context`` — the standard library's ``ssl``, used when no client
  certificates are asked for (no ``[tls] client_ca``).
* ``MutualTLSContext`` — pyOpenSSL, used when ``[tls] client_ca`` is set. It asks
  every client for a certificate and *always completes the handshake*, recording
  what is wrong with the certificate instead of aborting. The HTTP layer then
  refuses the requests of such a connection with a 403 that says why
  (``client_cert_expired``…), and logs it in words a person understands.

Why not the standard library for mutual TLS: ``ssl`` verifies the client's
certificate inside OpenSSL and aborts the handshake on any problem, with no verify
callback; the server never sees the certificate (so cannot name it), the client
gets a bare TLS alert ("unsupported certificate"), and asyncio drops the error
unless loop debugging is on. A missing ``clientAuth`` extended key usage is the
classic case: people lose days to it. pyOpenSSL exposes OpenSSL's verify callback,
which sees each certificate, its depth and OpenSSL's error, and may accept.

``MutualTLSContext`` plugs into asyncio's own TLS machinery (``SSLProtocol``): it
has the one method asyncio calls on a context, ``wrap_bio``, and returns a
``PyOpenSSLObject`` that behaves like ``ssl.SSLObject`` over the same memory BIOs.
asyncio keeps doing the buffering, flow control, timeouts and shutdown. The cost
is measured in docs/architecture.md ("TLS and authentication").

Trust is never taken from OpenSSL's verdict alone: the verify callback returns
"accept" for every certificate, so a connection is trusted only if the callback
saw the client's certificate and no error at any depth. Session resumption is
off, because a resumed session would skip the callback and carry no verdict.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

__all__ = [
    "TLS12_CIPHERS",
    "CertificateProblem",
    "ClientCertificate",
    "MutualTLSContext",
    "PyOpenSSLObject",
    "client_certificate_of",
    "server_context",
]

log = logging.getLogger("herald.tls")

# TLS 1.3 suites are fixed by OpenSSL and all modern; this restricts TLS 1.2 to
# ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 (Mozilla "intermediate").
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

# Client certificate chains longer than this are refused: Herald's own CA signs
# leaves directly (depth 1); a corporate CA may add an intermediate or two.
MAX_CLIENT_CHAIN_DEPTH = 4

# SSL_MODE_ENABLE_PARTIAL_WRITE (openssl/ssl.h), which pyOpenSSL turns on and does
# not export. With it, SSL_write stops after one 16 KiB record even on a memory BIO,
# and asyncio then re-slices the rest of the buffer after every record: a copy of
# what is left per 16 KiB, quadratic in the answer's size (GET of 16 MiB: 35 MB/s).
_SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1

# Reading encrypted bytes out of OpenSSL's BIO: one TLS record and a bit.
_BIO_CHUNK = 64 * 1024

# OpenSSL's X509_V_ERR_* numbers (x509_vfy.h), grouped by what they mean to a person.
_NOT_YET_VALID = 9
_EXPIRED = 10
_INVALID_PURPOSE = 26
_UNKNOWN_CA = frozenset({
    2,   # unable to get issuer certificate
    7,   # certificate signature failure: same issuer name, another key
    18,  # self-signed certificate
    19,  # self-signed certificate in chain
    20,  # unable to get local issuer certificate
    21,  # unable to verify the first certificate
    27,  # certificate not trusted
    28,  # certificate rejected
})
_OPENSSL_NAMES = {
    4: "cannot decrypt the certificate's signature",
    6: "cannot decode the issuer's public key",
    8: "the CRL signature does not verify",
    13: "the notBefore field is malformed",
    14: "the notAfter field is malformed",
    22: "the certificate chain is too long",
    24: "a certificate in the chain is not a CA",
    25: "the path length constraint was exceeded",
    32: "the issuer's key usage does not allow signing certificates",
    34: "an unhandled critical extension",
}

ProblemCode = Literal[
    "client_cert_unknown_ca",
    "client_cert_expired",
    "client_cert_not_yet_valid",
    "client_cert_not_for_client_auth",
    "client_cert_invalid",
]


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The standard library's server context: no client certificates asked for."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    # Client-initiated renegotiation costs the server a handshake per request: off.
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_NO_RENEGOTIATION)
    ctx.load_cert_chain(cert, key)
    return ctx


# --- what is wrong with a client certificate ----------------------------------------


@dataclass(frozen=True)
class CertificateProblem:
    """Why a client certificate is refused: a stable ``code`` and a sentence."""

    code: ProblemCode
    message: str


@dataclass(frozen=True)
class ClientCertificate:
    """The certificate a client presented, and what is wrong with it (if anything)."""

    subject: x509.Name
    issuer: x509.Name
    not_valid_before: datetime.datetime
    not_valid_after: datetime.datetime
    problem: CertificateProblem | None

    @property
    def subject_text(self) -> str:
        """RFC 4514, as people write it: ``CN=inventory``."""
        return self.subject.rfc4514_string()

    @property
    def common_name(self) -> str | None:
        names = self.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None

    @property
    def trusted(self) -> bool:
        return self.problem is None


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


_USAGE_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
                ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
                ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
                ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
                ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage"}


def _extended_key_usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier] | None:
    """The certificate's extended key usages; None without the extension."""
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def _client_auth_problem(leaf: x509.Certificate) -> CertificateProblem | None:
    """What is wrong with a leaf that does not list clientAuth in its extended key
    usage; None when it does.

    RFC 5280 §4.2.1.12 lets a certificate *without* the extension serve any purpose,
    and OpenSSL accepts it; Herald does not. A client certificate is an identity
    (its subject names a [[principal]]), and a certificate the CA issued for
    something else — a server, a CA, a signing key with no extension at all — must
    not become one by omission. ``herald certs client`` always writes clientAuth;
    anyExtendedKeyUsage alone is refused too, as OpenSSL refuses it.
    """
    try:
        usages = _extended_key_usages(leaf)
    except (ValueError, x509.DuplicateExtension) as exc:  # unreadable extensions
        return CertificateProblem(
            "client_cert_invalid",
            f"client certificate {leaf.subject.rfc4514_string()} is invalid: its "
            f"extensions cannot be read ({exc})")
    if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH in usages:
        return None
    has = ", ".join(_USAGE_NAMES.get(oid, oid.dotted_string) for oid in usages or ())
    return CertificateProblem(
        "client_cert_not_for_client_auth",
        f"client certificate {leaf.subject.rfc4514_string()} has no clientAuth extended "
        f"key usage (it has: {has or 'none'}); "
        "issue client certificates with `herald certs client MODULE`")


def diagnose(leaf: x509.Certificate, errors: list[tuple[int, int, x509.Certificate]],
             ) -> CertificateProblem | None:
    """Turn OpenSSL's verify errors ``(number, depth, certificate)`` into one problem.

    The most fundamental problem wins: a certificate from an unknown CA is refused
    for that whatever else is wrong with it; then validity dates; then usage, which
    is checked whatever OpenSSL says (``_client_auth_problem``).
    """
    if not errors:
        return _client_auth_problem(leaf)
    subject = leaf.subject.rfc4514_string()
    numbers = {number for number, _depth, _cert in errors}
    if numbers & _UNKNOWN_CA:
        return CertificateProblem(
            "client_cert_unknown_ca",
            f"client certificate {subject} was issued by {leaf.issuer.rfc4514_string()}, "
            "which is not a CA Herald trusts for client certificates ([tls] client_ca)")
    for number, depth, cert in errors:
        what = "client certificate" if depth == 0 else "CA certificate"
        name = cert.subject.rfc4514_string()
        if number == _EXPIRED:
            return CertificateProblem(
                "client_cert_expired",
                f"{what} {name} expired on {_when(cert.not_valid_after_utc)}"
                + ("" if depth == 0 else f" (in the chain of {subject})"))
        if number == _NOT_YET_VALID:
            return CertificateProblem(
                "client_cert_not_yet_valid",
                f"{what} {name} is not valid until {_when(cert.not_valid_before_utc)}"
                + ("" if depth == 0 else f" (in the chain of {subject})"))
    usage = _client_auth_problem(leaf)
    if usage is not None:
        return usage
    for number, depth, _cert in errors:
        if number == _INVALID_PURPOSE and depth == 0:
            # clientAuth is there (above): what OpenSSL refuses is the key usage.
            return CertificateProblem(
                "client_cert_not_for_client_auth",
                f"client certificate {subject} has the clientAuth extended key usage, but "
                "its key usage does not allow TLS client authentication (it needs "
                "digitalSignature); "
                "issue client certificates with `herald certs client MODULE`")
    number, depth, cert = errors[0]
    reason = _OPENSSL_NAMES.get(number, f"OpenSSL verify error {number}")
    return CertificateProblem(
        "client_cert_invalid",
        f"client certificate {subject} is invalid: {reason}"
        + ("" if depth == 0 else f" (at {cert.subject.rfc4514_string()})"))


# --- the pyOpenSSL context and SSL object -------------------------------------------


class MutualTLSContext:
    """A server context that asks for client certificates and never aborts on them.

    Pass it where asyncio takes an ``ssl.SSLContext`` (``loop.create_server``,
    aiohttp's sites): asyncio only calls ``wrap_bio``.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path) -> None:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_cipher_list(TLS12_CIPHERS.encode())
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                        | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
        # No resumption: a resumed session skips the verify callback, and the
        # callback is where the certificate's verdict comes from.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.clear_mode(_SSL_MODE_ENABLE_PARTIAL_WRITE)
        ctx.use_certificate_chain_file(str(cert))
        ctx.use_privatekey_file(str(key))
        ctx.check_privatekey()
        ctx.load_verify_locations(str(client_ca))
        # The CA names go into the CertificateRequest so clients (browsers too)
        # pick a certificate this server can accept.
        ctx.load_client_ca(str(client_ca).encode())
        ctx.set_verify_depth(MAX_CLIENT_CHAIN_DEPTH)
        ctx.set_verify(SSL.VERIFY_PEER, _record_verify_result)
        self._ctx = ctx
        # asyncio and aiohttp read these off a context.
        self.check_hostname = False
        self.verify_mode = ssl.CERT_OPTIONAL

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | None = None,
                 session: Any = None) -> PyOpenSSLObject:
        if not server_side:
            raise ValueError("MutualTLSContext is for servers only")
        return PyOpenSSLObject(self, SSL.Connection(self._ctx, None), incoming, outgoing)


def _record_verify_result(connection: SSL.Connection, cert: crypto.X509, error: int,
                          depth: int, ok: int) -> bool:
    # Runs inside OpenSSL's handshake: only record, decide later (and never raise:
    # an exception here would abort the handshake we want to complete).
    wrapper = connection.get_app_data()
    if isinstance(wrapper, PyOpenSSLObject):
        wrapper._verify_calls.append((error if not ok else 0, depth, cert))
    return True


def _ssl_error(exc: SSL.Error) -> ssl.SSLError:
    detail = "; ".join(str(part[-1]) for part in exc.args[0]) if (
        exc.args and isinstance(exc.args[0], list)) else str(exc)
    return ssl.SSLError(f"TLS failed: {detail or type(exc).__name__}")


class PyOpenSSLObject:
    """``ssl.SSLObject``'s behaviour, by pyOpenSSL, for asyncio's ``SSLProtocol``.

    asyncio feeds the encrypted bytes it receives into ``incoming`` and sends what
    appears in ``outgoing``; this object moves them in and out of the pyOpenSSL
    connection's own memory BIO and maps pyOpenSSL's exceptions onto ``ssl``'s
    (``SSLWantReadError`` means "give me more bytes").
    """

    def __init__(self, context: MutualTLSContext, connection: SSL.Connection,
                 incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self.context = context
        self.server_side = True
        self.server_hostname: str | None = None
        self._conn = connection
        self._incoming = incoming
        self._outgoing = outgoing
        self._verify_calls: list[tuple[int, int, crypto.X509]] = []
        self._handshake_done = False
        self.client_certificate: ClientCertificate | None = None
        # Set by the HTTP layer once it has logged this connection's refusal.
        self.refusal_logged = False
        connection.set_app_data(self)
        connection.set_accept_state()

    # moving bytes

    def _feed(self) -> bool:
        """Move what asyncio received into OpenSSL; False if there was nothing."""
        data = self._incoming.read()
        if data:
            self._conn.bio_write(data)
        return bool(data)

    def _flush(self) -> None:
        while True:
            try:
                chunk = self._conn.bio_read(_BIO_CHUNK)
            except SSL.WantReadError:
                return
            if not chunk:
                return
            self._outgoing.write(chunk)

    def _run(self, operation: Any, *args: Any) -> Any:
        """Call a pyOpenSSL operation, feeding it input until it can proceed.

        Bytes stay in asyncio's ``incoming`` BIO until OpenSSL asks for them, so
        asyncio's read flow control keeps measuring what is really buffered.
        """
        while True:
            try:
                result = operation(*args)
            except SSL.WantReadError:
                self._flush()
                if self._feed():
                    continue
                raise ssl.SSLWantReadError("The operation did not complete (read)") from None
            except SSL.ZeroReturnError:
                self._flush()
                raise ssl.SSLZeroReturnError("TLS/SSL connection has been closed (EOF)") from None
            except SSL.SysCallError as exc:
                self._flush()
                raise ssl.SSLEOFError(f"TLS connection broken: {exc}") from None
            except SSL.Error as exc:
                self._flush()
                raise _ssl_error(exc) from None
            self._flush()
            return result

    # ssl.SSLObject's interface, as asyncio uses it

    def do_handshake(self) -> None:
        self._run(self._conn.do_handshake)
        if not self._handshake_done:
            self._handshake_done = True
            self.client_certificate = self._judge()

    def read(self, size: int = 1024, buffer: Any = None) -> Any:
        try:
            if buffer is not None:
                return self._run(self._conn.recv_into, buffer, size)
            return self._run(self._conn.recv, size)
        except ssl.SSLZeroReturnError:
            # The peer's close_notify: end of stream, as ssl.SSLObject reports it.
            return 0 if buffer is not None else b""

    def write(self, data: Any) -> int:
        # All of it at once, as ssl.SSLObject does (see _SSL_MODE_ENABLE_PARTIAL_WRITE).
        written: int = self._run(self._conn.send, data)
        return written

    def unwrap(self) -> None:
        try:
            done = self._run(self._conn.shutdown)
        except ssl.SSLZeroReturnError:
            return
        if not done:
            # Our close_notify is out; the peer's has not arrived yet.
            try:
                if self._run(self._conn.shutdown):
                    return
            except ssl.SSLZeroReturnError:
                return
            raise ssl.SSLWantReadError("The operation did not complete (read)")

    def pending(self) -> int:
        pending: int = self._conn.pending()
        return pending

    def getpeercert(self, binary_form: bool = False) -> Any:
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        if cert is None:
            return None
        if binary_form:
            from cryptography.hazmat.primitives.serialization import Encoding
            return cert.public_bytes(Encoding.DER)
        # Like ssl's, this dict is only filled in for a verified certificate.
        judged = self.client_certificate
        if judged is None or not judged.trusted:
            return {}
        return {"subject": tuple(((attr.rfc4514_attribute_name, str(attr.value)),)
                                  for attr in judged.subject)}

    def cipher(self) -> tuple[str, str, int] | None:
        name = self._conn.get_cipher_name()
        version = self._conn.get_cipher_version()
        bits = self._conn.get_cipher_bits()
        if name is None or version is None or bits is None:
            return None
        return name, version, bits

    def compression(self) -> None:
        return None

    def version(self) -> str | None:
        return self._conn.get_protocol_version_name() if self._handshake_done else None

    def selected_alpn_protocol(self) -> None:
        return None

    def shared_ciphers(self) -> None:
        return None

    # the verdict

    def _judge(self) -> ClientCertificate | None:
        leaf = self._conn.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return None
        errors = [(number, depth, cert.to_cryptography())
                  for number, depth, cert in self._verify_calls if number]
        problem = diagnose(leaf, errors)
        if problem is None and not any(depth == 0 for _n, depth, _c in self._verify_calls):
            # Never trust a certificate the callback did not see.
            problem = CertificateProblem(
                "client_cert_invalid",
                f"client certificate {leaf.subject.rfc4514_string()} was not verified")
        self._verify_calls.clear()  # the X509 objects are no longer needed
        return ClientCertificate(
            subject=leaf.subject, issuer=leaf.issuer,
            not_valid_before=leaf.not_valid_before_utc,
            not_valid_after=leaf.not_valid_after_utc, problem=problem)


def client_certificate_of(ssl_object: object) -> ClientCertificate | None:
    """The client certificate of a connection (None without one, or without mTLS)."""
    if isinstance(ssl_object, PyOpenSSLObject):
        return ssl_object.client_certificate
    return None
