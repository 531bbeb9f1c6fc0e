"""No event is skipped when source transactions commit out of order.

Many writers take ids (a PostgreSQL sequence, a MariaDB auto-increment) and commit
in shuffled order — some after a long sleep, some rolling back, some taking the id
with nextval() long before they insert it — while a gatherer runs. Afterwards the
stream must hold every committed row, in id order, once. A naive tail (``id > last
seen``) runs alongside and must miss rows: that shows the test exercises the trap.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from herald.gather.manager import GatherManager
from herald.hub import Hub

from .conftest import mysql_connect, read_all, wait_for_head
from .sqldb import SqlDb, sqlite_db

WRITERS = 8
TRANSACTIONS_PER_WRITER = 20
# A few transactions hold their ids this long before committing: long enough for
# many later ids to commit first, and for the naive tail to pass them by.
LONG_SECONDS = 1.5


class Recorder:
    """The ids that committed, as the writers report them."""

    def __init__(self) -> None:
        self.committed: list[int] = []
        self.rolled_back = 0
        self.lock = threading.Lock()

    def commit(self, ids: list[int]) -> None:
        with self.lock:
            self.committed += ids


def naive_tail(query: Callable[[int], list[int]], stop: threading.Event) -> list[int]:
    """The trap: remember the highest id seen, read above it."""
    seen: list[int] = []
    last = 0
    while not stop.is_set():
        ids = query(last)
        seen += ids
        if ids:
            last = ids[-1]
        time.sleep(0.005)
    return seen


def pause(rng: random.Random, writer: int, n: int) -> float:
    if (writer, n) in ((0, 0), (3, 5), (5, 11)) or rng.random() < 0.03:
        return LONG_SECONDS
    return rng.choice([0, 0, 0.001, 0.005, 0.02, 0.05, 0.2])


async def run_shuffled(engine: Hub, config: Any, writer: Callable[[int, Recorder], None],
                       naive: Callable[[threading.Event], list[int]]) -> None:
    recorder = Recorder()
    manager = GatherManager(engine, [config])
    await manager.start()
    stop = threading.Event()
    naive_task = asyncio.create_task(asyncio.to_thread(naive, stop))
    try:
        await asyncio.gather(*(asyncio.to_thread(writer, w, recorder) for w in range(WRITERS)))
        stop.set()
        seen = await naive_task
        expected = sorted(recorder.committed)
        await wait_for_head(engine, config.stream, len(expected), timeout=60)
        await asyncio.sleep(0.5)  # and nothing more arrives
        events = await read_all(engine, config.stream)
    finally:
        stop.set()
        await manager.stop()
    gathered = [int(e.meta["source_position"]) for e in events]
    assert gathered == expected, (
        f"missing {sorted(set(expected) - set(gathered))[:10]}, "
        f"unexpected {sorted(set(gathered) - set(expected))[:10]}")
    assert [e.data["id"] for e in events] == expected  # each row's own data, in id order
    missed = set(expected) - set(seen)
    assert missed, "the naive tail missed nothing: the test did not shuffle commits"
    assert recorder.rolled_back > 0


async def test_postgres_shuffled_commits(pg_dsn: str, engine: Hub) -> None:
    db = SqlDb("postgres", pg_dsn)
    db.execute("CREATE TABLE events (id bigserial PRIMARY KEY, type text, data jsonb)")

    def writer(w: int, recorder: Recorder) -> None:
        import psycopg

        rng = random.Random(w)
        with psycopg.connect(pg_dsn) as conn:
            for n in range(TRANSACTIONS_PER_WRITER):
                ids: list[int] = []
                with conn.cursor() as cursor:
                    if n % 4 == 3:
                        # The id is taken first (nextval() needs no transaction id), the
                        # row inserted later: what an ORM with a sequence does.
                        cursor.execute("SELECT nextval('events_id_seq')")
                        ids = [cursor.fetchone()[0]]  # type: ignore[index]
                        time.sleep(pause(rng, w, n))
                        cursor.execute("INSERT INTO events (id, type, data) VALUES "
                                       "(%s, 'T', jsonb_build_object('id', %s::bigint))",
                                       (ids[0], ids[0]))
                    else:
                        for _ in range(rng.choice([1, 1, 2, 3])):
                            cursor.execute("INSERT INTO events (type, data) VALUES ('T', '{}') "
                                           "RETURNING id")
                            ids.append(cursor.fetchone()[0])  # type: ignore[index]
                        cursor.execute("UPDATE events SET data = jsonb_build_object('id', id) "
                                       "WHERE id = ANY(%s)", (ids,))
                        time.sleep(pause(rng, w, n))
                if rng.random() < 0.1:
                    conn.rollback()
                    recorder.rolled_back += 1
                else:
                    conn.commit()
                    recorder.commit(ids)

    def naive(stop: threading.Event) -> list[int]:
        import psycopg

        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            return naive_tail(lambda last: [r[0] for r in conn.execute(
                "SELECT id FROM events WHERE id > %s ORDER BY id", (last,))], stop)

    await run_shuffled(engine, db.config(columns={"type": "type", "data": "data"}, batch=50),
                       writer, naive)


async def test_mariadb_shuffled_commits(mysql_dsn: str, engine: Hub) -> None:
    db = SqlDb("mysql", mysql_dsn)
    database = mysql_dsn.rsplit("/", 1)[1]
    db.execute("CREATE TABLE events (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
               "type VARCHAR(20), data JSON)")

    def writer(w: int, recorder: Recorder) -> None:
        rng = random.Random(w)
        conn = mysql_connect(database, autocommit=False)
        try:
            with conn.cursor() as cursor:
                for n in range(TRANSACTIONS_PER_WRITER):
                    conn.begin()
                    ids: list[int] = []
                    for _ in range(rng.choice([1, 1, 2, 3])):
                        cursor.execute("INSERT INTO events (type, data) VALUES ('T', '{}')")
                        ids.append(cursor.lastrowid)
                    if n % 5 == 4:  # a multi-row insert: ids taken as a block
                        cursor.execute("INSERT INTO events (type, data) VALUES "
                                       "('T', '{}'), ('T', '{}'), ('T', '{}')")
                        ids += range(cursor.lastrowid, cursor.lastrowid + 3)
                    cursor.execute("UPDATE events SET data = JSON_OBJECT('id', id) WHERE id IN "
                                   f"({','.join(str(i) for i in ids)})")
                    time.sleep(pause(rng, w, n))
                    if rng.random() < 0.1:
                        conn.rollback()
                        recorder.rolled_back += 1
                    else:
                        conn.commit()
                        recorder.commit(ids)
        finally:
            conn.close()

    def naive(stop: threading.Event) -> list[int]:
        conn = mysql_connect(database)
        try:
            def query(last: int) -> list[int]:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT id FROM events WHERE id > %s ORDER BY id", (last,))
                    return [r[0] for r in cursor.fetchall()]
            return naive_tail(query, stop)
        finally:
            conn.close()

    await run_shuffled(engine, db.config(columns={"type": "type", "data": "data"}, batch=50),
                       writer, naive)


async def test_sqlite_concurrent_writers(tmp_path: Path, engine: Hub) -> None:
    """SQLite has one writer at a time: concurrent writers commit in id order, and
    every row a read sees is final (no fence is needed — or used)."""
    db = sqlite_db(tmp_path)
    db.create_events()
    committed: list[int] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        rng = random.Random(w)
        conn = sqlite3.connect(db.dsn, isolation_level=None, timeout=30)
        try:
            for _ in range(TRANSACTIONS_PER_WRITER):
                conn.execute("BEGIN IMMEDIATE")
                cursor = conn.execute("INSERT INTO events (type, data) VALUES ('T', '{}')")
                row = cursor.lastrowid
                conn.execute("UPDATE events SET data = json_object('id', id) WHERE id = ?",
                             (row,))
                time.sleep(rng.choice([0, 0.001, 0.01]))
                if rng.random() < 0.1:
                    conn.execute("ROLLBACK")
                else:
                    conn.execute("COMMIT")
                    with lock:
                        committed.append(row)  # type: ignore[arg-type]
        finally:
            conn.close()

    manager = GatherManager(engine, [db.config(columns={"type": "type", "data": "data"})])
    await manager.start()
    try:
        await asyncio.gather(*(asyncio.to_thread(writer, w) for w in range(WRITERS)))
        await wait_for_head(engine, "s", len(committed))
        await asyncio.sleep(0.3)
        events = await read_all(engine, "s")
    finally:
        await manager.stop()
    assert [int(e.meta["source_position"]) for e in events] == sorted(committed)
