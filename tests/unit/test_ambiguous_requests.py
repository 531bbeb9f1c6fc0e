"""One request, one meaning: what two parsers could read two ways is refused.

The class of mistake: a value aiohttp or Python resolves silently (the first of two
query parameters or headers, ``int("1_0")``, ``int("٣")``) that a proxy, a log or
another client library resolves another way. What this proves:

* every integer a client sends goes through one parser (``validate_position``), which
  accepts exactly the plain ASCII decimals within range — a hypothesis property over
  the pure function, then every integer-taking parameter of the API over HTTP (query
  parameters and ``Last-Event-ID``), and a scan of herald/server for any other
  ``int()``/``float()``;
* every route the OpenAPI description has × every query parameter it takes, sent
  twice, is 400 ``invalid_parameter`` naming it;
* every header Herald acts on that may appear once, sent twice, is 400
  ``bad_request`` naming it, on every route (the public ones and the dashboard too);
  the parser-level ones (Host, Content-Length) on a real listener, with raw bytes;
* a JSON body (the gatherer skip) with a name given twice is refused.

In process (aiohttp's test server over the memory engine, as test_handlers.py), but
for the raw-byte cases, which need Herald's own listener (``listeners.listen``, plain
HTTP here: TLS changes nothing about parsing).
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict

from herald.config import ServerConfig
from herald.engines.memory import MemoryEngine
from herald.errors import InvalidRequest
from herald.hub import Hub
from herald.model import MAX_POSITION, Limits, validate_decimal, validate_position
from herald.server.app import create_app
from herald.server.auth import Authenticator
from herald.server.handlers import _SINGLE_HEADERS
from herald.server.listeners import Listener, listen
from herald.server.openapi import openapi_document

from ..conftest import ROOT

TOKEN = "in-process-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SSE = "text/event-stream"
TIMEOUT = 5.0

# --- the one parser ----------------------------------------------------------------

# What a plain ASCII decimal within range is, said independently of the parser.
_PLAIN = re.compile(r"[0-9]+", re.ASCII)
# Strings int() accepts and a strict parser must not, and what they look like.
TRICKY = ["1_0", "+3", "-0", " 3", "3 ", "\t3", "3\n", "٣", "१२", "３", "²", "0x10", "1e3",
          "1.0", "", "-1", str(MAX_POSITION + 1), "9" * 5000]


def plain_within_range(value: str) -> bool:
    return bool(_PLAIN.fullmatch(value)) and int(value) <= MAX_POSITION


@given(st.one_of(st.text(), st.from_regex(r"\A[0-9]{1,25}\Z"),
                 st.from_regex(r"\A[+\-_ 0-9٠-٩０-９]{1,6}\Z")))
@example("0")
@example("000")
@example(str(MAX_POSITION))
@example("0" * 40 + "7")
def test_a_position_is_accepted_iff_it_is_a_plain_ascii_decimal_within_range(
        value: str) -> None:
    if plain_within_range(value):
        assert validate_position(value, "from") == int(value)
    else:
        with pytest.raises(InvalidRequest) as caught:
            validate_position(value, "from")
        assert caught.value.code == "invalid_parameter"
        assert caught.value.details == {"parameter": "from"}


@pytest.mark.parametrize("value", TRICKY)
def test_what_int_takes_and_a_position_is_not(value: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_position(value, "limit")


_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", re.ASCII)


@given(st.one_of(st.text(), st.from_regex(r"\A[0-9]{0,4}\.?[0-9]{0,4}\Z"),
                 st.sampled_from(["inf", "nan", "1e1", "+1", "1_0", "١", " 1", "-0.5"])))
def test_a_decimal_is_accepted_iff_it_is_plain_ascii(value: str) -> None:
    if _PLAIN_DECIMAL.fullmatch(value):
        assert validate_decimal(value, "heartbeat") == float(value)
    else:
        with pytest.raises(InvalidRequest) as caught:
            validate_decimal(value, "heartbeat")
        assert caught.value.details == {"parameter": "heartbeat"}


# Calls of int() and float() in herald/server that parse none of a client's input:
# (file, the call's source). Anything else must use validate_position/validate_decimal.
NOT_CLIENT_INPUT = {
    ("app.py", 'float(error.details["retry_after"])'),  # our own RateLimited's number
    ("listeners.py", 'int(self.url.rsplit(":", 1)[1])'),  # the port we bound
    ("throttle.py", "float(self.burst)"),  # configuration
}


def test_no_other_int_or_float_parses_a_request_in_the_server() -> None:
    found = set()
    for path in sorted((ROOT / "herald" / "server").rglob("*.py")):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("int", "float")):
                found.add((path.name, ast.get_source_segment(source, node)))
    unexpected = found - NOT_CLIENT_INPUT
    assert not unexpected, (
        f"{unexpected}: parse a client's numbers with herald.model.validate_position (or "
        "validate_decimal); int() and float() take '1_0', '+3' and other scripts' digits")


# --- over HTTP ------------------------------------------------------------------------


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub(MemoryEngine(), Limits(max_read_events=1000)) as hub:
        await hub.append_body("s", json.dumps([{"type": "T", "data": i}
                                               for i in range(3)]).encode())
        yield hub


@pytest.fixture
async def api(hub: Hub) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(hub, Authenticator(TOKEN)))) as client:
        yield client


async def error_of(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    error: dict[str, Any] = (await response.json())["error"]
    assert error["code"] == code, error
    return error


def _concrete(path: str) -> str:
    return path.replace("{stream}", "s").replace("{name}", "g")


# A valid value of each query parameter the API takes: with it given once the
# request is fine, so twice is the only thing wrong.
VALID = {"from": "0", "limit": "1", "follow": "false", "heartbeat": "1",
         "expected_head": "3"}


def operations() -> list[tuple[str, str, str]]:
    """(method, path, query parameter) for every parameter of every operation, and
    for an operation that takes none, a parameter it does not take."""
    found = []
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            names = [p["name"] for p in item.get("parameters", []) + operation.get(
                "parameters", []) if p["in"] == "query"]
            found += [(method.upper(), path, name) for name in names or ["from"]]
    return found


# The dashboard's pages read no query parameter at all, so none can be ambiguous.
DASHBOARD = {"/", "/favicon.ico"}


def test_the_sweep_covers_every_query_parameter_the_description_has() -> None:
    swept = {name for _m, path, name in operations() if path not in DASHBOARD}
    assert swept == set(VALID)


@pytest.mark.parametrize(("method", "path", "name"),
                         [o for o in operations() if o[1] not in DASHBOARD])
@pytest.mark.parametrize("values", [("same", "same"), ("first", "second")])
async def test_every_query_parameter_sent_twice_is_refused(
        api: TestClient[Any, Any], method: str, path: str, name: str,
        values: tuple[str, str]) -> None:
    valid = VALID[name]
    second = valid if values[0] == "same" else "0" if valid != "0" else "1"
    response = await api.request(method, _concrete(path), params=[(name, valid), (name, second)],
                                 data=b"[]" if method == "POST" else None,
                                 headers={**AUTH, "Accept": "application/json"})
    error = await error_of(response, 400, "invalid_parameter")
    assert error["parameter"] == name


@pytest.mark.parametrize(("query", "name"), [
    ("from=1&%66rom=2", "from"),         # the same name, one of them escaped
    ("from=1&from", "from"),             # the second without a value
    ("from=1&&from=1", "from"),
    ("limit=5&from=0&limit=5", "limit"),
    ("from=1;from=2", "from"),           # one value to aiohttp, two to some parsers
    ("follow=true;follow=false", "follow"),
])
async def test_a_query_two_parsers_could_split_differently_is_refused(
        api: TestClient[Any, Any], query: str, name: str) -> None:
    response = await api.get(f"/v1/streams/s/events?{query}", headers=AUTH)
    error = await error_of(response, 400, "invalid_parameter")
    assert error["parameter"] == name


# The parameters that carry integers (and heartbeat's number), in the API's own words.
NUMBERS = [("GET", "from"), ("GET", "limit"), ("POST", "expected_head"), ("GET", "heartbeat")]


@pytest.mark.parametrize(("method", "name"), NUMBERS)
@pytest.mark.parametrize("value", ["1_0", "+3", "-0", " 3", "٣", "３", "0x1", "1e1"])
async def test_every_number_parameter_takes_only_ascii_digits(
        api: TestClient[Any, Any], method: str, name: str, value: str) -> None:
    response = await api.request(method, "/v1/streams/s/events", params={name: value},
                                 data=b'[{"type": "T", "data": 1}]' if method == "POST" else None,
                                 headers={**AUTH, "Accept": SSE})
    error = await error_of(response, 400, "invalid_parameter")
    assert error["parameter"] == name
    # and nothing was appended
    assert (await (await api.get("/v1/streams/s", headers=AUTH)).json())["head"] == 3


@pytest.mark.parametrize("value", ["1_0", "+1", "-0", "0x1", "1e1", "1.0",
                                   str(MAX_POSITION), str(MAX_POSITION + 1)])
async def test_last_event_id_takes_only_ascii_digits(api: TestClient[Any, Any],
                                                     value: str) -> None:
    response = await api.get("/v1/streams/s/events?follow=false",
                             headers={**AUTH, "Accept": SSE, "Last-Event-ID": value})
    error = await error_of(response, 400, "invalid_parameter")
    assert error["parameter"] == "Last-Event-ID"


async def test_a_plain_last_event_id_resumes_after_it(api: TestClient[Any, Any]) -> None:
    response = await api.get("/v1/streams/s/events?follow=false",
                             headers={**AUTH, "Accept": SSE, "Last-Event-ID": "0001"})
    assert response.status == 200
    text = await response.text()
    assert re.findall(r"^id: (\d+)$", text, re.MULTILINE) == ["2"]


# Headers that may appear once, per route: every route of the description, the
# public and dashboard ones too. aiohttp's parser refuses the others itself, before
# any middleware: see the raw-byte tests below.
PARSER_REFUSES = ("Host", "Content-Type", "Content-Length", "Transfer-Encoding")
IN_PROCESS_HEADERS = [h for h in _SINGLE_HEADERS if h not in PARSER_REFUSES]
VALUES = {"Authorization": f"Bearer {TOKEN}", "Last-Event-ID": "1"}


def routes() -> list[tuple[str, str]]:
    return [(method.upper(), _concrete(path))
            for path, item in openapi_document()["paths"].items()
            for method in item if method != "parameters"]


@pytest.mark.parametrize(("method", "path"), routes())
@pytest.mark.parametrize("header", IN_PROCESS_HEADERS)
async def test_every_single_header_sent_twice_is_refused_on_every_route(
        api: TestClient[Any, Any], method: str, path: str, header: str) -> None:
    headers = CIMultiDict(AUTH) if header != "Authorization" else CIMultiDict()
    headers.add(header, VALUES[header])
    headers.add(header, VALUES[header])
    response = await api.request(method, path, headers=headers,
                                 data=b"[]" if method == "POST" else None)
    error = await error_of(response, 400, "bad_request")
    assert error["header"] == header


async def test_two_authorization_headers_are_refused_even_if_both_are_good(
        api: TestClient[Any, Any]) -> None:
    headers = CIMultiDict([("Authorization", f"Bearer {TOKEN}"),
                           ("Authorization", "Bearer someone-else")])
    await error_of(await api.get("/v1/whoami", headers=headers), 400, "bad_request")


async def test_accept_lines_are_one_list(api: TestClient[Any, Any]) -> None:
    """Accept is a list field (RFC 9110 §12.5.1): two lines mean what one joined line
    means, not what the first says."""
    two = CIMultiDict([*AUTH.items(), ("Accept", "application/json"), ("Accept", SSE)])
    one = {**AUTH, "Accept": f"application/json, {SSE}"}
    for headers in (two, one):
        response = await api.get("/v1/streams/s/events?follow=false", headers=headers)
        assert response.status == 200
        assert response.content_type == SSE


@pytest.mark.parametrize("body", [b'{"position": 1, "position": 2}',
                                  b'{"position": "1"}', b'{"position": 1.0}',
                                  b'{"position": true}', b'{"position": NaN}',
                                  b'{"position": 1} {"position": 2}', b'[' * 100_000])
async def test_a_skip_body_is_one_plain_object(api: TestClient[Any, Any], body: bytes) -> None:
    response = await api.post("/v1/gatherers/g/skip", data=body, headers=AUTH)
    await error_of(response, 400, "invalid_json")


# --- raw bytes, on Herald's own listener ------------------------------------------


@pytest.fixture
async def listener(hub: Hub) -> AsyncIterator[Listener]:
    server = ServerConfig()
    listening = await listen(create_app(hub, Authenticator(TOKEN), server), server,
                             ("127.0.0.1", 0))
    yield listening
    await listening.close()


async def exchange(listener: Listener, request: bytes) -> tuple[int, dict[str, Any] | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)  # until the server closes
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body) if body.startswith(b"{") else None


def raw(path: str, *headers: bytes) -> bytes:
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: localhost",
             f"Authorization: Bearer {TOKEN}".encode(), *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.mark.parametrize("headers", [
    (b"Host: other",),                                   # a second Host
    (b"Content-Type: application/json", b"Content-Type: text/plain"),
    (b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
    (b"Content-Length: 0", b"Content-Length: 0"),
    (b"Content-Length: +0",), (b"Content-Length: 0_0",), (b"Content-Length: \xd9\xa0",),
    (b"Transfer-Encoding: chunked", b"Content-Length: 0"),
])
async def test_the_parser_refuses_ambiguous_framing_and_hosts(listener: Listener,
                                                              headers: tuple[bytes, ...]) -> None:
    status, document = await exchange(listener, raw("/v1/whoami", *headers))
    assert status == 400
    assert document is not None and document["error"]["code"] == "bad_request"


@pytest.mark.parametrize("value", [b"\xd9\xa3", b"\xef\xbc\x93", b"3\xc2\xa0"])
async def test_last_event_id_in_another_script_is_refused(listener: Listener,
                                                          value: bytes) -> None:
    status, document = await exchange(listener, raw(
        "/v1/streams/s/events?follow=false", b"Accept: text/event-stream",
        b"Last-Event-ID: " + value))
    assert status == 400
    assert document is not None and document["error"]["parameter"] == "Last-Event-ID"


def test_the_docs_name_every_single_header() -> None:
    api_md = (ROOT / "docs" / "api.md").read_text()
    for header in _SINGLE_HEADERS:
        assert f"`{header}`" in api_md, header
