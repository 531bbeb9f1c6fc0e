"""The azure-table engine beyond the shared contract: several nodes on one account.

Each "node" is a hub over an AzureTableEngine of its own on the same tables (as
separate Herald processes would be), against this session's Azurite
(tests/azuretools.py). What is proven here is what the conformance suite cannot
see from one node: races decided by the head entity's ETag, a large write that
loses its race leaving nothing visible, an unanswered commit resolved exactly
once, the dedup window learnt from another node's records, and the account's
configuration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from herald import codec
from herald.config import load_config
from herald.engines import create_engine
from herald.engines.azure_account import (
    AZURITE_CONNECTION_STRING,
    CONNECTION_STRING_VARIABLE,
    AzureAccount,
)
from herald.engines.azure_table import AzureTableConfig, AzureTableEngine
from herald.engines.azure_table import errors as table_errors
from herald.engines.azure_table.layout import (
    ENTITY_BYTES,
    MAX_OPERATIONS,
    TRANSACTION_BYTES,
    pack,
    plan,
)
from herald.engines.base import HeadMoved, Write
from herald.errors import ConfigError, StorageUnavailable
from herald.hub import Hub
from herald.model import Batch, Event, Limits

from ..azuretools import new_prefix, require_azurite


def batch(*events: dict[str, Any]) -> Batch:
    return codec.decode_append(msgspec.json.encode(list(events)), Limits())


def ev(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "Counted", "data": {"n": n}, **extra}


async def read_all(hub: Hub, stream: str) -> list[Event]:
    events: list[Event] = []
    position = 0
    while records := await hub.records(stream, position):
        for record in records:
            events += codec.events_of(record, position)
            position = record.end
    return events


class Nodes:
    def __init__(self, connection_string: str, prefix: str) -> None:
        self.connection_string = connection_string
        self.prefix = prefix
        self.hubs: list[Hub] = []

    def engine(self, limits: Limits | None = None) -> AzureTableEngine:
        return AzureTableEngine(AzureTableConfig(self.connection_string,
                                                 table_prefix=self.prefix), limits)

    async def node(self, limits: Limits | None = None) -> Hub:
        limits = limits or Limits()
        hub = Hub(self.engine(limits), limits)
        await hub.open()
        self.hubs.append(hub)
        return hub


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    connection_string = require_azurite()
    made = Nodes(connection_string, new_prefix("t"))
    yield made
    for hub in made.hubs:
        await hub.close()
    from azure.data.tables.aio import TableServiceClient
    async with TableServiceClient.from_connection_string(connection_string) as service:
        for table in ("streams", "checkpoints"):
            await service.delete_table(made.prefix + table)


async def test_two_nodes_appending_to_one_stream_give_one_dense_sequence(nodes: Nodes) -> None:
    a, b = await nodes.node(), await nodes.node()

    async def writer(hub: Hub, name: str) -> None:
        for i in range(15):
            await hub.append("shared", batch(ev(i, id=f"{name}-{i}")))

    await asyncio.gather(writer(a, "a"), writer(b, "b"), writer(a, "c"), writer(b, "d"))
    events = await read_all(a, "shared")
    assert [e.position for e in events] == list(range(60))
    assert sorted(e.id for e in events) == sorted(
        f"{w}-{i}" for w in "abcd" for i in range(15))
    assert await b.head("shared") == 60


async def test_another_nodes_ids_are_duplicates_here(nodes: Nodes) -> None:
    a, b = await nodes.node(), await nodes.node()
    first = await a.append("ids", batch(ev(1, id="x"), ev(2, id="y")))
    await b.append("ids", batch(ev(3)))  # b learns the stream before a's next write
    await a.append("ids", batch(ev(4, id="z")))
    again = await b.append("ids", batch(ev(1, id="x"), ev(2, id="y"), ev(4, id="z")))
    assert again.appended == 0 and again.first == first.first
    assert await a.head("ids") == 4


async def test_expected_head_across_nodes(nodes: Nodes) -> None:
    from herald.errors import ExpectedHeadMismatch

    a, b = await nodes.node(), await nodes.node()
    await a.append("eh", batch(ev(0)), expected_head=0)
    with pytest.raises(ExpectedHeadMismatch) as stale:
        await b.append("eh", batch(ev(1)), expected_head=0)
    assert stale.value.head == 1


async def test_a_large_write_that_loses_its_race_leaves_nothing_visible(nodes: Nodes) -> None:
    engine, other = nodes.engine(), nodes.engine()
    await engine.open()
    await other.open()
    try:
        first = codec.encode_record(0, 1, 1, codec.encode_batch(batch(ev(0)), "p"))
        await engine.write("race", Write(0, [_placed(first)], 1, 1))
        second = codec.encode_record(1, 1, 2, codec.encode_batch(batch(ev(1)), "p"))
        await other.write("race", Write(1, [_placed(second)], 2, 2))
        # This engine still holds the head entity's ETag of its own write: its large
        # write (staged rows first) is fenced by the head entity, and loses.
        big_body = codec.encode_batch(
            batch(*[{"type": "Big", "data": "x" * ENTITY_BYTES}] * 4), "q")
        big = codec.encode_record(1, 4, 3, big_body)
        assert len(big) > TRANSACTION_BYTES
        with pytest.raises(HeadMoved) as moved:
            await engine.write("race", Write(1, [_placed(big)], 5, 3))
        assert moved.value.head == 2
        records = await engine.read("race", 0)
        assert [r.raw for r in records] == [first, second]
        await asyncio.sleep(0.5)  # the lost write's staged rows are deleted meanwhile
        table = engine._table
        staged = [e async for e in table.query_entities(
            "PartitionKey eq 'race' and RowKey ge 's' and RowKey lt 't'", select=["RowKey"])]
        assert staged == []
    finally:
        await engine.close()
        await other.close()


async def test_an_unanswered_commit_is_resolved_once(nodes: Nodes,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit's answer is lost after Azure applied it (the SDK would retry and
    get 412): the engine learns from the segment row that it committed, and the
    hub answers once — nothing is written twice."""
    hub = await nodes.node()
    await hub.append("lost", batch(ev(0)))
    engine = hub._engine
    assert isinstance(engine, AzureTableEngine)
    table = engine._table
    real = table.submit_transaction
    calls = 0

    async def answer_lost(operations: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        await real(operations, **kwargs)
        from azure.core.exceptions import ServiceResponseError
        raise ServiceResponseError("connection reset by peer")

    monkeypatch.setattr(table, "submit_transaction", answer_lost)
    result = await hub.append("lost", batch(ev(1)))
    monkeypatch.setattr(table, "submit_transaction", real)
    assert (result.first, result.head, calls) == (1, 2, 1)
    assert [e.data["n"] for e in await read_all(hub, "lost")] == [0, 1]


async def test_an_unapplied_unanswered_commit_is_fenced_then_retried(
        nodes: Nodes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit never reached Azure but the engine cannot know: it fences the old
    ETag (so the request can never apply later) and writes again."""
    hub = await nodes.node()
    await hub.append("fence", batch(ev(0)))
    engine = hub._engine
    assert isinstance(engine, AzureTableEngine)
    table = engine._table
    real = table.submit_transaction
    dropped = 0

    async def drop_first(operations: Any, **kwargs: Any) -> Any:
        nonlocal dropped
        if dropped == 0:
            dropped += 1
            from azure.core.exceptions import ServiceResponseError
            raise ServiceResponseError("timed out")
        return await real(operations, **kwargs)

    monkeypatch.setattr(table, "submit_transaction", drop_first)
    result = await hub.append("fence", batch(ev(1)))
    assert (result.first, result.head, dropped) == (1, 2, 1)
    assert [e.data["n"] for e in await read_all(hub, "fence")] == [0, 1]


async def test_an_unreachable_account_is_storage_unavailable() -> None:
    config = AzureTableConfig(
        AZURITE_CONNECTION_STRING.replace(":10002/", ":9/"), table_prefix="unreachable")
    engine = AzureTableEngine(config)
    with pytest.raises(StorageUnavailable):
        await engine.open()


def test_the_account_comes_from_the_table_or_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONNECTION_STRING_VARIABLE, raising=False)
    with pytest.raises(ConfigError) as missing:
        AzureTableConfig()
    assert "[storage.azure-table] connection_string" in missing.value.message
    assert CONNECTION_STRING_VARIABLE in missing.value.message
    monkeypatch.setenv(CONNECTION_STRING_VARIABLE, AZURITE_CONNECTION_STRING)
    assert AzureTableConfig().account == AzureAccount(AZURITE_CONNECTION_STRING)
    assert AzureTableConfig().account.account_name == "devstoreaccount1"
    assert "AccountKey" not in repr(AzureTableConfig())
    with pytest.raises(ConfigError):
        AzureTableConfig(AZURITE_CONNECTION_STRING, table_prefix="1bad")
    with pytest.raises(ConfigError):
        AzureAccount("no equals sign")


def test_the_engine_is_chosen_by_name(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_VARIABLE, AZURITE_CONNECTION_STRING)
    path = tmp_path / "herald.toml"
    path.write_text('[storage]\nengine = "azure-table"\n\n'
                    '[storage.azure-table]\ntable_prefix = "mine"\n')
    engine = create_engine(load_config(path))
    assert isinstance(engine, AzureTableEngine)
    assert engine.config.streams_table == "minestreams"
    assert "devstoreaccount1" in (engine.location or "")


def test_segments_respect_the_transaction_limits() -> None:
    def record(base: int, size: int) -> codec.Record:
        raw = codec.encode_record(base, 1, 1, b"x" * size)
        return codec.decode_record_at(raw) or pytest.fail("not a record")

    sizes = [10, ENTITY_BYTES * 2, 100, 5, ENTITY_BYTES - 200, 3 * 1024 * 1024] + [50] * 500
    records = [record(base, size) for base, size in enumerate(sizes)]
    layout = plan(pack(records))
    assert b"".join(s.data for s in layout.segments) == b"".join(r.raw for r in records)
    assert len(layout.segments) <= MAX_OPERATIONS - 1
    inline = [s for i, s in enumerate(layout.segments) if i not in layout.staged]
    assert sum(len(s.data) for s in inline) <= TRANSACTION_BYTES
    assert all(len(s.data) <= ENTITY_BYTES for s in inline)
    # Too many segments for one transaction: the tail is merged and staged.
    many = [record(i, ENTITY_BYTES - 100) for i in range(150)]
    layout = plan(pack(many))
    assert len(layout.segments) == MAX_OPERATIONS - 1
    assert (MAX_OPERATIONS - 2) in layout.staged
    assert layout.segments[-1].end == 150


def test_driver_errors_become_herald_errors() -> None:
    from azure.core.exceptions import ServiceRequestError

    with pytest.raises(StorageUnavailable), table_errors.azure_errors("testing"):
        raise ServiceRequestError("connection refused")


def _placed(raw: bytes) -> Any:
    from herald.placement import Placed

    record = codec.decode_record_at(raw)
    assert record is not None
    return Placed(record, [])


@pytest.mark.slow
async def test_azurite_killed_and_restarted_under_load(tmp_path: Any) -> None:
    """Azurite goes away while appends are in flight, and comes back on the same
    ports and data: every acknowledged append is there, at the position it was
    acknowledged with, once; what failed meanwhile failed with a retryable error.

    SIGTERM, not SIGKILL: Azurite's table service keeps its data in memory and saves
    it to disk now and then (LokiJS), so a SIGKILL loses what it acknowledged — even
    the tables themselves (seen here: "The table specified does not exist" after a
    restart). Azure Storage does not; the emulator's durability is not under test."""
    from herald.errors import HeraldError

    from ..azuretools import Azurite

    require_azurite()  # skips (or fails under CI) without Azurite installed
    azurite = Azurite(tmp_path / "azurite").start()
    try:
        limits = Limits()
        config = AzureTableConfig(azurite.connection_string, table_prefix="faults")
        hub = Hub(AzureTableEngine(config, limits), limits)
        await hub.open()
        acknowledged: dict[str, int] = {}
        failures: list[HeraldError] = []
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            n = 0
            while not stop.is_set():
                event_id = f"w{w}-{n}"
                try:
                    result = await hub.append("load", batch(ev(n, id=event_id)))
                    acknowledged[event_id] = result.first
                    n += 1
                except HeraldError as exc:
                    assert exc.status in (500, 503), exc
                    failures.append(exc)
                    await asyncio.sleep(0.05)  # the same id again: a retry

        writers = [asyncio.create_task(writer(w)) for w in range(4)]
        await asyncio.sleep(1.0)
        await asyncio.to_thread(azurite.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(azurite.start)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*writers)
        assert failures, "the kill was not noticed"
        events = await read_all(hub, "load")
        assert [e.position for e in events] == list(range(len(events)))
        ids = [e.id for e in events]
        assert len(ids) == len(set(ids)), "an event was written twice"
        where = {e.id: e.position for e in events}
        for event_id, position in acknowledged.items():
            assert where.get(event_id) == position, f"{event_id} lost or moved"
        await hub.close()
    finally:
        azurite.stop()
