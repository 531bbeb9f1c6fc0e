"""The HTTP handlers in process: the real application over a hub on the memory engine.

No process, no TLS, no disk: aiohttp's test server on port 0 and its client. Without
a TLS transport there is no client certificate, so callers authenticate with the
admin token as a Bearer token, as they do over HTTPS. What the wire looks like over
real TLS, with certificates and proxies, is the integration tests' business
(tests/integration/test_api.py, test_auth_matrix.py); these pin the handlers' own
answers fast: append and the JSON page, the read parameters' bounds, a conditional
append's conflict, the SSE form (``retry:`` first, then ``id:``/``data:`` frames,
``Last-Event-ID``, heartbeats), the compact form's bytes, health and refusals.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from herald import codec
from herald.engines.memory import MemoryEngine
from herald.hub import Hub
from herald.model import Limits
from herald.server.app import create_app
from herald.server.auth import Authenticator

TOKEN = "in-process-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SSE = "text/event-stream"
MAX_READ_EVENTS = 1000
# Generous for a loaded machine; each wait normally takes milliseconds.
TIMEOUT = 5.0


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub(MemoryEngine(), Limits(max_read_events=MAX_READ_EVENTS)) as hub:
        yield hub


@pytest.fixture
async def api(hub: Hub) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(hub, Authenticator(TOKEN))
    async with TestClient(TestServer(app)) as client:
        yield client


def events(kind: str, count: int) -> list[dict[str, Any]]:
    return [{"type": kind, "data": {"i": i}} for i in range(count)]


async def append(api: TestClient[Any, Any], stream: str, body: Any,
                 **params: str) -> ClientResponse:
    return await api.post(f"/v1/streams/{stream}/events", data=json.dumps(body),
                          params=params, headers={**AUTH, "Content-Type": "application/json"})


async def read(api: TestClient[Any, Any], stream: str, accept: str = "application/json",
               **params: str) -> ClientResponse:
    return await api.get(f"/v1/streams/{stream}/events", params=params,
                         headers={**AUTH, "Accept": accept})


async def error_of(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    document = await response.json()
    assert set(document) == {"error"}
    error: dict[str, Any] = document["error"]
    assert error["code"] == code, error
    return error


async def sse_frames(response: ClientResponse, count: int) -> list[str]:
    """The first ``count`` SSE frames (the text between blank lines), as sent."""
    frames: list[str] = []
    lines: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while len(frames) < count:
            line = (await response.content.readline()).decode()
            assert line, f"the stream ended after {frames}"
            if line == "\n":
                frames.append("".join(lines))
                lines = []
            else:
                lines.append(line)
    return frames


def sse_event(frame: str) -> tuple[int, dict[str, Any]]:
    """An event frame's ``id`` and decoded ``data``; it has exactly those two fields."""
    id_line, data_line = frame.splitlines()
    assert id_line.startswith("id: ") and data_line.startswith("data: "), frame
    return int(id_line.removeprefix("id: ")), json.loads(data_line.removeprefix("data: "))


async def test_append_then_a_json_page_with_next_and_head(api: TestClient[Any, Any]) -> None:
    response = await append(api, "orders", events("Placed", 3))
    assert response.status == 200
    assert await response.json() == {"first": 0, "head": 3, "appended": 3, "duplicates": []}
    response = await append(api, "orders", [{"type": "Paid", "data": None, "id": "pay-1"}])
    assert (await response.json())["first"] == 3

    page = await (await read(api, "orders")).json()
    assert [e["position"] for e in page["events"]] == [0, 1, 2, 3]
    assert (page["next"], page["head"]) == (4, 4)
    assert page["events"][3]["id"] == "pay-1"
    page = await (await read(api, "orders", **{"from": "1", "limit": "2"})).json()
    assert ([e["position"] for e in page["events"]], page["next"], page["head"]) == (
        [1, 2], 3, 4)
    # past the head: nothing, and next stays where it was asked to start
    page = await (await read(api, "orders", **{"from": "9"})).json()
    assert (page["events"], page["next"], page["head"]) == ([], 9, 4)


async def test_from_head_reads_only_what_comes_next(api: TestClient[Any, Any]) -> None:
    await append(api, "orders", events("Placed", 2))
    page = await (await read(api, "orders", **{"from": "head"})).json()
    assert (page["events"], page["next"], page["head"]) == ([], 2, 2)


@pytest.mark.parametrize("limit", ["0", str(MAX_READ_EVENTS + 1), "-1", "many"])
async def test_limit_out_of_bounds_is_refused(api: TestClient[Any, Any], limit: str) -> None:
    error = await error_of(await read(api, "orders", limit=limit), 400, "invalid_parameter")
    assert error["parameter"] == "limit"


async def test_limit_at_the_bound_is_served(api: TestClient[Any, Any]) -> None:
    await append(api, "orders", events("Placed", MAX_READ_EVENTS + 5))
    page = await (await read(api, "orders", limit=str(MAX_READ_EVENTS))).json()
    assert (len(page["events"]), page["next"]) == (MAX_READ_EVENTS, MAX_READ_EVENTS)


async def test_expected_head_mismatch_is_409_naming_the_head(api: TestClient[Any, Any]) -> None:
    await append(api, "orders", events("Placed", 2))
    error = await error_of(await append(api, "orders", events("Late", 1), expected_head="1"),
                           409, "expected_head_mismatch")
    assert (error["head"], error["expected"]) == (2, 1)
    response = await append(api, "orders", events("OnTime", 1), expected_head="2")
    assert (await response.json())["first"] == 2


async def test_sse_retry_first_then_event_frames_and_last_event_id(
        api: TestClient[Any, Any]) -> None:
    await append(api, "orders", events("Placed", 3))
    response = await read(api, "orders", SSE, follow="false")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith(SSE)
    assert response.headers["Cache-Control"] == "no-cache"
    text = (await response.read()).decode()
    retry, *frames, end = text.split("\n\n")
    assert retry.startswith("retry: ") and int(retry.removeprefix("retry: ")) > 0
    assert end == ""
    parsed = [sse_event(frame) for frame in frames]
    assert [sse_id for sse_id, _ in parsed] == [0, 1, 2]
    assert [(data["position"], data["type"]) for _, data in parsed] == [
        (0, "Placed"), (1, "Placed"), (2, "Placed")]

    # Last-Event-ID resumes right after it, whatever `from` says
    response = await api.get("/v1/streams/orders/events", params={"follow": "false",
                                                                  "from": "0"},
                             headers={**AUTH, "Accept": SSE, "Last-Event-ID": "1"})
    _, *frames, _ = (await response.read()).decode().split("\n\n")
    assert [sse_event(frame)[0] for frame in frames] == [2]
    response = await api.get("/v1/streams/orders/events", params={"follow": "false"},
                             headers={**AUTH, "Accept": SSE, "Last-Event-ID": "x"})
    assert (await error_of(response, 400, "invalid_parameter"))["parameter"] == "Last-Event-ID"


async def test_sse_follow_sends_heartbeats_then_live_events(api: TestClient[Any, Any]) -> None:
    await append(api, "orders", events("Placed", 1))
    response = await read(api, "orders", SSE, heartbeat="0.05")
    try:
        retry, first, idle = await sse_frames(response, 3)
        assert retry.startswith("retry: ")
        assert sse_event(first)[0] == 0
        # idle: a comment naming the next position, which a browser ignores
        assert idle == ": heartbeat 1\n"
        await append(api, "orders", events("Shipped", 1))
        async with asyncio.timeout(TIMEOUT):
            while (frame := (await sse_frames(response, 1))[0]).startswith(":"):
                pass
        sse_id, data = sse_event(frame)
        assert (sse_id, data["type"]) == (1, "Shipped")
    finally:
        response.close()


async def test_compact_form_is_the_stored_records(api: TestClient[Any, Any], hub: Hub) -> None:
    await append(api, "orders", events("Placed", 2))
    await append(api, "orders", events("Paid", 1))
    response = await read(api, "orders", codec.MEDIA_TYPE, follow="false")
    assert response.headers["Content-Type"] == codec.MEDIA_TYPE
    body = await response.read()
    stored = (await hub.read("orders", 0, MAX_READ_EVENTS)).records
    assert body == b"".join(record.raw for record in stored)
    assert [(r.base, r.count) for r in codec.RecordDecoder().feed(body)] == [(0, 2), (2, 1)]
    # from a position inside a batch: the whole batch holding it, as stored
    response = await read(api, "orders", codec.MEDIA_TYPE, follow="false", **{"from": "1"})
    assert await response.read() == body


async def test_compact_follow_sends_heartbeat_records(api: TestClient[Any, Any]) -> None:
    await append(api, "orders", events("Placed", 2))
    response = await read(api, "orders", codec.MEDIA_TYPE, heartbeat="0.05")
    try:
        decoder = codec.RecordDecoder()
        records: list[codec.Record] = []
        async with asyncio.timeout(TIMEOUT):
            while len(records) < 2:
                records += decoder.feed(await response.content.readany())
        assert [(r.base, r.count) for r in records[:2]] == [(0, 2), (2, 0)]
    finally:
        response.close()


async def test_a_stream_without_events_is_404(api: TestClient[Any, Any]) -> None:
    error = await error_of(await api.get("/v1/streams/nothing", headers=AUTH), 404,
                           "stream_not_found")
    assert error["stream"] == "nothing"


async def test_health_names_the_memory_engine_without_credentials(
        api: TestClient[Any, Any]) -> None:
    response = await api.get("/v1/health")
    assert response.status == 200
    health = await response.json()
    assert (health["status"], health["engine"]) == ("ok", "memory")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_without_the_token_the_api_answers_401(api: TestClient[Any, Any],
                                                     headers: dict[str, str]) -> None:
    response = await api.get("/v1/streams", headers=headers)
    await error_of(response, 401, "unauthorized" if not headers else "invalid_token")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="Herald"'
    assert (await api.get("/v1/streams", headers=AUTH)).status == 200


async def test_a_small_max_read_events_bounds_the_default_page_too() -> None:
    """A read naming no limit gets the default page (1000) within the configured
    bound, in every form; it used to be refused with 400 whenever the bound was
    below 1000."""
    async with Hub(MemoryEngine(), Limits(max_read_events=3)) as small:
        app = create_app(small, Authenticator(TOKEN))
        async with TestClient(TestServer(app)) as client:
            assert (await append(client, "s", events("e", 5))).status == 200
            page = await (await read(client, "s")).json()
            assert [e["position"] for e in page["events"]] == [0, 1, 2]
            assert page["next"] == 3
            compact = await read(client, "s", codec.MEDIA_TYPE, follow="false")
            assert compact.status == 200
            await error_of(await read(client, "s", limit="4"), 400, "invalid_parameter")
