"""The batch record format, on disk and on the wire. Bytes in, values out; no I/O.

A batch is stored and sent as one **record**::

    offset size  field
    0      4     magic  b"HRLD"
    4      1     version (1)
    5      1     flags (0; reserved)
    6      2     reserved (0)
    8      8     base position   u64  the position of the batch's first event
    16     4     count           u32  events in the batch (0 = a heartbeat frame)
    20     8     time            i64  microseconds since the Unix epoch
    28     4     length          u32  body bytes
    32     4     crc             u32  CRC-32 of bytes 0..31 and of the body
    36     …     body            JSON: {"p": id prefix, "e": [events as sent]}

All integers are little-endian. The CRC covers the header too, so a flipped bit in
the base position or the length is caught, not just one in the body. The body is
JSON because producers send JSON and subscribers want JSON: the validated request
array is stored byte for byte, and ``data`` goes from the record into a read answer
without being parsed into Python objects on the server (msgspec ``Raw``). Events
sent without an id get ``p`` + their index in the batch as id (model.assigned_id).

The same bytes travel on the wire in the compact streaming form
(``application/vnd.herald.records``); a record with ``count == 0`` and no body is a
heartbeat whose base is the stream's head.

Invariant (fuzzed in tests): any bytes either decode or raise ``CorruptRecord`` /
``InvalidRequest`` — never anything else.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from .errors import CorruptRecord, EmptyBatch, InvalidRequest, TooLarge
from .model import Batch, Event, Limits, NewEvent, StoredBatch, id_suffixes, time_from_us

_c_verdict: Callable[[bytes], int] | None
try:  # shape_verdict in C (herald/_shape.c), where it was built
    from ._shape import verdict as _c_verdict
except ImportError:  # pragma: no cover - built without a C compiler
    _c_verdict = None

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RECORD_BODY",
    "MAX_RECORD_COUNT",
    "BODY_OVERHEAD",
    "MEDIA_TYPE",
    "Record",
    "RecordDecoder",
    "decode_append",
    "decode_batch",
    "decode_record_at",
    "encode_batch",
    "encode_events",
    "encode_heartbeat",
    "encode_record",
    "events_of",
    "number_problem",
    "MAX_SAFE_INTEGER",
    "parse_records",
]

MAGIC = b"HRLD"
VERSION = 1
HEADER = struct.Struct("<4sBBHQIqII")
HEADER_SIZE = HEADER.size  # 36
_CRC_SPAN = HEADER_SIZE - 4  # the header bytes the CRC covers

# The format's bounds. A length field beyond them is treated as corruption rather
# than trusted: a reader must never allocate gigabytes because one bit flipped. The
# writer holds itself to the same two numbers (encode_record), and the hub refuses,
# at start, limits that would let a batch exceed them (Hub, ``check_limits``): what
# is acknowledged can always be read back, by every reader of the format.
MAX_RECORD_BODY = 64 * 1024 * 1024
MAX_RECORD_COUNT = 1 << 16
# What a record body adds to the request's events: ``{"p":"<prefix>","e":…}``, the
# prefix being model.new_id_prefix's 32 characters. A body is at most this plus the
# events' bytes as sent (re-encoding a batch, after dropping duplicates, only
# removes bytes).
BODY_OVERHEAD = len(b'{"p":"","e":}') + 32

MEDIA_TYPE = "application/vnd.herald.records"


@dataclass(frozen=True, slots=True)
class Record:
    """One batch as stored: header values and the record's bytes."""

    base: int
    count: int
    time_us: int
    raw: bytes  # the whole record: header and body

    @property
    def end(self) -> int:
        """The position after the batch's last event."""
        return self.base + self.count

    @property
    def body(self) -> memoryview:
        return memoryview(self.raw)[HEADER_SIZE:]


def encode_record(base: int, count: int, time_us: int, body: bytes) -> bytes:
    """A record's bytes. Raises TooLarge for a body or count beyond the format's
    bounds: a record no reader would accept is never written (the hub's limits
    keep every batch within them; this is the last line)."""
    if len(body) > MAX_RECORD_BODY or count > MAX_RECORD_COUNT:
        raise TooLarge(f"a record of {count} events and {len(body)} bytes is beyond the "
                       f"record format ({MAX_RECORD_COUNT} events, {MAX_RECORD_BODY} bytes)",
                       code="batch_too_large", limit=MAX_RECORD_BODY)
    head = HEADER.pack(MAGIC, VERSION, 0, 0, base, count, time_us, len(body), 0)
    crc = zlib.crc32(body, zlib.crc32(head[:_CRC_SPAN]))
    return head[:_CRC_SPAN] + crc.to_bytes(4, "little") + body


def encode_heartbeat(head: int, time_us: int) -> bytes:
    return encode_record(head, 0, time_us, b"")


def _check_header(
    buf: bytes | bytearray | memoryview, offset: int
) -> tuple[int, int, int, int, int]:
    """Unpack and sanity-check the header at ``offset``. The buffer holds it whole."""
    magic, version, _flags, _reserved, base, count, time_us, length, crc = HEADER.unpack_from(
        buf, offset
    )
    if magic != MAGIC:
        raise CorruptRecord("bad record magic", offset=offset)
    if version != VERSION:
        raise CorruptRecord(f"unknown record version {version}", offset=offset)
    if length > MAX_RECORD_BODY or count > MAX_RECORD_COUNT or (count == 0) != (length == 0):
        raise CorruptRecord("implausible record header", offset=offset)
    return base, count, time_us, length, crc


def decode_record_at(
    buf: bytes | bytearray | memoryview, offset: int = 0, verify: bool = True
) -> Record | None:
    """Decode the record at ``offset``; None if the buffer ends before it does.

    Raises CorruptRecord if the bytes there are not a valid record (with ``verify``
    False only the header is checked, not the CRC).
    """
    if len(buf) - offset < HEADER_SIZE:
        return None
    base, count, time_us, length, crc = _check_header(buf, offset)
    end = offset + HEADER_SIZE + length
    if end > len(buf):
        return None
    raw = bytes(buf[offset:end])
    if verify:
        view = memoryview(raw)
        actual = zlib.crc32(view[HEADER_SIZE:], zlib.crc32(view[:_CRC_SPAN]))
        if actual != crc:
            raise CorruptRecord("record checksum mismatch", offset=offset)
    return Record(base, count, time_us, raw)


def parse_records(
    buf: bytes | bytearray | memoryview, offset: int = 0, verify: bool = True
) -> tuple[list[Record], int]:
    """Decode consecutive whole records from ``offset``.

    Returns the records and the offset after the last one; an incomplete record at
    the end is left for the caller (more bytes may come). Raises CorruptRecord with
    ``offset`` set to where the damage starts.
    """
    records: list[Record] = []
    while True:
        record = decode_record_at(buf, offset, verify)
        if record is None:
            return records, offset
        records.append(record)
        offset += len(record.raw)


class RecordDecoder:
    """Incremental decoder for a stream of records (the compact wire form).

    ``feed`` bytes as they arrive; it returns the records completed so far.
    """

    def __init__(self, verify: bool = True) -> None:
        self._buffer = bytearray()
        self._verify = verify

    def feed(self, data: bytes) -> list[Record]:
        self._buffer += data
        records, used = parse_records(self._buffer, 0, self._verify)
        if used:
            del self._buffer[:used]
        return records

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole record."""
        return len(self._buffer)


# --- bodies ------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_batch_decoder = msgspec.json.Decoder(StoredBatch)


class _EventsBody(msgspec.Struct, gc=False):
    """A record body decoded straight into public Events (see events_of)."""

    p: str
    e: list[Event]


_events_decoder = msgspec.json.Decoder(_EventsBody)
_append_decoder = msgspec.json.Decoder(list[NewEvent])


def encode_events(events: list[NewEvent]) -> bytes:
    """The JSON array of ``events``, as a record body holds them."""
    return _encoder.encode(events)


def encode_batch(batch: Batch, prefix: str) -> bytes:
    """A record body: ``{"p": prefix, "e": [events]}``.

    The events' bytes are the request's own when the batch is unchanged (validated
    by ``decode_append``, which forbids unknown fields): no per-event work at all.
    """
    events = batch.raw if batch.raw is not None else _encoder.encode(batch.events)
    return b'{"p":"%s","e":%s}' % (prefix.encode(), events)


def decode_batch(body: bytes | memoryview) -> StoredBatch:
    """A record body's events. Raises CorruptRecord if it is not a body."""
    try:
        return _batch_decoder.decode(body)
    # msgspec raises UnicodeDecodeError for invalid UTF-8 in a string it builds and
    # RecursionError for deep nesting; neither is a MsgspecError.
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptRecord(f"record body does not decode: {exc}") from exc


def events_of(record: Record, start: int = 0, limit: int | None = None) -> list[Event]:
    """The events of ``record`` at positions ≥ ``start`` (at most ``limit``).

    The one place a record becomes events: the server renders them (JSON, SSE), the
    client hands them to subscribers, the gatherers read their own last events.
    msgspec builds the Event objects; this loop only fills in what the record holds
    once per batch (positions, the time, the ids Herald assigned). ``data`` stays
    raw JSON until someone reads ``Event.data``. Raises CorruptRecord if the body
    does not decode.
    """
    try:
        events = _events_decoder.decode(record.body)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptRecord(f"record at position {record.base} does not decode: {exc}",
                            first=record.base) from exc
    stored, prefix = events.e, events.p
    time = time_from_us(record.time_us)
    suffixes = id_suffixes(len(stored))
    base = record.base
    for i, event in enumerate(stored):
        event.position = base + i
        event.time = time
        if not event.id:
            event.id = prefix + suffixes[i]
    skip = start - base
    if skip > 0:
        stored = stored[skip:]
    if limit is not None and len(stored) > limit:
        del stored[limit:]
    return stored


# --- numbers every reader reads the same ----------------------------------------------

# JSON puts no bound on numbers; its readers do (RFC 7493, I-JSON §2.2). JavaScript
# reads every number as a double: an integer beyond ±(2**53 - 1) comes back as
# another one. Python's ``json`` refuses integers of more than 4,300 digits, msgspec
# those beyond 64 bits, and a double cannot hold 1e999 (inf to one reader, an error
# to the next). Herald refuses at append what any of them would read otherwise, so
# that every subscriber reads every event, in any language.
MAX_SAFE_INTEGER = 2**53 - 1
# The exact check: strings are skipped whole, numbers taken as JSON writes them.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*')


def number_problem(data: bytes | memoryview | msgspec.Raw) -> str | None:
    """Why a JSON value holds a number some reader would not read back exactly (None:
    it holds none). Integers must be within ±MAX_SAFE_INTEGER; other numbers must
    fit a double (not overflow to infinity)."""
    raw = bytes(memoryview(data))
    if _may_be_safe(raw):
        return None
    for match in _JSON_TOKEN.finditer(raw):
        token = match.group()
        if token[0] == 34:  # '"': a string
            continue
        if b"." in token or b"e" in token or b"E" in token:
            if math.isinf(float(token)):
                return f"the number {_shown(token)}, beyond what a double holds"
        elif len(token.lstrip(b"-")) > 16 or abs(int(token)) > MAX_SAFE_INTEGER:
            return (f"the integer {_shown(token)}, beyond ±{MAX_SAFE_INTEGER} (2**53 - 1): "
                    "JavaScript reads it as another number (send it as a string)")
    return None


def _may_be_safe(raw: bytes) -> bool:
    """True if ``raw`` (valid JSON) surely holds no number number_problem refuses;
    False: the exact check must look. Fast for nearly every body (see _SHAPE)."""
    if _c_verdict is not None:
        verdict = _c_verdict(raw)
    else:
        # First with the letters (but e and E) and quotes deleted: a third of the
        # bytes to search. Deleting can only join runs of digits, never part them, so
        # in valid JSON a body passing this passes the full shape too (a "." followed
        # by a letter is inside a string); one that does not is looked at again.
        quick = raw.translate(_SHAPE, _LETTERS)
        if not _long_integer_part(quick) and b"e000" not in quick:
            return True
        verdict = shape_verdict(raw)
    if verdict != 2:
        return verdict == 0
    # Only long exponents (or a hex id such as "…e8400…"): every integer has fewer than
    # 16 digits, so only a double's range is in question, and msgspec, reading every
    # number as a double at C speed, refuses one beyond it.
    try:
        msgspec.json.decode(raw)
    except (msgspec.MsgspecError, RecursionError):
        return False
    return True


def shape_verdict(raw: bytes) -> int:
    """The prefilter's rule, on ``raw`` mapped by _SHAPE: 1 if it holds 16 zeros in a
    row not right after a "." (a long integer part may be there), else 2 if it holds
    "e000" (a three-digit exponent may be there), else 0. herald._shape.verdict is
    this in C; tests hold the two to the same answers."""
    shape = raw.translate(_SHAPE)
    if _long_integer_part(shape):
        return 1
    return 2 if b"e000" in shape else 0


def _long_integer_part(shape: bytes) -> bool:
    """Does ``shape`` hold 16 digits in a row that do not follow a "."?"""
    for run in _LONG_RUN.finditer(shape):
        # Where the run of digits begins: after a ".", it is a fraction (0.1 + 0.2 is
        # 0.30000000000000004), which no reader misreads; else an integer part.
        before = max(shape.rfind(b" ", 0, run.start()), shape.rfind(b"e", 0, run.start()),
                     shape.rfind(b".", 0, run.start()))
        if before < 0 or shape[before] != 46:  # not "."
            return True
    return False


# The prefilter, a necessary condition at C speed. Integers beyond 2**53 - 1 have 16
# digits or more; a number beyond a double has an integer part of 210 digits or more,
# or an exponent of three digits or more (a 15-digit mantissa needs e294). So with
# digits and signs mapped to "0" (so "e+308" holds "e000"), e and E to "e", "." kept
# and every other byte a space (``bytes.translate``), a body is suspect only if it
# holds 16 zeros not right after a "." (a long fraction is no one's problem) or
# "e000": two literal searches, ~20 µs per 100-event batch (a regular expression over
# the body itself cost ~270). A suspect body is read by msgspec if only exponents are in
# question (a hex id with "e000" is the usual cause), else tokenized exactly.
_SHAPE = bytes(48 if (48 <= c <= 57 or c in (43, 45)) else 101 if c in (69, 101)
               else 46 if c == 46 else 32 for c in range(256))
_LETTERS = bytes(c for c in range(256)
                 if (65 <= c <= 90 or 97 <= c <= 122 or c == 34) and c not in (69, 101))
_LONG_RUN = re.compile(b"0" * 16)


def _shown(token: bytes) -> str:
    text = token.decode("ascii", "replace")
    return text if len(text) <= 40 else f"{text[:20]}…({len(text)} characters)"


def decode_append(body: bytes, limits: Limits) -> Batch:
    """Validate and decode an append request: a JSON array of events.

    Raises InvalidRequest (``invalid_json``, ``invalid_event``, ``empty_batch``) or
    TooLarge (``batch_too_large``, ``event_too_large``) naming what was wrong.
    """
    if len(body) > limits.max_batch_bytes:
        raise TooLarge(
            f"batch is {len(body)} bytes; the limit is {limits.max_batch_bytes}",
            code="batch_too_large", limit=limits.max_batch_bytes,
        )
    # JSON is UTF-8 (RFC 8259 §8.1), but msgspec checks it only in the strings it
    # builds, not inside ``Raw`` data: invalid UTF-8 there would be stored and then
    # fail every reader. ``isascii`` is a fast scan that spares ASCII bodies the decode.
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"body is not valid UTF-8 (byte {exc.start})",
                                 code="invalid_json") from exc
    try:
        events = _append_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid event: {exc}", code="invalid_event") from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError as exc:  # msgspec's guard against deep nesting
        raise InvalidRequest("body is nested too deeply", code="invalid_json") from exc
    if not events:
        raise EmptyBatch("a batch needs at least one event")
    if not _may_be_safe(body):
        for index, event in enumerate(events):
            problem = number_problem(event.data)
            if problem is not None:
                raise InvalidRequest(f"event {index}: its data holds {problem}",
                                     code="invalid_event", index=index)
    if len(events) > limits.max_batch_events:
        raise TooLarge(
            f"batch has {len(events)} events; the limit is {limits.max_batch_events}",
            code="batch_too_large", limit=limits.max_batch_events,
        )
    # No event can exceed the limit if the whole request does not: skip the
    # per-event pass for the common case of batches of small events.
    if len(body) > limits.max_event_bytes:
        for index, event in enumerate(events):
            size = len(_encoder.encode(event))
            if size > limits.max_event_bytes:
                raise TooLarge(
                    f"event {index} is {size} bytes; the limit is {limits.max_event_bytes}",
                    code="event_too_large", index=index, limit=limits.max_event_bytes,
                )
    return Batch(events, body)
