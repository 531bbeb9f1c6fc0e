"""Pure values and rules: events, stream names, positions, limits. No I/O.

Vocabulary (see docs/architecture.md): a *stream* is a named, ordered, append-only
log; an *event* has ``id``, ``type``, ``data`` (JSON), ``meta`` (string headers) and
``time`` (set by Herald); its *position* is its 0-based, dense index in the stream;
the *head* is the number of events in the stream; a *batch* is the unit of storage
and transfer.
"""

from __future__ import annotations

import os
import re
import time as _time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

from .errors import InvalidRequest, InvalidStreamName, ProtocolError

__all__ = [
    "Limits",
    "NewEvent",
    "StoredEvent",
    "StoredBatch",
    "Batch",
    "Event",
    "AppendResult",
    "Duplicate",
    "StreamInfo",
    "validate_stream_name",
    "validate_position",
    "validate_decimal",
    "new_id_prefix",
    "assigned_id",
    "id_suffixes",
    "now_us",
    "time_from_us",
    "MAX_POSITION",
    "MAX_STREAM_NAME_LENGTH",
    "MAX_TYPE_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_META_KEY_LENGTH",
]

# A stream name becomes a directory name (files engine), a table key (postgres) and
# a blob prefix (azure). 128 characters of a portable alphabet fit them all.
MAX_STREAM_NAME_LENGTH = 128
_STREAM_NAME = re.compile(r"[A-Za-z0-9._-]+")

# Types and ids are looked at by people and indexed by subscribers; keep them short.
MAX_TYPE_LENGTH = 256
MAX_ID_LENGTH = 128
MAX_META_KEY_LENGTH = 128

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Positions, heads and counts are signed 64-bit integers in every engine (postgres
# BIGINT); a client's number beyond this is refused before it reaches one.
MAX_POSITION = (1 << 63) - 1
_POSITION_DIGITS = len(str(MAX_POSITION))
# ASCII only: in a str pattern, \d would match every script's digits.
_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")

# UUIDs carry the index of the event in its batch in their last 16 bits, so one
# random prefix serves at most this many events (see new_ids).
_IDS_PER_PREFIX = 1 << 16


@dataclass(frozen=True)
class Limits:
    """Every limit a request is checked against, with its reason.

    Each is configurable under ``[limits]`` in the config file.
    """

    # One request body. Bounds the memory one append can pin while it is decoded.
    max_batch_bytes: int = 16 * 1024 * 1024
    # Events in one batch. A batch is stored as one record and read back whole, so
    # this also bounds the work a reader does to skip to a position inside a batch.
    max_batch_events: int = 10_000
    # One event as stored (its JSON). Larger payloads belong in a blob store, with
    # the event carrying a reference.
    max_event_bytes: int = 1024 * 1024
    # Events one JSON read returns (``limit``). Streaming reads are not limited.
    max_read_events: int = 10_000
    # Event ids remembered per stream for deduplication. A producer that retries
    # within this many events of its first attempt never appends twice.
    dedup_window: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_batch_bytes", "max_batch_events", "max_event_bytes",
                     "max_read_events", "dedup_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise LimitError(name, f"must be an integer, not {value!r}")
            if value < 1:
                raise LimitError(name, f"must be at least 1, not {value}")
        if self.max_batch_events > _IDS_PER_PREFIX:
            raise LimitError("max_batch_events", f"must be at most {_IDS_PER_PREFIX} (the "
                             f"events of one record), not {self.max_batch_events}")
        # The upper bounds that depend on the record format and the engine (a body
        # of at most 64 MiB): hub.check_limits, when a hub is made over an engine.


class LimitError(ValueError):
    """A limit that cannot be: ``key`` names it (config shows ``[limits] key: …``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"limits.{key} {message}")
        self.key = key
        self.message = message


_Type = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TYPE_LENGTH)]
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_MetaKey = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_META_KEY_LENGTH)]


# Per-event structs are created by the thousand per batch; gc=False keeps the cyclic
# garbage collector from scanning them again and again (4x faster decoding of large
# batches, measured). They hold only JSON values and strings, which cannot form
# reference cycles, so nothing is leaked.


class NewEvent(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """An event as a producer sends it. ``data`` is kept as raw JSON bytes:
    Herald validates it but never needs to build Python objects from it."""

    type: _Type
    data: msgspec.Raw
    # "id" is absent or a string; an explicit null is refused, not guessed at.
    id: _Id | msgspec.UnsetType = msgspec.UNSET
    meta: dict[_MetaKey, str] = {}


class StoredEvent(msgspec.Struct, gc=False):
    """An event inside a stored batch: what the producer sent, unchanged.

    ``id`` is None where the producer sent none; readers then derive it from the
    batch's id prefix (see ``assigned_id``). Position and time are not stored per
    event: the record header has the batch's base position and time (see codec)."""

    type: str
    data: msgspec.Raw
    id: str | None = None
    meta: dict[str, str] = {}


class StoredBatch(msgspec.Struct, gc=False):
    """A record's body: ``{"p": id prefix, "e": [events as sent]}``."""

    p: str
    e: list[StoredEvent]


class Batch(msgspec.Struct):
    """A validated append: the events, and the request bytes they came from.

    While the events are exactly the request's, the stored body reuses those bytes
    instead of encoding the events again (per-event work is the enemy)."""

    events: list[NewEvent]
    raw: bytes | None = None

    def supplied_ids(self) -> list[tuple[int, str]]:
        """(index, id) of the events that carry a producer-supplied id."""
        return [(i, e.id) for i, e in enumerate(self.events) if e.id is not msgspec.UNSET]


class Event(msgspec.Struct, kw_only=True, gc=False):
    """An event as a subscriber receives it, on the server and in the client.

    ``data`` is decoded from JSON when first accessed, then kept: a subscriber that
    filters on ``type`` never pays for the payloads it skips (and the server, which
    encodes ``raw`` back as it is, never decodes it). Decoded directly from a record
    body or from the wire by msgspec; ``position``, ``time`` and derived ids are
    filled in per batch (codec.events_of). Encoded by msgspec, it is the JSON form of
    the read API: ``{"position", "id", "type", "data", "meta", "time"}``.
    """

    position: int = -1
    id: str = ""
    type: str
    raw: msgspec.Raw = msgspec.field(name="data")
    meta: dict[str, str] = {}
    time: datetime = _EPOCH
    _data: Any = msgspec.UNSET

    @property
    def data(self) -> Any:
        """The event's JSON payload, decoded (once)."""
        value = self._data
        if value is msgspec.UNSET:
            try:
                value = self._data = msgspec.json.decode(self.raw)
            # Herald refuses at append the numbers msgspec cannot read (codec.
            # number_problem), but a stream may hold events from before that rule,
            # or be served by another server: a subscriber gets Herald's error.
            except (msgspec.MsgspecError, RecursionError) as exc:
                raise ProtocolError(f"event {self.position}: its data does not decode: {exc}",
                                    position=self.position) from exc
        return value

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "id": self.id, "type": self.type,
                "data": self.data, "meta": self.meta, "time": self.time}

    def __repr__(self) -> str:
        try:
            data = repr(self.data)
        except ProtocolError:
            data = f"<undecodable {bytes(self.raw)[:40]!r}>"
        return (f"Event(position={self.position!r}, id={self.id!r}, type={self.type!r}, "
                f"data={data}, meta={self.meta!r}, time={self.time!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.position, self.id, self.type, self.data, self.meta, self.time) == (
            other.position, other.id, other.type, other.data, other.meta, other.time)

    __hash__ = None  # type: ignore[assignment]


class Duplicate(msgspec.Struct):
    """An event of an append that was already in the stream's dedup window."""

    index: int  # its index in the request's batch
    id: str
    position: int  # where the stream already has it


class AppendResult(msgspec.Struct):
    """The answer to an append: the batch sits at ``first`` … ``head - 1``.

    When every event was a duplicate, nothing was appended: ``first`` is the position
    of the first duplicate's original and ``appended`` is 0."""

    first: int
    head: int
    appended: int
    duplicates: list[Duplicate] = []


class StreamInfo(msgspec.Struct):
    name: str
    head: int
    bytes: int


def validate_stream_name(name: str) -> str:
    """Return ``name`` if it is a valid stream name, else raise InvalidStreamName."""
    if not name or len(name) > MAX_STREAM_NAME_LENGTH:
        raise InvalidStreamName(
            f"stream name must be 1 to {MAX_STREAM_NAME_LENGTH} characters",
            stream=name[:MAX_STREAM_NAME_LENGTH * 2],
        )
    # Names become directory names: no "." or "..", and no hidden directories.
    if not _STREAM_NAME.fullmatch(name) or name.startswith("."):
        raise InvalidStreamName(
            "stream name may contain only A-Z a-z 0-9 . _ - and may not start with '.'",
            stream=name,
        )
    return name


def validate_position(value: str | int, name: str) -> int:
    """Parse a non-negative position or count, 0 to MAX_POSITION: the one parser of
    every integer a client sends (query parameters, ``Last-Event-ID``).

    Only ASCII decimal digits are accepted. Python's ``int()`` also takes ``1_0``,
    ``+3``, `` 3 `` and other scripts' digits (``٣``), so two parsers — a proxy's, a
    log's, Herald's — could read one request two ways.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        # Leading zeros are still a plain decimal; stripped, no bound is ever parsed
        # past MAX_POSITION's 19 digits.
        digits = value.lstrip("0")
        number = int(digits or "0") if len(digits) <= _POSITION_DIGITS else MAX_POSITION + 1
    else:
        number = -1
    if not 0 <= number <= MAX_POSITION:
        raise InvalidRequest(f"{name} must be a non-negative integer (ASCII digits, at most "
                             f"{MAX_POSITION})", code="invalid_parameter", parameter=name)
    return number


def validate_decimal(value: str, name: str) -> float:
    """Parse a non-negative decimal number (``15``, ``0.5``): ASCII digits and at most
    one point; no sign, exponent, ``_``, ``inf`` or ``nan``, which ``float()`` takes."""
    if not _DECIMAL.fullmatch(value):
        raise InvalidRequest(f"{name} must be a decimal number (ASCII digits, optionally "
                             "one '.')", code="invalid_parameter", parameter=name)
    return float(value)


_SUFFIXES: list[str] = []


def new_id_prefix() -> str:
    """A fresh prefix for the ids of one batch's events: a UUIDv7 (RFC 9562) minus
    its last four hex digits, which are the event's index in the batch.

    Per-event Python work is the enemy on the append path (``uuid.uuid4()`` costs
    ~3 µs; a batch of 1,000 would spend 3 ms on ids). So Herald draws one prefix per
    batch, stores it once in the record, and a reader derives an event's id as
    ``prefix + index`` (``assigned_id``). RFC 9562 §6.2 allows ``rand_b`` to carry
    a counter; 46 random bits per prefix per millisecond keep collisions out of reach.
    """
    ms = _time.time_ns() // 1_000_000
    r = int.from_bytes(os.urandom(8), "big")
    rand_a = r & 0xFFF
    rand_b_high = (r >> 12) & 0x3FFFFFFFFFFF  # 46 bits; the low 16 are the index
    hex_ms = f"{ms & 0xFFFFFFFFFFFF:012x}"
    hex_b = f"{(0b10 << 62) | (rand_b_high << 16):016x}"
    return f"{hex_ms[:8]}-{hex_ms[8:]}-7{rand_a:03x}-{hex_b[:4]}-{hex_b[4:12]}"


def id_suffixes(count: int) -> list[str]:
    """The id suffixes of the first ``count`` events of a batch (shared, don't mutate)."""
    if len(_SUFFIXES) < count:
        _SUFFIXES.extend(f"{i:04x}" for i in range(len(_SUFFIXES), count))
    return _SUFFIXES


def assigned_id(prefix: str, index: int) -> str:
    return prefix + id_suffixes(index + 1)[index]


def now_us() -> int:
    """Wall-clock time in microseconds since the Unix epoch."""
    return _time.time_ns() // 1000


def time_from_us(us: int) -> datetime:
    """Exact (a float of seconds would round microseconds away)."""
    return _EPOCH + timedelta(microseconds=us)
