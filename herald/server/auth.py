"""Who is calling, and what they may do. Deny by default.

A *principal* is who is calling the API:

* the **admin**, by the token Herald writes to ``<data>/admin-token`` on first
  start: every permission, including the admin routes (``/v1/admin/…``);
* a configured ``[[principal]]``, by a client certificate whose subject is the
  principal's ``subject``, or by a Bearer token whose SHA-256 is its
  ``token_sha256``: it may publish to the streams its ``publish`` patterns match
  and read those its ``subscribe`` patterns match (``fnmatch`` globs);
* a valid client certificate that no ``[[principal]]`` names: authenticated, but
  with no permission at all.

When a request carries both a client certificate and an ``Authorization`` header,
the header decides who is calling; a *refused* certificate refuses the request
whatever else it carries. Dashboard users (``[[user]]``) log in with HTTP Basic on
the dashboard only; the API does not take passwords.

Secrets are compared in constant time and never logged: tokens are looked up by
their SHA-256, passwords checked against scrypt hashes (herald.passwords).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from ..certs import write_private
from ..config import ADMIN_NAME, PrincipalConfig, UserConfig, subject_name
from ..errors import Forbidden, RateLimited, Unauthorized
from ..passwords import (
    SCRYPT_LOG_N,
    SCRYPT_P,
    SCRYPT_R,
    ScryptHash,
    parse_hash,
    verify_password,
)
from .throttle import LoginBackoff
from .tls import ClientCertificate

__all__ = ["Principal", "Authenticator", "ensure_admin_token", "token_sha256"]

log = logging.getLogger("herald.auth")

ADMIN_TOKEN_BYTES = 32
# Password checks cost ~0.3 s of CPU and 16 MiB each (scrypt, on purpose). At most
# this many run at once, in threads, so logins can never take every core or the
# threads the storage engine needs.
PASSWORD_CHECKS_AT_ONCE = 1
# A successful login is remembered (as an HMAC of the password under a key that
# lives only in this process) for this long, so a dashboard that makes several
# requests does not pay a password check for each.
LOGIN_CACHE_SECONDS = 300.0
LOGIN_CACHE_ENTRIES = 1000

Via = Literal["admin token", "token", "client certificate", "password"]


@dataclass(frozen=True)
class Principal:
    """Who is calling, and the stream patterns they may publish to and subscribe to."""

    name: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    admin: bool = False
    via: Via = "token"
    # False for a valid client certificate that no [[principal]] names.
    configured: bool = True

    def may_publish(self, stream: str) -> bool:
        return self.admin or any(fnmatchcase(stream, p) for p in self.publish)

    def may_subscribe(self, stream: str) -> bool:
        return self.admin or any(fnmatchcase(stream, p) for p in self.subscribe)

    def _refuse(self, permission: str, what: str, patterns: tuple[str, ...],
                **details: str) -> Forbidden:
        if not self.configured:
            why = (f"no [[principal]] has subject = \"{self.name}\", so this certificate "
                   "has no permissions")
        elif patterns:
            why = f"its {permission} patterns are {', '.join(patterns)}"
        else:
            why = f"it has no {permission} patterns"
        return Forbidden(f"{self.name} may not {what}: {why}", code="forbidden",
                         permission=permission, principal=self.name, **details)

    def require_publish(self, stream: str) -> None:
        if not self.may_publish(stream):
            raise self._refuse("publish", f"publish to stream {stream}", self.publish,
                               stream=stream)

    def require_subscribe(self, stream: str) -> None:
        if not self.may_subscribe(stream):
            raise self._refuse("subscribe", f"subscribe to stream {stream}", self.subscribe,
                               stream=stream)

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden(f"{self.name} may not use the admin routes: only the admin "
                            "token and principals with admin = true may",
                            code="forbidden", permission="admin", principal=self.name)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_admin_token(path: Path) -> tuple[str, bool]:
    """The admin token, created (mode 0600) if missing. Returns (token, created)."""
    try:
        token = path.read_text().strip()
        if token:
            return token, False
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(ADMIN_TOKEN_BYTES)
    write_private(path, (token + "\n").encode())
    return token, True


def refuse_certificate(certificate: ClientCertificate | None) -> None:
    """Forbidden, with the problem's code, if the client's certificate is refused."""
    if certificate is not None and certificate.problem is not None:
        raise Forbidden(certificate.problem.message, code=certificate.problem.code,
                        subject=certificate.subject_text)


class Authenticator:
    def __init__(self, admin_token: str, principals: Sequence[PrincipalConfig] = (),
                 users: Sequence[UserConfig] = (), *, require_client_cert: bool = False,
                 backoff: LoginBackoff | None = None) -> None:
        self._admin = admin_token.encode()
        self.require_client_cert = require_client_cert
        self.principals = tuple(principals)
        self._by_token = [(p.token_sha256.encode(), self._principal(p, "token"))
                          for p in principals if p.token_sha256 is not None]
        self._by_subject = {subject_name(p.subject, "subject"):
                            self._principal(p, "client certificate")
                            for p in principals if p.subject is not None}
        self.users = tuple(users)
        self._passwords: dict[str, ScryptHash] = {u.name: parse_hash(u.password_hash)
                                                  for u in users}
        # Checked for unknown user names, so they take as long as known ones and a
        # stranger cannot tell which names exist. Random: nothing ever matches it.
        self._decoy = ScryptHash(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P,
                                 secrets.token_bytes(16), secrets.token_bytes(32))
        self.backoff = backoff or LoginBackoff()
        self._checks = asyncio.Semaphore(PASSWORD_CHECKS_AT_ONCE)
        self._cache_key = secrets.token_bytes(32)
        self._logins: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    @staticmethod
    def _principal(config: PrincipalConfig, via: Via) -> Principal:
        return Principal(config.name, config.publish, config.subscribe, config.admin, via)

    # --- the API -----------------------------------------------------------------------

    def authenticate(self, authorization: str | None,
                     certificate: ClientCertificate | None = None) -> Principal:
        """The principal calling the API; Unauthorized/Forbidden if none may."""
        refuse_certificate(certificate)
        if certificate is None and self.require_client_cert:
            raise Unauthorized("a client certificate is required ([tls] require_client_cert);"
                               " issue one with `herald certs client MODULE`",
                               code="client_cert_required")
        if authorization:
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() == "basic":
                raise Unauthorized("HTTP Basic logins are for the dashboard; the API takes "
                                   "Authorization: Bearer <token> or a client certificate",
                                   code="unauthorized")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise Unauthorized("unsupported authorization scheme; use Bearer <token>",
                                   code="unauthorized")
            return self._by_bearer(credentials.strip())
        if certificate is not None:
            known = self._by_subject.get(certificate.subject)
            if known is not None:
                return known
            return Principal(certificate.subject_text, via="client certificate",
                             configured=False)
        raise Unauthorized("credentials required: a client certificate or "
                           "Authorization: Bearer <token>", code="unauthorized")

    def _by_bearer(self, token: str) -> Principal:
        if hmac.compare_digest(token.encode(), self._admin):
            return Principal(ADMIN_NAME, admin=True, via="admin token")
        digest = token_sha256(token).encode()
        found: Principal | None = None
        for stored, principal in self._by_token:  # no early exit: same time for all
            if hmac.compare_digest(digest, stored):
                found = principal
        if found is None:
            raise Unauthorized("invalid token", code="invalid_token")
        return found

    # --- the dashboard -----------------------------------------------------------------

    async def login(self, authorization: str | None, address: str,
                    certificate: ClientCertificate | None = None) -> str:
        """The dashboard user of an HTTP Basic ``Authorization`` header."""
        refuse_certificate(certificate)
        if certificate is None and self.require_client_cert:
            raise Unauthorized("a client certificate is required ([tls] require_client_cert)",
                               code="client_cert_required")
        scheme, _, encoded = (authorization or "").strip().partition(" ")
        if scheme.lower() != "basic":
            raise Unauthorized("log in to the dashboard (HTTP Basic, a [[user]])",
                               code="login_required")
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, sep, password = "", "", ""
        if not sep or not user:
            raise Unauthorized("malformed Basic credentials", code="invalid_login")
        self._check_backoff(("user", user), f"user {user}")
        self._check_backoff(("address", address), f"address {address}")
        if not await self._password_ok(user, password):
            failures = max(self.backoff.failure(("user", user)),
                           self.backoff.failure(("address", address)))
            log.warning("dashboard login failed for user %s from %s (%d in a row)",
                        user, address, failures)
            raise Unauthorized("wrong user name or password", code="invalid_login")
        self.backoff.success(("user", user))
        self.backoff.success(("address", address))
        return user

    def _check_backoff(self, key: tuple[str, str], what: str) -> None:
        wait = self.backoff.retry_after(key)
        if wait > 0:
            raise RateLimited(f"too many failed logins for {what}; try again in "
                              f"{wait:.0f} s", code="login_backoff", retry_after=wait)

    async def _password_ok(self, user: str, password: str) -> bool:
        proof = hmac.new(self._cache_key, f"{user}\0{password}".encode(), "sha256").digest()
        cached = self._logins.get(user)
        now = time.monotonic()
        if cached is not None and now < cached[1] and hmac.compare_digest(cached[0], proof):
            return True
        stored = self._passwords.get(user)
        async with self._checks:
            ok = await asyncio.to_thread(verify_password, password, stored or self._decoy)
        if ok and stored is not None:
            self._logins[user] = (proof, now + LOGIN_CACHE_SECONDS)
            self._logins.move_to_end(user)
            if len(self._logins) > LOGIN_CACHE_ENTRIES:
                self._logins.popitem(last=False)
            return True
        return False
