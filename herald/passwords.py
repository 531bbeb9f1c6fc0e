"""Password hashes for dashboard logins: scrypt, in the PHC string format.

    $scrypt$ln=14,r=8,p=5$<salt>$<hash>

``ln`` is log2 of scrypt's cost N, ``r`` the block size, ``p`` the parallelism;
salt (16 bytes) and hash (32 bytes) are base64 without padding, as in the PHC
string format (the one argon2 and passlib write). ``herald users hash`` prints one.

Why scrypt: it is memory-hard (a GPU or ASIC guessing passwords pays in memory,
not only in time) and it is in the standard library (``hashlib.scrypt``), so the
hash needs no compiled dependency. argon2id is the newer first choice, but needs
``argon2-cffi``; scrypt at OWASP's parameters is an accepted equal. The parameters
live in each hash, so they can be raised later without breaking stored hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["PasswordHashError", "ScryptHash", "hash_password", "verify_password", "parse_hash",
           "SCRYPT_LOG_N", "SCRYPT_R", "SCRYPT_P"]

# OWASP's password storage cheat sheet lists equal-strength scrypt settings
# (N=2^17,p=1 … N=2^13,p=10, all with r=8); this is the one that needs 16 MiB
# per check instead of 128 MiB, which matters on a small server. ~0.3 s per check.
SCRYPT_LOG_N = 14
SCRYPT_R = 8
SCRYPT_P = 5
SALT_BYTES = 16
HASH_BYTES = 32
# Refuse hashes whose parameters would make one check take minutes or gigabytes:
# a hash in a config file must not be a way to stall the server.
MAX_LOG_N = 20
MAX_R = 16
MAX_P = 16

_FORMAT = re.compile(
    r"\$scrypt\$ln=(?P<ln>\d{1,2}),r=(?P<r>\d{1,2}),p=(?P<p>\d{1,2})"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)")


class PasswordHashError(ValueError):
    """A stored hash is not in the expected format."""


@dataclass(frozen=True)
class ScryptHash:
    log_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log_n
    # hashlib refuses anything above maxmem; scrypt needs 128·r·N bytes (+ p blocks).
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=maxmem,
                          dklen=length)


def hash_password(password: str, *, log_n: int = SCRYPT_LOG_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> str:
    if not password:
        raise PasswordHashError("the password is empty")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, log_n, r, p, HASH_BYTES)
    return f"$scrypt$ln={log_n},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def parse_hash(text: str) -> ScryptHash:
    match = _FORMAT.fullmatch(text.strip())
    if match is None:
        raise PasswordHashError(
            "expected a hash printed by `herald users hash` ($scrypt$ln=…,r=…,p=…$…$…)")
    log_n, r, p = int(match["ln"]), int(match["r"]), int(match["p"])
    if not (1 <= log_n <= MAX_LOG_N and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        raise PasswordHashError(
            f"scrypt parameters out of range (ln ≤ {MAX_LOG_N}, r ≤ {MAX_R}, p ≤ {MAX_P})")
    try:
        salt, digest = _unb64(match["salt"]), _unb64(match["hash"])
    except ValueError as exc:
        raise PasswordHashError("the salt or hash is not valid base64") from exc
    if len(salt) < 8 or len(digest) < 16:
        raise PasswordHashError("the salt or hash is too short")
    return ScryptHash(log_n, r, p, salt, digest)


def verify_password(password: str, stored: str | ScryptHash) -> bool:
    """True if ``password`` matches; the comparison takes constant time."""
    parsed = parse_hash(stored) if isinstance(stored, str) else stored
    candidate = _scrypt(password, parsed.salt, parsed.log_n, parsed.r, parsed.p,
                        len(parsed.digest))
    return hmac.compare_digest(candidate, parsed.digest)
