"""The HTTPS API, against a real ``herald serve`` over TLS.

What this proves:

* an append reads back the same in every form: a JSON page, Server-Sent Events (the
  SSE ``id`` is the position, ``Last-Event-ID`` resumes right after it,
  ``follow=false`` ends at the head) and the compact record form;
* the stream listing, ``stream_not_found``, health without credentials, and 401s;
* ``expected_head`` conflicts carry the actual head; retried ids append nothing;
* the catch-up-to-live switch: a subscriber that starts from 0 while writers append
  before, during and after its catch-up gets every position exactly once, in order
  (through the Python client's compact form and through SSE);
* 50 concurrent writers over HTTP make one dense sequence with contiguous batches;
* bad input gets a 4xx with a stable ``code`` in ``{"error": {"code", "message"}}``
  and leaves the stream unchanged;
* every response carries HSTS.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import yarl

import herald
from herald import codec

from ..conftest import ServerProcess

# Generous: the machine is shared and noisy. Nothing waits this long when all is well.
TIMEOUT = 60.0
SSE = "text/event-stream"

_DEFAULT_TOKEN = object()


# --- raw HTTP helpers ----------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Api:
    """Raw HTTPS requests to one server. Paths are sent exactly as written (no
    normalisation of ``..`` or re-encoding of ``%20``)."""

    def __init__(self, server: ServerProcess, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.ssl = ssl.create_default_context(cafile=server.ca)

    def url(self, path: str, params: Mapping[str, str] | None = None) -> yarl.URL:
        query = "?" + urlencode(params) if params else ""
        return yarl.URL(self.server.url + path + query, encoded=True)

    def headers(self, token: Any = _DEFAULT_TOKEN, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if token is _DEFAULT_TOKEN:
            token = self.server.token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None,
        body: Any = None, token: Any = _DEFAULT_TOKEN, headers: Mapping[str, str] | None = None,
    ) -> Reply:
        async with self.session.request(
            method, self.url(path, params), data=body, ssl=self.ssl,
            headers=self.headers(token, **(headers or {})),
        ) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def append(self, stream: str, events: Any, **params: str) -> Reply:
        body = events if isinstance(events, bytes) else json.dumps(events).encode()
        return await self.request("POST", f"/v1/streams/{stream}/events", params=params,
                                  body=body, headers={"Content-Type": "application/json"})

    async def ok_append(self, stream: str, events: Any, **params: str) -> dict[str, Any]:
        reply = await self.append(stream, events, **params)
        assert reply.status == 200, reply.body
        result: dict[str, Any] = reply.json()
        return result

    async def read(self, stream: str, **params: str) -> Reply:
        return await self.request("GET", f"/v1/streams/{stream}/events", params=params)

    async def events(self, stream: str) -> list[dict[str, Any]]:
        reply = await self.read(stream, limit="10000")
        assert reply.status == 200, reply.body
        events: list[dict[str, Any]] = reply.json()["events"]
        return events

    async def head(self, stream: str) -> int:
        reply = await self.request("GET", f"/v1/streams/{stream}")
        if reply.status == 404:
            assert_error(reply, 404, "stream_not_found")
            return 0
        assert reply.status == 200, reply.body
        head: int = reply.json()["head"]
        return head

    @asynccontextmanager
    async def stream(self, stream: str, accept: str, params: Mapping[str, str] | None = None,
                     **headers: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streaming GET; the response is not read. Leaving it mid-stream aborts the
        connection: a graceful TLS close still pending when the test's event loop ends
        would leak its socket (CPython gh-118950, before 3.12.8)."""
        async with self.session.get(self.url(f"/v1/streams/{stream}/events", params),
                                    ssl=self.ssl,
                                    headers=self.headers(Accept=accept, **headers)) as response:
            try:
                yield response
            finally:
                connection = response.connection
                if connection is not None and connection.protocol is not None:
                    connection.protocol.abort()


@pytest.fixture
async def api(server: ServerProcess) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT * 2)) as s:
        yield Api(server, s)


def assert_error(reply: Reply, status: int, code: str) -> dict[str, Any]:
    """The reply is Herald's error document with this status and code."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers.get("Content-Type", "").startswith("application/json")
    document = reply.json()
    assert set(document) == {"error"}, document
    error: dict[str, Any] = document["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    return error


def events_of(kind: str, count: int, **data: Any) -> list[dict[str, Any]]:
    return [{"type": kind, "data": {**data, "i": i}} for i in range(count)]


async def sse_messages(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[int, Any]]:
    """(SSE id, decoded data) of each message; comments and ``retry:`` are skipped."""
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            continue
        if not line:
            if "data" in fields:
                yield int(fields["id"]), json.loads(fields["data"])
            fields = {}
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


async def sse_all(api: Api, stream: str, params: Mapping[str, str] | None = None,
                  **headers: str) -> list[tuple[int, Any]]:
    """Every SSE message of a ``follow=false`` stream, to its end."""
    async with api.stream(stream, SSE, {"follow": "false", **(params or {})},
                          **headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith(SSE)
        return [message async for message in sse_messages(response)]


# --- append, read, follow -----------------------------------------------------------


async def test_append_then_read_in_every_form(api: Api, server: ServerProcess) -> None:
    first = await api.ok_append("inventory", [
        {"type": "ItemAdded", "data": {"sku": "A1", "qty": 5}},
        {"type": "ItemAdded", "data": {"sku": "B7"}, "id": "add-b7", "meta": {"user": "ann"}},
    ])
    assert first == {"first": 0, "head": 2, "appended": 2, "duplicates": []}
    second = await api.ok_append("inventory", [{"type": "ItemRemoved", "data": [1, None]}])
    assert second == {"first": 2, "head": 3, "appended": 1, "duplicates": []}

    # JSON page, from a position inside the first batch
    reply = await api.read("inventory", **{"from": "1"})
    assert reply.status == 200
    page = reply.json()
    assert (page["next"], page["head"]) == (3, 3)
    assert [e["position"] for e in page["events"]] == [1, 2]
    added, removed = page["events"]
    assert set(added) == {"position", "id", "type", "data", "meta", "time"}
    assert (added["id"], added["type"], added["data"], added["meta"]) == (
        "add-b7", "ItemAdded", {"sku": "B7"}, {"user": "ann"})
    assert added["time"].endswith("Z")
    assert (removed["type"], removed["data"], removed["meta"]) == ("ItemRemoved", [1, None], {})
    assert len(removed["id"]) == 36  # a UUIDv7 Herald assigned
    # limit, and a position past the head
    page = (await api.read("inventory", limit="1")).json()
    assert ([e["position"] for e in page["events"]], page["next"]) == ([0], 1)
    page = (await api.read("inventory", **{"from": "7"})).json()
    assert (page["events"], page["head"]) == ([], 3)
    everything = await api.events("inventory")

    # SSE: the id is the position; follow=false ends at the head
    messages = await sse_all(api, "inventory")
    assert [sse_id for sse_id, _ in messages] == [0, 1, 2]
    assert [data for _, data in messages] == everything
    # Last-Event-ID resumes right after the last event received, whatever `from` says
    assert await sse_all(api, "inventory", {"from": "0"}, **{"Last-Event-ID": "1"}) == (
        messages[2:])
    assert await sse_all(api, "inventory", **{"Last-Event-ID": "2"}) == []
    assert await sse_all(api, "inventory", {"from": "head"}) == []

    # compact: the stored records as they are
    async with api.stream("inventory", codec.MEDIA_TYPE, {"follow": "false"}) as response:
        assert response.headers["Content-Type"] == codec.MEDIA_TYPE
        records = codec.RecordDecoder().feed(await response.read())
    assert [(r.base, r.count) for r in records] == [(0, 2), (2, 1)]

    # compact, through the Python client
    async with server.async_client() as client:
        async with client.subscribe("inventory", start=1, follow=False) as subscription:
            events = [event async for event in subscription]
        assert subscription.position == 3
    assert [e.position for e in events] == [1, 2]
    assert [(e.id, e.type, e.data, e.meta) for e in events] == [
        (e["id"], e["type"], e["data"], e["meta"]) for e in everything[1:]]


async def test_sse_follows_live_appends(api: Api) -> None:
    await api.ok_append("live", events_of("Before", 2))
    async with api.stream("live", SSE, {"from": "1", "heartbeat": "0.1"}) as response, \
            aclosing(sse_messages(response)) as messages:
        assert (await anext(messages))[0] == 1
        await api.ok_append("live", events_of("After", 2))
        for expected in (2, 3):
            sse_id, data = await asyncio.wait_for(anext(messages), TIMEOUT)
            assert (sse_id, data["position"], data["type"]) == (expected, expected, "After")


# --- streams, health, credentials ------------------------------------------------------


async def test_stream_listing_and_stream_info(api: Api) -> None:
    assert (await api.request("GET", "/v1/streams")).json() == {"streams": []}
    await api.ok_append("sales", events_of("Sold", 3))
    await api.ok_append("billing", events_of("Billed", 1))
    listing = (await api.request("GET", "/v1/streams")).json()["streams"]
    assert [(s["name"], s["head"]) for s in listing] == [("billing", 1), ("sales", 3)]
    assert all(s["bytes"] > 0 for s in listing)

    info = await api.request("GET", "/v1/streams/sales")
    assert info.status == 200
    assert info.json() == next(s for s in listing if s["name"] == "sales")
    error = assert_error(await api.request("GET", "/v1/streams/nothing-here"), 404,
                         "stream_not_found")
    assert error["stream"] == "nothing-here"


async def test_health_needs_no_credentials(api: Api) -> None:
    reply = await api.request("GET", "/v1/health", token=None)
    assert reply.status == 200
    assert reply.json() == {"status": "ok", "version": herald.__version__, "engine": "files"}


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/streams"),
    ("GET", "/v1/streams/s"),
    ("GET", "/v1/streams/s/events"),
    ("POST", "/v1/streams/s/events"),
])
async def test_credentials_are_required(api: Api, method: str, path: str) -> None:
    body = b'[{"type": "t", "data": 1}]' if method == "POST" else None
    assert_error(await api.request(method, path, body=body, token=None), 401, "unauthorized")
    # not a bearer token at all
    assert_error(await api.request(method, path, body=body, headers={
        "Authorization": "Basic YWRtaW46YWRtaW4="}, token=None), 401, "unauthorized")
    # a token Herald does not know: docs/api.md names this code `invalid_token`
    assert_error(await api.request(method, path, body=body, token="not-the-token"), 401,
                 "invalid_token")
    assert await api.head("s") == 0


# --- expected_head and retries ---------------------------------------------------------


async def test_expected_head_mismatch_names_the_actual_head(api: Api) -> None:
    await api.ok_append("orders", events_of("Placed", 2))
    before = await api.events("orders")
    for stale in ("0", "1", "3"):
        error = assert_error(await api.append("orders", events_of("Late", 1),
                                              expected_head=stale), 409,
                             "expected_head_mismatch")
        assert (error["head"], error["expected"]) == (2, int(stale))
    assert await api.events("orders") == before

    result = await api.ok_append("orders", events_of("OnTime", 1), expected_head="2")
    assert (result["first"], result["head"]) == (2, 3)
    # an empty stream has head 0
    assert (await api.ok_append("fresh", events_of("First", 1), expected_head="0"))["head"] == 1


async def test_a_retried_append_with_ids_appends_nothing(api: Api) -> None:
    await api.ok_append("payments", events_of("Noise", 2))
    batch = [{"type": "Paid", "data": {"n": 1}, "id": "pay-1"},
             {"type": "Paid", "data": {"n": 2}, "id": "pay-2"}]
    first = await api.ok_append("payments", batch, expected_head="2")
    assert (first["first"], first["head"], first["appended"]) == (2, 4, 2)
    after_first = await api.events("payments")

    # the same request again (its answer was lost): same positions, nothing appended,
    # and no conflict although expected_head is now stale
    for params in ({}, {"expected_head": "2"}):
        retry = await api.ok_append("payments", batch, **params)
        assert (retry["first"], retry["head"], retry["appended"]) == (2, 4, 0)
        assert retry["duplicates"] == [{"index": 0, "id": "pay-1", "position": 2},
                                       {"index": 1, "id": "pay-2", "position": 3}]
        assert await api.events("payments") == after_first

    # a batch that is partly new appends only the new events, and says which were not
    mixed = await api.ok_append("payments", [batch[1], {"type": "Paid", "data": {"n": 3},
                                                        "id": "pay-3"}])
    assert (mixed["first"], mixed["head"], mixed["appended"]) == (4, 5, 1)
    assert mixed["duplicates"] == [{"index": 0, "id": "pay-2", "position": 3}]
    assert [e["id"] for e in await api.events("payments")][2:] == ["pay-1", "pay-2", "pay-3"]


# --- the catch-up-to-live race -----------------------------------------------------------

BEFORE_BATCHES = 150  # appended before the subscriber starts (it has to catch up)
RACE_WRITERS = 4
DURING_BATCHES = 40  # per writer, racing the subscriber's catch-up
AFTER_BATCHES = 10  # per writer, once the subscriber is live


def race_batch(writer: str, batch: int) -> list[dict[str, Any]]:
    size = 1 + batch % 4
    return [{"type": "Raced", "data": {"w": writer, "b": batch, "k": k, "size": size}}
            for k in range(size)]


@dataclass
class Received:
    """What a subscriber received, and a way to wait for it without sleeping."""

    events: list[tuple[int, Any]] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add(self, position: int, data: Any) -> None:
        self.events.append((position, data))
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, count: int, subscriber: asyncio.Task[None]) -> None:
        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.events) >= count)

        waiter = asyncio.ensure_future(reached())
        await asyncio.wait({waiter, subscriber}, timeout=TIMEOUT,
                           return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            if subscriber.done():
                subscriber.result()  # the subscriber's own error, if it failed
            raise AssertionError(f"the subscriber got {len(self.events)} of {count} events "
                                 f"within {TIMEOUT}s")


Subscribe = Callable[[Received], Awaitable[None]]


async def run_catch_up_race(server: ServerProcess, stream: str, subscribe: Subscribe) -> None:
    """Writers append before, during and after a subscriber's catch-up from 0; the
    subscriber must see positions 0…head-1 exactly once each, in order, with every
    batch where its append said it went."""
    placed: dict[tuple[str, int], tuple[int, int]] = {}  # (writer, batch) → (first, head)
    async with server.async_client() as client:

        async def write(writer: str, batches: range, started: asyncio.Event | None) -> None:
            for b in batches:
                result = await client.append(stream, race_batch(writer, b))
                placed[writer, b] = (result.first, result.head)
                if started is not None:
                    started.set()

        await asyncio.gather(*(write(f"pre{w}", range(w, BEFORE_BATCHES, 4), None)
                               for w in range(4)))

        # writers start first, then the subscriber joins while they append
        started = [asyncio.Event() for _ in range(RACE_WRITERS)]
        during = [asyncio.create_task(write(f"w{w}", range(DURING_BATCHES), started[w]))
                  for w in range(RACE_WRITERS)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), TIMEOUT)
        received = Received()
        subscriber = asyncio.create_task(subscribe(received))
        try:
            await asyncio.wait_for(asyncio.gather(*during), TIMEOUT)
            await received.wait_for((await client.stream(stream)).head, subscriber)

            # live: the subscriber has caught up; more appends race its waiting
            await asyncio.wait_for(asyncio.gather(*(
                write(f"w{w}", range(DURING_BATCHES, DURING_BATCHES + AFTER_BATCHES), None)
                for w in range(RACE_WRITERS))), TIMEOUT)
            # a last marker: once it is received, nothing else can still be on its way
            marker = await client.append(stream, [{"type": "Marker", "data": None}])
            await received.wait_for(marker.head, subscriber)
        finally:
            subscriber.cancel()
            await asyncio.gather(subscriber, return_exceptions=True)

    positions = [position for position, _ in received.events]
    assert positions == list(range(marker.head)), "a gap, a duplicate or a reordering"
    by_position = dict(received.events)
    assert by_position[marker.first] is None
    for (writer, b), (first, head) in placed.items():
        got = [by_position[p] for p in range(first, head)]
        assert got == [e["data"] for e in race_batch(writer, b)], (writer, b, first)
    assert len(placed) == BEFORE_BATCHES + RACE_WRITERS * (DURING_BATCHES + AFTER_BATCHES)
    assert marker.first == sum(head - first for first, head in placed.values())


async def test_catch_up_to_live_race_python_client(server: ServerProcess) -> None:
    async def subscribe(received: Received) -> None:
        async with server.async_client() as client, client.subscribe(
                "race", start=0, heartbeat=0.2) as subscription:
            async for event in subscription:
                await received.add(event.position, event.data)

    await run_catch_up_race(server, "race", subscribe)


async def test_catch_up_to_live_race_sse(api: Api, server: ServerProcess) -> None:
    async def subscribe(received: Received) -> None:
        async with api.stream("race", SSE, {"from": "0", "heartbeat": "0.2"}) as response:
            assert response.status == 200
            async for sse_id, data in sse_messages(response):
                assert sse_id == data["position"]
                await received.add(sse_id, data["data"])

    await run_catch_up_race(server, "race", subscribe)


# --- concurrent writers -------------------------------------------------------------------

WRITERS = 50
BATCHES_PER_WRITER = 8


async def test_fifty_concurrent_writers_make_one_dense_sequence(server: ServerProcess) -> None:
    results: dict[tuple[int, int], herald.AppendResult] = {}
    async with server.async_client() as client:

        async def writer(w: int) -> None:
            for b in range(BATCHES_PER_WRITER):
                size = 1 + (w + b) % 5
                batch = [{"type": "Wrote", "data": {"w": w, "b": b, "k": k}} for k in range(size)]
                results[w, b] = await client.append("busy", batch)

        await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(WRITERS))), TIMEOUT * 2)
        async with client.subscribe("busy", follow=False) as subscription:
            events = [event async for event in subscription]

    total = sum(1 + (w + b) % 5 for w in range(WRITERS) for b in range(BATCHES_PER_WRITER))
    assert [e.position for e in events] == list(range(total)), "not dense and gap-free"
    seen = [(e.data["w"], e.data["b"], e.data["k"]) for e in events]
    assert len(set(seen)) == total, "an event was stored twice"
    for (w, b), result in results.items():
        size = 1 + (w + b) % 5
        assert (result.appended, result.head - result.first) == (size, size)
        # the batch is contiguous, in order, where its answer said
        assert seen[result.first:result.head] == [(w, b, k) for k in range(size)]
    for w in range(WRITERS):  # one writer's batches land in the order it sent them
        firsts = [results[w, b].first for b in range(BATCHES_PER_WRITER)]
        assert firsts == sorted(firsts)


# --- bad input ------------------------------------------------------------------------------

LIMITS = {
    "HERALD_LIMITS_MAX_EVENT_BYTES": "1000",
    "HERALD_LIMITS_MAX_BATCH_BYTES": "4000",
    "HERALD_LIMITS_MAX_BATCH_EVENTS": "20",
}


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with small limits for every bad-input case (it only ever refuses)."""
    server = ServerProcess(data=tmp_path_factory.mktemp("limited") / "data", env=LIMITS)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def limited(limited_server: ServerProcess) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield Api(limited_server, s)


@pytest.fixture
async def guarded(limited: Api, request: pytest.FixtureRequest) -> str:
    """A stream (its own per test) holding one event, to prove a refusal changes nothing."""
    name = "guarded-" + "".join(c if c.isalnum() else "-" for c in request.node.name)[-100:]
    await limited.ok_append(name, events_of("Kept", 1))
    return name


async def assert_refused_unchanged(api: Api, stream: str, reply: Reply, status: int,
                                   code: str) -> dict[str, Any]:
    """The reply is this error, and the ``guarded`` stream still holds only its one event."""
    error = assert_error(reply, status, code)
    assert await api.head(stream) == 1
    assert [(e["position"], e["type"]) for e in await api.events(stream)] == [(0, "Kept")]
    return error


BAD_BODIES = {
    "truncated JSON": (b'[{"type": "a", "data": 1}', "invalid_json"),
    "not JSON": (b"events, please", "invalid_json"),
    "empty body": (b"", "invalid_json"),
    "invalid UTF-8": (b'[{"type": "a", "data": "\xff\xfe"}]', "invalid_json"),
    "type not a string": (b'[{"type": 1, "data": 1}]', "invalid_event"),
    "empty type": (b'[{"type": "", "data": 1}]', "invalid_event"),
    "meta value not a string": (b'[{"type": "a", "data": 1, "meta": {"k": 1}}]',
                                "invalid_event"),
    "id not a string": (b'[{"type": "a", "data": 1, "id": 7}]', "invalid_event"),
    "id null": (b'[{"type": "a", "data": 1, "id": null}]', "invalid_event"),
    "missing type": (b'[{"data": 1}]', "invalid_event"),
    "missing data": (b'[{"type": "a"}]', "invalid_event"),
    "unknown field": (b'[{"type": "a", "data": 1, "position": 3}]', "invalid_event"),
    "one bad event of two": (b'[{"type": "a", "data": 1}, {"type": "b"}]', "invalid_event"),
    "not an array": (b'{"type": "a", "data": 1}', "invalid_event"),
    "array of numbers": (b"[1, 2]", "invalid_event"),
    "empty batch": (b"[]", "empty_batch"),
    "an id twice": (b'[{"type": "a", "data": 1, "id": "x"}, {"type": "a", "data": 2, "id": "x"}]',
                    "duplicate_id"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_bad_body_is_refused(limited: Api, guarded: str, case: str) -> None:
    body, code = BAD_BODIES[case]
    reply = await limited.append(guarded, body)
    await assert_refused_unchanged(limited, guarded, reply, 400, code)


async def test_oversized_event_is_refused(limited: Api, guarded: str) -> None:
    big = [{"type": "Small", "data": 1}, {"type": "Big", "data": "x" * 1200}]
    reply = await limited.append(guarded, big)
    error = await assert_refused_unchanged(limited, guarded, reply, 413, "event_too_large")
    assert (error["index"], error["limit"]) == (1, 1000)


def _big_batch() -> bytes:
    return json.dumps([{"type": "Mid", "data": "x" * 900} for _ in range(5)]).encode()


async def test_oversized_batch_is_refused(limited: Api, guarded: str) -> None:
    body = _big_batch()
    assert len(body) > 4000
    error = await assert_refused_unchanged(limited, guarded, await limited.append(guarded, body),
                                           413, "batch_too_large")
    assert error["limit"] == 4000


async def test_oversized_chunked_batch_is_refused(limited: Api, guarded: str) -> None:
    """Without a Content-Length the body is measured as it arrives."""
    async def chunks() -> AsyncIterator[bytes]:
        body = _big_batch()
        for i in range(0, len(body), 512):
            yield body[i:i + 512]

    reply = await limited.request("POST", f"/v1/streams/{guarded}/events", body=chunks())
    await assert_refused_unchanged(limited, guarded, reply, 413, "batch_too_large")


async def test_too_many_events_is_refused(limited: Api, guarded: str) -> None:
    reply = await limited.append(guarded, events_of("Many", 21))
    error = await assert_refused_unchanged(limited, guarded, reply, 413, "batch_too_large")
    assert error["limit"] == 20
    # the limits are limits, not off by one
    assert (await limited.ok_append(guarded, events_of("Many", 20)))["appended"] == 20


BAD_NAMES = {
    "dot dot": "..",
    "encoded dot dot": "%2E%2E",
    "space": "a%20b",
    "hidden": ".hidden",
    "too long": "s" * 200,
    "slash inside": "a%2Fb",
    "unicode": "caf%C3%A9",
}


@pytest.mark.parametrize("case", sorted(BAD_NAMES))
async def test_bad_stream_name_is_refused(limited: Api, case: str) -> None:
    name = BAD_NAMES[case]
    before = (await limited.request("GET", "/v1/streams")).json()
    reply = await limited.append(name, events_of("Lost", 1))
    assert_error(reply, 400, "invalid_stream_name")
    for path in (f"/v1/streams/{name}", f"/v1/streams/{name}/events"):
        assert_error(await limited.request("GET", path), 400, "invalid_stream_name")
    async with limited.stream(name, SSE) as response:
        assert_error(Reply(response.status, dict(response.headers), await response.read()),
                     400, "invalid_stream_name")
    assert (await limited.request("GET", "/v1/streams")).json() == before


@pytest.mark.parametrize(("params", "parameter"), [
    ({"from": "-1"}, "from"),
    ({"from": "x"}, "from"),
    ({"from": "1.5"}, "from"),
    ({"limit": "0"}, "limit"),
    ({"limit": "-3"}, "limit"),
    ({"limit": "10001"}, "limit"),
])
async def test_bad_read_parameter(limited: Api, guarded: str, params: dict[str, str],
                                  parameter: str) -> None:
    error = assert_error(await limited.read(guarded, **params), 400, "invalid_parameter")
    assert error["parameter"] == parameter


@pytest.mark.parametrize(("accept", "params", "headers", "parameter"), [
    (SSE, {"from": "-1"}, {}, "from"),
    (SSE, {"follow": "maybe"}, {}, "follow"),
    (SSE, {"heartbeat": "0"}, {}, "heartbeat"),
    (SSE, {}, {"Last-Event-ID": "x"}, "Last-Event-ID"),
    (codec.MEDIA_TYPE, {"from": "-1"}, {}, "from"),
    (codec.MEDIA_TYPE, {"heartbeat": "soon"}, {}, "heartbeat"),
])
async def test_bad_streaming_parameter(limited: Api, guarded: str, accept: str,
                                       params: dict[str, str], headers: dict[str, str],
                                       parameter: str) -> None:
    async with limited.stream(guarded, accept, params, **headers) as response:
        reply = Reply(response.status, dict(response.headers), await response.read())
    assert assert_error(reply, 400, "invalid_parameter")["parameter"] == parameter


@pytest.mark.parametrize("value", ["x", "-1", "1e3", ""])
async def test_bad_expected_head_appends_nothing(limited: Api, guarded: str, value: str) -> None:
    # An empty value too: a producer that meant to send a condition must not get an
    # unconditional append.
    reply = await limited.append(guarded, events_of("Lost", 1), expected_head=value)
    error = await assert_refused_unchanged(limited, guarded, reply, 400, "invalid_parameter")
    assert error["parameter"] == "expected_head"


@pytest.mark.parametrize("path", ["/v1", "/v2/streams", "/v1/streams/s/events/0",
                                  "/v1/stream/s"])
async def test_unknown_route(limited: Api, path: str) -> None:
    assert_error(await limited.request("GET", path), 404, "not_found")


@pytest.mark.parametrize(("method", "path"), [
    ("DELETE", "/v1/streams/s/events"),
    ("PUT", "/v1/streams/s/events"),
    ("POST", "/v1/streams/s"),
    ("POST", "/v1/streams"),
    ("DELETE", "/v1/health"),
])
async def test_wrong_method(limited: Api, method: str, path: str) -> None:
    reply = await limited.request(method, path, body=b"[]")
    assert_error(reply, 405, "method_not_allowed")
    assert "Allow" in reply.headers


# --- headers --------------------------------------------------------------------------------


async def test_every_response_carries_hsts(api: Api) -> None:
    await api.ok_append("s", events_of("E", 1))
    replies = [
        await api.request("GET", "/v1/health", token=None),
        await api.request("GET", "/v1/streams", token=None),  # 401
        await api.request("GET", "/v1/nowhere"),  # 404
        await api.read("s"),
        await api.append("s", b"[]"),  # 400
    ]
    async with api.stream("s", SSE, {"follow": "false"}) as response:
        await response.read()
        replies.append(Reply(response.status, dict(response.headers), b""))
    async with api.stream("s", codec.MEDIA_TYPE, {"follow": "false"}) as response:
        await response.read()
        replies.append(Reply(response.status, dict(response.headers), b""))
    for reply in replies:
        hsts = reply.headers.get("Strict-Transport-Security", "")
        assert hsts.startswith("max-age="), (reply.status, reply.headers)
        assert int(hsts.removeprefix("max-age=").split(";")[0]) >= 180 * 24 * 3600


def test_the_server_certificate_is_verified(server: ServerProcess) -> None:
    """Plain HTTP on the TLS port gets nothing; the CA Herald printed verifies it."""
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=server.ca)
    with urllib.request.urlopen(server.url + "/v1/health", context=context,
                                timeout=TIMEOUT) as response:
        assert json.loads(response.read())["status"] == "ok"
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(server.url.replace("https:", "http:") + "/v1/health",
                               timeout=TIMEOUT)
