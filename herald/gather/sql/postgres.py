"""PostgreSQL sources: the gap fence asks ``pg_locks`` (``PgLocks``); ``notify``
LISTENs for a wake-up. The driver, psycopg, is imported only when it is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ...config import GatherConfig
from ...errors import SourceError, SourceUnavailable
from .fence import GapFence, Guard, Tail
from .source import (
    CONNECT_TIMEOUT_SECONDS,
    QUERY_TIMEOUT_SECONDS,
    SqlSettings,
    SqlSource,
    _double_quote,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresSettings", "PostgresSource", "PgLocks", "pg_describe", "pg_error"]


@dataclass(frozen=True)
class PostgresSettings(SqlSettings):
    kind: ClassVar[str] = "postgres"

    # A channel to LISTEN on for a low-latency wake-up (a trigger on the table NOTIFYs
    # it; see docs/gathering.md). Without it the gatherer polls.
    notify: str | None = None


class PgLocks(Guard):
    """PostgreSQL: the transactions that may still fill a gap are those that hold a
    write lock on the table or on a sequence it takes ids from.

    An INSERT locks its table (RowExclusiveLock, taken when the statement is parsed)
    before it evaluates the column default that calls nextval(); nextval() locks its
    sequence; both locks are held until the transaction ends. So a transaction that
    holds an id it has not committed yet holds one of these locks — whether or not it
    has been given a transaction id yet, which is why xid horizons alone do not do.
    ``pg_locks`` shows them live (fast-path locks included) to every user. Without a
    table (a custom query), every running transaction counts.
    """

    def __init__(self, fetch: Callable[[Any, dict[str, Any]], Sequence[Any]],
                 relations: Callable[[], list[int] | None]) -> None:
        self._fetch = fetch
        self._relations = relations

    def open(self, fence: GapFence) -> None:
        relations = self._relations()
        if relations is None:
            rows = self._fetch(
                "SELECT DISTINCT virtualtransaction FROM pg_locks "
                "WHERE pid IS DISTINCT FROM pg_backend_pid()", {})
        else:
            rows = self._fetch(
                "SELECT DISTINCT virtualtransaction FROM pg_locks "
                "WHERE relation = ANY(%(relations)s) AND mode <> 'AccessShareLock' "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND pid IS DISTINCT FROM pg_backend_pid()", {"relations": relations})
        fence.holders = frozenset(row[0] for row in rows)
        fence.resolved = not fence.holders

    def check(self, fence: GapFence) -> None:
        if fence.holders is None:
            self.open(fence)
            return
        rows = self._fetch(
            "SELECT DISTINCT virtualtransaction FROM pg_locks "
            "WHERE virtualtransaction = ANY(%(holders)s)", {"holders": list(fence.holders)})
        fence.holders = frozenset(row[0] for row in rows)
        fence.resolved = not fence.holders


def pg_describe(conninfo: str) -> str:
    """host:port/dbname of a conninfo or URL; never the password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(conninfo)
    except Exception:  # a malformed DSN fails at connect time, with its own message
        return "postgres (unparsable dsn)"
    host = params.get("host") or "localhost"
    return f"postgres {host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


def pg_error(exc: Exception, where: str) -> SourceError:
    import psycopg

    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return SourceUnavailable(f"{where}: {str(exc).strip()}")
    return SourceError(f"{where}: {str(exc).strip()}")


class PostgresSource(SqlSource):
    kind = "postgres"
    settings = PostgresSettings
    options: PostgresSettings

    def __init__(self, config: GatherConfig, options: PostgresSettings,
                 fields: Sequence[str | None] | None = None,
                 conninfo: Callable[[], str] | None = None) -> None:
        super().__init__(config, options)
        self._conninfo = conninfo or (lambda: options.conninfo)
        self._conn: psycopg.Connection[Any] | None = None
        self._relations: list[int] | None = None
        self.wakes = options.notify is not None
        self._build(_double_quote, lambda name: f"%({name})s", fields)
        self.tail = Tail(PgLocks(self._fetch, lambda: self._relations))

    def open(self) -> None:
        if self._conn is not None and not self._conn.closed:
            return
        import psycopg
        from psycopg.types.string import TextLoader

        try:
            conn = psycopg.connect(self._conninfo(), autocommit=True,
                                   connect_timeout=int(CONNECT_TIMEOUT_SECONDS))
        except psycopg.Error as exc:
            raise pg_error(exc, f"cannot connect to {self.describe()}") from exc
        # json and jsonb arrive as text: Herald validates and stores the JSON as it is,
        # without building Python objects from it.
        conn.adapters.register_loader("json", TextLoader)
        conn.adapters.register_loader("jsonb", TextLoader)
        self._conn = conn
        try:
            conn.execute(f"SET statement_timeout = '{QUERY_TIMEOUT_SECONDS}s'")
            if self.options.notify:
                from psycopg import sql

                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.options.notify)))
            self._relations = self._find_relations() if self.options.table else None
        except psycopg.Error as exc:
            self.close()
            raise pg_error(exc, self.describe()) from exc

    def _find_relations(self) -> list[int]:
        """The table and the sequences its ids come from (owned, identity, defaults)."""
        rows = self._fetch(
            "SELECT %(table)s::regclass::oid "
            "UNION SELECT d.objid FROM pg_depend d JOIN pg_class c ON c.oid = d.objid "
            "  WHERE d.classid = 'pg_class'::regclass AND d.refobjid = %(table)s::regclass "
            "  AND c.relkind = 'S' "
            "UNION SELECT d.refobjid FROM pg_attrdef a JOIN pg_depend d "
            "  ON d.classid = 'pg_attrdef'::regclass AND d.objid = a.oid "
            "  JOIN pg_class c ON c.oid = d.refobjid AND c.relkind = 'S' "
            "  WHERE a.adrelid = %(table)s::regclass", {"table": self.options.table})
        return [int(row[0]) for row in rows]

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _fetch(self, query: Any, params: dict[str, Any]) -> Sequence[Any]:
        import psycopg

        if self._conn is None:
            raise SourceUnavailable(f"{self.describe()} is not connected")
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall()
        except psycopg.Error as exc:
            raise pg_error(exc, self.describe()) from exc

    def wait(self, timeout: float) -> bool:
        import psycopg

        if self._conn is None:
            time.sleep(timeout)
            return False
        try:
            woken = False
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                woken = True
            if woken:  # drain what else has arrived: one read will cover it all
                for _ in self._conn.notifies(timeout=0):
                    pass
            return woken
        except psycopg.Error as exc:
            raise pg_error(exc, self.describe()) from exc

    def describe(self) -> str:
        what = f"table {self.options.table}" if self.options.query is None else "query"
        return f"{pg_describe(self.options.conninfo)} {what}"
