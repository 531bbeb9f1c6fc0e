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
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from ..config import ADMIN_NAME, PrincipalConfig, UserConfig, subject_name
from ..errors import ConfigError, Forbidden, RateLimited, Unauthorized
from ..logsafe import logsafe
from ..passwords import (
    SCRYPT_LOG_N,
    SCRYPT_P,
    SCRYPT_R,
    ScryptHash,
    parse_hash,
    verify_password,
)
from ..secretfiles import read_private_text, write_private
from .throttle import (
    TOKEN_FAILURE_BURST,
    TOKEN_FAILURES_PER_SECOND,
    CheckGate,
    LoginBackoff,
    RateLimiter,
    address_key,
)
from .tls import ClientCertificate

__all__ = ["Principal", "Authenticator", "ensure_admin_token", "token_problem",
           "token_sha256"]

log = logging.getLogger("herald.auth")

ADMIN_TOKEN_BYTES = 32
# Password checks cost ~0.3 s of CPU and 16 MiB each (scrypt, on purpose). At most
# this many run at once, in threads, so logins can never take every core or the
# threads the storage engine needs.
PASSWORD_CHECKS_AT_ONCE = 1
# Password checks that may wait for one of those, at most: beyond, a login is refused
# at once (429 login_backoff), unhashed. A queue without a bound is a wait without
# one; at ~0.3 s a check the last in line waits about 5 s.
PASSWORD_CHECKS_WAITING = 16
# A login refused because checks are under way (its own user's or address's, or too
# many in all) did not fail: it is told to come back after this long.
LOGIN_BUSY_RETRY_SECONDS = 1.0
# User names longer than any [[user]] may have (config.MAX_NAME_LENGTH) are tracked
# by their SHA-256, so a client's 8 KiB "names" cost the back-off no more memory.
USER_KEY_MAX_CHARS = 128
# When wrong Bearer tokens lock an address out, this is logged once per address per
# this long at most: a guessing program must not flood the log either.
TOKEN_LOCKOUT_LOG_SECONDS = 60.0
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


# A token an operator chooses (their own admin token in <data>/admin-token, one they
# hash with `herald tokens hash`) must be as far out of reach of guessing as 128
# bits: 32 hex digits (`openssl rand -hex 16`) are exactly that; `herald tokens new`
# and Herald's own admin token are 43 base64url characters, 256 bits. Guessing is
# not only online (rate-limited): a token_sha256 that leaks with a config file can
# be attacked offline at billions of guesses a second, and 2^128 of them stay out of
# reach. Length alone lets "changemechangeme…" through, so a token must also use at
# least MIN_TOKEN_DISTINCT_CHARS different characters (a random hex token of 32 has
# fewer with a probability of 4e-8).
MIN_TOKEN_CHARS = 32
MIN_TOKEN_DISTINCT_CHARS = 8


def token_problem(token: str) -> str | None:
    """What makes ``token`` too weak or unusable as a Bearer token; None if nothing."""
    if not all("!" <= c <= "~" for c in token):
        return ("must be printable ASCII without spaces (it is sent in an Authorization "
                "header), on one line")
    if len(token) < MIN_TOKEN_CHARS:
        return (f"is {len(token)} characters; at least {MIN_TOKEN_CHARS} are required "
                "(128 bits: `herald tokens new` makes one)")
    if len(set(token)) < MIN_TOKEN_DISTINCT_CHARS:
        return (f"uses only {len(set(token))} different characters; a random token uses "
                f"at least {MIN_TOKEN_DISTINCT_CHARS} (`herald tokens new` makes one)")
    return None


def ensure_admin_token(path: Path) -> tuple[str, bool]:
    """The admin token, created if missing. Returns (token, created).

    The file is Herald's own secret (herald.secretfiles): a link, a directory, a file
    that is not UTF-8 or that others may read is refused with a ConfigError, and so is
    a token an operator put there that is too weak (``token_problem``). An empty file
    counts as missing. A new token is written whole or not at all, mode 0600.
    """
    try:
        token = read_private_text(path, "admin token").strip()
    except FileNotFoundError:
        token = ""
    if token:
        problem = token_problem(token)
        if problem is not None:
            raise ConfigError(f"admin token {path}: the token {problem}; delete the file "
                              "and restart for a new one, or write a stronger one there")
        return token, False
    token = secrets.token_urlsafe(ADMIN_TOKEN_BYTES)
    write_private(path, (token + "\n").encode())
    return token, True


def refuse_certificate(certificate: ClientCertificate | None) -> None:
    """Forbidden, with the problem's code, if the client's certificate is refused."""
    if certificate is not None and certificate.problem is not None:
        raise Forbidden(certificate.problem.message, code=certificate.problem.code,
                        subject=certificate.subject_text)


def _limited(what: str, wait: float) -> RateLimited:
    return RateLimited(f"{what}; try again in {max(1, math.ceil(wait))} s",
                       code="login_backoff", retry_after=wait)


def _user_key(user: str) -> tuple[str, str]:
    if len(user) > USER_KEY_MAX_CHARS:
        return ("user", "sha256:" + token_sha256(user))
    return ("user", user)


class Authenticator:
    """Finds the principal of an API request and the user of a dashboard login.

    Failed logins and wrong tokens are throttled per client address (and logins per
    user name too), and the throttle is paid *before* the expensive part, so that
    requests sent together cannot all slip past it (issue 12):

    1. A login first looks at the user's and the address's lock-outs; then, if its
       password is not the one a recent login proved, it takes a place: at most
       ``LOGIN_CHECKS_IN_FLIGHT`` checks under way per user and per address, at
       most ``PASSWORD_CHECKS_WAITING`` waiting in all; anything beyond gets 429
       ``login_backoff`` at once, unhashed. Its place counts as a failure until the
       check says otherwise (``LoginBackoff.begin``).
    2. Checks run ``PASSWORD_CHECKS_AT_ONCE`` at a time (``CheckGate``); those from
       addresses with no failures go first, so a flood of guesses from elsewhere
       does not stand between a real user and the login.
    3. Unknown user names take the same path, through the same limits, to a decoy
       hash with the users' own scrypt parameters: as slow as a known name.
    4. A wrong Bearer token counts against its address (``token_failures``); an
       address over the limit gets 429 before any token of its is compared.
    """

    def __init__(self, admin_token: str, principals: Sequence[PrincipalConfig] = (),
                 users: Sequence[UserConfig] = (), *, require_client_cert: bool = False,
                 backoff: LoginBackoff | None = None,
                 token_failures: RateLimiter | None = None) -> None:
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
        # stranger cannot tell which names exist: with the parameters of the users'
        # own hashes (a decoy cheaper or dearer than those would tell). Random:
        # nothing ever matches it.
        model = next(iter(self._passwords.values()), None)
        self._decoy = (ScryptHash(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, secrets.token_bytes(16),
                                  secrets.token_bytes(32)) if model is None else
                       ScryptHash(model.log_n, model.r, model.p,
                                  secrets.token_bytes(len(model.salt)),
                                  secrets.token_bytes(len(model.digest))))
        self.backoff = backoff if backoff is not None else LoginBackoff()
        self._gate = CheckGate(PASSWORD_CHECKS_AT_ONCE, PASSWORD_CHECKS_WAITING)
        self.token_failures = (token_failures if token_failures is not None else
                               RateLimiter(TOKEN_FAILURES_PER_SECOND, TOKEN_FAILURE_BURST))
        self._token_log = RateLimiter(1 / TOKEN_LOCKOUT_LOG_SECONDS, 1)
        self._cache_key = secrets.token_bytes(32)
        # The password checks under way, by the HMAC of their user and password.
        self._checking: dict[bytes, asyncio.Future[bool]] = {}
        self._logins: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    @staticmethod
    def _principal(config: PrincipalConfig, via: Via) -> Principal:
        return Principal(config.name, config.publish, config.subscribe, config.admin, via)

    # --- the API -----------------------------------------------------------------------

    def authenticate(self, authorization: str | None,
                     certificate: ClientCertificate | None = None,
                     address: str = "unknown") -> Principal:
        """The principal calling the API from ``address``; Unauthorized/Forbidden if none
        may, RateLimited if that address sent too many wrong tokens."""
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
            return self._by_bearer(credentials.strip(), address)
        if certificate is not None:
            known = self._by_subject.get(certificate.subject)
            if known is not None:
                return known
            return Principal(certificate.subject_text, via="client certificate",
                             configured=False)
        raise Unauthorized("credentials required: a client certificate or "
                           "Authorization: Bearer <token>", code="unauthorized")

    def _by_bearer(self, token: str, address: str) -> Principal:
        key = address_key(address)
        wait = self.token_failures.wait(key)
        if wait > 0:
            raise _limited(f"too many wrong tokens from address {address}", wait)
        try:
            return self._compare_token(token)
        except Unauthorized:
            self.token_failures.take(key)  # what fails pays
            if self.token_failures.wait(key) > 0 and self._token_log.take(key) == 0.0:
                log.warning("too many wrong Bearer tokens from %s: its requests with a token "
                            "get 429 login_backoff for now", logsafe(address))
            raise

    def _compare_token(self, token: str) -> Principal:
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
        keys = (_user_key(user), ("address", address_key(address)))
        whats = (f"user {user}", f"address {address}")
        # From here to begin() below there is no await: the look at the locks and the
        # places taken are one step, whatever else arrives meanwhile.
        for key, what in zip(keys, whats, strict=True):
            wait = self.backoff.retry_after(key)
            if wait > 0:
                raise _limited(f"too many failed logins for {what}", wait)
        proof = hmac.new(self._cache_key, f"{user}\0{password}".encode(), "sha256").digest()
        check = self._checking.get(proof)
        if self._proven(user, proof):
            ok = True
        elif check is not None:
            # The same user and password are being checked already (a browser sends
            # the page's and the icon's requests together): one hash answers both.
            ok = await asyncio.shield(check)
        else:
            for key, what in zip(keys, whats, strict=True):
                if self.backoff.busy(key):
                    raise _limited(f"a login for {what} is being checked already",
                                   LOGIN_BUSY_RETRY_SECONDS)
            if self._gate.full():
                raise _limited("too many logins are being checked", LOGIN_BUSY_RETRY_SECONDS)
            place = self._gate.reserve(first=self.backoff.failures(keys[1]) == 0)
            failures = max([self.backoff.begin(key) for key in keys])
            # A task of its own: a client that hangs up does not end the check half
            # way, and its place is given back only when the hash is done.
            check = asyncio.ensure_future(
                self._check(user, password, proof, keys, place, failures, address))
            self._checking[proof] = check
            check.add_done_callback(self._checked)
            ok = await asyncio.shield(check)
        if not ok:
            raise Unauthorized("wrong user name or password", code="invalid_login")
        for key in keys:
            self.backoff.success(key)
        return user

    async def _check(self, user: str, password: str, proof: bytes,
                     keys: tuple[tuple[str, str], ...], place: asyncio.Future[None],
                     failures: int, address: str) -> bool:
        """The password check a login has taken its places for (``LoginBackoff.begin``,
        ``CheckGate.reserve``)."""
        ok = False
        try:
            ok = await self._password_ok(user, password, place)
        finally:
            for key in keys:
                self.backoff.end(key, ok)
        if ok:
            self._remember(user, proof)
        else:
            log.warning("dashboard login failed for user %s from %s (%d in a row)",
                        logsafe(user), logsafe(address), failures)
        return ok

    def _checked(self, check: asyncio.Future[bool]) -> None:
        for proof, running in list(self._checking.items()):
            if running is check:
                del self._checking[proof]
        if not check.cancelled():
            check.exception()  # retrieved: asyncio does not warn about it again

    def _proven(self, user: str, proof: bytes) -> bool:
        """True if a login within LOGIN_CACHE_SECONDS proved this user's password."""
        cached = self._logins.get(user)
        return (cached is not None and time.monotonic() < cached[1]
                and hmac.compare_digest(cached[0], proof))

    def _remember(self, user: str, proof: bytes) -> None:
        self._logins[user] = (proof, time.monotonic() + LOGIN_CACHE_SECONDS)
        self._logins.move_to_end(user)
        if len(self._logins) > LOGIN_CACHE_ENTRIES:
            self._logins.popitem(last=False)

    async def _password_ok(self, user: str, password: str,
                           place: asyncio.Future[None]) -> bool:
        stored = self._passwords.get(user)
        try:
            await place
        except asyncio.CancelledError:
            self._gate.leave(place)
            raise
        try:
            ok = await asyncio.to_thread(verify_password, password, stored or self._decoy)
        finally:
            self._gate.release()
        return ok and stored is not None
