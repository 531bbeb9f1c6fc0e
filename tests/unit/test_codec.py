"""The record codec: the format is pinned, round trips are exact, and damage is caught.

What this proves:

* the header layout is the one ``herald.codec`` documents (36 bytes, little-endian);
* ``encode_record`` → ``decode_record_at`` / ``parse_records`` / ``RecordDecoder``
  gives back exactly what went in, and the incremental decoder gives the same
  records however the bytes are chunked;
* a truncated record is "incomplete" (None / nothing yet), never an error and never
  a record; every single flipped bit of a record is caught (CorruptRecord), or — only
  in the length field — makes the record look incomplete;
* the stated invariant of ``herald/codec.py``: ANY bytes fed to ``decode_record_at``,
  ``parse_records``, ``RecordDecoder.feed``, ``decode_batch`` and ``decode_append``
  either decode or raise Herald's own error (CorruptRecord / InvalidRequest /
  TooLarge) — never struct.error, a msgspec error, UnicodeDecodeError,
  RecursionError or anything else;
* ``decode_append`` validates and names what was wrong; ``encode_batch`` bodies
  decode back to the events sent.

Hypothesis runs derandomized: every run checks the same examples.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald import codec
from herald.codec import HEADER_SIZE, MAGIC, Record, RecordDecoder
from herald.errors import CorruptRecord, EmptyBatch, HeraldError, InvalidRequest, TooLarge
from herald.model import Batch, Limits

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=400,
                suppress_health_check=[HealthCheck.too_slow])

U64 = (1 << 64) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1

# Byte ranges of the header fields (see the table in herald/codec.py).
MAGIC_SPAN = range(0, 4)
VERSION_SPAN = range(4, 5)
FLAGS_SPAN = range(5, 6)
RESERVED_SPAN = range(6, 8)
BASE_SPAN = range(8, 16)
COUNT_SPAN = range(16, 20)
TIME_SPAN = range(20, 28)
LENGTH_SPAN = range(28, 32)
CRC_SPAN = range(32, 36)

OUR_ERRORS = (CorruptRecord, InvalidRequest, TooLarge)


def decodes_or_raises_our_error(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn``; a Herald error of the permitted kinds is fine, anything else fails.

    Any other exception simply propagates, so pytest/hypothesis report it with its
    own traceback (and hypothesis shrinks the input)."""
    try:
        return fn(*args)
    except HeraldError as exc:
        assert isinstance(exc, OUR_ERRORS), f"unexpected Herald error {exc!r}"
        return exc


def flip(data: bytes, bit: int) -> bytes:
    mutable = bytearray(data)
    mutable[bit // 8] ^= 1 << (bit % 8)
    return bytes(mutable)


def body_of(*events: dict[str, Any], prefix: str = "0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f") -> bytes:
    return b'{"p":"%s","e":%s}' % (prefix.encode(), msgspec.json.encode(list(events)))


# --- strategies --------------------------------------------------------------------

bodies = st.binary(min_size=1, max_size=300)


@st.composite
def record_args(draw: st.DrawFn) -> tuple[int, int, int, bytes]:
    """(base, count, time_us, body) of a valid record: a batch or a heartbeat."""
    base = draw(st.integers(0, U64))
    time_us = draw(st.integers(I64_MIN, I64_MAX))
    if draw(st.booleans()) and draw(st.booleans()):
        return base, 0, time_us, b""  # a heartbeat
    return base, draw(st.integers(1, codec.MAX_RECORD_COUNT)), time_us, draw(bodies)


@st.composite
def plausible_records(draw: st.DrawFn) -> bytes:
    """Bytes that start like a record (magic, version) with anything after: they get
    past the first checks, so the length/count/CRC paths are fuzzed too."""
    fields = draw(st.tuples(
        st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, U64),
        st.sampled_from([0, 1, 2, 10, codec.MAX_RECORD_COUNT, codec.MAX_RECORD_COUNT + 1,
                         0xFFFFFFFF]),
        st.integers(I64_MIN, I64_MAX),
        st.sampled_from([0, 1, 5, 50, 300, codec.MAX_RECORD_BODY, codec.MAX_RECORD_BODY + 1,
                         0xFFFFFFFF]),
        st.integers(0, 0xFFFFFFFF),
    ))
    flags, reserved, base, count, time_us, length, crc = fields
    header = codec.HEADER.pack(MAGIC, codec.VERSION, flags, reserved, base, count, time_us,
                               length, crc)
    return header + draw(st.binary(max_size=400))


any_bytes = st.one_of(
    st.binary(max_size=600),
    plausible_records(),
    st.builds(lambda args, tail: codec.encode_record(*args) + tail,
              record_args(), st.binary(max_size=100)),
)

# JSON that is almost an append body or a record body, then possibly damaged: the
# shapes msgspec must walk (not just reject at byte 0).
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)
valid_events = st.fixed_dictionaries(
    {"type": st.text(min_size=1, max_size=10), "data": json_values},
    optional={"id": st.text(min_size=1, max_size=10),
              "meta": st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5))},
)
odd_events = st.fixed_dictionaries(
    {},
    optional={"type": st.one_of(st.text(max_size=10), json_values),
              "data": json_values,
              "id": st.one_of(st.none(), st.text(max_size=10), json_values),
              "meta": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
                                json_values),
              "extra": json_values},
)
JUNK = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b'"', b"[", b"}", b"\\", b"\\u",
        b"\\ud800", b"1e999999", b"[" * 1500 + b"]" * 1500, b"[" * 20_000]


@st.composite
def json_bodies(draw: st.DrawFn, record: bool) -> bytes:
    """Append bodies (or record bodies), mostly well formed, then possibly damaged —
    most often right inside a string, where only a UTF-8 check can notice."""
    events = draw(st.lists(valid_events, max_size=4))
    if draw(st.integers(0, 4)) == 0:
        events.insert(draw(st.integers(0, len(events))), draw(odd_events))
    if not record:
        raw = msgspec.json.encode(events)
    else:
        raw = msgspec.json.encode({"p": draw(st.one_of(st.text(max_size=40), json_values)),
                                   "e": events})
    if raw and draw(st.booleans()):
        quotes = [i + 1 for i, byte in enumerate(raw) if byte == ord('"')]
        if quotes and draw(st.booleans()):
            at = draw(st.sampled_from(quotes))
        else:
            at = draw(st.integers(0, len(raw) - 1))
        junk = draw(st.sampled_from(JUNK))
        how = draw(st.sampled_from(["overwrite", "insert", "insert", "cut"]))
        if how == "overwrite":
            raw = raw[:at] + junk + raw[at + len(junk):]
        elif how == "insert":
            raw = raw[:at] + junk + raw[at:]
        else:
            raw = raw[:at]
    return raw


SMALL_LIMITS = Limits(max_batch_bytes=400, max_batch_events=3, max_event_bytes=60)


# --- the format ----------------------------------------------------------------------


def test_header_layout_is_the_documented_one() -> None:
    record = codec.encode_record(0x0102030405060708, 3, -2, b'{"x":1}')
    assert HEADER_SIZE == 36
    assert record[0:4] == b"HRLD"
    assert record[4] == 1  # version
    assert record[5] == 0  # flags
    assert record[6:8] == b"\0\0"  # reserved
    assert record[8:16] == bytes([8, 7, 6, 5, 4, 3, 2, 1])  # base, little-endian
    assert struct.unpack("<I", record[16:20]) == (3,)
    assert struct.unpack("<q", record[20:28]) == (-2,)
    assert struct.unpack("<I", record[28:32]) == (7,)
    crc = zlib.crc32(record[36:], zlib.crc32(record[:32]))
    assert struct.unpack("<I", record[32:36]) == (crc,), "the CRC covers header and body"
    assert record[36:] == b'{"x":1}'


def test_heartbeat_is_an_empty_record_at_the_head() -> None:
    beat = codec.encode_heartbeat(42, 7)
    assert len(beat) == HEADER_SIZE
    record = codec.decode_record_at(beat)
    assert record == Record(base=42, count=0, time_us=7, raw=beat)
    assert record.end == 42 and bytes(record.body) == b""


@FUZZ
@given(record_args(), st.binary(max_size=50), st.sampled_from([bytes, bytearray, memoryview]))
def test_encode_decode_round_trip(
    args: tuple[int, int, int, bytes], before: bytes, kind: Callable[[bytes], Any]
) -> None:
    base, count, time_us, body = args
    raw = codec.encode_record(base, count, time_us, body)
    assert len(raw) == HEADER_SIZE + len(body)
    buffer = kind(before + raw + b"more")
    record = codec.decode_record_at(buffer, len(before))
    assert record is not None
    assert (record.base, record.count, record.time_us, record.raw) == (base, count, time_us, raw)
    assert bytes(record.body) == body
    assert record.end == base + count
    unverified = codec.decode_record_at(buffer, len(before), verify=False)
    assert unverified == record


@FUZZ
@given(st.lists(record_args(), max_size=8), st.lists(st.integers(0, 5000), max_size=12))
def test_record_decoder_gives_the_same_records_however_the_bytes_are_chunked(
    many: list[tuple[int, int, int, bytes]], cuts: list[int]
) -> None:
    raws = [codec.encode_record(*args) for args in many]
    stream = b"".join(raws)
    whole, used = codec.parse_records(stream)
    assert [r.raw for r in whole] == raws and used == len(stream)

    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    decoder = RecordDecoder()
    got: list[Record] = []
    for start, stop in itertools.pairwise(points):
        got += decoder.feed(stream[start:stop])
    assert got == whole
    assert decoder.pending == 0


def test_record_decoder_byte_by_byte() -> None:
    raws = [codec.encode_record(i * 3, 3, i, body_of({"type": "t", "data": i}))
            for i in range(4)] + [codec.encode_heartbeat(12, 99)]
    decoder = RecordDecoder()
    got: list[Record] = []
    for i in range(len(b"".join(raws))):
        got += decoder.feed(b"".join(raws)[i:i + 1])
    assert [r.raw for r in got] == raws
    assert decoder.pending == 0


def test_parse_records_leaves_an_incomplete_record_for_later() -> None:
    first = codec.encode_record(0, 1, 1, b"[1]")
    second = codec.encode_record(1, 1, 2, b"[2]")
    records, used = codec.parse_records(first + second[:-1])
    assert [r.raw for r in records] == [first] and used == len(first)
    records, used = codec.parse_records(first + second, used)
    assert [r.raw for r in records] == [second] and used == len(first) + len(second)


# --- damage --------------------------------------------------------------------------

SAMPLE = codec.encode_record(1234, 2, 1_700_000_000_000_000,
                             body_of({"type": "a", "data": 1}, {"type": "b", "data": [2]}))


def test_every_truncation_is_incomplete_never_an_error() -> None:
    for cut in range(len(SAMPLE)):
        prefix = SAMPLE[:cut]
        assert codec.decode_record_at(prefix) is None, cut
        assert codec.parse_records(prefix) == ([], 0), cut
        decoder = RecordDecoder()
        assert decoder.feed(prefix) == [], cut
        assert decoder.pending == cut
        assert [r.raw for r in decoder.feed(SAMPLE[cut:])] == [SAMPLE], cut


def test_every_bit_flip_is_caught() -> None:
    """With verification (the default) no flipped bit yields a record. A flip in the
    length field may make the record look longer than the bytes at hand: that reads
    as "incomplete" (None), which the engine's recovery treats as a torn tail."""
    for bit in range(len(SAMPLE) * 8):
        damaged = flip(SAMPLE, bit)
        byte = bit // 8
        try:
            result = codec.decode_record_at(damaged)
        except CorruptRecord as exc:
            assert exc.details["offset"] == 0
            continue
        assert result is None, f"bit {bit} (byte {byte}) flipped went unnoticed"
        assert byte in LENGTH_SPAN, f"bit {bit} (byte {byte}) flipped reads as incomplete"


@FUZZ
@given(record_args(), st.data())
def test_any_bit_flip_of_any_record_is_caught(
    args: tuple[int, int, int, bytes], data: st.DataObject
) -> None:
    raw = codec.encode_record(*args)
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    try:
        result = codec.decode_record_at(flip(raw, bit))
    except CorruptRecord:
        return
    assert result is None and bit // 8 in LENGTH_SPAN


def test_bit_flips_without_verification_change_only_dont_care_spots() -> None:
    """``verify=False`` checks the header's sanity, not the CRC: flips in magic or
    version are still caught; flips in flags, reserved, the CRC or the body are
    don't-care spots for it and give a record equal in every header field."""
    expected = codec.decode_record_at(SAMPLE)
    assert expected is not None
    for bit in range(len(SAMPLE) * 8):
        byte = bit // 8
        damaged = flip(SAMPLE, bit)
        if byte in MAGIC_SPAN or byte in VERSION_SPAN:
            with pytest.raises(CorruptRecord):
                codec.decode_record_at(damaged, verify=False)
        elif byte in FLAGS_SPAN or byte in RESERVED_SPAN or byte in CRC_SPAN or byte >= 36:
            record = codec.decode_record_at(damaged, verify=False)
            assert record is not None
            assert (record.base, record.count, record.time_us, len(record.raw)) == (
                expected.base, expected.count, expected.time_us, len(expected.raw)), bit
            with pytest.raises(CorruptRecord):
                codec.decode_record_at(damaged)  # verification catches it


def test_parse_records_names_where_the_damage_starts() -> None:
    good = codec.encode_record(0, 1, 1, b"[1]")
    bad = flip(codec.encode_record(1, 1, 2, b"[2]"), 8 * 37)  # a body bit
    with pytest.raises(CorruptRecord) as caught:
        codec.parse_records(good + bad)
    assert caught.value.details["offset"] == len(good)
    assert caught.value.code == "corrupt_record"


@pytest.mark.parametrize(("count", "length"), [(0, 5), (3, 0), (codec.MAX_RECORD_COUNT + 1, 5)])
def test_implausible_headers_are_corrupt(count: int, length: int) -> None:
    header = codec.HEADER.pack(MAGIC, codec.VERSION, 0, 0, 0, count, 0, length, 0)
    with pytest.raises(CorruptRecord, match="implausible"):
        codec.decode_record_at(header + b"x" * length)


def test_a_length_beyond_the_maximum_is_corrupt_not_awaited() -> None:
    """A reader must never wait for (or allocate) gigabytes because one bit flipped."""
    header = codec.HEADER.pack(MAGIC, codec.VERSION, 0, 0, 0, 1, 0, codec.MAX_RECORD_BODY + 1, 0)
    with pytest.raises(CorruptRecord):
        codec.decode_record_at(header)
    with pytest.raises(CorruptRecord):
        RecordDecoder().feed(header)


# --- the invariant: decodes, or raises our own error ---------------------------------


@FUZZ
@given(any_bytes, st.integers(0, 700))
def test_decode_record_at_any_bytes(data: bytes, offset: int) -> None:
    result = decodes_or_raises_our_error(codec.decode_record_at, data, offset)
    assert result is None or isinstance(result, (Record, CorruptRecord))
    decodes_or_raises_our_error(codec.decode_record_at, data, offset, False)


@FUZZ
@given(st.lists(any_bytes, max_size=4).map(b"".join))
def test_parse_records_any_bytes(data: bytes) -> None:
    result = decodes_or_raises_our_error(codec.parse_records, data)
    if not isinstance(result, HeraldError):
        records, used = result
        assert used == sum(len(r.raw) for r in records) <= len(data)


@FUZZ
@given(st.lists(any_bytes, max_size=6))
def test_record_decoder_feed_any_bytes(chunks: list[bytes]) -> None:
    decoder = RecordDecoder()
    for chunk in chunks:
        if isinstance(decodes_or_raises_our_error(decoder.feed, chunk), HeraldError):
            break


@FUZZ
@given(st.one_of(st.binary(max_size=300), json_bodies(record=True)))
def test_decode_batch_any_bytes(body: bytes) -> None:
    result = decodes_or_raises_our_error(codec.decode_batch, body)
    assert not isinstance(result, (InvalidRequest, TooLarge)), "a stored body is never a request"


@FUZZ
@given(st.one_of(st.binary(max_size=300), json_bodies(record=False)),
       st.sampled_from([Limits(), SMALL_LIMITS]))
def test_decode_append_any_bytes(body: bytes, limits: Limits) -> None:
    result = decodes_or_raises_our_error(codec.decode_append, body, limits)
    assert not isinstance(result, CorruptRecord), "a request is never a corrupt record"
    if isinstance(result, Batch):
        assert result.raw == body and 1 <= len(result.events) <= limits.max_batch_events
        # what was accepted is valid UTF-8 JSON all the way down
        for event in result.events:
            msgspec.json.decode(event.data)


@pytest.mark.parametrize("body", [
    b'[{"type":"\xff","data":1}]',
    b'[{"type":"a","data":"\xff"}]',  # inside Raw data: msgspec alone lets it through
    b'[{"type":"a","data":{"\xc3":1}}]',
    b'[{"type":"a","data":1,"id":"\xc3"}]',
    b'[{"type":"a","data":1,"meta":{"\xfe":"x"}}]',
    b'[{"type":"a","data":1,"meta":{"k":"\xed\xa0\x80"}}]',  # an encoded surrogate
])
def test_invalid_utf8_anywhere_in_an_append_is_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        codec.decode_append(body, Limits())
    assert caught.value.code == "invalid_json"


def test_invalid_utf8_in_a_record_body_is_corrupt() -> None:
    with pytest.raises(CorruptRecord):
        codec.decode_batch(b'{"p":"\xff","e":[]}')


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deep_nesting_is_refused_not_a_recursion_error(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    with pytest.raises(InvalidRequest) as caught:
        codec.decode_append(b'[{"type":"a","data":' + nested + b"}]", Limits())
    assert caught.value.code == "invalid_json"
    with pytest.raises(CorruptRecord):
        codec.decode_batch(b'{"p":"x","e":[{"type":"a","data":' + nested + b"}]}")


# --- append bodies -------------------------------------------------------------------


def test_decode_append_accepts_a_batch_and_keeps_its_bytes() -> None:
    body = msgspec.json.encode([
        {"type": "ItemAdded", "data": {"sku": "A1", "n": [1, 2.5, None]}},
        {"type": "ItemRemoved", "data": "x", "id": "e-1", "meta": {"k": "v"}},
    ])
    batch = codec.decode_append(body, Limits())
    assert batch.raw == body
    assert [e.type for e in batch.events] == ["ItemAdded", "ItemRemoved"]
    assert batch.supplied_ids() == [(1, "e-1")]
    assert msgspec.json.decode(batch.events[0].data) == {"sku": "A1", "n": [1, 2.5, None]}


@pytest.mark.parametrize(("body", "error", "code"), [
    (b"", InvalidRequest, "invalid_json"),
    (b"[", InvalidRequest, "invalid_json"),
    (b'[{"type":', InvalidRequest, "invalid_json"),
    (b"[]", EmptyBatch, "empty_batch"),
    (b"{}", InvalidRequest, "invalid_event"),
    (b'[{"data":1}]', InvalidRequest, "invalid_event"),  # no type
    (b'[{"type":"a"}]', InvalidRequest, "invalid_event"),  # no data
    (b'[{"type":"","data":1}]', InvalidRequest, "invalid_event"),
    (b'[{"type":"a","data":1,"id":null}]', InvalidRequest, "invalid_event"),
    (b'[{"type":"a","data":1,"id":""}]', InvalidRequest, "invalid_event"),
    (b'[{"type":"a","data":1,"meta":{"k":1}}]', InvalidRequest, "invalid_event"),
    (b'[{"type":"a","data":1,"time":5}]', InvalidRequest, "invalid_event"),  # unknown field
    (b'[{"type":"' + b"t" * 257 + b'","data":1}]', InvalidRequest, "invalid_event"),
    (b'[{"type":"a","data":1,"id":"' + b"i" * 129 + b'"}]', InvalidRequest, "invalid_event"),
])
def test_decode_append_refusals_name_what_was_wrong(
    body: bytes, error: type[HeraldError], code: str
) -> None:
    with pytest.raises(error) as caught:
        codec.decode_append(body, Limits())
    assert caught.value.code == code


def test_decode_append_limits() -> None:
    limits = Limits(max_batch_bytes=200, max_batch_events=2, max_event_bytes=40)
    with pytest.raises(TooLarge) as caught:
        codec.decode_append(b"[" + b" " * 200 + b"]", limits)
    assert (caught.value.code, caught.value.details["limit"]) == ("batch_too_large", 200)
    with pytest.raises(TooLarge) as caught:
        codec.decode_append(b'[{"type":"a","data":1},{"type":"a","data":2},'
                            b'{"type":"a","data":3}]', limits)
    assert (caught.value.code, caught.value.details["limit"]) == ("batch_too_large", 2)
    with pytest.raises(TooLarge) as caught:
        codec.decode_append(b'[{"type":"a","data":1},{"type":"a","data":"' + b"x" * 40 + b'"}]',
                            limits)
    assert caught.value.code == "event_too_large"
    assert caught.value.details["index"] == 1
    assert TooLarge.status == 413


@pytest.mark.parametrize("dedup_filtered", [False, True])
def test_encode_batch_decodes_back_to_the_events_sent(dedup_filtered: bool) -> None:
    events = [{"type": "a", "data": {"n": 1}},
              {"type": "b", "data": [1, "x"], "id": "i-2", "meta": {"m": "v"}}]
    batch = codec.decode_append(msgspec.json.encode(events), Limits())
    if dedup_filtered:
        batch = Batch(batch.events)  # no request bytes to reuse: encoded again
    body = codec.encode_batch(batch, "prefix-")
    stored = codec.decode_batch(body)
    assert stored.p == "prefix-"
    assert [(e.type, msgspec.json.decode(e.data), e.id, e.meta) for e in stored.e] == [
        ("a", {"n": 1}, None, {}), ("b", [1, "x"], "i-2", {"m": "v"})]
