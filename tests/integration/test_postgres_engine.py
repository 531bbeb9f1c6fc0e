"""The postgres engine beyond the shared contract: several nodes on one database.

Each "node" here is a hub over a PostgresEngine instance of its own (its own pool,
its own LISTEN connection) on the same schema, as separate Herald processes would
be; tests/integration/test_postgres_ha.py does the same with real server processes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from herald import codec
from herald.config import ConfigError, load_config
from herald.engines import create_engine
from herald.engines import postgres as pg
from herald.engines.base import CheckpointConflict
from herald.engines.postgres import PostgresConfig, PostgresEngine
from herald.engines.postgres import connections as pg_connections
from herald.errors import ExpectedHeadMismatch, StorageUnavailable
from herald.hub import Hub
from herald.hub import heads as hub_heads
from herald.model import Batch, Event, Limits

from ..pgtools import TcpProxy, drop_schema, new_schema, require_postgres


class PgNode(Hub):
    """A node: a hub, and the engine under it for the tests that look inside."""

    def __init__(self, engine: PostgresEngine, limits: Limits | None) -> None:
        super().__init__(engine, limits)
        self.pg = engine


Node = Callable[..., Awaitable[PgNode]]


def batch(*events: dict[str, Any]) -> Batch:
    return codec.decode_append(msgspec.json.encode(list(events)), Limits())


def ev(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "Counted", "data": {"n": n}, **extra}


async def read_all(hub: Hub, stream: str, start: int = 0) -> list[Event]:
    return [event async for event in hub.events(stream, start)]


@pytest.fixture
def schema() -> Iterator[str]:
    require_postgres()
    name = new_schema()
    yield name
    drop_schema(name)


@pytest.fixture
async def node(schema: str) -> AsyncIterator[Node]:
    """Opens engines ("nodes") on the test's schema; closes them at the end."""
    opened: list[PgNode] = []

    async def open_node(dsn: str | None = None, limits: Limits | None = None,
                        pool_size: int = 4) -> PgNode:
        hub = PgNode(PostgresEngine(PostgresConfig(dsn or require_postgres(), schema,
                                                   pool_size), limits), limits)
        await hub.open()
        opened.append(hub)
        return hub

    yield open_node
    for hub in opened:
        await hub.close()


async def test_two_nodes_append_to_one_stream_at_once(node: Node) -> None:
    a, b = await node(), await node()
    writers, appends, size = 8, 15, 4

    async def writer(engine: PostgresEngine, w: int) -> list[int]:
        firsts = []
        for i in range(appends):
            events = [ev(e, id=f"w{w}-a{i}-e{e}") for e in range(size)]
            result = await engine.append("shared", batch(*events))
            assert result.appended == size
            firsts.append(result.first)
            await asyncio.sleep(random.random() / 1000)
        return firsts

    results = await asyncio.gather(*(writer(a if w % 2 else b, w) for w in range(writers)))
    total = writers * appends * size
    from_a, from_b = await read_all(a, "shared"), await read_all(b, "shared")
    assert from_a == from_b
    assert [e.position for e in from_a] == list(range(total))
    ids = [e.id for e in from_a]
    assert len(set(ids)) == total
    for w, firsts in enumerate(results):
        assert firsts == sorted(firsts)
        for i, first in enumerate(firsts):
            assert ids[first:first + size] == [f"w{w}-a{i}-e{e}" for e in range(size)]
    assert await a.head("shared") == await b.head("shared") == total


async def test_followers_on_both_nodes_never_skip_while_both_append(node: Node) -> None:
    """Appends race on two nodes; a follower on each (read, then wait, from its own
    position) must see every position exactly once, in order."""
    a, b = await node(), await node()
    total_appends = 120
    done = asyncio.Event()

    async def follow(engine: Hub) -> list[int]:
        seen: list[int] = []
        position = 0
        while True:
            records = await engine.records("race", position)
            for record in records:
                seen += [e.position for e in codec.events_of(record, position)]
                position = record.end
            if not records:
                if done.is_set() and position >= await engine.head("race"):
                    return seen
                await engine.wait("race", position, 0.2)

    async def write(engine: PostgresEngine, n: int) -> None:
        for i in range(n):
            await engine.append("race", batch(*(ev(i) for _ in range(random.randint(1, 5)))))

    followers = [asyncio.create_task(follow(a)), asyncio.create_task(follow(b))]
    await asyncio.gather(*(write(a if w % 2 else b, total_appends // 6) for w in range(6)))
    done.set()
    head = await a.head("race")
    for seen in await asyncio.gather(*followers):
        assert seen == list(range(head))


async def test_a_notification_from_another_node_wakes_a_waiter(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only NOTIFY can wake the waiter in time: the fallback poll is made too slow.
    monkeypatch.setattr(hub_heads, "POLL_SECONDS", 3600.0)
    a, b = await node(), await node()
    await b.append("live", batch(ev(0)))
    assert await a.head("live") == 1
    waiter = asyncio.create_task(a.wait("live", 1, 30.0))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await b.append("live", batch(ev(1), ev(2)))
    assert await asyncio.wait_for(waiter, 30.0) == 3


async def test_a_lost_notification_is_made_up_for_by_the_poll(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_heads, "POLL_SECONDS", 0.2)
    a, b = await node(), await node()

    async def lost() -> None:
        b.pg._unannounced.clear()  # the node "died" between COMMIT and NOTIFY

    monkeypatch.setattr(b.pg, "_announce", lost)
    waiter = asyncio.create_task(a.wait("quiet", 0, 30.0))
    await asyncio.sleep(0.1)
    await b.append("quiet", batch(ev(0)))
    assert await asyncio.wait_for(waiter, 30.0) == 1


async def test_the_dedup_window_is_shared_by_all_nodes(node: Node) -> None:
    a, b = await node(), await node()
    first = await a.append("d", batch(ev(0, id="x"), ev(1, id="y")))
    retry = await b.append("d", batch(ev(0, id="x"), ev(1, id="y")))
    assert retry.appended == 0
    assert (retry.first, retry.head) == (first.first, first.head)
    assert [(d.id, d.position) for d in retry.duplicates] == [("x", 0), ("y", 1)]
    # Both nodes retrying the same batch at the same moment: it lands once.
    results = await asyncio.gather(a.append("d", batch(ev(2, id="z"))),
                                   b.append("d", batch(ev(2, id="z"))))
    assert sorted(r.appended for r in results) == [0, 1]
    # A retry racing its original on one node: they share a transaction, it lands once.
    results = await asyncio.gather(a.append("d", batch(ev(3, id="w"))),
                                   a.append("d", batch(ev(3, id="w"))))
    assert sorted(r.appended for r in results) == [0, 1]
    assert {r.first for r in results} == {3}
    assert [e.id for e in await read_all(b, "d")] == ["x", "y", "z", "w"]


async def test_the_window_forgets_old_ids_and_prunes_their_rows(node: Node, schema: str) -> None:
    a = await node(limits=Limits(dedup_window=8))
    for i in range(40):
        await a.append("p", batch(ev(i, id=f"id-{i}")))
    again = await a.append("p", batch(ev(0, id="id-0")))
    assert again.appended == 1, "id-0 left the window"
    with psycopg.connect(require_postgres()) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".event_ids').fetchone()
    assert row is not None and row[0] <= 8 + 8 // pg.PRUNE_FRACTION + 1


async def test_expected_head_is_checked_against_every_nodes_appends(node: Node) -> None:
    a, b = await node(), await node()
    await a.append("e", batch(ev(0)), expected_head=0)
    with pytest.raises(ExpectedHeadMismatch) as caught:
        await b.append("e", batch(ev(1)), expected_head=0)
    assert caught.value.head == 1
    assert (await b.append("e", batch(ev(1)), expected_head=1)).head == 2


async def test_checkpoints_are_shared(node: Node) -> None:
    a, b = await node(), await node()
    await a.set_checkpoint("group:x:s", 5)
    shared = await b.get_checkpoint("group:x:s")
    assert shared is not None and shared.value == 5
    await b.set_checkpoint("group:x:s", 6, expected_version=shared.version)
    with pytest.raises(CheckpointConflict):  # a's view is stale now
        await a.set_checkpoint("group:x:s", 7, expected_version=shared.version)


async def test_schema_is_migrated_once_by_nodes_starting_together(
    node: Node, schema: str
) -> None:
    nodes = await asyncio.gather(*(node() for _ in range(4)))
    await nodes[0].append("m", batch(ev(0)))
    with psycopg.connect(require_postgres()) as conn:
        rows = conn.execute(
            f'SELECT version FROM "{schema}".schema_migrations ORDER BY version').fetchall()
    assert [r[0] for r in rows] == [m.version for m in pg.MIGRATIONS]


async def test_a_newer_schema_is_refused(node: Node, schema: str) -> None:
    await node()
    with psycopg.connect(require_postgres(), autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{schema}".schema_migrations (version, description) '
                     f"VALUES (%s, 'from the future')", (pg.SCHEMA_VERSION + 1,))
    with pytest.raises(StorageUnavailable, match="newer than this Herald knows"):
        await node()


async def test_an_unreachable_database_is_storage_unavailable(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_connections, "OPEN_TIMEOUT_SECONDS", 1.0)
    proxy = await TcpProxy("127.0.0.1", 1).start()  # forwards to a closed port
    with pytest.raises(StorageUnavailable) as caught:
        await node(proxy.dsn(require_postgres()))
    assert caught.value.status == 503
    assert "cannot connect to PostgreSQL" in caught.value.message
    assert "server closed the connection" in caught.value.message  # the reason
    assert isinstance(caught.value.__cause__, Exception)
    await proxy.cut()


async def test_a_refused_login_says_why(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_connections, "OPEN_TIMEOUT_SECONDS", 1.0)
    dsn = require_postgres()
    with pytest.raises(StorageUnavailable, match='role "no_such_herald_role" does not exist'):
        await node(f"{dsn}?user=no_such_herald_role")


async def test_losing_the_database_is_a_503_and_the_node_recovers(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_connections, "CONNECT_TIMEOUT_SECONDS", 1.0)
    dsn = require_postgres()
    params = conninfo_to_dict(dsn)
    proxy = await TcpProxy(str(params.get("host") or "127.0.0.1"),
                           int(params.get("port") or 5432)).start()
    a = await node(proxy.dsn(dsn))
    await a.append("outage", batch(ev(0)))
    waiter = asyncio.create_task(a.wait("outage", 1, 60.0))
    await asyncio.sleep(0.2)

    await proxy.cut()
    # A waiter does not wait out its timeout on a node that lost the database.
    with pytest.raises(StorageUnavailable):
        await asyncio.wait_for(waiter, 30.0)
    # (records already read stay readable from the node's cache: they never change)
    for operation in (a.append("outage", batch(ev(1))), a.records("outage", 1),
                      a.head("outage"), a.streams(), a.ping()):
        with pytest.raises(StorageUnavailable) as caught:
            await operation
        assert caught.value.status == 503
        assert "PostgreSQL" in caught.value.message
        assert isinstance(caught.value.__cause__, psycopg.Error | Exception)

    await proxy.restore()
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # the pool reconnects with a backoff of a few seconds at most
        try:
            await a.head("outage")
            break
        except StorageUnavailable:
            assert asyncio.get_running_loop().time() < deadline, "the node did not recover"
    await a.ping()  # the health check passes again
    result = await a.append("outage", batch(ev(1)))
    assert result.first == 1
    assert [e.data["n"] for e in await read_all(a, "outage")] == [0, 1]
    await proxy.cut()


async def test_stale_pooled_connections_are_replaced_without_an_error(node: Node) -> None:
    """PostgreSQL restarted or failed over: every pooled connection is dead at once.
    Reads retry on a fresh connection, appends too when nothing was sent yet."""
    application = f"herald-test-{random.randrange(1 << 30)}"
    dsn = require_postgres()
    a = await node(f"{dsn}?application_name={application}", pool_size=2)
    await a.append("restart", batch(ev(0)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = %s", (application,))
    assert [e.data["n"] for e in await read_all(a, "restart")] == [0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = %s", (application,))
    assert (await a.append("restart", batch(ev(1)))).first == 1


def test_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="dsn: required"):
        create_engine(load_config(overrides={"storage": {"engine": "postgres"}}, environ={}))
    with pytest.raises(ConfigError, match="schema"):
        create_engine(load_config(overrides={"storage": {"engine": "postgres", "dsn": "x=1",
                                                         "schema": "Robert'); DROP"}},
                                  environ={}))
    config = load_config(environ={"HERALD_STORAGE_ENGINE": "postgres",
                                  "HERALD_STORAGE_DSN": "postgresql://u:secret@db/h",
                                  "HERALD_STORAGE_SCHEMA": "events"})
    engine = create_engine(config)
    assert isinstance(engine, PostgresEngine)
    assert engine.config.schema == "events"
    assert "secret" not in engine.location


async def test_session_settings_never_weaken_durability(node: Node) -> None:
    """Herald's own session settings apply, the DSN's win where they overlap —
    except that synchronous_commit is never off (an ack would not mean durable)."""
    dsn = require_postgres()
    a = await node(f"{dsn}?options=-c%20lock_timeout%3D1234%20-c%20synchronous_commit%3Doff")
    async with a.pg._connection("test") as conn:
        settings = {}
        for name in ("lock_timeout", "idle_in_transaction_session_timeout",
                     "synchronous_commit", "application_name"):
            cursor = await conn.execute(f"SHOW {name}")
            row = await cursor.fetchone()
            assert row is not None
            settings[name] = row[0]
    assert settings == {"lock_timeout": "1234ms", "idle_in_transaction_session_timeout": "30s",
                        "synchronous_commit": "on", "application_name": "herald"}


async def test_a_stream_locked_too_long_is_a_503_not_a_hang(
    node: Node, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_connections, "LOCK_TIMEOUT_MS", 300)
    a = await node()
    await a.append("held", batch(ev(0)))
    with psycopg.connect(require_postgres()) as holder:  # a stuck appender elsewhere
        holder.execute(f'SELECT 1 FROM "{schema}".streams WHERE name = %s FOR UPDATE',
                       ("held",))
        started = asyncio.get_running_loop().time()
        with pytest.raises(StorageUnavailable, match="lock timeout"):
            await a.append("held", batch(ev(1)))
        # Refused by the server, not a dead connection: not tried a second time.
        assert asyncio.get_running_loop().time() - started < 5
    assert (await a.append("held", batch(ev(1)))).first == 1


async def test_a_role_that_only_owns_its_schema_is_enough(node: Node, schema: str) -> None:
    """Production: an administrator creates the schema for Herald's role, which may
    not create schemas itself."""
    dsn = require_postgres()
    role = f"herald_test_{random.randrange(1 << 30)}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"')
    try:
        a = await node(f"{dsn}?user={role}")
        assert (await a.append("owned", batch(ev(0)))).head == 1
        await a.close()
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            admin.execute(f'DROP ROLE "{role}"')
