"""The PostgreSQL bound, and the table-design measurement behind the postgres engine.

Raw psycopg against the same PostgreSQL, with the same events as W1 (batches of
1,000 ~250-byte events, ``W1_IN_FLIGHT`` writers, one COMMIT per batch: a durable
ack per batch, as W1 asks of Herald). No HTTP, no TLS, no Herald: what the
database itself can take is the bound for the engine.

Both table designs the engine could use are measured the same way:

* **row per batch** — ``(stream_id, last, base, record bytea)``: one row per
  batch, the record in the codec format, compressed with lz4 (what the engine
  does; also measured uncompressed and with pglz);
* **row per event** — ``(stream_id, position, time_us, id, event bytea)``: one
  row per event, the event's JSON as sent.

Appends by ``COPY … FROM STDIN (FORMAT BINARY)`` and by ``INSERT``
(``executemany`` for rows per event); reads of the whole stream in position
order in ~1 MiB pages, producing records (for rows per event: joining the
events of each batch back into a record body, the least a reader needs).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec

from .. import codec
from ..model import Batch, assigned_id, new_id_prefix, now_us
from .workloads import BATCH, W1_IN_FLIGHT, make_event

__all__ = ["run_bound", "ensure_database"]

# Rows per read for the row-per-event design: ~1 MiB of ~250-byte events, the
# same page size the engine reads (READ_CHUNK_BYTES).
EVENT_ROWS_PER_READ = 4000
BATCH_ROWS_PER_READ = 4


def ensure_database(dsn: str) -> None:
    """Create the DSN's database if it does not exist (connecting to ``postgres``)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = conninfo_to_dict(dsn).get("dbname")
    if not name:
        return
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        try:
            conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.errors.DuplicateDatabase:
            pass


def _batches(events: int) -> tuple[list[bytes], list[list[bytes]]]:
    """The W1 batches as records (row per batch) and as event JSON (row per event)."""
    body = msgspec.json.encode([make_event(i) for i in range(BATCH)])
    raw_events = [bytes(r) for r in msgspec.json.decode(body, type=list[msgspec.Raw])]
    records = []
    per_event = []
    for n in range(events // BATCH):
        base = n * BATCH
        batch = Batch(events=[], raw=body)
        records.append(codec.encode_record(base, BATCH, now_us(),
                                           codec.encode_batch(batch, new_id_prefix())))
        per_event.append(raw_events)
    return records, per_event


async def _append(dsn: str, design: str, method: str, records: list[bytes],
                  per_event: list[list[bytes]], table: str) -> float:
    """Append every batch, ``W1_IN_FLIGHT`` connections, a COMMIT per batch."""
    import psycopg

    next_batch = 0

    async def writer() -> None:
        nonlocal next_batch
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            while next_batch < len(records):
                n = next_batch
                next_batch += 1
                base = n * BATCH
                async with conn.cursor() as cur:
                    if design == "batch":
                        row = (1, base + BATCH - 1, base, records[n])
                        if method == "copy":
                            async with cur.copy(f"COPY {table} (stream_id, last, base, record) "
                                                f"FROM STDIN (FORMAT BINARY)") as copy:
                                copy.set_types(["int8", "int8", "int8", "bytea"])
                                await copy.write_row(row)
                        else:
                            await cur.execute(f"INSERT INTO {table} (stream_id, last, base, "
                                              f"record) VALUES (%s, %s, %s, %s)", row)
                    else:
                        t = now_us()
                        prefix = new_id_prefix()
                        rows = [(1, base + i, t, assigned_id(prefix, i), e)
                                for i, e in enumerate(per_event[n])]
                        if method == "copy":
                            async with cur.copy(f"COPY {table} (stream_id, position, time_us, "
                                                f"id, event) FROM STDIN (FORMAT BINARY)") as copy:
                                copy.set_types(["int8", "int8", "int8", "text", "bytea"])
                                for r in rows:
                                    await copy.write_row(r)
                        else:
                            await cur.executemany(
                                f"INSERT INTO {table} (stream_id, position, time_us, id, event) "
                                f"VALUES (%s, %s, %s, %s, %s)", rows)
                await conn.commit()

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(W1_IN_FLIGHT)))
    return time.perf_counter() - start


async def _read(dsn: str, design: str, table: str, events: int) -> float:
    """Read the whole stream in position order, as records, one reader."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        position = 0
        seen = 0
        async with conn.cursor(binary=True) as cur:
            while True:
                if design == "batch":
                    await cur.execute(f"SELECT record FROM {table} WHERE stream_id = 1 AND "
                                      f"last >= %s ORDER BY last LIMIT %s",
                                      (position, BATCH_ROWS_PER_READ))
                    rows = await cur.fetchall()
                    if not rows:
                        break
                    for (raw,) in rows:
                        record = codec.decode_record_at(raw)
                        assert record is not None
                        seen += record.count
                        position = record.end
                else:
                    await cur.execute(f"SELECT position, time_us, event FROM {table} "
                                      f"WHERE stream_id = 1 AND position >= %s "
                                      f"ORDER BY position LIMIT %s",
                                      (position, EVENT_ROWS_PER_READ))
                    rows = await cur.fetchall()
                    if not rows:
                        break
                    # A record per BATCH events: the least a reader of rows must do
                    # to hand out the same bytes as the row-per-batch design.
                    for i in range(0, len(rows), BATCH):
                        chunk = rows[i:i + BATCH]
                        body = b'{"p":"","e":[' + b",".join(r[2] for r in chunk) + b"]}"
                        codec.encode_record(chunk[0][0], len(chunk), chunk[0][1], body)
                    seen += len(rows)
                    position = rows[-1][0] + 1
        elapsed = time.perf_counter() - start
    if seen != events:
        raise RuntimeError(f"bound read {seen} events of {events}")
    return elapsed


_BATCH_TABLE = """CREATE TABLE {t} (
    stream_id bigint NOT NULL, last bigint NOT NULL, base bigint NOT NULL,
    record bytea NOT NULL, PRIMARY KEY (stream_id, last))"""
_EVENT_TABLE = """CREATE TABLE {t} (
    stream_id bigint NOT NULL, position bigint NOT NULL, time_us bigint NOT NULL,
    id text NOT NULL, event bytea NOT NULL, PRIMARY KEY (stream_id, position))"""

# (key, design, table statements, append methods). "batch" is the engine's table:
# records compressed with lz4. The two other batch variants measure that choice.
CASES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("batch", "batch", (_BATCH_TABLE,
                        "ALTER TABLE {t} ALTER COLUMN record SET COMPRESSION lz4"),
     ("copy", "insert")),
    ("batch-uncompressed", "batch", (_BATCH_TABLE,
                                     "ALTER TABLE {t} ALTER COLUMN record SET STORAGE EXTERNAL"),
     ("copy",)),
    ("batch-pglz", "batch", (_BATCH_TABLE,
                             "ALTER TABLE {t} ALTER COLUMN record SET COMPRESSION pglz"),
     ("copy",)),
    ("event", "event", (_EVENT_TABLE,), ("copy", "insert")),
)


async def _bound(dsn: str, events: int, progress: Any) -> dict[str, dict[str, float]]:
    import psycopg

    records, per_event = _batches(events)
    results: dict[str, dict[str, float]] = {}
    for key, design, statements, methods in CASES:
        for method in methods:
            schema = f"herald_bound_{uuid.uuid4().hex[:12]}"
            table = f"{schema}.rows"
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(f"CREATE SCHEMA {schema}")
                for statement in statements:
                    await conn.execute(statement.format(t=table))
            try:
                seconds = await _append(dsn, design, method, records, per_event, table)
                name = f"{key}/{method}"
                results[name] = {"append_rate": events / seconds}
                progress(f"bound {key}, {method}: {events / seconds:,.0f} events/s appended")
                if method == "copy":
                    seconds = await _read(dsn, design, table, events)
                    results[name]["read_rate"] = events / seconds
                    async with await psycopg.AsyncConnection.connect(dsn) as conn:
                        cursor = await conn.execute("SELECT pg_total_relation_size(%s)",
                                                    (table,))
                        row = await cursor.fetchone()
                        results[name]["bytes"] = float(row[0]) if row else 0.0
                    progress(f"bound {key}, read: {events / seconds:,.0f} events/s, "
                             f"{results[name]['bytes'] / 1e6:,.1f} MB on disk")
            finally:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return results


def run_bound(dsn: str, events: int, progress: Any = print) -> dict[str, dict[str, float]]:
    """Measure both table designs with raw psycopg; see the module docstring."""
    ensure_database(dsn)
    return asyncio.run(_bound(dsn, events, progress))
