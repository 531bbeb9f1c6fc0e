"""Numbers every reader reads the same (issue: ``1e999`` and a 5,000-digit integer were
accepted, then Herald's own client raised a raw msgspec error on ``event.data``).

The class: a number in an event's data that some common JSON reader does not read
back exactly — JavaScript (doubles: integers beyond ±(2**53 - 1)), Python's ``json``
(integers over 4,300 digits), msgspec (beyond 64 bits), any of them (overflow to
infinity). Every door an event comes in by refuses it, naming the event: an append
(``codec.decode_append``, used by the HTTP edge and the hub) and a gatherer's row.
And the client never lets anything but a HeraldError out, whatever it is served.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald import codec
from herald.engines.memory import MemoryEngine
from herald.errors import HeraldError, InvalidRequest, ProtocolError
from herald.gather.manager import GatherManager
from herald.gather.status import GatherState
from herald.hub import Hub
from herald.model import Event, Limits

from ..gather.conftest import wait_until
from ..gather.sqldb import sqlite_db

SAFE = codec.MAX_SAFE_INTEGER
ROOT = Path(__file__).resolve().parents[2]

# Values a JavaScript, Python json and msgspec reader all read back exactly...
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-SAFE, SAFE)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
# ... and numbers at least one of them does not.
bad_numbers = (st.integers(SAFE + 1, 10**40).map(str)
               | st.integers(SAFE + 1, 10**40).map(lambda n: f"-{n}")
               | st.integers(309, 100_000).map(lambda e: f"1e{e}")
               | st.integers(309, 100_000).map(lambda e: f"-2.5E+{e}")
               | st.integers(4_301, 6_000).map(lambda n: "9" * n))


@given(json_values)
def test_what_every_reader_reads_back_passes(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, indent=1)):
        assert codec.number_problem(text.encode()) is None, text


@given(json_values, bad_numbers, st.sampled_from(["[@, 1]", '{"k": @}', "@", '{"k":\n @}']))
def test_a_number_some_reader_misreads_is_found_anywhere(
        value: Any, number: str, shape: str) -> None:
    text = shape.replace("@", number)
    wrapped = json.dumps([value, "@"]).replace('"@"', text)
    assert codec.number_problem(wrapped.encode()) is not None, wrapped
    assert codec.number_problem(number.encode()) is not None  # data that is the number


@given(bad_numbers, st.sampled_from(['"@"', '"x:@"', '"[@"', '"a, @ b"', '"\\":@"']))
def test_the_same_digits_in_a_string_are_only_text(number: str, shape: str) -> None:
    text = '{"s": ' + shape.replace("@", number) + "}"
    json.loads(text)  # a string, as meant
    assert codec.number_problem(text.encode()) is None


@given(st.integers(-SAFE, SAFE) | st.floats(allow_nan=False, allow_infinity=False))
def test_the_rule_agrees_with_the_readers(number: int | float) -> None:
    text = json.dumps({"n": number}).encode()
    assert codec.number_problem(text) is None
    read = msgspec.json.decode(text)["n"]
    assert read == json.loads(text)["n"] and not (isinstance(read, float) and math.isinf(read))


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1" + "0" * 5000, str(SAFE + 1),
                                    str(-(SAFE + 1)), "1.5E400"])
@pytest.mark.parametrize("where", ["{}", '{{"a": [1, {{"b": {}}}]}}'])
def test_an_append_holding_one_is_refused_naming_the_event(number: str, where: str) -> None:
    body = ('[{"type": "Fine", "data": 1}, {"type": "Bad", "data": ' + where.format(number)
            + "}]").encode()
    with pytest.raises(InvalidRequest) as refused:
        codec.decode_append(body, Limits())
    assert refused.value.code == "invalid_event"
    assert refused.value.details["index"] == 1
    assert "event 1" in refused.value.message


@pytest.mark.parametrize("data", [
    b'{"order": "ord-000000000000", "price": 19.99, "when": "2026-12-04T19:54:22.123456Z"}',
    b'[0.30000000000000004, 19.990000000000002, -0.1234567890123456789, 1.5e10, -42]',
    b'{"id": "9f1c2d3e-7b4a-4c5d-8e9f-0a1b2c3d4e5f", "phone": "555-123-4567"}',
])
def test_everyday_data_takes_the_fast_path(data: bytes) -> None:
    """Ids, dates, long fractions, small exponents, UUIDs: no exact check, which
    would cost every append of such data (measured with herald bench W1)."""
    assert codec._may_be_safe(data)


def test_the_largest_safe_numbers_are_accepted() -> None:
    body = json.dumps([{"type": "T", "data": [SAFE, -SAFE, 1.7976931348623157e308, 5e-324,
                                              "1e999", 1e-999]}]).encode()
    assert len(codec.decode_append(body, Limits()).events) == 1


async def test_a_gatherer_stops_at_a_row_holding_one(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path)
    db.create_events()
    db.insert([("T", '{"n": 1}', None, None), ("T", '{"n": 1e999}', None, None)])
    async with Hub(MemoryEngine(), Limits()) as hub:
        manager = GatherManager(hub, [db.config(stream="numbers")])
        await manager.start()
        try:
            await wait_until(lambda: manager.statuses()[0].state is GatherState.STOPPED_BAD_ROW,
                             what="the gatherer to stop at the row")
            error = manager.statuses()[0].last_error
            assert error is not None and "beyond what a double holds" in error.message
        finally:
            await manager.stop()
        assert await hub.head("numbers") == 1


# --- the client raises HeraldError only ------------------------------------------------

def test_event_data_that_does_not_decode_is_a_protocol_error() -> None:
    body = b'{"type":"T","data":{"n":1' + b"0" * 5000 + b"}}"
    event = msgspec.json.decode(body, type=Event)
    with pytest.raises(ProtocolError):
        event.data  # noqa: B018
    assert "undecodable" in repr(event)


@pytest.mark.parametrize("answer", [b"", b"{", b"\xff\xfe", b"[" * 100_000, b'{"head": "x"}',
                                    b'{"first": 1e999}', b"null"])
def test_every_answer_the_client_decodes_is_checked(answer: bytes) -> None:
    from herald import client
    from herald.model import AppendResult
    with pytest.raises(ProtocolError):
        client._decode(answer, AppendResult)
    assert isinstance(client._error(500, answer), HeraldError)


def test_the_client_decodes_answers_only_through_its_checked_functions() -> None:
    """A new ``msgspec.json.decode`` in the client outside ``_decode``/``_error`` would
    let msgspec's errors out to users."""
    tree = ast.parse((ROOT / "herald" / "client.py").read_text())
    allowed = {"_decode", "_error", "_all_ids"}
    offenders = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "decode" and function.name not in allowed
                    and "json" in ast.unparse(node.func)):
                offenders.append(f"{function.name}: {ast.unparse(node)}")
    assert offenders == []


# The prefilter in C (herald/_shape.c) answers exactly as its rule in Python: bodies
# made of the bytes the rule tells apart (digits, signs, e and E, ".", others), long
# enough to cross the C loop's 16-byte blocks and its end.
_SHAPE_BYTES = st.sampled_from([b"0", b"7", b"-", b"+", b"e", b"E", b".", b" ", b"x",
                                b'"', b"1234567890", b"12345678901234567", b"e308"])


@pytest.mark.skipif(codec._c_verdict is None, reason="herald._shape was not built here")
@given(st.lists(_SHAPE_BYTES, max_size=80).map(b"".join), st.integers(0, 40))
def test_the_c_prefilter_is_the_python_rule(body: bytes, pad: int) -> None:
    assert codec._c_verdict is not None
    for raw in (body, b"a" * pad + body, body + b"a" * pad):
        assert codec._c_verdict(raw) == codec.shape_verdict(raw), raw


def test_the_c_prefilter_is_built_where_the_tests_run() -> None:
    # make installs with a compiler (gcc on every machine it runs on): the fast
    # path must not be lost to a silent build failure.
    assert codec._c_verdict is not None
