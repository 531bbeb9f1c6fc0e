"""The ``postgres`` engine: several stateless Herald nodes over one PostgreSQL.

Everything a node knows that matters lives in the database: streams, their
batches, the dedup window and checkpoints. A node can die at any moment; another
node, or a restarted one, carries on from the database alone. Storage HA is
PostgreSQL's own (a streaming replica, a managed service): Herald adds no
replication protocol of its own.

Tables (in the configured schema, ``herald`` by default; see ``schema.MIGRATIONS``)::

    streams     (id, name, head, bytes, last_time)   one row per stream: the lock
    batches     (stream_id, last, base, record)      one row per batch: the record
    event_ids   (stream_id, id, position)            the dedup window
    checkpoints (name, value)                        consumer groups, gatherers
    schema_migrations (version, description, applied_at)

**A row per batch.** ``record`` holds the batch exactly as the codec frames it
(header and body), so a read is "select the rows, send the bytes": no per-event
work, the same bytes as the files engine, the compact streaming form and the
Python client. A row per event was measured against it (BENCH.md, "postgres
engine: table design") and lost on both appends and reads.

**Dense positions, never skipped.** A write (``Engine.write``: the records the hub
placed) first locks its stream's row (``SELECT … FOR UPDATE``) and compares the head
with the one the placement saw — another node may have written meanwhile
(``HeadMoved``: the hub loads and places again) — writes the batches, moves the
head, and commits. The next write to that stream — on any node — gets the lock
only after the previous transaction has committed and become visible, so batches
of a stream commit in position order and every snapshot sees a gap-free prefix of
the stream. A reader that reads ``last >= start`` can therefore never skip a batch
that commits later with a smaller position: no such batch exists.

**Group commit** is the hub's (hub.appends): appends to one stream that arrive while
the previous transaction for that stream runs are written together in the next one.
Each append is answered only after COMMIT returned (``synchronous_commit`` is never
``off`` on Herald's connections). Different streams commit in parallel on the pool.

**Other nodes hear of new heads.** After each commit a background task sends
``pg_notify(channel, "head stream")`` lines in a separate, tiny transaction — off
the append path, heads that moved meanwhile coalesced into one NOTIFY (a NOTIFY
inside the append transaction would take PostgreSQL's global notify lock until the
end of the commit and serialise every append of the cluster behind one WAL flush).
Each node keeps one dedicated LISTEN connection and hands what it hears to the
hub's head-waiter (``SharedEngine.watch``); a lost LISTEN connection raises an
alarm (every waiter asks the database). A notification is a hint, never the data;
the hub polls the heads of waited-on streams as a fallback (hub.heads).

**Dedup window shared by all nodes.** Producer-supplied ids go into ``event_ids``
in the write transaction; ``load`` finds them for the hub's placement, which keeps
an id while the batch holding it ends within ``limits.dedup_window`` of the head —
whole batches. Rows further behind are deleted now and then (``PRUNE_FRACTION``).

The package::

    __init__.py     the engine: settings, lifecycle, load, write, read, heads,
                    listing, checkpoints
    schema.py       the tables: migrations, and every statement on them
    connections.py  the pool, every session's settings, driver errors as Herald's,
                    reads tried again on a fresh connection
    notify.py       NOTIFY of new heads after commits, the LISTEN loop
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ... import codec
from ...codec import Record
from ...config import bounded, check_bounds
from ...errors import ConfigError, CorruptRecord, StorageUnavailable
from ...logsafe import logsafe
from ...model import Limits, StreamInfo, validate_stream_name
from ...placement import StreamState
from ..base import (
    READ_CHUNK_BYTES,
    Checkpoint,
    CheckpointConflict,
    HeadListener,
    HeadMoved,
    Replace,
    SharedEngine,
    Write,
    validate_checkpoint_name,
)

# Before the package's modules, which import psycopg themselves: without psycopg,
# `engine = "postgres"` is this clear ConfigError, not an ImportError.
try:
    import psycopg
    import psycopg_pool
    from psycopg.conninfo import conninfo_to_dict
except ImportError as _exc:  # pragma: no cover - depends on the installation
    raise ConfigError(
        "[storage] engine = \"postgres\" needs psycopg: pip install 'herald[postgres]'"
    ) from _exc

from .connections import _Connections, _first_line, _stale_connection, redact
from .notify import _Notifications
from .schema import MIGRATIONS, SCHEMA_VERSION, Migration, _Statements, migrate

if TYPE_CHECKING:
    from ...config import Config

__all__ = ["PostgresConfig", "PostgresEngine", "MIGRATIONS", "SCHEMA_VERSION", "Migration"]

log = logging.getLogger("herald.postgres")

# Rows one read selects at most. With tiny batches a read of READ_CHUNK_BYTES
# could otherwise visit thousands of rows; the caller simply reads again.
MAX_READ_ROWS = 1000
# The dedup window's rows that fell out of the window are deleted when the head
# crosses a multiple of dedup_window / PRUNE_FRACTION: at most that many extra
# rows per stream, and the delete's cost amortised over as many events.
PRUNE_FRACTION = 4

# psycopg's pipeline mode can deadlock sending one large statement (psycopg issue
# #685: PostgreSQL waits for the rest of the query, psycopg for a result, forever,
# with the stream's row locked): a 32 MiB record hung here, 16 MiB did not. A write
# or a load whose parameters are larger than this runs without the pipeline, one
# round trip per statement; next to moving megabytes, those round trips cost nothing.
PIPELINE_MAX_BYTES = 4 * 1024 * 1024

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# More connections per node than this is a mistake: PostgreSQL serves 100 in all by
# default (max_connections), each one a process of its own.
MAX_POOL_SIZE = 1000


@dataclass(frozen=True)
class PostgresConfig:
    """``[storage.postgres]``: the engine's own keys (docs/configuration.md)."""

    # A libpq connection string or URI ("postgresql://user@host/db"). Required;
    # None only so that its absence is a clear error, not a missing argument.
    dsn: str | None = field(default=None, repr=False)
    # The schema Herald's tables live in (created on start). Several Herald
    # deployments can share one database under different schemas.
    schema: str = "herald"
    # Connections per node. Each node needs one more for LISTEN.
    pool_size: int = bounded(10, 1, MAX_POOL_SIZE, unit="connections")

    def __post_init__(self) -> None:
        if not self.dsn:
            raise ConfigError('[storage.postgres] dsn: required for engine = "postgres" '
                              "(or set HERALD_STORAGE_POSTGRES_DSN)")
        # The schema name is spliced into SQL (quoted); only a plain lower-case
        # identifier is accepted, so quoting can never be escaped.
        if not _SCHEMA_NAME.fullmatch(self.schema):
            raise ConfigError("[storage.postgres] schema: expected a lower-case SQL "
                              "identifier (a-z, 0-9, _; at most 63 characters), got "
                              f"{self.schema!r}")
        check_bounds(self, "[storage.postgres]")
        try:
            conninfo_to_dict(self.dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"[storage.postgres] dsn: not a PostgreSQL connection string "
                              f"({_first_line(exc)})") from None

    @property
    def conninfo(self) -> str:
        assert self.dsn is not None  # checked above
        return self.dsn

    @property
    def channel(self) -> str:
        """The NOTIFY channel: one per schema, so deployments sharing a database
        do not wake each other."""
        return f"herald.{self.schema}"


# --- the engine ------------------------------------------------------------------


class PostgresEngine(_Notifications, _Connections, SharedEngine):
    name = "postgres"

    def __init__(self, config: PostgresConfig, limits: Limits | None = None) -> None:
        self.config = config
        self.limits = limits or Limits()
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._listener: HeadListener | None = None
        # The size of a stream's last records read, for sizing the next read; only
        # for streams that have records.
        self._avg_record: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._listening = False
        self._sql = _Statements(f'"{config.schema}"')
        # New heads not yet announced to the other nodes, and the task announcing them.
        self._unannounced: dict[str, int] = {}
        self._announcing = asyncio.Event()

    settings = PostgresConfig

    @classmethod
    def from_config(cls, config: Config, settings: PostgresConfig) -> PostgresEngine:
        return cls(settings, config.limits)

    @property
    def location(self) -> str:
        return f"PostgreSQL {redact(self.config.conninfo)}, schema {self.config.schema}"

    def watch(self, listener: HeadListener) -> None:
        self._listener = listener

    # lifecycle

    async def open(self) -> None:
        self._closing = False
        pool = await self._open_pool()
        self._pool = pool
        try:
            await self._migrate()
        except BaseException:
            self._pool = None
            await pool.close()
            raise
        self._announcing = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._listen_loop(), name="herald-postgres-listen"),
            asyncio.create_task(self._announce_loop(), name="herald-postgres-announce"),
        ]

    async def close(self) -> None:
        if self._pool is None:
            return
        self._closing = True  # the hub finished the writes it had accepted
        await self._announce()  # the last heads, so other nodes need not poll for them
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        pool, self._pool = self._pool, None
        await pool.close()

    async def _migrate(self) -> None:
        async with self._connection("migrating the schema") as conn, conn.transaction():
            await migrate(conn, self.config.schema)

    # appends

    async def ping(self) -> None:
        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("SELECT 1")

        await self._retrying("health check", run)

    async def load(self, stream: str, window: int,
                   ids: Collection[str] | None = None) -> StreamState:
        """One round trip: the stream's row, and where the ids are (ids None: every
        id of the window)."""
        validate_stream_name(stream)
        q = self._sql

        pipelined = ids is None or sum(len(i) for i in ids) <= PIPELINE_MAX_BYTES

        async def run(conn: psycopg.AsyncConnection[Any]) -> StreamState:
            async with _pipeline(conn, pipelined):
                head_cursor = await conn.execute(q.load_stream, (stream,))
                if ids is None:
                    id_cursor = await conn.execute(q.window_ids, {"name": stream,
                                                                  "window": window})
                elif ids:
                    id_cursor = await conn.execute(q.find_ids, {"name": stream,
                                                                "ids": list(ids)})
                row = await head_cursor.fetchone()
                found = await id_cursor.fetchall() if ids is None or ids else []
            if row is None:
                return StreamState()
            head, last_time = int(row[0]), int(row[1])
            # An id is in the window while its batch ends within it (placement's
            # rule); rows further behind are forgotten, not yet deleted.
            known = {str(event_id): (int(position), int(last) + 1)
                     for event_id, position, last in found
                     if position is not None and last is not None
                     and int(last) + 1 > head - window}
            return StreamState(head, last_time, known)

        return await self._retrying(f"loading stream {stream}", run)

    async def write(self, stream: str, write: Write) -> None:
        """One transaction, two round trips in pipeline mode: BEGIN and the lock
        (whose answer is the head to compare), then the writes and COMMIT. Run again
        from the start, on another connection, if the connection turned out dead
        before COMMIT was sent: PostgreSQL rolled the transaction back."""
        validate_stream_name(stream)
        pipelined = sum(len(r.raw) for r in write.records) <= PIPELINE_MAX_BYTES
        for attempt in range(self._stale_attempts()):
            committing = False
            try:
                async with (self._connection(f"appending to stream {stream}") as conn,
                            _pipeline(conn, pipelined) as pipeline):
                    await conn.execute("BEGIN")
                    stream_id, head, last_time = await self._lock(conn, stream)
                    done = write
                    if head != write.expected_head:
                        if write.replace is None:
                            await conn.execute("ROLLBACK")
                            if pipeline is not None:
                                await pipeline.sync()
                            raise HeadMoved(head)
                        # Another node wrote first: place again here, under the lock.
                        state = await self._locked_state(conn, stream, head, last_time,
                                                         write.replace)
                        done = write.replace.place(state)
                    if done.written:
                        await self._insert(conn, stream_id, done)
                    await conn.execute("COMMIT")
                    committing = True
                    if pipeline is not None:
                        await pipeline.sync()
                if done.written:
                    self._published(stream, done.head)
                return
            except StorageUnavailable as exc:
                cause = exc.__cause__
                if committing:
                    raise StorageUnavailable(
                        f"PostgreSQL connection failed while committing an append to stream "
                        f"{stream}; it may or may not have been appended") from cause
                if (not _stale_connection(exc) or self._closing
                        or attempt == self._stale_attempts() - 1):
                    raise
                log.warning("append to stream %s: connection failed before commit (%s); "
                            "retrying on another connection", logsafe(stream),
                            logsafe(exc.message))
                await self._after_stale(attempt)

    async def _lock(self, conn: psycopg.AsyncConnection[Any],
                    stream: str) -> tuple[int, int, int]:
        """Lock the stream's row (creating it): its id, durable head and last time.
        Every append to the stream, on any node, waits here for the previous one."""
        q = self._sql
        cursor = await conn.execute(q.lock_stream, (stream,))
        row = await cursor.fetchone()
        if row is None:
            await conn.execute(q.create_stream, (stream,))
            cursor = await conn.execute(q.lock_stream, (stream,))
            row = await cursor.fetchone()
            assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    async def _locked_state(self, conn: psycopg.AsyncConnection[Any], stream: str,
                            head: int, last_time: int, replace: Replace) -> StreamState:
        """The state under the lock, for placing again (Write.replace)."""
        known: dict[str, tuple[int, int]] = {}
        if replace.ids:
            cursor = await conn.execute(self._sql.find_ids, {"name": stream,
                                                             "ids": list(replace.ids)})
            for event_id, position, last in await cursor.fetchall():
                if (position is not None and last is not None
                        and int(last) + 1 > head - replace.window):
                    known[str(event_id)] = (int(position), int(last) + 1)
        return StreamState(head, last_time, known)

    async def _insert(self, conn: psycopg.AsyncConnection[Any], stream_id: int,
                      write: Write) -> None:
        """Inside the transaction, under the lock: the records, their ids, the head."""
        q = self._sql
        records = write.records
        await conn.execute(q.insert_batches, (
            stream_id, [r.base for r in records], [r.end - 1 for r in records],
            [r.raw for r in records]))
        pairs = [pair for placed in write.written for pair in placed.ids]
        if pairs:
            await conn.execute(q.insert_ids, (stream_id, [i for i, _ in pairs],
                                              [p for _, p in pairs]))
        size = self.limits.dedup_window
        step = max(1, size // PRUNE_FRACTION)
        if write.head // step != write.expected_head // step:
            await conn.execute(q.prune_ids, {"stream": stream_id, "edge": write.head - size})
        await conn.execute(q.move_head, (write.head, sum(len(r.raw) for r in records),
                                         write.last_time, stream_id))

    # reads

    async def read(
        self, stream: str, start: int, max_bytes: int = READ_CHUNK_BYTES
    ) -> list[Record]:
        validate_stream_name(stream)
        rows_wanted = MAX_READ_ROWS
        avg = self._avg_record.get(stream)
        if avg is not None:
            rows_wanted = max(1, min(MAX_READ_ROWS, 2 * max_bytes // avg + 1))

        async def run(conn: psycopg.AsyncConnection[Any]) -> list[tuple[bytes]]:
            async with conn.cursor(binary=True) as cursor:
                await cursor.execute(self._sql.read, (stream, start, rows_wanted, max_bytes))
                return await cursor.fetchall()

        rows = await self._retrying(f"reading stream {stream}", run)
        records: list[Record] = []
        expected = -1
        for (raw,) in rows:
            try:
                record = codec.decode_record_at(raw)
            except CorruptRecord as exc:
                raise CorruptRecord(
                    f"stream {stream}: the batch after position {max(start, expected)} is "
                    f"damaged ({exc.message})", stream=stream, first=max(start, expected)
                ) from exc
            if record is None or (expected >= 0 and record.base != expected):
                raise CorruptRecord(
                    f"stream {stream}: the batch after position {max(start, expected)} is "
                    f"damaged or out of sequence", stream=stream, first=max(start, expected))
            records.append(record)
            expected = record.end
        if records:
            self._avg_record[stream] = (3 * (avg or 4096) + len(records[-1].raw)) // 4 or 1
        return records

    async def head(self, stream: str) -> int:
        validate_stream_name(stream)

        async def run(conn: psycopg.AsyncConnection[Any]) -> int:
            cursor = await conn.execute(self._sql.head, (stream,))
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

        return await self._retrying(f"reading the head of stream {stream}", run)

    async def heads(self, streams: Sequence[str]) -> dict[str, int]:
        names = list(streams)

        async def run(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
            cursor = await conn.execute(self._sql.heads, (names,))
            return {str(n): int(h) for n, h in await cursor.fetchall()}

        heads = await self._retrying("reading stream heads", run)
        return {name: heads.get(name, 0) for name in names}

    # listing

    async def streams(self) -> list[StreamInfo]:
        async def run(conn: psycopg.AsyncConnection[Any]) -> list[StreamInfo]:
            cursor = await conn.execute(self._sql.streams)
            return [StreamInfo(name=str(n), head=int(h), bytes=int(b))
                    for n, h, b in await cursor.fetchall()]

        return await self._retrying("listing streams", run)

    async def stream(self, stream: str) -> StreamInfo | None:
        validate_stream_name(stream)

        async def run(conn: psycopg.AsyncConnection[Any]) -> StreamInfo | None:
            cursor = await conn.execute(self._sql.stream, (stream,))
            row = await cursor.fetchone()
            if row is None or int(row[1]) == 0:
                return None
            return StreamInfo(name=str(row[0]), head=int(row[1]), bytes=int(row[2]))

        return await self._retrying(f"reading stream {stream}", run)

    # checkpoints

    async def get_checkpoint(self, name: str) -> Checkpoint | None:
        validate_checkpoint_name(name)

        async def run(conn: psycopg.AsyncConnection[Any]) -> Checkpoint | None:
            cursor = await conn.execute(self._sql.get_checkpoint, (name,))
            row = await cursor.fetchone()
            return Checkpoint(int(row[0]), int(row[1])) if row else None

        return await self._retrying(f"reading checkpoint {name}", run)

    async def set_checkpoint(self, name: str, value: int,
                             expected_version: int | None = None) -> Checkpoint:
        validate_checkpoint_name(name)
        q = self._sql
        params: tuple[object, ...]
        if expected_version is None:
            statement, params = q.set_checkpoint, (name, value)
        elif expected_version == 0:
            statement, params = q.create_checkpoint, (name, value)
        else:
            statement, params = q.replace_checkpoint, (value, name, expected_version)
        async with self._connection(f"writing checkpoint {name}") as conn:
            cursor = await conn.execute(statement, params)
            row = await cursor.fetchone()
        if row is None:
            raise CheckpointConflict(name, await self.get_checkpoint(name))
        return Checkpoint(value, int(row[0]))


@contextlib.asynccontextmanager
async def _pipeline(conn: psycopg.AsyncConnection[Any],
                    on: bool) -> AsyncIterator[psycopg.AsyncPipeline | None]:
    """``conn.pipeline()`` if ``on``, else nothing (see PIPELINE_MAX_BYTES)."""
    if not on:
        yield None
        return
    async with conn.pipeline() as pipeline:
        yield pipeline
