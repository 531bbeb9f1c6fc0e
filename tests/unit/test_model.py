"""The model's pure rules: stream names, ids, limits, positions and the Event value.

What this proves:

* stream names are 1–128 characters of ``A-Z a-z 0-9 . _ -``, never ``.``/``..`` or
  hidden (leading ``.``), never a path (``/``), never non-ASCII; a refusal is an
  ``InvalidStreamName`` (400, ``invalid_stream_name``) that carries the name;
* ``new_id_prefix`` + ``assigned_id`` make canonical RFC 9562 UUIDv7 strings (version
  7, variant ``10``, the current Unix time in milliseconds, the event's index in the
  last 16 bits) that are unique across many batches;
* ``Limits`` refuses values below 1 and more events per batch than ids per prefix;
* ``Event`` decodes ``data`` lazily, once, and compares by value (not by raw bytes).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import FrozenInstanceError

import msgspec
import pytest

from herald.errors import InvalidRequest, InvalidStreamName
from herald.model import (
    MAX_STREAM_NAME_LENGTH,
    AppendResult,
    Event,
    Limits,
    assigned_id,
    id_suffixes,
    new_id_prefix,
    now_us,
    time_from_us,
    validate_position,
    validate_stream_name,
)

# --- stream names ----------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "a", "orders", "Orders-2024", "inventory.v2", "a..b", "a.", "_private", "-dash",
    "A_Z-a.z_0-9", "x" * MAX_STREAM_NAME_LENGTH,
])
def test_valid_stream_names(name: str) -> None:
    assert validate_stream_name(name) == name


@pytest.mark.parametrize("name", [
    "", ".", "..", ".hidden", "...", "a/b", "/", "/etc", "../x", "a\\b", "a b", " a",
    "orders\n", "a\0b", "a:b", "a*", "é", "ordérs", "流", "ａ",  # fullwidth a
    "١",  # an Arabic-Indic digit: a Unicode digit, not an ASCII one
    "x" * (MAX_STREAM_NAME_LENGTH + 1),
])
def test_invalid_stream_names(name: str) -> None:
    with pytest.raises(InvalidStreamName) as caught:
        validate_stream_name(name)
    error = caught.value
    assert isinstance(error, InvalidRequest)
    assert (error.status, error.code) == (400, "invalid_stream_name")
    assert error.details["stream"] == name
    assert error.to_wire()["error"]["code"] == "invalid_stream_name"


def test_length_limit_is_128() -> None:
    assert MAX_STREAM_NAME_LENGTH == 128
    validate_stream_name("s" * 128)
    with pytest.raises(InvalidStreamName, match="1 to 128 characters"):
        validate_stream_name("s" * 129)


def test_a_huge_name_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidStreamName) as caught:
        validate_stream_name("x" * 100_000)
    assert len(caught.value.details["stream"]) <= 2 * MAX_STREAM_NAME_LENGTH


# --- ids -------------------------------------------------------------------------------


def unix_ms_of(uuid7: str) -> int:
    return uuid.UUID(uuid7).int >> 80


def test_assigned_ids_are_rfc9562_uuid7() -> None:
    before = time.time_ns() // 1_000_000
    prefix = new_id_prefix()
    after = time.time_ns() // 1_000_000
    assert len(prefix) == 32  # 36 characters of a UUID minus the last four hex digits
    for index in (0, 1, 9, 10, 255, 4096, 65_535):
        event_id = assigned_id(prefix, index)
        parsed = uuid.UUID(event_id)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122  # the "10" variant bits
        assert str(parsed) == event_id, "canonical form: lowercase, hyphenated"
        assert event_id.startswith(prefix)
        assert int(event_id[-4:], 16) == index
        assert before <= unix_ms_of(event_id) <= after


def test_assigned_ids_are_unique_across_many_batches() -> None:
    ids: set[str] = set()
    batches, per_batch = 5_000, 20
    for _ in range(batches):
        prefix = new_id_prefix()
        ids.update(assigned_id(prefix, i) for i in range(per_batch))
    assert len(ids) == batches * per_batch


def test_prefixes_differ_within_one_millisecond() -> None:
    """Thousands of prefixes are drawn per millisecond; their random bits keep them apart."""
    prefixes = [new_id_prefix() for _ in range(10_000)]
    assert len(set(prefixes)) == len(prefixes)


def test_id_suffixes_are_four_hex_digits_of_the_index() -> None:
    suffixes = id_suffixes(70)
    assert suffixes[:3] == ["0000", "0001", "0002"]
    assert suffixes[10] == "000a"
    assert suffixes[69] == "0045"


# --- limits ----------------------------------------------------------------------------


def test_default_limits() -> None:
    limits = Limits()
    assert limits.max_batch_bytes == 16 * 1024 * 1024
    assert limits.max_batch_events == 10_000
    assert limits.max_event_bytes == 1024 * 1024
    assert limits.max_read_events == 10_000
    assert limits.dedup_window == 100_000


@pytest.mark.parametrize("field", ["max_batch_bytes", "max_batch_events", "max_event_bytes",
                                   "max_read_events", "dedup_window"])
@pytest.mark.parametrize("value", [0, -1])
def test_limits_below_one_are_refused_by_name(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"limits\.{field} must be at least 1"):
        Limits(**{field: value})  # type: ignore[arg-type]
    assert getattr(Limits(**{field: 1}), field) == 1  # type: ignore[arg-type]


def test_a_batch_cannot_have_more_events_than_ids_per_prefix() -> None:
    assert Limits(max_batch_events=65_536).max_batch_events == 65_536
    with pytest.raises(ValueError, match=r"limits\.max_batch_events must be at most 65536"):
        Limits(max_batch_events=65_537)


def test_limits_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        Limits().dedup_window = 5  # type: ignore[misc]


# --- positions and times ---------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("42", 42), (7, 7),
                                                 (str((1 << 63) - 1), (1 << 63) - 1)])
def test_valid_positions(value: object, expected: int) -> None:
    assert validate_position(value, "from") == expected


@pytest.mark.parametrize("value", ["-1", "x", "", "1.5", None, str(1 << 63)])
def test_invalid_positions_name_the_parameter(value: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_position(value, "from")
    assert caught.value.code == "invalid_parameter"
    assert caught.value.details == {"parameter": "from"}


def test_times_are_exact_microseconds() -> None:
    us = 1_700_000_000_123_457
    moment = time_from_us(us)
    assert moment.microsecond == 123_457 and moment.utcoffset() is not None
    assert round(moment.timestamp() * 1_000_000) == us
    assert abs(now_us() - time.time_ns() // 1000) < 60_000_000


# --- events ----------------------------------------------------------------------------


def decode_event(json: bytes) -> Event:
    return msgspec.json.decode(json, type=Event)


def test_event_data_is_decoded_lazily_and_once() -> None:
    event = decode_event(b'{"type":"t","data":{"a":[1,2]},"id":"e1","position":3}')
    assert event._data is msgspec.UNSET, "not decoded before it is asked for"
    assert bytes(event.raw) == b'{"a":[1,2]}'
    first = event.data
    assert first == {"a": [1, 2]}
    assert event.data is first, "decoded once, then kept"


def test_event_equality_is_by_value() -> None:
    a = decode_event(b'{"type":"t","data":{"a":1,"b":2},"id":"e","position":1}')
    b = decode_event(b'{"type":"t","data": { "b" : 2, "a" : 1 },"id":"e","position":1}')
    assert bytes(a.raw) != bytes(b.raw)
    assert a == b, "the same data with different spacing and key order"
    c = decode_event(b'{"type":"t","data":{"a":1,"b":2},"id":"e","position":2}')
    assert a != c
    assert a != "not an event"
    with pytest.raises(TypeError):
        hash(a)


def test_event_as_dict_and_repr_show_the_decoded_data() -> None:
    event = decode_event(b'{"type":"t","data":[1],"id":"e","meta":{"k":"v"},"position":4}')
    assert event.as_dict() == {"position": 4, "id": "e", "type": "t", "data": [1],
                               "meta": {"k": "v"}, "time": time_from_us(0)}
    assert "data=[1]" in repr(event) and "position=4" in repr(event)


def test_append_result_defaults() -> None:
    result = AppendResult(first=3, head=5, appended=2)
    assert result.duplicates == []
    assert msgspec.json.decode(b'{"first":0,"head":1,"appended":1}', type=AppendResult) == \
        AppendResult(0, 1, 1)
