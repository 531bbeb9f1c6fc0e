"""TLS contexts: TLS 1.2+ with forward-secret AEAD ciphers only."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["server_context"]

# TLS 1.3 suites are fixed by OpenSSL and all modern; this restricts TLS 1.2 to
# ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 (Mozilla "intermediate").
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert, key)
    return ctx

