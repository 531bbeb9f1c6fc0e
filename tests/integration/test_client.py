"""The Python client (``herald.Client`` and ``herald.AsyncClient``) against a real server.

What this proves:

* both clients work as context managers: append, read, streams, stream, subscribe;
* ``subscribe(start=N)`` starts at N, even inside a batch, and ``position`` is the
  position of the next event the subscription will deliver — so it can be saved and
  resumed from without a gap or a duplicate;
* a subscription survives a server restart (SIGTERM, a new process on the same data
  directory and port): it reconnects by itself and continues without gap or duplicate;
* a subscription can be closed from another task while it waits;
* every failure is Herald's own error (``TransportError`` when nothing listens or
  the CA is wrong, ``Unauthorized``, ``InvalidStreamName``…), never an aiohttp or
  ssl exception.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import herald
from herald.certs import create_ca

from ..conftest import ServerProcess

TIMEOUT = 60.0


def batch(kind: str, count: int, **data: Any) -> list[dict[str, Any]]:
    return [{"type": kind, "data": {**data, "i": i}} for i in range(count)]


def assert_heralds_own(error: BaseException) -> None:
    """A Herald error, and not also a driver's (aiohttp, ssl, OSError)."""
    assert isinstance(error, herald.HeraldError)
    assert not isinstance(error, (aiohttp.ClientError, ssl.SSLError, OSError))
    assert type(error).__module__ == "herald.errors"


# --- the blocking client ------------------------------------------------------------------


def test_blocking_client_round_trip(server: ServerProcess) -> None:
    with server.client() as client:
        first = client.append("inventory", [
            {"type": "ItemAdded", "data": {"sku": "A1"}, "id": "a1", "meta": {"user": "ann"}},
            {"type": "ItemAdded", "data": {"sku": "B7"}},
        ])
        assert (first.first, first.head, first.appended, first.duplicates) == (0, 2, 2, [])
        second = client.append("inventory", b'[{"type": "ItemRemoved", "data": {"sku": "A1"}}]',
                               expected_head=2)
        assert (second.first, second.head) == (2, 3)
        client.append("billing", batch("Billed", 1))

        page = client.read("inventory", start=1, limit=5)
        assert (page.next, page.head) == (3, 3)
        assert [(e.position, e.type, e.data) for e in page.events] == [
            (1, "ItemAdded", {"sku": "B7"}), (2, "ItemRemoved", {"sku": "A1"})]
        assert all(e.time.tzinfo is not None for e in page.events)

        assert [(s.name, s.head) for s in client.streams()] == [("billing", 1), ("inventory", 3)]
        assert client.stream("inventory").head == 3

        with client.subscribe("inventory", start=0, follow=False) as subscription:
            events = list(subscription)
        assert [e.position for e in events] == [0, 1, 2]
        assert (events[0].id, events[0].meta) == ("a1", {"user": "ann"})
        assert [e.id for e in events[1:]] == [e.id for e in page.events]
        assert subscription.position == 3

        with pytest.raises(herald.ExpectedHeadMismatch) as conflict:
            client.append("inventory", batch("Late", 1), expected_head=1)
        assert (conflict.value.head, conflict.value.code) == (3, "expected_head_mismatch")
        with pytest.raises(herald.NotFound) as missing:
            client.stream("nothing")
        assert missing.value.code == "stream_not_found"
        with pytest.raises(herald.EmptyBatch):
            client.append("inventory", [])
        with pytest.raises(herald.InvalidRequest) as invalid:
            client.append("inventory", [{"data": 1}])
        assert invalid.value.code == "invalid_event"
        assert client.stream("inventory").head == 3


def test_blocking_subscription_follows_live_appends(server: ServerProcess) -> None:
    with server.client() as client, server.client() as writer:
        writer.append("live", batch("Early", 2))
        with client.subscribe("live", start=1, heartbeat=0.1) as subscription:
            assert next(subscription).position == 1
            writer.append("live", batch("Late", 3))
            late = [next(subscription) for _ in range(3)]
            assert [(e.position, e.type) for e in late] == [(2, "Late"), (3, "Late"), (4, "Late")]
            assert subscription.position == 5


# --- the async client ---------------------------------------------------------------------


async def test_async_client_round_trip(server: ServerProcess) -> None:
    async with server.async_client() as client:
        result = await client.append("sales", batch("Sold", 3))
        assert (result.first, result.head) == (0, 3)
        page = await client.read("sales", start=2)
        assert [e.position for e in page.events] == [2]
        assert [s.name for s in await client.streams()] == ["sales"]
        assert (await client.stream("sales")).head == 3
        async with client.subscribe("sales", follow=False) as subscription:
            assert [e.data["i"] async for e in subscription] == [0, 1, 2]
        async with client.subscribe("sales", follow=False) as subscription:
            assert [len(b) async for b in subscription.batches()] == [3]
        with pytest.raises(herald.ExpectedHeadMismatch) as conflict:
            await client.append("sales", batch("Late", 1), expected_head=0)
        assert conflict.value.head == 3


async def test_subscribe_starts_at_a_position_inside_a_batch(server: ServerProcess) -> None:
    async with server.async_client() as client:
        for n in range(4):
            await client.append("ledger", batch("Entry", 5, batch=n))  # positions 5n…5n+4
        async with client.subscribe("ledger", start=7, follow=False) as subscription:
            positions = [e.position async for e in subscription]
        assert positions == list(range(7, 20))
        async with client.subscribe("ledger", start=20, follow=False) as subscription:
            assert [e async for e in subscription] == []
            assert subscription.position == 20


async def test_position_is_the_next_event_to_deliver(server: ServerProcess) -> None:
    """Saving ``position`` after each event and resuming from it gives every event
    exactly once, even when a subscription stops in the middle of a batch."""
    async with server.async_client() as client:
        await client.append("orders", batch("Placed", 4))  # one batch: positions 0…3
        await client.append("orders", batch("Paid", 4))  # positions 4…7
        delivered: list[int] = []
        saved = 0
        # stop inside the first batch, at its end, across into the second, inside it
        for take in (1, 2, 3, 1):
            async with client.subscribe("orders", start=saved, follow=False) as subscription:
                assert subscription.position == saved
                async for event in subscription:
                    delivered.append(event.position)
                    saved = subscription.position
                    assert saved == event.position + 1, "position is not the next to deliver"
                    take -= 1
                    if take == 0:
                        break
        async with client.subscribe("orders", start=saved, follow=False) as subscription:
            delivered += [e.position async for e in subscription]
        assert delivered == list(range(8))


def test_blocking_position_is_the_next_event_to_deliver(server: ServerProcess) -> None:
    with server.client() as client:
        client.append("orders", batch("Placed", 3))
        with client.subscribe("orders", follow=False) as subscription:
            first = next(subscription)
            assert (first.position, subscription.position) == (0, 1)
            assert next(subscription).position == 1
            assert subscription.position == 2


async def test_a_subscription_can_be_closed_while_it_waits(server: ServerProcess) -> None:
    async with server.async_client() as client:
        await client.append("quiet", batch("Only", 1))
        subscription = client.subscribe("quiet", heartbeat=0.1)
        received: list[int] = []
        caught_up = asyncio.Event()

        async def consume() -> None:
            async for event in subscription:
                received.append(event.position)
                caught_up.set()

        consumer = asyncio.create_task(consume())
        await asyncio.wait_for(caught_up.wait(), TIMEOUT)
        await subscription.close()  # the consumer is waiting for more, on the server
        await asyncio.wait_for(consumer, TIMEOUT)  # it ends quietly, without an error
        assert received == [0]


async def test_a_subscription_survives_a_server_restart(
        server_factory: type[ServerProcess]) -> None:
    first = server_factory().start()
    port = first.port
    async with first.async_client() as client:
        await client.append("durable", batch("Before", 10))
        subscription = client.subscribe("durable", start=0, heartbeat=0.2)
        received: list[herald.Event] = []
        arrived = asyncio.Condition()
        ended = False

        async def consume() -> None:
            nonlocal ended
            try:
                async for event in subscription:
                    received.append(event)
                    async with arrived:
                        arrived.notify_all()
            finally:  # wake the waiter if the subscription ends or fails
                ended = True
                async with arrived:
                    arrived.notify_all()

        async def wait_for(count: int) -> None:
            async with arrived:
                await asyncio.wait_for(arrived.wait_for(
                    lambda: len(received) >= count or ended), TIMEOUT)
            if len(received) < count:
                await consumer  # the subscription's own error, if it failed
                raise AssertionError(f"the subscription ended after {len(received)} events")

        consumer = asyncio.create_task(consume())
        try:
            await wait_for(10)
            # A graceful stop: the live subscription must not hold the server up.
            assert await asyncio.to_thread(first.stop) == 0, "".join(first.output)
            with pytest.raises(herald.TransportError):
                await client.append("durable", batch("Nobody", 1))
            assert not consumer.done()

            second = server_factory(data=first.data).start(listen=f"127.0.0.1:{port}")
            assert second.url == first.url
            for n in range(3):
                await client.append("durable", batch("After", 5, n=n))
            await wait_for(25)
            assert subscription.position == 25
        finally:
            await subscription.close()
            await asyncio.wait_for(consumer, TIMEOUT)
    assert [e.position for e in received] == list(range(25)), "a gap or a duplicate"
    assert [e.type for e in received] == ["Before"] * 10 + ["After"] * 15


# --- errors are Herald's own ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


CALLS: dict[str, Callable[[herald.Client], object]] = {
    "append": lambda c: c.append("s", batch("E", 1)),
    "read": lambda c: c.read("s"),
    "streams": lambda c: c.streams(),
    "stream": lambda c: c.stream("s"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_nothing_listening_is_a_transport_error(server: ServerProcess, call: str) -> None:
    with herald.Client(f"https://127.0.0.1:{free_port()}", token="t", ca=server.ca,
                       timeout=5) as client, pytest.raises(herald.TransportError) as caught:
        CALLS[call](client)
    assert caught.value.code == "connection_failed"
    assert_heralds_own(caught.value)


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_bad_token_is_unauthorized(server: ServerProcess, call: str) -> None:
    with herald.Client(server.url, token="not-the-token", ca=server.ca) as client, \
            pytest.raises(herald.Unauthorized) as caught:
        CALLS[call](client)
    assert (caught.value.status, caught.value.code) == (401, "invalid_token")
    assert_heralds_own(caught.value)


async def test_a_subscription_with_a_bad_token_fails_at_once(server: ServerProcess) -> None:
    async with herald.AsyncClient(server.url, token="not-the-token", ca=server.ca) as client:
        with pytest.raises(herald.Unauthorized):
            async with client.subscribe("s") as subscription:
                await asyncio.wait_for(anext(subscription), TIMEOUT)


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_wrong_ca_is_a_tls_error(server: ServerProcess, tmp_path: Path, call: str) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(create_ca("Somebody else's CA").cert_pem())
    with herald.Client(server.url, token=server.token, ca=other_ca) as client, \
            pytest.raises(herald.TransportError) as caught:
        CALLS[call](client)
    assert caught.value.code == "tls_error"
    assert_heralds_own(caught.value)


@pytest.mark.parametrize("name", ["..", "a b", "a/b", "s" * 200, ".hidden", "", "x?from=3"])
def test_bad_stream_names_are_invalid_stream_name(server: ServerProcess, name: str) -> None:
    with server.client() as client:
        for call in (lambda: client.append(name, batch("E", 1)), lambda: client.read(name),
                     lambda: client.stream(name)):
            with pytest.raises(herald.InvalidStreamName) as caught:
                call()
            assert caught.value.code == "invalid_stream_name"
        with pytest.raises(herald.InvalidStreamName), client.subscribe(name) as subscription:
            next(subscription)
        assert client.streams() == []


def test_bad_client_files_are_client_errors(server: ServerProcess, tmp_path: Path) -> None:
    with pytest.raises(herald.ClientError) as caught:
        herald.Client(server.url, token_file=tmp_path / "missing-token")
    assert caught.value.code == "bad_token_file"
    with pytest.raises(herald.ClientError) as caught:
        herald.Client(server.url, token="t", ca=tmp_path / "missing-ca.pem")
    assert caught.value.code == "bad_tls_files"


def test_a_subscription_with_the_wrong_ca_fails_instead_of_retrying(
        server: ServerProcess, tmp_path: Path) -> None:
    """A certificate the client does not trust is a setting to fix: the subscription
    raises ``tls_error`` instead of reconnecting forever."""
    create_ca().write(tmp_path / "other-ca.pem", tmp_path / "other-ca.key")
    with (herald.Client(server.url, token=server.token, ca=tmp_path / "other-ca.pem") as client,
          pytest.raises(herald.TransportError) as caught):
        next(iter(client.subscribe("s")))
    assert caught.value.code == "tls_error"
