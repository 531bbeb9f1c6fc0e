"""The client with several node URLs: what it retries on the next node, and what not.

A real Herald (files engine) is the healthy node; the failing "node" is a small
TLS server with the same certificate that either drops every request after
reading it (the node died mid-request) or answers 503 (its storage is gone).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import herald
from herald.server.tls import server_context

from ..conftest import ServerProcess


class FailingNode:
    """Reads each request whole, then drops the connection or answers 503."""

    def __init__(self, tls_dir: Path, mode: str) -> None:
        self.context = server_context(tls_dir / "server.pem", tls_dir / "server.key")
        self.mode = mode
        self.requests: list[str] = []
        self.server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> FailingNode:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0,
                                                 ssl=self.context)
        return self

    async def stop(self) -> None:
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            self.requests.append(head.split(b"\r\n")[0].decode())
            if self.mode == "hang":  # a stopped node: the connection stays, silent
                await asyncio.sleep(3600)
            if self.mode == "503":
                body = (b'{"error":{"code":"storage_unavailable",'
                        b'"message":"PostgreSQL is unreachable"}}')
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                             b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._handlers.discard(task)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}"


@pytest.fixture
async def dropping(server: ServerProcess) -> AsyncIterator[FailingNode]:
    node = await FailingNode(server.data / "tls", "drop").start()
    yield node
    await node.stop()


@pytest.fixture
async def unavailable(server: ServerProcess) -> AsyncIterator[FailingNode]:
    node = await FailingNode(server.data / "tls", "503").start()
    yield node
    await node.stop()


def client(server: ServerProcess, *urls: str) -> herald.AsyncClient:
    return herald.AsyncClient(list(urls), token=server.token, ca=server.ca)


async def test_a_node_that_cannot_be_reached_is_skipped_for_every_request(
    server: ServerProcess,
) -> None:
    async with client(server, closed_port_url(), server.url) as c:
        # Not even sent: safe to send elsewhere, ids or not.
        assert (await c.append("s", [{"type": "T", "data": 1}])).head == 1
        assert c.url == server.url
        assert [e.data for e in (await c.read("s")).events] == [1]


async def test_an_append_without_ids_that_may_have_landed_is_not_retried(
    server: ServerProcess, dropping: FailingNode
) -> None:
    async with client(server, dropping.url, server.url) as c:
        with pytest.raises(herald.TransportError):
            await c.append("s", [{"type": "T", "data": 1}])
        assert len(dropping.requests) == 1
        assert c.url == server.url, "the next request goes to the next node"
        assert (await c.append("s", [{"type": "T", "data": 2}])).first == 0


async def test_appends_with_ids_or_expected_head_are_retried(
    server: ServerProcess, dropping: FailingNode
) -> None:
    async with client(server, dropping.url, server.url) as c:
        result = await c.append("s", [{"id": "a", "type": "T", "data": 1}])
        assert (result.first, result.appended) == (0, 1)
    async with client(server, dropping.url, server.url) as c:
        result = await c.append("s", b'[{"id":"b","type":"T","data":2}]')
        assert (result.first, result.appended) == (1, 1)
    async with client(server, dropping.url, server.url) as c:
        result = await c.append("s", [{"type": "T", "data": 3}], expected_head=2)
        assert (result.first, result.appended) == (2, 1)
    assert len(dropping.requests) == 3


async def test_a_503_sends_reads_and_safe_appends_to_the_next_node(
    server: ServerProcess, unavailable: FailingNode
) -> None:
    async with client(server, unavailable.url, server.url) as c:
        with pytest.raises(herald.StorageUnavailable):
            await c.append("s", [{"type": "T", "data": 1}])
        assert c.url == server.url
    async with client(server, unavailable.url, server.url) as c:
        assert (await c.append("s", [{"id": "x", "type": "T", "data": 1}])).appended == 1
    async with client(server, unavailable.url, server.url) as c:
        assert [s.name for s in await c.streams()] == ["s"]


async def test_every_node_failing_raises_the_last_error(
    server: ServerProcess, unavailable: FailingNode
) -> None:
    async with client(server, closed_port_url(), unavailable.url) as c:
        with pytest.raises(herald.StorageUnavailable):
            await c.read("s")


async def test_a_subscription_moves_to_the_next_node(
    server: ServerProcess, unavailable: FailingNode
) -> None:
    async with client(server, server.url) as c:
        await c.append("s", [{"type": "T", "data": n} for n in range(5)])
    async with client(server, unavailable.url, closed_port_url(), server.url) as c:
        async with c.subscribe("s", 2, follow=False) as subscription:
            assert [e.position async for e in subscription] == [2, 3, 4]
        assert c.url == server.url


def test_the_blocking_client_takes_several_urls_too(server: ServerProcess) -> None:
    with herald.Client([closed_port_url(), server.url], token=server.token,
                       ca=server.ca) as c:
        c.append("b", [{"type": "T", "data": 1}])
        assert c.url == server.url
        assert len(c.urls) == 2
    with pytest.raises(herald.ClientError):
        herald.Client([], token=server.token, ca=server.ca)


async def test_a_subscription_leaves_a_node_that_hangs(server: ServerProcess) -> None:
    hung = await FailingNode(server.data / "tls", "hang").start()
    try:
        async with client(server, server.url) as c:
            await c.append("s", [{"type": "T", "data": n} for n in range(3)])
        async with client(server, hung.url, server.url) as c:
            # heartbeat 0.1 s: silence for 3 heartbeats + 2 s means the node hangs
            async with c.subscribe("s", 0, heartbeat=0.1) as subscription:
                first = await asyncio.wait_for(subscription.next_batch(), 30)
            assert [e.position for e in first] == [0, 1, 2]
            assert c.url == server.url
            assert len(hung.requests) == 1
    finally:
        await hung.stop()
        # The client's TLS connection to the hung node is shut down gracefully and
        # finishes only now that the node is gone: let the loop see that through
        # before the test's loop closes (else its socket is left for the GC).
        await asyncio.sleep(0.2)
