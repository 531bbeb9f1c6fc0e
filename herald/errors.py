"""Herald's errors: one tree, each error knowing who is at fault.

Every error Herald raises — in the server, the engines, the client and the CLI — is
a ``HeraldError``. Each class carries a stable machine-readable ``code`` (sent on
the wire as ``{"error": {"code": …, "message": …, …}}``) and the HTTP ``status`` it
maps to, so the server and the client share one table and a client rebuilds the
very exception the server raised.

    HeraldError
    ├── ClientError                 the caller is at fault (4xx)
    │   ├── InvalidRequest          400  malformed JSON, wrong types, bad parameters
    │   │   ├── InvalidStreamName   400  invalid_stream_name
    │   │   └── EmptyBatch          400  empty_batch
    │   ├── Unauthorized            401  no or bad credentials
    │   ├── Forbidden               403  missing permission; a refused client certificate
    │   ├── NotFound                404  stream_not_found / not_found
    │   ├── RequestTimeout          408  the request's body came too slowly
    │   ├── ExpectedHeadMismatch    409  the stream's head is not the expected one
    │   ├── Conflict                409  the request does not fit the current state
    │   ├── TooLarge                413  event_too_large / batch_too_large
    │   └── RateLimited             429  rate_limited / login_backoff (Retry-After)
    ├── ServerError                 Herald or its storage is at fault (5xx)
    │   ├── CorruptRecord           500  a stored record fails its checksum
    │   ├── StorageFull             507  the disk is full; nothing was written
    │   └── StorageUnavailable      503  the engine cannot be reached
    ├── SourceError                 a gathered source is at fault (a module's store)
    │   ├── SourceUnavailable       503  the source cannot be reached or queried
    │   └── UnmappableRow           422  a source row cannot become an event
    └── TransportError              client side: the server could not be reached
        └── ProtocolError           the server answered something we cannot parse

Driver exceptions (OSError, msgspec, aiohttp, psycopg…) are converted at the layer
that sees them with ``raise … from exc``; they never reach users.
"""

from __future__ import annotations

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
    "RateLimited",
    "ServerError",
    "CorruptRecord",
    "StorageFull",
    "StorageUnavailable",
    "SourceError",
    "SourceUnavailable",
    "UnmappableRow",
    "TransportError",
    "ProtocolError",
    "error_from_wire",
]


class HeraldError(Exception):
    """Root of every error Herald raises.

    ``code`` is stable and machine-readable; ``message`` is for people; ``details``
    carries the data a program needs to react (e.g. the actual head on a conflict).
    """

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

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
    """The request was wrong; retrying it unchanged will fail again."""

    status = 400
    default_code = "bad_request"


class InvalidRequest(ClientError):
    status = 400
    default_code = "invalid_request"


class InvalidStreamName(InvalidRequest):
    default_code = "invalid_stream_name"


class EmptyBatch(InvalidRequest):
    default_code = "empty_batch"


class Unauthorized(ClientError):
    status = 401
    default_code = "unauthorized"


class Forbidden(ClientError):
    status = 403
    default_code = "forbidden"


class NotFound(ClientError):
    status = 404
    default_code = "not_found"


class RequestTimeout(ClientError):
    status = 408
    default_code = "request_timeout"


class ExpectedHeadMismatch(ClientError):
    """An append's ``expected_head`` was stale. ``details["head"]`` is the actual head."""

    status = 409
    default_code = "expected_head_mismatch"

    @property
    def head(self) -> int:
        return int(self.details["head"])


class Conflict(ClientError):
    """The request is valid but does not fit the current state (e.g. skipping a row a
    gatherer is not stopped at). ``details`` say what the state is."""

    status = 409
    default_code = "conflict"


class TooLarge(ClientError):
    status = 413
    default_code = "too_large"


class RateLimited(ClientError):
    status = 429
    default_code = "rate_limited"


class ServerError(HeraldError):
    """Herald or its storage failed; the request may succeed later."""

    status = 500
    default_code = "internal_error"


class CorruptRecord(ServerError):
    """A stored record fails its length or CRC check. It is never served."""

    status = 500
    default_code = "corrupt_record"


class StorageFull(ServerError):
    """No space left: the append was not written, nothing acknowledged is lost."""

    status = 507
    default_code = "storage_full"


class StorageUnavailable(ServerError):
    status = 503
    default_code = "storage_unavailable"


class SourceError(HeraldError):
    """A gatherer's source (a module's private store) is at fault, not the caller and
    not Herald. Reported in the gatherer's status; never raised to an HTTP client."""

    status = 502
    default_code = "source_error"


class SourceUnavailable(SourceError):
    """The source cannot be reached or queried; the gatherer retries with back-off."""

    status = 503
    default_code = "source_unavailable"


class UnmappableRow(SourceError):
    """A source row cannot become an event (bad JSON, no type…). The gatherer stops at
    it until an operator skips it. ``details`` name the gatherer and the position."""

    status = 422
    default_code = "unmappable_row"

    @property
    def position(self) -> int:
        return int(self.details["position"])


class TransportError(HeraldError):
    """Client side: the server could not be reached, or the connection broke."""

    status = 0
    default_code = "transport_error"


class ProtocolError(TransportError):
    """Client side: the server's answer could not be understood."""

    default_code = "protocol_error"


# The client rebuilds the server's exception from the status; a more specific class
# is chosen by code where one exists.
_BY_CODE: dict[str, type[HeraldError]] = {
    "invalid_stream_name": InvalidStreamName,
    "empty_batch": EmptyBatch,
    "corrupt_record": CorruptRecord,
    "storage_full": StorageFull,
    "storage_unavailable": StorageUnavailable,
    "expected_head_mismatch": ExpectedHeadMismatch,
    "not_stopped_at_position": Conflict,
    "conflict": Conflict,
}
_BY_STATUS: dict[int, type[HeraldError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: ExpectedHeadMismatch,
    413: TooLarge,
    429: RateLimited,
    503: StorageUnavailable,
    507: StorageFull,
}


def error_from_wire(status: int, document: Any) -> HeraldError:
    """Rebuild the exception the server raised from its status and JSON body."""
    body = document.get("error") if isinstance(document, dict) else None
    if not isinstance(body, dict):
        body = {"code": "http_%d" % status, "message": f"HTTP {status}"}
    details = {k: v for k, v in body.items() if k not in ("code", "message")}
    code = str(body.get("code", "http_%d" % status))
    message = str(body.get("message", f"HTTP {status}"))
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status)
    if cls is None:
        cls = ClientError if 400 <= status < 500 else ServerError
    error = cls(message, code=code, **details)
    return error
