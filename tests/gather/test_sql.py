"""SQL sources, the same tests against SQLite, PostgreSQL and MariaDB (real servers).

A gatherer runs in-process on a real files engine; what it appends is compared
with the source, row by row.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from herald.config import GatherConfig
from herald.errors import Conflict, NotFound
from herald.gather.base import SKIP_STREAM
from herald.gather.manager import GatherManager
from herald.gather.status import GatherState
from herald.hub import Hub

from .conftest import (
    create_pg_database,
    drop_pg_database,
    new_name,
    read_all,
    require_postgres,
    wait_for_head,
    wait_until,
)
from .sqldb import SqlDb, sqlite_db


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlDb]:
    if request.param == "sqlite":
        yield sqlite_db(tmp_path)
    else:
        fixture = "mysql_dsn" if request.param == "mysql" else "pg_dsn"
        yield SqlDb(request.param, request.getfixturevalue(fixture))


@pytest.fixture
async def running() -> AsyncIterator[list[GatherManager]]:
    """Managers started by a test; all stopped at its end."""
    managers: list[GatherManager] = []
    yield managers
    for manager in managers:
        await manager.stop()


async def start(engine: Hub, running: list[GatherManager],
                *configs: GatherConfig) -> GatherManager:
    manager = GatherManager(engine, list(configs))
    await manager.start()
    running.append(manager)
    return manager


def rows(first: int, count: int) -> list[tuple[str, str, str, str | None]]:
    return [("Counted", json.dumps({"n": n, "text": f"é{n}"}), f"ev-{n}",
             json.dumps({"tenant": "t1"}) if n % 2 else None)
            for n in range(first, first + count)]


async def test_a_table_is_gathered_in_order_then_followed_live(
        db: SqlDb, engine: Hub, running: list[GatherManager]) -> None:
    db.create_events()
    db.insert(rows(0, 2500))  # more than one batch
    manager = await start(engine, running, db.config(batch=1000))
    await wait_for_head(engine, "s", 2500)
    db.insert(rows(2500, 3))
    await wait_for_head(engine, "s", 2503)

    events = await read_all(engine, "s")
    assert [e.position for e in events] == list(range(2503))
    assert [e.data for e in events] == [{"n": n, "text": f"é{n}"} for n in range(2503)]
    assert [e.id for e in events] == [f"ev-{n}" for n in range(2503)]
    assert all(e.type == "Counted" for e in events)
    source_ids = [row[0] for row in db.execute("SELECT id FROM events ORDER BY id")]
    assert [e.meta["source_position"] for e in events] == [str(i) for i in source_ids]
    assert events[1].meta == {"tenant": "t1", "source": "g", "source_position": str(source_ids[1])}
    assert events[0].meta == {"source": "g", "source_position": str(source_ids[0])}

    await wait_until(lambda: manager.statuses()[0].state is GatherState.LIVE, what="live")
    status = manager.statuses()[0]
    assert (status.source_position, status.stream_head, status.gathered) == (
        source_ids[-1], 2503, 2503)
    assert status.last_error is None


async def test_a_restart_resumes_from_the_stream_without_duplicates(
        db: SqlDb, engine: Hub, running: list[GatherManager]) -> None:
    db.create_events()
    db.insert(rows(0, 300))
    first = await start(engine, running, db.config(batch=100))
    await wait_for_head(engine, "s", 300)
    await first.stop()
    db.insert(rows(300, 200))  # committed while no gatherer runs
    await start(engine, running, db.config(batch=100))
    await wait_for_head(engine, "s", 500)
    await asyncio.sleep(0.3)  # nothing more may come
    events = await read_all(engine, "s")
    assert [e.data["n"] for e in events] == list(range(500))


async def test_two_gatherers_racing_on_one_stream_neither_lose_nor_double(
        db: SqlDb, engine: Hub, running: list[GatherManager]) -> None:
    # Two nodes running the same gatherer (or an old append landing late): every stale
    # append fails on expected_head and the loser re-reads the stream.
    # Without event ids, so that only expected_head stands between them (with ids, the
    # dedup window would also turn most stale appends into no-ops).
    db.create_events()
    db.insert(rows(0, 2000))
    columns = {"type": "type", "data": "data"}
    a = await start(engine, running, db.config(batch=7, columns=columns))
    b = await start(engine, running, db.config(batch=11, columns=columns))
    await wait_for_head(engine, "s", 2000)
    db.insert(rows(2000, 50))
    await wait_for_head(engine, "s", 2050)
    await asyncio.sleep(0.3)
    events = await read_all(engine, "s")
    assert [e.data["n"] for e in events] == list(range(2050))
    assert a.statuses()[0].conflicts + b.statuses()[0].conflicts > 0


async def test_a_custom_query(db: SqlDb, engine: Hub, running: list[GatherManager]) -> None:
    db.create_events()
    db.insert(rows(0, 40))
    query = ("SELECT id AS pos, type AS kind, data AS payload FROM events "
             "WHERE id > %(after)s AND type LIKE 'Coun%%' ORDER BY id LIMIT %(limit)s")
    db.execute("UPDATE events SET type = 'Hidden' WHERE id % 4 = 0")
    config = db.config(table=None, query=query, position="pos",
                       columns={"type": "kind", "data": "payload"}, batch=7)
    await start(engine, running, config)
    await wait_for_head(engine, "s", 30)
    await asyncio.sleep(0.2)
    events = await read_all(engine, "s")
    assert [int(e.meta["source_position"]) for e in events] == [
        i for i in range(1, 41) if i % 4]


async def test_a_bad_row_stops_the_gatherer_until_it_is_skipped_and_recorded(
        db: SqlDb, engine: Hub, running: list[GatherManager]) -> None:
    db.create_events()
    db.insert(rows(0, 3))
    db.insert([("Broken", "{not json", None, None)])
    db.insert(rows(3, 2))
    db.insert([(None, "{}", None, None)])  # no type
    db.insert(rows(5, 1))
    manager = await start(engine, running, db.config())
    await wait_until(lambda: manager.statuses()[0].state is GatherState.STOPPED_BAD_ROW,
                     what="the gatherer to stop at the bad row")
    status = manager.statuses()[0]
    assert status.stream_head == 3
    assert status.last_error is not None
    assert status.last_error.code == "unmappable_row"
    assert status.last_error.position == 4
    message = status.last_error.message
    assert "gatherer g" in message and "position 4" in message and "not JSON" in message
    assert db.kind in message

    with pytest.raises(Conflict):
        await manager.skip("g", 5, "admin")  # only the row it is stopped at
    with pytest.raises(NotFound):
        await manager.skip("nobody", 4, "admin")
    skip = await manager.skip("g", 4, "admin")
    assert (skip.position, skip.by) == (4, "admin")

    await wait_until(lambda: manager.statuses()[0].state is GatherState.STOPPED_BAD_ROW
                     and manager.statuses()[0].last_error.position == 7,  # type: ignore[union-attr]
                     what="the second bad row")
    assert "no type" in manager.statuses()[0].last_error.message  # type: ignore[union-attr]
    await manager.skip("g", 7, "operator-2")
    await wait_for_head(engine, "s", 6)
    events = await read_all(engine, "s")
    assert [e.data["n"] for e in events] == [0, 1, 2, 3, 4, 5]
    assert "4" not in [e.meta["source_position"] for e in events]

    # Recorded durably, with who and when, and shown in the status.
    recorded = await read_all(engine, SKIP_STREAM)
    assert [(e.data["gatherer"], e.data["position"], e.data["by"]) for e in recorded] == [
        ("g", 4, "admin"), ("g", 7, "operator-2")]
    assert "not JSON" in recorded[0].data["reason"]
    assert [s.position for s in manager.statuses()[0].skips] == [4, 7]


async def test_a_bad_row_fixed_in_the_source_is_gathered(
        tmp_path: Path, engine: Hub, running: list[GatherManager]) -> None:
    db = sqlite_db(tmp_path)
    db.create_events()
    db.insert([("T", '{"n": 0}', None, None), ("T", "{n: 1}", None, None)])
    manager = await start(engine, running, db.config())
    await wait_until(lambda: manager.statuses()[0].state is GatherState.STOPPED_BAD_ROW)
    db.execute("""UPDATE events SET data = '{"n": 1}' WHERE id = 2""")
    await wait_for_head(engine, "s", 2)
    assert [e.data["n"] for e in await read_all(engine, "s")] == [0, 1]
    await wait_until(lambda: manager.statuses()[0].state is GatherState.LIVE)
    assert manager.get("g").stopped_at is None


async def test_skips_survive_a_restart(db: SqlDb, engine: Hub,
                                       running: list[GatherManager]) -> None:
    db.create_events()
    db.insert([("Broken", "[1,", None, None)])
    db.insert(rows(0, 2))
    manager = await start(engine, running, db.config())
    await wait_until(lambda: manager.statuses()[0].state is GatherState.STOPPED_BAD_ROW)
    # Skipped, then stopped before anything after it was appended: the stream still
    # ends before the bad row, and only the recorded skip keeps it out.
    await manager.skip("g", 1, "admin")
    await manager.stop()
    running.remove(manager)
    again = await start(engine, running, db.config())
    await wait_for_head(engine, "s", 2)
    assert again.statuses()[0].last_error is None
    assert [e.data["n"] for e in await read_all(engine, "s")] == [0, 1]


async def test_an_event_over_the_size_limit_is_a_bad_row(
        db: SqlDb, engine: Hub, running: list[GatherManager]) -> None:
    db.create_events()
    big = json.dumps({"blob": "x" * 1_100_000})
    db.insert([("Big", big, None, None)])
    manager = await start(engine, running, db.config())
    await wait_until(lambda: manager.statuses()[0].state is GatherState.STOPPED_BAD_ROW)
    assert "limit" in manager.statuses()[0].last_error.message  # type: ignore[union-attr]


async def test_bad_meta_is_a_bad_row(db: SqlDb, engine: Hub,
                                     running: list[GatherManager]) -> None:
    db.create_events()
    db.insert([("Ok", "{}", None, json.dumps({"n": 1}))])
    manager = await start(engine, running, db.config())
    await wait_until(lambda: manager.statuses()[0].state is GatherState.STOPPED_BAD_ROW)
    assert "meta" in manager.statuses()[0].last_error.message  # type: ignore[union-attr]


async def test_a_stream_fed_by_something_else_is_refused(
        db: SqlDb, engine: Hub, running: list[GatherManager]) -> None:
    from herald import codec
    from herald.model import Limits

    db.create_events()
    db.insert(rows(0, 1))
    await engine.append("s", codec.decode_append(b'[{"type":"Pushed","data":1}]', Limits()))
    manager = await start(engine, running, db.config())
    await wait_until(lambda: manager.statuses()[0].state is GatherState.RETRYING)
    error = manager.statuses()[0].last_error
    assert error is not None and error.code == "stream_not_gathered"
    assert await engine.head("s") == 1


async def test_a_source_that_is_down_is_retried_and_caught_up_others_unaffected(
        engine: Hub, running: list[GatherManager], tmp_path: Path) -> None:
    require_postgres()
    healthy = sqlite_db(tmp_path)
    healthy.create_events()
    healthy.insert(rows(0, 5))
    name = new_name()
    missing = SqlDb("postgres", f"postgresql://postgres@127.0.0.1:5432/{name}")
    manager = await start(engine, running, missing.config(name="down", stream="down"),
                          healthy.config(name="up", stream="up"))
    try:
        await wait_for_head(engine, "up", 5)  # the other gatherer does not wait
        await wait_until(lambda: manager.get("down").state is GatherState.RETRYING)
        error = manager.get("down").status().last_error
        assert error is not None and error.code == "source_unavailable"
        assert name in error.message
        # The database comes (back): the gatherer catches up by itself.
        create_pg_database(name)
        missing.create_events()
        missing.insert(rows(0, 20))
        await wait_for_head(engine, "down", 20, timeout=60)
        assert [e.data["n"] for e in await read_all(engine, "down")] == list(range(20))
        healthy.insert(rows(5, 1))
        await wait_for_head(engine, "up", 6)
    finally:
        await manager.stop()
        drop_pg_database(name)


async def test_json_and_binary_columns(pg_dsn: str, engine: Hub,
                                       running: list[GatherManager]) -> None:
    db = SqlDb("postgres", pg_dsn)
    db.execute("CREATE TABLE events (id bigint PRIMARY KEY, type text, data jsonb, "
               "meta json, blob bytea)")
    db.execute("""INSERT INTO events VALUES (10, 'A', '{"b": [1, 2.5, null]}', '{"k": "v"}', """
               """'{"c": 3}'::bytea), (11, 'B', NULL, NULL, NULL)""")
    await start(engine, running, db.config(columns={"type": "type", "data": "data",
                                                    "meta": "meta"}))
    await start(engine, running, db.config(name="g2", stream="s2",
                                           columns={"type": "type", "data": "blob"}))
    await wait_for_head(engine, "s", 2)
    await wait_for_head(engine, "s2", 2)
    a, b = await read_all(engine, "s")
    assert (a.data, a.meta["k"], b.data) == ({"b": [1, 2.5, None]}, "v", None)
    assert [e.data for e in await read_all(engine, "s2")] == [{"c": 3}, None]


def test_positions_must_be_integers(tmp_path: Path) -> None:
    from herald.errors import SourceError
    from herald.gather.manager import create_source
    from herald.gather.sql import SqliteSource

    db = sqlite_db(tmp_path)
    db.execute("CREATE TABLE events (id TEXT, type TEXT, data TEXT)")
    db.execute("INSERT INTO events VALUES ('a', 'T', '{}')")
    source = create_source(db.config(columns={"type": "type", "data": "data"}))
    assert isinstance(source, SqliteSource)
    source.open()
    try:
        read = source.read(None, 10)
        with pytest.raises(SourceError, match="not an integer"):
            source.position(read.rows[0])
    finally:
        source.close()


def test_the_mapping_keeps_data_bytes_as_they_are() -> None:
    from herald.gather.sql import row_event

    event = row_event((1, "T", '{"z": 1,  "a": [ ]}', None, None), {"source": "g"})
    assert bytes(event.data) == b'{"z": 1,  "a": [ ]}'
    assert msgspec.json.decode(msgspec.json.encode(event))["meta"] == {"source": "g"}


async def test_batches_keep_to_the_append_limits(tmp_path: Path) -> None:
    from herald.engines.files import FilesConfig, FilesEngine
    from herald.model import Limits

    db = sqlite_db(tmp_path)
    db.create_events()
    db.insert(rows(0, 23))
    db.insert([("Big", json.dumps({"blob": "y" * 3000}), None, None) for _ in range(4)])
    limits = Limits(max_batch_events=5, max_batch_bytes=8000)
    engine = Hub(FilesEngine(FilesConfig(tmp_path / "data")), limits)
    await engine.open()
    manager = GatherManager(engine, [db.config(batch=1000)])
    await manager.start()
    try:
        await wait_for_head(engine, "s", 27)
    finally:
        await manager.stop()
        await engine.close()
    records = []
    position = 0
    async with Hub(FilesEngine(FilesConfig(tmp_path / "data")), limits) as again:
        while batch := await again.records("s", position):
            records += batch
            position = batch[-1].end
    assert max(r.count for r in records) <= 5
    assert max(len(r.raw) for r in records) <= 8000


async def test_a_repeated_event_id_is_counted_not_hidden(tmp_path: Path, engine: Hub) -> None:
    db = sqlite_db(tmp_path)
    db.create_events()
    db.insert([("T", '{"n": 0}', "same", None), ("T", '{"n": 1}', "other", None)])
    db.insert([("T", '{"n": 2}', "same", None)])
    manager = GatherManager(engine, [db.config()])
    await manager.start()
    try:
        await wait_until(lambda: manager.statuses()[0].duplicates == 1)
        await wait_until(lambda: manager.statuses()[0].state is GatherState.LIVE)
    finally:
        await manager.stop()
    assert [e.data["n"] for e in await read_all(engine, "s")] == [0, 1]
