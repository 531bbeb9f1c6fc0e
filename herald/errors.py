"""Herald's errors: one tree, each error knowing who is at fault.

Every error Herald raises — in the server, the engines, the client and the CLI — is
a ``HeraldError``. Each class owns the stable machine-readable codes it lists in
``codes`` (sent on the wire as ``{"error": {"code": …, "message": …, …}}``; the first
is its ``default_code``) and carries the HTTP ``status`` it maps to. A code is owned
by exactly one class — defining a second owner raises at import — so a client
rebuilds the very class the server meant from the code alone (``error_from_wire``);
the status only picks a generic class for a code this version does not know.

    HeraldError                     the root; owns no code (a bare one is internal_error)
    ├── ClientError                 the caller is at fault (4xx); bad_request, …
    │   ├── InvalidRequest          400  malformed JSON, wrong types, bad parameters
    │   │   ├── InvalidStreamName   400  invalid_stream_name
    │   │   └── EmptyBatch          400  empty_batch
    │   ├── Unauthorized            401  no or bad credentials
    │   ├── Forbidden               403  missing permission; a refused client certificate
    │   ├── NotFound                404  stream_not_found / gatherer_not_found / not_found
    │   ├── RequestTimeout          408  the request's body came too slowly
    │   ├── ExpectedHeadMismatch    409  the stream's head is not the expected one (.head)
    │   ├── Conflict                409  the request does not fit the current state
    │   ├── TooLarge                413  event_too_large / batch_too_large
    │   ├── UnsupportedEncoding     415  unsupported_encoding: a compressed body
    │   └── RateLimited             429  rate_limited / login_backoff (Retry-After)
    ├── ConfigError                 400  invalid_config: the configuration is wrong
    ├── ServerError                 Herald or its storage is at fault (5xx)
    │   └── StorageError            500  storage_error: the storage failed the request
    │       ├── CorruptRecord       500  a stored record fails its checksum
    │       ├── StorageFull         507  the disk is full; nothing was written
    │       └── StorageUnavailable  503  the engine cannot be reached
    ├── SourceError                 a gathered source is at fault (a module's store)
    │   ├── SourceUnavailable       503  the source cannot be reached or queried
    │   └── UnmappableRow           422  a source row cannot become an event (.position)
    └── TransportError              client side: the server could not be reached
        └── ProtocolError           the server answered something we cannot parse

Every code, its class and its meaning: docs/api.md, "Errors" (tests/unit/test_errors.py
keeps the two the same).

Driver exceptions (OSError, msgspec, aiohttp, psycopg…) are converted at the layer
that sees them with ``raise … from exc``; they never reach users.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

__all__ = [
    "HeraldError",
    "ClientError",
    "InvalidRequest",
    "InvalidStreamName",
    "EmptyBatch",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "RequestTimeout",
    "ExpectedHeadMismatch",
    "Conflict",
    "TooLarge",
    "UnsupportedEncoding",
    "RateLimited",
    "ConfigError",
    "ServerError",
    "StorageError",
    "CorruptRecord",
    "StorageFull",
    "StorageUnavailable",
    "SourceError",
    "SourceUnavailable",
    "UnmappableRow",
    "TransportError",
    "ProtocolError",
    "error_from_wire",
    "registered_codes",
]

# code → the one class that owns it; filled as the classes below are defined.
_OWNERS: dict[str, type[HeraldError]] = {}
_CODE = re.compile(r"[a-z]+(?:_[a-z]+)*")


def _register(cls: type[HeraldError], codes: object) -> None:
    """Record ``cls`` as the owner of ``codes``; nothing is recorded if any is wrong."""
    name = cls.__qualname__
    if not isinstance(codes, tuple) or not codes:
        raise TypeError(f"{name}.codes must be a non-empty tuple of error codes")
    for code in codes:
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            raise TypeError(f"{name}.codes: {code!r} is not an error code (lower_snake_case)")
    if len(set(codes)) != len(codes):
        raise TypeError(f"{name}.codes lists a code twice: {codes!r}")
    for code in codes:
        owner = _OWNERS.get(code)
        if owner is not None:
            raise TypeError(f"error code {code!r} is already owned by {owner.__qualname__}; "
                            f"{name} cannot own it too")
    for code in codes:
        _OWNERS[code] = cls


def registered_codes() -> Mapping[str, type[HeraldError]]:
    """Every registered code and the class that owns it (read-only)."""
    return MappingProxyType(_OWNERS)


class HeraldError(Exception):
    """Root of every error Herald raises.

    ``code`` is stable and machine-readable; ``message`` is for people; ``details``
    carries the data a program needs to react (e.g. the actual head on a conflict).

    A subclass lists the codes it owns in ``codes``, its ``default_code`` first (it is
    set from ``codes``; do not declare it). A subclass that lists none owns none and
    keeps its parent's default. ``required_details`` names the details (and their
    types) an instance must carry for its properties to work; an answer without them
    is not rebuilt as that class. ``status`` is the class's HTTP status; an error
    rebuilt from an answer carries the answer's status.
    """

    status: int = 500
    codes: ClassVar[tuple[str, ...]] = ()
    # The root owns no code: a bare HeraldError is answered as ServerError's code.
    default_code: ClassVar[str] = "internal_error"
    required_details: ClassVar[Mapping[str, type]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "default_code" in cls.__dict__:
            raise TypeError(f"{cls.__qualname__}: list the codes it owns in codes; "
                            "default_code is codes[0]")
        codes = cls.__dict__.get("codes")
        if codes is None:
            cls.codes = ()  # owns no code of its own
            return
        _register(cls, codes)
        cls.default_code = codes[0]

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        """The JSON error document sent to clients."""
        return {"error": {"code": self.code, "message": self.message, **self.details}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


class ClientError(HeraldError):
    """The request was wrong; retrying it unchanged will fail again.

    Its own codes: refusals of the HTTP layer (a request that is not HTTP, a method a
    route does not take, a header over the limit) and the client's and the command
    line's own mistakes (a bad URL, token file or TLS file; an existing file, a
    missing CA, a bad name, nothing (or a weak token) on stdin, a command that moved
    out of the package). It is also what a 4xx answer with a code this version does
    not know becomes (with that status).
    """

    status = 400
    codes: ClassVar[tuple[str, ...]] = (
        # the HTTP layer's refusals
        "bad_request", "method_not_allowed", "headers_too_large",
        # the client's own
        "bad_url", "bad_token_file", "bad_tls_files",
        # the command line's own
        "file_exists", "no_ca", "invalid_name", "empty_password", "empty_token", "weak_token",
        "moved",
    )


class InvalidRequest(ClientError):
    status = 400
    codes: ClassVar[tuple[str, ...]] = (
        "invalid_request", "invalid_json", "invalid_event", "invalid_parameter", "duplicate_id",
    )


class InvalidStreamName(InvalidRequest):
    codes: ClassVar[tuple[str, ...]] = ("invalid_stream_name",)


class EmptyBatch(InvalidRequest):
    codes: ClassVar[tuple[str, ...]] = ("empty_batch",)


class Unauthorized(ClientError):
    status = 401
    codes: ClassVar[tuple[str, ...]] = (
        "unauthorized", "invalid_token", "client_cert_required", "login_required",
        "invalid_login",
    )


class Forbidden(ClientError):
    status = 403
    codes: ClassVar[tuple[str, ...]] = (
        "forbidden", "client_cert_not_for_client_auth", "client_cert_expired",
        "client_cert_not_yet_valid", "client_cert_unknown_ca", "client_cert_invalid",
    )


class NotFound(ClientError):
    status = 404
    codes: ClassVar[tuple[str, ...]] = ("not_found", "stream_not_found", "gatherer_not_found")


class RequestTimeout(ClientError):
    status = 408
    codes: ClassVar[tuple[str, ...]] = ("request_timeout",)


class ExpectedHeadMismatch(ClientError):
    """An append's ``expected_head`` was stale. ``details["head"]`` is the actual head."""

    status = 409
    codes: ClassVar[tuple[str, ...]] = ("expected_head_mismatch",)
    required_details: ClassVar[Mapping[str, type]] = MappingProxyType({"head": int})

    @property
    def head(self) -> int:
        return int(self.details["head"])


class Conflict(ClientError):
    """The request is valid but does not fit the current state (e.g. skipping a row a
    gatherer is not stopped at; a gatherer's stream holds events it did not gather).
    ``details`` say what the state is. A 409 with a code this version does not know
    becomes a Conflict — never an ExpectedHeadMismatch."""

    status = 409
    codes: ClassVar[tuple[str, ...]] = (
        "conflict", "not_stopped_at_position", "stream_not_gathered",
    )


class TooLarge(ClientError):
    status = 413
    codes: ClassVar[tuple[str, ...]] = ("too_large", "batch_too_large", "event_too_large")


class UnsupportedEncoding(ClientError):
    """A request body in a ``Content-Encoding`` Herald does not accept (any but
    ``identity``): a few compressed bytes can inflate to gigabytes, so bodies are
    taken only as sent, and refused before they are read."""

    status = 415
    codes: ClassVar[tuple[str, ...]] = ("unsupported_encoding",)


class RateLimited(ClientError):
    status = 429
    codes: ClassVar[tuple[str, ...]] = ("rate_limited", "login_backoff")


class ConfigError(HeraldError):
    """The configuration (file, environment, flags) is wrong; the message names the key."""

    status = 400
    codes: ClassVar[tuple[str, ...]] = ("invalid_config",)


class ServerError(HeraldError):
    """Herald or its storage failed; the request may succeed later. Also what a 5xx
    answer with a code this version does not know becomes (with that status)."""

    status = 500
    codes: ClassVar[tuple[str, ...]] = ("internal_error", "listen_failed")


class StorageError(ServerError):
    """The storage (the files engine's disk, PostgreSQL) failed the request: an I/O or
    a database error. Nothing acknowledged is lost."""

    status = 500
    codes: ClassVar[tuple[str, ...]] = ("storage_error",)


class CorruptRecord(StorageError):
    """A stored record fails its length or CRC check. It is never served."""

    status = 500
    codes: ClassVar[tuple[str, ...]] = ("corrupt_record",)


class StorageFull(StorageError):
    """No space left: the append was not written, nothing acknowledged is lost."""

    status = 507
    codes: ClassVar[tuple[str, ...]] = ("storage_full",)


class StorageUnavailable(StorageError):
    status = 503
    codes: ClassVar[tuple[str, ...]] = ("storage_unavailable",)


class SourceError(HeraldError):
    """A gatherer's source (a module's private store) is at fault, not the caller and
    not Herald. Reported in the gatherer's status; never raised to an HTTP client."""

    status = 502
    codes: ClassVar[tuple[str, ...]] = (
        "source_error", "bad_position", "missing_driver", "bad_source_config",
    )


class SourceUnavailable(SourceError):
    """The source cannot be reached or queried; the gatherer retries with back-off."""

    status = 503
    codes: ClassVar[tuple[str, ...]] = ("source_unavailable",)


class UnmappableRow(SourceError):
    """A source row cannot become an event (bad JSON, no type…). The gatherer stops at
    it until an operator skips it. ``details`` name the gatherer and the position."""

    status = 422
    codes: ClassVar[tuple[str, ...]] = ("unmappable_row",)
    required_details: ClassVar[Mapping[str, type]] = MappingProxyType({"position": int})

    @property
    def position(self) -> int:
        return int(self.details["position"])


class TransportError(HeraldError):
    """Client side: the server could not be reached, or the connection broke."""

    status = 0
    codes: ClassVar[tuple[str, ...]] = (
        "transport_error", "tls_error", "timeout", "connection_failed",
    )


class ProtocolError(TransportError):
    """Client side: the server's answer could not be understood."""

    codes: ClassVar[tuple[str, ...]] = ("protocol_error",)


# A code this version does not know (a newer server's, a proxy's ``http_502``) picks a
# class by its status alone: only classes that mean nothing more than their status
# and whose properties cannot fail (no ``required_details``). Never
# ExpectedHeadMismatch: a 409 is not a stale head unless its code says so.
_BY_STATUS: dict[int, type[HeraldError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    413: TooLarge,
    429: RateLimited,
}


def _by_status(status: int) -> type[HeraldError]:
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls
    return ClientError if 400 <= status < 500 else ServerError


def _has_required(cls: type[HeraldError], details: Mapping[str, Any]) -> bool:
    for name, kind in cls.required_details.items():
        value = details.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return False
    return True


def error_from_wire(status: int, document: Any) -> HeraldError:
    """Rebuild the exception the server raised from its status and JSON body.

    The class is the owner of the answer's code. A code nobody owns — or an answer
    that lacks the details its owner needs (an ``expected_head_mismatch`` without an
    integer ``head``) — gets a generic class by status (``_BY_STATUS``, else
    ClientError for 4xx, ServerError otherwise). The error keeps the answer's status.
    """
    body = document.get("error") if isinstance(document, dict) else None
    if not isinstance(body, dict):
        body = {}
    code = body.get("code")
    if not isinstance(code, str) or not code:
        code = "http_%d" % status
    message = body.get("message")
    if not isinstance(message, str):
        message = f"HTTP {status}"
    details = {str(k): v for k, v in body.items() if k not in ("code", "message")}
    cls = _OWNERS.get(code)
    if cls is None or not _has_required(cls, details):
        cls = _by_status(status)
    error = cls(message, code=code, **details)
    if 100 <= status <= 599 and error.status != status:
        error.status = status
    return error
