"""Two real Herald nodes (``herald serve`` processes) on this machine's PostgreSQL.

* appends through both nodes to one stream at once read back the same, dense,
  from either node;
* a writer and a subscriber under load; ``kill -9`` one node — the writer's, then
  (in a second test) the subscriber's: the clients continue on the other node
  within seconds, every acknowledged event is in the stream exactly once, and the
  subscriber received every event in order.

``make test`` runs short versions; ``make proof`` runs them longer and heavier.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

import herald
from herald.errors import HeraldError

from ..conftest import ServerProcess
from ..pgtools import TcpProxy, drop_schema, new_schema, require_postgres

# A node is gone at once under kill -9 (its sockets are reset); the generous bound
# is for a loaded 2-core machine, not the expected time (printed by each test).
FAILOVER_BOUND_SECONDS = 20.0


@dataclass
class Cluster:
    nodes: list[ServerProcess]
    config: Path

    def client(self, first: int = 0) -> herald.AsyncClient:
        """A client that knows every node and starts on node ``first``."""
        urls = [n.url for n in self.nodes]
        urls = urls[first:] + urls[:first]
        return herald.AsyncClient(urls, token=self.nodes[0].token, ca=self.nodes[0].ca)


@pytest.fixture
def cluster(server_factory: type[ServerProcess], tmp_path: Path) -> Iterator[Cluster]:
    dsn = require_postgres()
    schema = new_schema()
    config = tmp_path / "herald.toml"
    config.write_text(f'[storage]\nengine = "postgres"\ndsn = "{dsn}"\n'
                      f'schema = "{schema}"\npool_size = 4\n')
    # The nodes share one data directory: the TLS files and the admin token, made
    # by the first node, then used by the second.
    data = tmp_path / "node-data"
    first = server_factory(data=data, args=["--config", str(config)]).start()
    second = server_factory(data=data, args=["--config", str(config)]).start()
    assert "postgres engine" in "".join(first.output)
    yield Cluster([first, second], config)
    for node in (first, second):
        node.stop()
    drop_schema(schema)


async def read_stream(client: herald.AsyncClient, stream: str) -> list[herald.Event]:
    events: list[herald.Event] = []
    async with client.subscribe(stream, 0, follow=False) as subscription:
        async for batch in subscription.batches():
            events += batch
    return events


async def test_appends_through_both_nodes_read_back_the_same_from_either(
    cluster: Cluster,
) -> None:
    await concurrent_appends(cluster, writers_per_node=3, appends=12, size=10)


@pytest.mark.proof
async def test_appends_through_both_nodes_read_back_the_same_from_either_proof(
    cluster: Cluster,
) -> None:
    await concurrent_appends(cluster, writers_per_node=8, appends=100, size=50)


async def concurrent_appends(cluster: Cluster, writers_per_node: int, appends: int,
                             size: int) -> None:
    clients = [cluster.client(0), cluster.client(1)]

    async def writer(client: herald.AsyncClient, w: int) -> list[int]:
        firsts = []
        for i in range(appends):
            result = await client.append("shared", [
                {"type": "T", "data": {"w": w, "i": i, "e": e}} for e in range(size)])
            firsts.append(result.first)
        return firsts

    try:
        results = await asyncio.gather(*(
            writer(clients[w % 2], w) for w in range(2 * writers_per_node)))
        total = 2 * writers_per_node * appends * size
        from_first = await read_stream(clients[0], "shared")
        from_second = await read_stream(clients[1], "shared")
        assert from_first == from_second
        assert [e.position for e in from_first] == list(range(total))
        for w, firsts in enumerate(results):
            for i, first in enumerate(firsts):
                assert [e.data for e in from_first[first:first + size]] == [
                    {"w": w, "i": i, "e": e} for e in range(size)]
        page = await clients[1].read("shared", total - 5, 100)
        assert [e.position for e in page.events] == list(range(total - 5, total))
        assert page.head == total
        for client in clients:
            assert (await client.stream("shared")).head == total
    finally:
        for client in clients:
            await client.close()


@dataclass
class Load:
    """A writer appending batches with ids, a subscriber following from 0."""

    stream: str
    batch: int
    acked: list[str] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)
    received: list[herald.Event] = field(default_factory=list)
    receive_times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    duplicates: int = 0  # events of retried appends that had landed the first time
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def write(self, client: herald.AsyncClient) -> None:
        n = 0
        while not self.stop.is_set():
            ids = [f"ev-{n + i}" for i in range(self.batch)]
            events = [{"id": i, "type": "Loaded", "data": {"n": n + k, "pad": "x" * 150}}
                      for k, i in enumerate(ids)]
            while True:
                try:
                    result = await client.append(self.stream, events)
                    self.duplicates += len(result.duplicates)
                    break
                except HeraldError as exc:
                    # Every event has an id: the client already retried on the other
                    # node. Retrying again is just as safe (it may land as duplicates).
                    self.errors.append(f"{exc.code}: {exc.message}")
                    await asyncio.sleep(0.2)
            self.acked += ids
            self.ack_times.append(time.monotonic())
            n += self.batch

    async def follow(self, client: herald.AsyncClient) -> None:
        async with client.subscribe(self.stream, 0, heartbeat=1.0) as subscription:
            async for batch in subscription.batches():
                self.received += batch
                self.receive_times.append(time.monotonic())


async def kill_a_node_under_load(cluster: Cluster, victim: str, before: float, after: float,
                                 batch: int) -> None:
    load = Load(stream="orders", batch=batch)
    # The writer starts on node 0, the subscriber on node 1.
    writer_client, subscriber_client = cluster.client(0), cluster.client(1)
    writer = asyncio.create_task(load.write(writer_client))
    subscriber = asyncio.create_task(load.follow(subscriber_client))
    try:
        await asyncio.sleep(before)
        assert load.acked and load.received, "no load before the kill"
        killed = cluster.nodes[0 if victim == "writer" else 1]
        acked_before, received_before = len(load.ack_times), len(load.receive_times)
        killed_at = time.monotonic()
        await asyncio.to_thread(killed.kill)
        await asyncio.sleep(after)
        load.stop.set()
        await asyncio.wait_for(writer, 60)

        assert len(load.ack_times) > acked_before, "the writer did not continue"
        assert len(load.receive_times) > received_before, "the subscriber did not continue"
        writer_gap = min(t for t in load.ack_times[acked_before:]) - killed_at
        subscriber_gap = min(t for t in load.receive_times[received_before:]) - killed_at
        print(f"\nkilled the {victim}'s node: the writer continued after {writer_gap:.2f} s, "
              f"the subscriber after {subscriber_gap:.2f} s; {len(load.acked)} events "
              f"acknowledged; {load.duplicates} events of a retried append were already in "
              f"(dedup); errors the writer saw: {load.errors}")
        assert writer_gap < FAILOVER_BOUND_SECONDS
        assert subscriber_gap < FAILOVER_BOUND_SECONDS
        survivor = cluster.nodes[1 if victim == "writer" else 0]
        assert writer_client.url == subscriber_client.url == survivor.url

        # Every acknowledged event is in the stream exactly once.
        stored = await read_stream(writer_client, load.stream)
        ids = [e.id for e in stored]
        assert len(ids) == len(set(ids)), "an event was appended twice"
        assert set(load.acked) <= set(ids), "an acknowledged event is missing"
        assert [e.position for e in stored] == list(range(len(stored)))

        # The subscriber received all of them, in order, once.
        deadline = time.monotonic() + 30
        while len(load.received) < len(stored) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [e.position for e in load.received] == list(range(len(stored)))
        assert [e.id for e in load.received] == ids
    finally:
        load.stop.set()
        subscriber.cancel()
        writer.cancel()
        await asyncio.gather(writer, subscriber, return_exceptions=True)
        await writer_client.close()
        await subscriber_client.close()


@pytest.mark.parametrize("victim", ["writer", "subscriber"])
async def test_kill_a_node_under_load(cluster: Cluster, victim: str) -> None:
    await kill_a_node_under_load(cluster, victim, before=2.0, after=3.0, batch=50)


@pytest.mark.proof
@pytest.mark.parametrize("victim", ["writer", "subscriber"])
async def test_kill_a_node_under_load_proof(cluster: Cluster, victim: str) -> None:
    await kill_a_node_under_load(cluster, victim, before=15.0, after=20.0, batch=200)


async def proxied_postgres() -> tuple[str, TcpProxy, str]:
    """This machine's PostgreSQL, a TCP proxy in front of it that a test can cut,
    and a fresh schema."""
    dsn = require_postgres()
    params = conninfo_to_dict(dsn)
    proxy = await TcpProxy(str(params.get("host") or "127.0.0.1"),
                           int(params.get("port") or 5432)).start()
    return dsn, proxy, new_schema()


def node_config(path: Path, dsn: str, schema: str) -> Path:
    path.write_text(f'[storage]\nengine = "postgres"\ndsn = "{dsn}"\n'
                    f'schema = "{schema}"\npool_size = 2\n')
    return path


async def test_a_node_that_loses_the_database_sends_its_clients_elsewhere(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    """A network failure between one node and PostgreSQL: that node answers 503
    and breaks its subscriptions; clients carry on on the other node."""
    dsn, proxy, schema = await proxied_postgres()
    data = tmp_path / "node-data"
    configs = [node_config(tmp_path / "cut.toml", proxy.dsn(dsn), schema),
               node_config(tmp_path / "direct.toml", dsn, schema)]
    cut = await asyncio.to_thread(
        server_factory(data=data, args=["--config", str(configs[0])]).start)
    direct = await asyncio.to_thread(
        server_factory(data=data, args=["--config", str(configs[1])]).start)
    writer = herald.AsyncClient(direct.url, token=direct.token, ca=direct.ca)
    reader = herald.AsyncClient([cut.url, direct.url], token=cut.token, ca=cut.ca)
    only_cut = herald.AsyncClient(cut.url, token=cut.token, ca=cut.ca)
    received: list[int] = []
    # The default heartbeat (15 s): the node must notice by itself that it cannot
    # serve, not when an idle subscription's heartbeat comes round.
    subscription = reader.subscribe("s", 0)

    async def follow() -> None:
        async for event in subscription:
            received.append(event.position)

    task = asyncio.create_task(follow())
    try:
        await writer.append("s", [{"type": "T", "data": n} for n in range(5)])
        while len(received) < 5:
            await asyncio.sleep(0.05)
        assert reader.url == cut.url
        await proxy.cut()
        with pytest.raises(herald.StorageUnavailable):
            await only_cut.read("s", 5)
        await writer.append("s", [{"type": "T", "data": n} for n in range(5, 10)])
        deadline = time.monotonic() + FAILOVER_BOUND_SECONDS
        while len(received) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert received == list(range(10)), "".join(cut.output)[-3000:]
        assert reader.url == direct.url
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await subscription.close()
        for client in (writer, reader, only_cut):
            await client.close()
        await proxy.cut()
        for node in (cut, direct):
            await asyncio.to_thread(node.stop)
        drop_schema(schema)


def _health(node: ServerProcess) -> tuple[int, dict[str, object]]:
    import json
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=node.ca)
    try:
        with urllib.request.urlopen(node.url + "/v1/health", context=context,
                                    timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_health_says_503_while_the_node_cannot_reach_its_database(
    server_factory: type[ServerProcess], tmp_path: Path,
) -> None:
    """A load balancer's health check takes a node that lost its database out of
    rotation, and puts it back once the database answers again."""
    dsn, proxy, schema = await proxied_postgres()
    config = node_config(tmp_path / "herald.toml", proxy.dsn(dsn), schema)
    node = server_factory(data=tmp_path / "data", args=["--config", str(config)])
    await asyncio.to_thread(node.start)
    try:
        assert await asyncio.to_thread(_health, node) == (
            200, {"status": "ok", "version": herald.__version__, "engine": "postgres"})
        await proxy.cut()
        status, body = await asyncio.to_thread(_health, node)
        assert status == 503
        assert body["error"]["code"] == "storage_unavailable"  # type: ignore[index]
        await proxy.restore()
        deadline = time.monotonic() + 30
        while (await asyncio.to_thread(_health, node))[0] != 200:
            assert time.monotonic() < deadline, "health did not come back"
            await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(node.stop)
        await proxy.cut()
        drop_schema(schema)
