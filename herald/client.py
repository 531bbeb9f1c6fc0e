"""The Python client: ``AsyncClient`` (asyncio) and ``Client`` (blocking).

    import herald

    with herald.Client("https://127.0.0.1:8443", token_file="herald-data/admin-token",
                       ca="herald-data/tls/ca.pem") as client:
        client.append("inventory", [{"type": "ItemAdded", "data": {"sku": "A1"}}])
        for event in client.subscribe("inventory", start=0):
            print(event.position, event.type, event.data)

Subscriptions use the compact form (``application/vnd.herald.records``): the server
sends its stored records unchanged and the client decodes whole batches with
msgspec. A subscription that loses its connection resumes from its position by
itself. Every failure is a ``herald.HeraldError``; transport errors never leak.

**Several nodes.** ``url`` may be a list of node URLs (Herald nodes over one
PostgreSQL). The client talks to one node at a time and moves to the next when
that node cannot be reached or answers that it is unavailable (HTTP 502/503/504)
— and stays there. What it retries on the next node, without the caller seeing
the failure:

* requests that change nothing (reads, stream listings): always;
* any request that never reached a node (the connection could not be opened);
* an append whose every event carries an ``id``: the dedup window, shared by all
  nodes, turns a retry of an append that did land into ``appended=0`` with the
  ``duplicates`` listed, so the events are in the stream exactly once;
* an append with ``expected_head``: it cannot land twice. If the first attempt
  did land, the retry fails with ExpectedHeadMismatch, and the caller re-reads
  where the stream is (as a gatherer does anyway);

and what it does not: an append without ids and without ``expected_head`` that
failed after it was sent. It may have been appended; sending it again could
append it twice. The caller gets the error (TransportError or StorageUnavailable)
and decides; the next request goes to the next node.

A subscription that loses its node resumes from ``position`` on the next one, at
once; it backs off only when every node has failed in a row. A subscription that
hears nothing — not even a heartbeat — for three heartbeat intervals takes its node
for lost.

Why one module of ~730 lines: it is the whole public client, and a user reads it as
one — the two clients, the subscription, failover and the error mapping refer to
each other on every page. Split, each part would import the others' private names.
"""

from __future__ import annotations

import asyncio
import io
import ssl
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import msgspec

from . import codec
from .errors import (
    ClientError,
    CorruptRecord,
    HeraldError,
    ProtocolError,
    ServerError,
    TransportError,
    error_from_wire,
)
from .gather.status import GathererStatus, GatherSkip
from .model import (
    AppendResult,
    Event,
    StreamInfo,
    validate_stream_name,
)

__all__ = ["AsyncClient", "Client", "AsyncSubscription", "Subscription", "ReadResult"]

T = TypeVar("T")

# A dropped subscription reconnects after this long, doubling up to the maximum.
RECONNECT_INITIAL_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0
READ_BUFFER_BYTES = 1024 * 1024
# A subscription's server sends a heartbeat after this many seconds of quiet (the
# server's default; ``heartbeat=`` asks for another). A subscription that hears
# nothing at all — no events, no heartbeat — for SILENCE_HEARTBEATS heartbeats
# plus SILENCE_GRACE_SECONDS takes its node for hung and moves on: a node that is
# stopped or cut off, not dead, keeps its TCP connection open and would otherwise
# hold the subscription forever.
SERVER_HEARTBEAT_SECONDS = 15.0
SILENCE_HEARTBEATS = 3
SILENCE_GRACE_SECONDS = 2.0
# Answers that say "this node cannot serve now, another may": its storage is
# unreachable (503), or a proxy in front of it found no live node (502, 504).
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})


class ReadResult(msgspec.Struct):
    events: list[Event]
    next: int
    head: int


class _Page(msgspec.Struct):
    events: list[Event]
    next: int
    head: int


class _Streams(msgspec.Struct):
    streams: list[StreamInfo]


class _Gatherers(msgspec.Struct):
    gatherers: list[GathererStatus]


class _Skipped(msgspec.Struct):
    skip: GatherSkip
    gatherer: GathererStatus


class _IdOnly(msgspec.Struct):
    id: str | None = None


_ids_decoder = msgspec.json.Decoder(list[_IdOnly])


def _all_ids(body: bytes) -> bool:
    """Does every event of an encoded batch carry an id (so a retry is safe)?"""
    try:
        events = _ids_decoder.decode(body)
    except msgspec.MsgspecError:
        return False  # the server will refuse it; nothing to retry
    return bool(events) and all(e.id is not None for e in events)


def _unavailable(error: HeraldError) -> bool:
    """A failure another node may not have: retry there.

    Not a TLS failure: a certificate the client does not trust (a wrong ``ca``) is a
    setting to fix, and retrying it forever would hide it (a subscription would
    never return)."""
    if isinstance(error, TransportError):
        return error.code != "tls_error"
    return isinstance(error, ServerError) and error.status in UNAVAILABLE_STATUSES


def _node_urls(url: str | Sequence[str]) -> list[str]:
    urls = [url] if isinstance(url, str) else list(url)
    urls = [u.strip().rstrip("/") for u in urls if u.strip()]
    if not urls:
        raise ClientError("no Herald URL given", code="bad_url")
    return urls


_encoder = msgspec.json.Encoder()


def events_from_record(record: codec.Record, start: int = 0) -> list[Event]:
    """The events of a record at positions ≥ ``start`` (``codec.events_of``, the one
    place a record becomes events); a record that does not decode is the server's
    answer not being understood: ProtocolError."""
    try:
        return codec.events_of(record, start)
    except CorruptRecord as exc:
        raise ProtocolError(exc.message) from exc


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """Verify the server against ``ca`` (or the system's CAs); present a client
    certificate if given (mutual TLS)."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _read_token(token: str | None, token_file: str | Path | None) -> str | None:
    if token is not None:
        return token
    if token_file is not None:
        try:
            return Path(token_file).read_text().strip()
        except OSError as exc:
            raise ClientError(f"cannot read token file {token_file}: {exc.strerror}",
                              code="bad_token_file") from exc
        except UnicodeDecodeError as exc:
            raise ClientError(f"cannot read token file {token_file}: it is not UTF-8 text",
                              code="bad_token_file") from exc
    return None


class AsyncClient:
    """Herald over HTTPS, for asyncio code. Use as ``async with AsyncClient(…)``.

    ``url`` is one node's URL, or a list of them (see the module docstring for
    what fails over to the next node and what does not).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        token_file: str | Path | None = None,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.urls = _node_urls(url)
        self._node = 0
        token = _read_token(token, token_file)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self._ssl = ssl_context or client_context(
                Path(ca) if ca else None, Path(cert) if cert else None,
                Path(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(f"cannot load TLS files: {exc}", code="bad_tls_files") from exc
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    # lifecycle

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=64),
                # Large reads: a catch-up subscription moves megabytes; fewer, bigger
                # chunks mean fewer trips through the TLS and stream layers.
                read_bufsize=READ_BUFFER_BYTES,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # nodes

    @property
    def url(self) -> str:
        """The node this client talks to now."""
        return self.urls[self._node]

    def _failed(self, url: str) -> None:
        """``url`` failed: move to the next node (unless another request already did)."""
        if len(self.urls) > 1 and self.urls[self._node] == url:
            self._node = (self._node + 1) % len(self.urls)

    # requests

    async def _request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None,
        data: bytes | None = None, headers: Mapping[str, str] | None = None,
        idempotent: bool | None = True,
    ) -> bytes:
        """Send a request to the current node; on failure, to the next ones.

        ``idempotent``: True if a repeat can do no harm, False if it could, None if
        not known yet (an append: worked out from the body, only on failure).
        """
        last: HeraldError | None = None
        for _ in range(len(self.urls)):
            url = self.url
            sent = False
            try:
                async with self._http().request(
                    method, url + path, params=params, data=_payload(data), headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                ) as response:
                    sent = True
                    body = await response.read()
                    if response.status >= 400:
                        raise _error(response.status, body)
                    return body
            except HeraldError as exc:
                error: HeraldError = exc
            except aiohttp.ClientConnectorError as exc:
                # The connection was never opened: the request cannot have arrived.
                error = _transport_error(exc, url)
                error.__cause__ = exc
            except (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError) as exc:
                sent = True
                error = _transport_error(exc, url)
                error.__cause__ = exc
            if not _unavailable(error):
                raise error
            self._failed(url)
            last = error
            if sent and error.code != "tls_error":
                if idempotent is None:
                    idempotent = data is not None and _all_ids(data)
                if not idempotent:
                    raise error  # it may have been applied: the caller decides
        assert last is not None
        raise last

    async def append(
        self, stream: str, events: Iterable[Mapping[str, Any]] | bytes, *,
        expected_head: int | None = None,
    ) -> AppendResult:
        """Append a batch atomically. ``events`` are dicts with ``type``, ``data`` and
        optionally ``id`` and ``meta``, or the batch already encoded as JSON bytes."""
        body = events if isinstance(events, bytes) else _encoder.encode(list(events))
        params = {"expected_head": str(expected_head)} if expected_head is not None else None
        # With expected_head an append cannot land twice; with ids on every event
        # the dedup window makes a repeat harmless. Either makes it safe to retry.
        answer = await self._request("POST", _events_path(stream), params=params,
                                     data=body, headers={"Content-Type": "application/json"},
                                     idempotent=True if expected_head is not None else None)
        return _decode(answer, AppendResult)

    async def read(self, stream: str, start: int = 0, limit: int | None = None) -> ReadResult:
        """Up to ``limit`` events from position ``start`` (None: the server's default
        page, 1000 events or its configured maximum if that is lower)."""
        params = {"from": str(start)}
        if limit is not None:
            params["limit"] = str(limit)
        answer = await self._request("GET", _events_path(stream), params=params)
        page = _decode(answer, _Page)
        return ReadResult(events=page.events, next=page.next, head=page.head)

    async def streams(self) -> list[StreamInfo]:
        answer = await self._request("GET", "/v1/streams")
        return _decode(answer, _Streams).streams

    async def stream(self, stream: str) -> StreamInfo:
        answer = await self._request("GET", f"/v1/streams/{validate_stream_name(stream)}")
        return _decode(answer, StreamInfo)

    async def gatherers(self) -> list[GathererStatus]:
        """Every gatherer's status (admin)."""
        answer = await self._request("GET", "/v1/gatherers")
        return _decode(answer, _Gatherers).gatherers

    async def gatherer(self, name: str) -> GathererStatus:
        answer = await self._request("GET", f"/v1/gatherers/{name}")
        return _decode(answer, GathererStatus)

    async def gather_skip(self, name: str, position: int) -> GatherSkip:
        """Skip the source row gatherer ``name`` is stopped at (admin; recorded with
        who and when). Conflict unless it is stopped at exactly ``position``."""
        answer = await self._request(
            "POST", f"/v1/gatherers/{name}/skip", data=_encoder.encode({"position": position}),
            headers={"Content-Type": "application/json"})
        return _decode(answer, _Skipped).skip

    def subscribe(
        self, stream: str, start: int = 0, *, follow: bool = True,
        heartbeat: float | None = None,
    ) -> AsyncSubscription:
        """Events from ``start`` on: catch up, then (with ``follow``) wait for more.

        Use ``async with client.subscribe(…) as sub: async for event in sub``.
        """
        validate_stream_name(stream)
        return AsyncSubscription(self, stream, start, follow=follow, heartbeat=heartbeat)


def _events_path(stream: str) -> str:
    # Checked here, not only by the server: the name goes into the URL, where "..",
    # "/" or "?" would change which resource is asked for (a valid name needs no quoting).
    return f"/v1/streams/{validate_stream_name(stream)}/events"
# What msgspec raises for a body it cannot decode: its own errors, and the two it
# lets through (invalid UTF-8 in a string it builds, nesting beyond its guard).
_UNDECODABLE = (msgspec.MsgspecError, UnicodeDecodeError, RecursionError)


def _decode(answer: bytes, type_: type[T]) -> T:
    """A server's answer as ``type_``; ProtocolError if it is not one. Every answer
    the client decodes goes through here (or ``_error``): the client raises nothing
    but HeraldError (tests/unit/test_client_errors.py)."""
    try:
        return msgspec.json.decode(answer, type=type_)
    except _UNDECODABLE as exc:
        raise ProtocolError(f"unexpected answer: {exc}") from exc


def _error(status: int, body: bytes) -> HeraldError:
    try:
        document = msgspec.json.decode(body)
    except _UNDECODABLE:
        document = None
    return error_from_wire(status, document)


def _transport_error(exc: BaseException, url: str) -> TransportError:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TransportError(f"TLS certificate of {url} not trusted: {exc.certificate_error}",
                              code="tls_error")
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return TransportError(f"TLS failed with {url}: {exc}", code="tls_error")
    if isinstance(exc, asyncio.TimeoutError):
        return TransportError(f"{url} did not answer in time", code="timeout")
    return TransportError(f"cannot reach {url}: {exc}", code="connection_failed")


class AsyncSubscription:
    """An async iterator of events; resumes by itself after a dropped connection.

    ``position`` is the position of the next event it will deliver; ``head`` the
    stream's head as last reported by the server (None until the first heartbeat).
    """

    def __init__(self, client: AsyncClient, stream: str, start: int, *, follow: bool,
                 heartbeat: float | None) -> None:
        self._client = client
        self.stream = stream
        self._next = start  # the position after the last event received
        self.head: int | None = None
        self._follow = follow
        self._heartbeat = heartbeat
        self._batches: AsyncGenerator[list[Event], None] | None = None
        self._buffer: list[Event] = []
        self._index = 0
        self._response: aiohttp.ClientResponse | None = None
        self._closed = False

    @property
    def position(self) -> int:
        """The position of the next event this subscription delivers: saved after an
        event, ``subscribe(start=position)`` resumes with no gap and no duplicate, also
        in the middle of a batch."""
        if self._index < len(self._buffer):
            return self._buffer[self._index].position
        return self._next

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> Event:
        while self._index >= len(self._buffer):
            self._buffer = await self.next_batch()
            self._index = 0
        event = self._buffer[self._index]
        self._index += 1
        return event

    async def next_batch(self) -> list[Event]:
        """The next non-empty list of events (the fast path: one call per batch)."""
        if self._batches is None:
            self._batches = self._run()
        try:
            return await self._batches.__anext__()
        except StopAsyncIteration:
            raise StopAsyncIteration from None

    async def batches(self) -> AsyncIterator[list[Event]]:
        while True:
            try:
                yield await self.next_batch()
            except StopAsyncIteration:
                return

    async def close(self) -> None:
        self._closed = True
        if self._response is not None:
            _abandon(self._response)
            self._response = None
        batches, self._batches = self._batches, None
        # Closed from another task while the iterating one waits inside the generator,
        # it cannot be closed from here; the closed response (or ``_closed``) ends it.
        if batches is not None and not getattr(batches, "ag_running", False):
            await batches.aclose()

    async def _run(self) -> AsyncGenerator[list[Event], None]:
        delay = RECONNECT_INITIAL_SECONDS
        failures = 0  # in a row, without an answer from any node
        while not self._closed:
            url = self._client.url
            try:
                async for batch in self._connection(url):
                    delay = RECONNECT_INITIAL_SECONDS
                    failures = 0
                    if batch:
                        yield batch
                if not self._follow:
                    return  # the server ended the stream: caught up
                # A followed stream never ends by itself: the node is going away.
                raise TransportError(f"{url} ended the subscription",
                                     code="connection_failed")
            except HeraldError as exc:
                if self._closed:
                    return
                if not _unavailable(exc):
                    raise
                self._client._failed(url)
                failures += 1
                # Another node is tried at once; a pause only once every node failed.
                if failures % len(self._client.urls) == 0:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _connection(self, url: str) -> AsyncIterator[list[Event]]:
        client = self._client
        params = {"from": str(self._next), "follow": "true" if self._follow else "false"}
        if self._heartbeat is not None:
            params["heartbeat"] = str(self._heartbeat)
        # TLS already guarantees integrity in transit and the server checked every CRC
        # before sending: checking again here would only cost time.
        decoder = codec.RecordDecoder(verify=False)
        heartbeat = self._heartbeat or SERVER_HEARTBEAT_SECONDS
        silence = aiohttp.ClientTimeout(
            total=None, sock_connect=client._timeout,
            sock_read=SILENCE_HEARTBEATS * heartbeat + SILENCE_GRACE_SECONDS)
        try:
            response = await client._http().get(
                f"{url}/v1/streams/{self.stream}/events", params=params,
                headers={"Accept": codec.MEDIA_TYPE}, timeout=silence)
        except (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            raise _transport_error(exc, url) from exc
        self._response = response
        try:
            if self._closed:  # closed while connecting
                return
            if response.status >= 400:
                raise _error(response.status, await response.read())
            while True:
                try:
                    chunk = await response.content.readany()
                except (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError) as exc:
                    raise _transport_error(exc, url) from exc
                if not chunk:
                    if decoder.pending:
                        raise TransportError("subscription ended inside a record",
                                             code="connection_failed")
                    return
                try:
                    records = decoder.feed(chunk)
                except HeraldError as exc:
                    raise ProtocolError(f"bad record from server: {exc.message}") from exc
                events: list[Event] = []
                for record in records:
                    if record.count == 0:
                        self.head = record.base
                        continue
                    if record.end <= self._next:
                        continue
                    events += events_from_record(record, self._next)
                    self._next = record.end
                    if self.head is not None and self.head < self._next:
                        self.head = self._next
                yield events
        finally:
            _abandon(response)
            self._response = None


# Bodies above this go to aiohttp as a file-like object, written in pieces: aiohttp
# warns (ResourceWarning) that one large ``bytes`` body could hold the event loop.
_LARGE_BODY_BYTES = 1024 * 1024


def _payload(data: bytes | None) -> bytes | io.BytesIO | None:
    """A request body as aiohttp should get it (a fresh object per attempt: a
    retry on the next node sends it again from its start)."""
    if data is not None and len(data) > _LARGE_BODY_BYTES:
        return io.BytesIO(data)
    return data


def _abandon(response: aiohttp.ClientResponse) -> None:
    """Close a response that may be in the middle of its stream, without the TLS
    goodbye: a graceful TLS close needs more turns of the event loop, and one still
    pending when the loop ends leaks its socket (CPython gh-118950, before 3.12.8).
    aiohttp aborts TLS connections when a session closes, for the same reason."""
    connection = response.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol.abort()
    response.close()


# --- the blocking client ------------------------------------------------------------


class Client:
    """Herald over HTTPS, blocking. Runs an ``AsyncClient`` on a private event loop
    in a background thread, so both share one implementation."""

    def __init__(self, url: str | Sequence[str], **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="herald-client",
                                        daemon=True)
        self._thread.start()
        try:
            self._async = AsyncClient(url, **options)
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def append(self, stream: str, events: Iterable[Mapping[str, Any]] | bytes, *,
               expected_head: int | None = None) -> AppendResult:
        batch = events if isinstance(events, bytes) else list(events)
        return self._run(self._async.append(stream, batch, expected_head=expected_head))

    def read(self, stream: str, start: int = 0, limit: int | None = None) -> ReadResult:
        return self._run(self._async.read(stream, start, limit))

    @property
    def url(self) -> str:
        """The node this client talks to now."""
        return self._async.url

    @property
    def urls(self) -> list[str]:
        return self._async.urls

    def streams(self) -> list[StreamInfo]:
        return self._run(self._async.streams())

    def stream(self, stream: str) -> StreamInfo:
        return self._run(self._async.stream(stream))

    def gatherers(self) -> list[GathererStatus]:
        return self._run(self._async.gatherers())

    def gatherer(self, name: str) -> GathererStatus:
        return self._run(self._async.gatherer(name))

    def gather_skip(self, name: str, position: int) -> GatherSkip:
        return self._run(self._async.gather_skip(name, position))

    def subscribe(self, stream: str, start: int = 0, *, follow: bool = True,
                  heartbeat: float | None = None) -> Subscription:
        return Subscription(self, self._async.subscribe(stream, start, follow=follow,
                                                        heartbeat=heartbeat))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._async.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Subscription:
    """A blocking iterator of events (see ``AsyncSubscription``)."""

    def __init__(self, client: Client, subscription: AsyncSubscription) -> None:
        self._client = client
        self._sub = subscription
        self._buffer: list[Event] = []
        self._index = 0

    @property
    def position(self) -> int:
        """The position of the next event this subscription delivers."""
        if self._index < len(self._buffer):
            return self._buffer[self._index].position
        return self._sub.position

    @property
    def head(self) -> int | None:
        return self._sub.head

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        while self._index >= len(self._buffer):
            self._buffer = self.next_batch()
            self._index = 0
        event = self._buffer[self._index]
        self._index += 1
        return event

    def next_batch(self) -> list[Event]:
        try:
            return self._client._run(self._sub.next_batch())
        except StopAsyncIteration:
            raise StopIteration from None

    def batches(self) -> Iterator[list[Event]]:
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return

    def close(self) -> None:
        self._client._run(self._sub.close())

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

