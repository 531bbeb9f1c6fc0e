"""The postgres engine's connections: the pool, the settings of every session, and
what a driver's failure becomes (``StorageUnavailable``: a 503 that sends the client
to another node, or ``ServerError``).

A read runs again on a fresh connection when a pooled one turned out dead
(``_retrying``): after PostgreSQL restarted or failed over, every pooled connection
is stale at once. An append does the same only when its COMMIT was not sent yet
(``PostgresEngine.write``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ...errors import ServerError, StorageUnavailable
from ...logsafe import logsafe

if TYPE_CHECKING:
    from . import PostgresConfig

log = logging.getLogger("herald.postgres")

T = TypeVar("T")

# These are read from this module when used: set them here (tests do), not on the
# package, which does not re-export them.

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
# Where a DSN names no application: visible in pg_stat_activity.
APPLICATION_NAME = "herald"


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


class _Connections:
    """The pooled connections of a PostgresEngine (one of its base classes)."""

    config: PostgresConfig
    _pool: psycopg_pool.AsyncConnectionPool[Any] | None
    # True once close() began: nothing is retried or reconnected any more.
    _closing: bool

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

    async def _open_pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        """An open pool with a connection in it, or StorageUnavailable saying why not."""
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
        return pool

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
                log.warning("checking pooled connections failed: %s", logsafe(_first_line(exc)))
