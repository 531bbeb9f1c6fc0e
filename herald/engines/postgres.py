"""The ``postgres`` engine: several stateless Herald nodes over one PostgreSQL.

Everything a node knows that matters lives in the database: streams, their
batches, the dedup window and checkpoints. A node can die at any moment; another
node, or a restarted one, carries on from the database alone. Storage HA is
PostgreSQL's own (a streaming replica, a managed service): Herald adds no
replication protocol of its own.

Tables (in the configured schema, ``herald`` by default; see ``MIGRATIONS``)::

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
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .. import codec
from ..codec import Record
from ..errors import ConfigError, CorruptRecord, HeraldError, ServerError, StorageUnavailable
from ..model import Limits, StreamInfo, validate_stream_name
from ..placement import StreamState
from .base import (
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

try:
    import psycopg
    import psycopg_pool
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
except ImportError as _exc:  # pragma: no cover - depends on the installation
    raise ConfigError(
        "[storage] engine = \"postgres\" needs psycopg: pip install 'herald[postgres]'"
    ) from _exc

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["PostgresConfig", "PostgresEngine", "MIGRATIONS", "SCHEMA_VERSION", "Migration"]

log = logging.getLogger("herald.postgres")

T = TypeVar("T")

# How long a request waits for a pooled connection before it is answered 503
# (StorageUnavailable). Short, so that a client fails over to another node while a
# human would still call the request "slow", not "hung".
CONNECT_TIMEOUT_SECONDS = 5.0
# How long open() waits for the database at start. A node that starts before its
# database (a restart of the whole system) waits this long, then exits with a
# clear message and is restarted by its supervisor.
OPEN_TIMEOUT_SECONDS = 30.0
# An append waits at most this long for its stream's row lock. The lock is held
# for milliseconds; a wait this long means the holder is stuck, and a 503 that
# sends the client elsewhere beats a request that hangs.
LOCK_TIMEOUT_MS = 10_000
# PostgreSQL ends a session that sits idle inside a transaction this long, and
# with it the stream locks it holds. Herald's transactions never idle: this only
# fires when a node froze or vanished mid-append (a partitioned node holds no lock
# for longer than this).
IDLE_IN_TRANSACTION_TIMEOUT_MS = 30_000
# libpq parameters, unless the DSN sets its own. TCP keepalives: a dead database
# host is noticed in ~25 s even on an idle LISTEN connection. connect_timeout: a
# host that does not answer fails a connection attempt in 5 s, not the OS's minutes.
CONNECTION_DEFAULTS = {"keepalives": "1", "keepalives_idle": "10",
                      "keepalives_interval": "5", "keepalives_count": "3",
                      "connect_timeout": "5"}
# The pool backs off between attempts to reconnect (1, 2, 4… s) until this much
# time has passed, then gives up until the next request starts over. Kept short so
# that after a database failover a node reconnects seconds after the new primary
# is up, not after a minute-long backoff.
RECONNECT_TIMEOUT_SECONDS = 10.0
# NOTIFY payloads are limited to 8000 bytes; heads of several streams share one
# payload ("head stream" lines) up to this size.
NOTIFY_PAYLOAD_BYTES = 7000
# The LISTEN connection reconnects after a failure, backing off to this.
LISTEN_RECONNECT_MAX_SECONDS = 5.0
# Rows one read selects at most. With tiny batches a read of READ_CHUNK_BYTES
# could otherwise visit thousands of rows; the caller simply reads again.
MAX_READ_ROWS = 1000
# The dedup window's rows that fell out of the window are deleted when the head
# crosses a multiple of dedup_window / PRUNE_FRACTION: at most that many extra
# rows per stream, and the delete's cost amortised over as many events.
PRUNE_FRACTION = 4
# Where a DSN names no application: visible in pg_stat_activity.
APPLICATION_NAME = "herald"

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


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
    pool_size: int = 10

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
        if self.pool_size < 1:
            raise ConfigError("[storage.postgres] pool_size: must be at least 1")
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


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# SQLSTATEs that end a session: the server is shutting down or restarting
# (57P01 admin_shutdown, as pg_terminate_backend gives, 57P02 crash_shutdown,
# 57P03 cannot_connect_now), and class 08, connection exceptions.
_SESSION_ENDED = ("57P01", "57P02", "57P03")


def _stale_connection(exc: StorageUnavailable) -> bool:
    """Did a pooled connection turn out to be dead (rather than no connection being
    available at all, or the server refusing the work, e.g. lock_timeout)? Then a
    fresh connection may well work."""
    cause = exc.__cause__
    if not isinstance(cause, psycopg.OperationalError) or isinstance(
            cause, psycopg_pool.PoolTimeout):
        return False
    state = cause.sqlstate
    return state is None or state.startswith("08") or state in _SESSION_ENDED


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparseable DSN)"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{params.get('user') or '?'}@{host}:{port}/{params.get('dbname') or '?'}"


# --- migrations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]  # "{s}" stands for the quoted schema name


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "streams, batches, dedup window, checkpoints", (
        # COLLATE "C": names sort by code point, as Python sorts them, whatever the
        # database's locale; and the unique index compares bytes.
        """CREATE TABLE {s}.streams (
               id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               name      text COLLATE "C" NOT NULL UNIQUE,
               head      bigint NOT NULL DEFAULT 0,
               bytes     bigint NOT NULL DEFAULT 0,
               last_time bigint NOT NULL DEFAULT 0
           )""",
        # One row per batch; "last" is the position of its last event, so "the
        # batches holding positions >= start" is an index range: last >= start.
        """CREATE TABLE {s}.batches (
               stream_id bigint NOT NULL,
               last      bigint NOT NULL,
               base      bigint NOT NULL,
               record    bytea NOT NULL,
               PRIMARY KEY (stream_id, last)
           )""",
        # Records are JSON and compress well. lz4 compresses fast enough that fewer
        # TOAST chunks and less WAL make appends faster, not slower, and reads no
        # slower (measured against uncompressed and pglz: BENCH.md, "table design").
        # A server built without lz4 (or older than PostgreSQL 14) keeps its default.
        """DO $$ BEGIN
               EXECUTE 'ALTER TABLE {s}.batches ALTER COLUMN record SET COMPRESSION lz4';
           EXCEPTION WHEN feature_not_supported OR syntax_error THEN
               RAISE NOTICE 'lz4 compression not available; records use the default';
           END $$""",
        """CREATE TABLE {s}.event_ids (
               stream_id bigint NOT NULL,
               id        text COLLATE "C" NOT NULL,
               position  bigint NOT NULL,
               PRIMARY KEY (stream_id, id)
           )""",
        "CREATE INDEX event_ids_by_position ON {s}.event_ids (stream_id, position)",
        """CREATE TABLE {s}.checkpoints (
               name       text COLLATE "C" PRIMARY KEY,
               value      bigint NOT NULL,
               updated_at timestamptz NOT NULL DEFAULT now()
           )""",
    )),
    # Compare-and-set checkpoints (consumer groups, leases): a version per value.
    Migration(2, "checkpoint versions", (
        "ALTER TABLE {s}.checkpoints ADD COLUMN version bigint NOT NULL DEFAULT 1",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


# --- the engine ------------------------------------------------------------------


class PostgresEngine(SharedEngine):
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

    def _conninfo(self) -> str:
        params = conninfo_to_dict(self.config.conninfo)
        extra = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in params}
        if "application_name" not in params:
            extra["application_name"] = APPLICATION_NAME
        # Server settings for every Herald session, sent with the startup packet
        # (no round trip): see LOCK_TIMEOUT_MS and IDLE_IN_TRANSACTION_TIMEOUT_MS.
        # The DSN's own options come after them, so an operator's values win.
        options = (f"-c lock_timeout={LOCK_TIMEOUT_MS} "
                   f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}")
        extra["options"] = f"{options} {params['options']}" if params.get("options") else options
        return make_conninfo(self.config.conninfo, **extra)

    async def open(self) -> None:
        self._closing = False
        conninfo = self._conninfo()
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            conninfo, min_size=1, max_size=self.config.pool_size, open=False,
            kwargs={"autocommit": True}, configure=self._configure_connection,
            name="herald", timeout=CONNECT_TIMEOUT_SECONDS,
            reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
        )
        try:
            await pool.open(wait=True, timeout=OPEN_TIMEOUT_SECONDS)
        except psycopg_pool.PoolTimeout as exc:
            await pool.close()
            raise StorageUnavailable(
                f"cannot connect to PostgreSQL at {redact(self.config.conninfo)} within "
                f"{OPEN_TIMEOUT_SECONDS:.0f} s: {await self._why_not(conninfo)}") from exc
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

    @staticmethod
    async def _why_not(conninfo: str) -> str:
        """The reason a connection fails (the pool only logs its attempts)."""
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo)
        except psycopg.Error as exc:
            return _first_line(exc)
        await conn.close()
        return "the database answers now; it did not in time"

    @staticmethod
    async def _configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
        # An append is answered after COMMIT: that answer means "durable" only if
        # the commit waited for the WAL flush. "local", "on", "remote_write" and
        # "remote_apply" all do (the latter two also wait for a synchronous
        # standby); "off" does not, so Herald's sessions never run with it.
        cursor = await conn.execute("SHOW synchronous_commit")
        row = await cursor.fetchone()
        if row is not None and row[0] == "off":
            await conn.execute("SET synchronous_commit = on")

    async def _migrate(self) -> None:
        schema = self.config.schema
        quoted = f'"{schema}"'
        async with self._connection("migrating the schema") as conn, conn.transaction():
            # One node migrates at a time; the others wait here, then find nothing
            # left to do. The lock ends with the transaction.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                               (f"herald-migrate:{schema}",))
            # Look first: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on
            # the database even when the schema exists, and a role that merely owns
            # a schema made for it by an administrator lacks it.
            cursor = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                        (schema,))
            if await cursor.fetchone() is None:
                await conn.execute(f"CREATE SCHEMA {quoted}")
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
                        version     integer PRIMARY KEY,
                        description text NOT NULL,
                        applied_at  timestamptz NOT NULL DEFAULT now())""")
            cursor = await conn.execute(
                f"SELECT coalesce(max(version), 0) FROM {quoted}.schema_migrations")
            row = await cursor.fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise StorageUnavailable(
                    f"the database schema {schema} is at version {current}, newer than "
                    f"this Herald knows ({SCHEMA_VERSION}): upgrade Herald on this node")
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                log.info("schema %s: migration %d: %s", schema, migration.version,
                         migration.description)
                for statement in migration.statements:
                    await conn.execute(statement.replace("{s}", quoted))
                await conn.execute(
                    f"INSERT INTO {quoted}.schema_migrations (version, description) "
                    f"VALUES (%s, %s)", (migration.version, migration.description))

    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; driver errors become Herald's errors."""
        pool = self._pool
        if pool is None:
            raise StorageUnavailable("the postgres engine is not open")
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg_pool.PoolTimeout as exc:
            raise StorageUnavailable(
                f"PostgreSQL is unreachable ({what}): no connection within "
                f"{CONNECT_TIMEOUT_SECONDS:.0f} s") from exc
        except psycopg_pool.PoolClosed as exc:
            raise StorageUnavailable("the postgres engine is closing") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # Connection failures, and the server refusing work for now (a lock
            # wait over lock_timeout, a shutdown): another node, or a retry, may do.
            raise StorageUnavailable(
                f"PostgreSQL is unavailable ({what}): {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise ServerError(f"PostgreSQL error ({what}): {_first_line(exc)}",
                              code="storage_error") from exc

    async def _retrying(self, what: str,
                        run: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run a read-only ``run`` on a pooled connection, again on another one if
        it turned out dead (PostgreSQL restarted, failed over: every pooled
        connection is stale at once, and each would fail one request)."""
        for attempt in range(self._stale_attempts()):
            try:
                async with self._connection(what) as conn:
                    return await run(conn)
            except StorageUnavailable as exc:
                if (not _stale_connection(exc) or self._closing
                        or attempt == self._stale_attempts() - 1):
                    raise
                await self._after_stale(attempt)
        raise AssertionError("unreachable")

    def _stale_attempts(self) -> int:
        # Each dead connection fails at once and leaves the pool; after as many
        # attempts as the pool holds, plus one, the failure is not stale connections.
        return self.config.pool_size + 1

    async def _after_stale(self, attempt: int) -> None:
        """A pooled connection was dead: the others likely are too (the database
        restarted or failed over). Test the idle ones at once, so the next attempt
        gets a live one (connections in use fail on their own, once each)."""
        pool = self._pool
        if pool is not None and attempt == 0:
            try:
                await pool.check()
            except psycopg.Error as exc:  # pragma: no cover - check() handles its own
                log.warning("checking pooled connections failed: %s", _first_line(exc))

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

        async def run(conn: psycopg.AsyncConnection[Any]) -> StreamState:
            async with conn.pipeline():
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
        for attempt in range(self._stale_attempts()):
            committing = False
            try:
                async with (self._connection(f"appending to stream {stream}") as conn,
                            conn.pipeline() as pipeline):
                    await conn.execute("BEGIN")
                    stream_id, head, last_time = await self._lock(conn, stream)
                    done = write
                    if head != write.expected_head:
                        if write.replace is None:
                            await conn.execute("ROLLBACK")
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
                            "retrying on another connection", stream, exc.message)
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

    def _published(self, stream: str, head: int) -> None:
        """After COMMIT: the other nodes hear of the new head soon."""
        self._unannounced[stream] = max(head, self._unannounced.get(stream, 0))
        self._announcing.set()

    async def _announce_loop(self) -> None:
        """Tell the other nodes about new heads, off the append path: appends are
        answered without waiting for it, and heads that move while one NOTIFY is
        sent go out together in the next."""
        while not self._closing:
            await self._announcing.wait()
            self._announcing.clear()
            await self._announce()

    async def _announce(self) -> None:
        """Best effort: the appends are committed and answered whatever happens
        here; a lost notification costs a subscriber at most the hub's poll interval"""
        heads, self._unannounced = self._unannounced, {}
        if not heads:
            return
        payloads: list[str] = []
        lines: list[str] = []
        size = 0
        for name, head in heads.items():
            line = f"{head} {name}"
            if lines and size + len(line) + 1 > NOTIFY_PAYLOAD_BYTES:
                payloads.append("\n".join(lines))
                lines, size = [], 0
            lines.append(line)
            size += len(line) + 1
        payloads.append("\n".join(lines))
        try:
            async with self._connection("notifying the other nodes") as conn:
                for payload in payloads:
                    await conn.execute("SELECT pg_notify(%s, %s)", (self.config.channel, payload))
        except HeraldError as exc:
            log.warning("NOTIFY of new heads failed (%s); other nodes will poll", exc.message)

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

    async def _listen_loop(self) -> None:
        """One LISTEN connection per node: notifications move the local heads."""
        delay = 0.1
        while not self._closing:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo(),
                                                             autocommit=True)
                async with conn:
                    await conn.execute(f'LISTEN "{self.config.channel}"')
                    self._listening = True
                    delay = 0.1
                    # Appends committed while this node was not listening were not
                    # heard: every waiter asks the heads now.
                    self._alarm()
                    async for notify in conn.notifies():
                        self._on_notify(notify.payload)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, HeraldError, OSError) as exc:
                if not self._closing:
                    log.warning("LISTEN connection to PostgreSQL lost (%s); reconnecting in "
                                "%.1f s", _first_line(exc), delay)
                    if self._listening:
                        self._alarm()
            finally:
                self._listening = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_RECONNECT_MAX_SECONDS)

    def _on_notify(self, payload: str) -> None:
        if self._listener is None:
            return
        for line in payload.split("\n"):
            head, _, name = line.partition(" ")
            if name and head.isdigit():
                self._listener.advance(name, int(head))

    def _alarm(self) -> None:
        """The database may be out of reach, or notifications were lost: every
        waiter asks it now. If it cannot reach the database, its subscriber's
        connection breaks and the client moves to a node that can serve it."""
        if self._listener is not None:
            self._listener.alarm()

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


class _Statements:
    """Every statement, with the schema spliced in once."""

    def __init__(self, s: str) -> None:
        self.lock_stream = f"SELECT id, head, last_time FROM {s}.streams WHERE name = %s FOR UPDATE"
        self.create_stream = f"INSERT INTO {s}.streams (name) VALUES (%s) ON CONFLICT DO NOTHING"
        # One primary-key probe per id, whatever the planner's statistics say. The
        # plain "id = ANY(%s)" was planned, on a young table, as a scan of the whole
        # stream's window filtered by id: 30–40 ms per 200-id append, and growing.
        # Each wanted id: its position and the last position of the batch holding it.
        stream_id = f"(SELECT id FROM {s}.streams WHERE name = %(name)s)"
        self.find_ids = (
            f"SELECT w.id, e.position, b.last FROM unnest(%(ids)s::text[]) AS w(id)"
            f" LEFT JOIN {s}.event_ids AS e ON e.stream_id = {stream_id} AND e.id = w.id"
            f" LEFT JOIN LATERAL (SELECT last FROM {s}.batches"
            f" WHERE stream_id = e.stream_id AND last >= e.position"
            f" ORDER BY last LIMIT 1) AS b ON true")
        # Every id of the last %(window)s events (the hub keeps the window itself).
        self.window_ids = (
            f"SELECT e.id, e.position, b.last FROM {s}.event_ids AS e"
            f" JOIN {s}.streams AS st ON st.id = e.stream_id AND st.name = %(name)s"
            f" CROSS JOIN LATERAL (SELECT last FROM {s}.batches"
            f" WHERE stream_id = e.stream_id AND last >= e.position"
            f" ORDER BY last LIMIT 1) AS b WHERE b.last + 1 > st.head - %(window)s")
        self.load_stream = f"SELECT head, last_time FROM {s}.streams WHERE name = %s"
        # %b: the records travel in binary. As %s, psycopg would send a list of
        # bytes as a text array, hex-escaped: twice the bytes, and parsing on the
        # server (measured: W1 at half speed).
        self.insert_batches = (
            f"INSERT INTO {s}.batches (stream_id, base, last, record) "
            f"SELECT %b, unnest(%b::bigint[]), unnest(%b::bigint[]), unnest(%b::bytea[])")
        # A row may remain from an id that left the window but was not pruned yet:
        # the new position replaces it.
        self.insert_ids = (
            f"INSERT INTO {s}.event_ids (stream_id, id, position) "
            f"SELECT %s, unnest(%s::text[]), unnest(%s::bigint[]) "
            f"ON CONFLICT (stream_id, id) DO UPDATE SET position = EXCLUDED.position")
        # Ids of batches that ended before the window's edge: those before the first
        # position of the batch that holds the edge (written in this transaction, so
        # the new batches are seen).
        self.prune_ids = (
            f"DELETE FROM {s}.event_ids WHERE stream_id = %(stream)s AND position < ("
            f"SELECT base FROM {s}.batches WHERE stream_id = %(stream)s"
            f" AND last >= %(edge)s ORDER BY last LIMIT 1)")
        self.move_head = (f"UPDATE {s}.streams SET head = %s, bytes = bytes + %s, "
                          f"last_time = %s WHERE id = %s")
        # Whole records from the one holding `start`, in order; at most a number of
        # rows and — the first record always — up to max_bytes (octet_length reads
        # the stored size without fetching the value).
        self.read = (
            f"SELECT record FROM ("
            f" SELECT last, record, octet_length(record) AS size,"
            f"  sum(octet_length(record)) OVER (ORDER BY last) AS upto"
            f" FROM {s}.batches"
            f" WHERE stream_id = (SELECT id FROM {s}.streams WHERE name = %s) AND last >= %s"
            f" ORDER BY last LIMIT %s) AS page"
            f" WHERE upto <= %s OR upto = size ORDER BY last")
        self.head = f"SELECT head FROM {s}.streams WHERE name = %s"
        self.heads = f"SELECT name, head FROM {s}.streams WHERE name = ANY(%s)"
        self.streams = f"SELECT name, head, bytes FROM {s}.streams WHERE head > 0 ORDER BY name"
        self.stream = f"SELECT name, head, bytes FROM {s}.streams WHERE name = %s"
        self.get_checkpoint = f"SELECT value, version FROM {s}.checkpoints WHERE name = %s"
        self.set_checkpoint = (
            f"INSERT INTO {s}.checkpoints (name, value) VALUES (%s, %s) "
            f"ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, "
            f"version = {s}.checkpoints.version + 1, updated_at = now() RETURNING version")
        self.create_checkpoint = (
            f"INSERT INTO {s}.checkpoints (name, value) VALUES (%s, %s) "
            f"ON CONFLICT (name) DO NOTHING RETURNING version")
        self.replace_checkpoint = (
            f"UPDATE {s}.checkpoints SET value = %s, version = version + 1, "
            f"updated_at = now() WHERE name = %s AND version = %s RETURNING version")
