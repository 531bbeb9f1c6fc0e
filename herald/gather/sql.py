"""SQL sources: an event table or an outbox in SQLite, PostgreSQL or MariaDB/MySQL.

Rows are read by an increasing integer column (``position``) in pages::

    SELECT position, type, data, id, meta FROM table
    WHERE position > :after ORDER BY position LIMIT :limit

— or through a custom ``query`` wrapped the same way. Tailing by an auto-increment
column is a trap: transactions take ids in one order and commit in another, so a
reader that has seen id 7 may later find an id 6 committed after it. ``GapFence``
is how Herald reads only rows that can no longer be preceded by a late commit;
docs/architecture.md ("Gathering") gives the argument. In short:

* a row is safe when every position between the last gathered one and it is
  present (the positions are dense: nothing can come in between);
* past a gap, rows wait until every transaction that could still fill it has
  ended: those running when the gap was seen (PostgreSQL: the transactions holding
  a write lock on the table or its sequences, from ``pg_locks``; MariaDB: every
  InnoDB transaction, from ``information_schema.innodb_trx``). Then the positions up
  to the gap's fence are final, and a fresh read gathers what did commit;
* SQLite has one writer at a time: ids commit in the order they are taken.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

import msgspec

from ..config import GatherConfig, SettingError
from ..errors import SourceError, SourceUnavailable
from ..model import MAX_META_KEY_LENGTH, NewEvent
from .base import Source, SourceRead, Unmappable

if TYPE_CHECKING:
    import psycopg
    import pymysql

__all__ = [
    "GapFence",
    "Tail",
    "SqlSettings",
    "SqliteSettings",
    "PostgresSettings",
    "MysqlSettings",
    "SqliteSource",
    "PostgresSource",
    "MysqlSource",
    "START",
    "CONNECT_TIMEOUT_SECONDS",
]

# The position before every position: `position > START` reads from the beginning.
# BIGINT's minimum, so that every database compares it as an integer.
START = -(2**63)
# How long to wait for a source to accept a connection before calling it down.
CONNECT_TIMEOUT_SECONDS = 5.0
# A gatherer's queries are small indexed reads; one that runs this long is stuck
# (a lock, a dead network), and is cut off so the gatherer can retry.
QUERY_TIMEOUT_SECONDS = 60
# MariaDB/MySQL serve information_schema.innodb_trx from a cache that is refreshed
# only when it has not been read for 0.1 s (trx0i_s.cc: CACHE_MIN_IDLE_TIME_NS, and
# trx_i_s_cache_end_read updates last_read on *every* read). Reading it more often
# freezes it; so the fence reads it at most this often.
INNODB_TRX_SPACING_SECONDS = 0.15

_raw = msgspec.json.Decoder(msgspec.Raw)
_meta = msgspec.json.Decoder(dict[str, str])
_NULL = msgspec.Raw(b"null")
_encoder = msgspec.json.Encoder()


# --- settings: a SQL source's keys in its [[gather]] table ------------------------------

# A table name, optionally schema-qualified. Checked, then quoted by each driver: the
# config is trusted, but a typo should be an error, not SQL.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?")
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
# Herald's fields, which ``columns`` maps to source columns.
GATHER_FIELDS = ("id", "type", "data", "meta")


@dataclass(frozen=True)
class SqlSettings:
    """A SQL source reads ``table`` — or a custom ``query`` with ``%(after)s`` and
    ``%(limit)s`` — ordered by the increasing integer column ``position``; ``columns``
    maps Herald's fields (``id``, ``type``, ``data``, ``meta``) to source columns."""

    kind: ClassVar[str] = "sql"
    misplaced_keys: ClassVar[Mapping[str, str]] = {
        "notify": "only a postgres source can LISTEN"}

    # repr=False: a DSN may hold a password. Required; None only so that its absence
    # is a clear error, not a missing argument.
    dsn: str | None = field(default=None, repr=False)
    table: str | None = None
    query: str | None = None
    position: str = "id"
    columns: dict[str, str] = field(default_factory=lambda: {"type": "type", "data": "data"})

    def __post_init__(self) -> None:
        if not self.dsn:
            raise SettingError("dsn", f"required for a {self.kind} source")
        if self.table is None and self.query is None:
            raise SettingError(None, "give a table or a query")
        if self.table is not None and not _TABLE_NAME.fullmatch(self.table):
            raise SettingError("table", f"{self.table!r} is not a table name")
        if self.query is not None and not ("%(after)s" in self.query
                                           and "%(limit)s" in self.query):
            raise SettingError("query", "must use %(after)s and %(limit)s (rows with "
                               "position > after, ordered by position, at most limit)")
        unknown = set(self.columns) - set(GATHER_FIELDS)
        if unknown:
            raise SettingError("columns", f"unknown field {sorted(unknown)[0]!r} "
                               f"(known: {', '.join(GATHER_FIELDS)})")
        for name in ("type", "data"):
            if name not in self.columns:
                raise SettingError("columns", f"{name} is required")
        for column in (self.position, *self.columns.values()):
            if not _COLUMN_NAME.fullmatch(column):
                raise SettingError("columns", f"{column!r} is not a column name")

    @property
    def conninfo(self) -> str:
        assert self.dsn is not None  # checked above
        return self.dsn


@dataclass(frozen=True)
class SqliteSettings(SqlSettings):
    """``dsn`` is a file path (or ``sqlite:///path``), relative to the config file."""

    kind: ClassVar[str] = "sqlite"

    def path(self, base: Path | None) -> str:
        """The database file: a relative path is relative to ``base`` (the config
        file's directory) when there is one, else to the working directory."""
        path = self.conninfo.removeprefix("sqlite:///").removeprefix("sqlite://")
        if base is not None and not Path(path).is_absolute():
            return str(base / path)
        return path


@dataclass(frozen=True)
class PostgresSettings(SqlSettings):
    kind: ClassVar[str] = "postgres"

    # A channel to LISTEN on for a low-latency wake-up (a trigger on the table NOTIFYs
    # it; see docs/gathering.md). Without it the gatherer polls.
    notify: str | None = None


@dataclass(frozen=True)
class MysqlSettings(SqlSettings):
    kind: ClassVar[str] = "mysql"

    def __post_init__(self) -> None:
        super().__post_init__()
        if urlsplit(self.conninfo).scheme not in ("mysql", "mariadb"):
            raise SettingError("dsn", "a mysql dsn looks like "
                               "mysql://user:password@host:3306/database")



# --- the gap fence ----------------------------------------------------------------------


@dataclass
class GapFence:
    """Rows past a gap, held until the gap is settled.

    ``bound`` is the highest position of the read that found the gap; ``holders``
    the transactions that were running after that read (None while not yet known).
    Once none of them is running, every position ≤ ``bound`` is final: the next read
    (a new snapshot) gathers whatever committed, and the gaps left are permanent.
    """

    bound: int
    holders: frozenset[Hashable] | None = None
    resolved: bool = False


class Guard:
    """How a database tells which transactions could still fill a gap."""

    def open(self, fence: GapFence) -> None:
        """Called right after the read that found the gap: find its holders."""
        raise NotImplementedError

    def check(self, fence: GapFence) -> None:
        """Called before a read: drop holders that ended; resolve when none is left."""
        raise NotImplementedError

    def drop(self) -> None:
        """The fence is no longer needed: release what finding its holders holds."""


class Tail:
    """Reads a source in position order, safely when commits are out of order.

    ``guard`` is None for sources whose commits are in position order (SQLite: one
    writer at a time).
    """

    def __init__(self, guard: Guard | None) -> None:
        self.guard = guard
        self.fence: GapFence | None = None

    def read(self, select: Callable[[int | None, int], Sequence[Any]],
             position: Callable[[Any], int], after: int | None, limit: int) -> SourceRead:
        for _ in range(2):  # a second time at once if the gap settled immediately
            result, again = self._read_once(select, position, after, limit)
            if not again:
                break
        return result

    def _read_once(self, select: Callable[[int | None, int], Sequence[Any]],
                   position: Callable[[Any], int], after: int | None,
                   limit: int) -> tuple[SourceRead, bool]:
        guard = self.guard
        fence = self.fence
        if guard is not None and fence is not None and not fence.resolved:
            guard.check(fence)  # strictly before the snapshot of the select below
        bound = fence.bound if fence is not None and fence.resolved else None
        rows = select(after, limit)
        full = len(rows) >= limit
        if guard is None:
            return SourceRead(rows, full=full), False
        safe = 0
        previous = after
        for row in rows:
            at = position(row)
            if (previous is not None and at == previous + 1) or (bound is not None and at <= bound):
                previous = at
                safe += 1
            else:
                break
        if fence is not None and fence.resolved and bound is not None and not (
                safe == len(rows) and full and position(rows[-1]) < bound):
            self.fence = fence = None  # settled and passed: its work is done
        elif fence is not None and not fence.resolved and previous is not None and (
                previous >= fence.bound):
            self.fence = fence = None  # the gap filled in by itself: a dense run passed it
            guard.drop()
        held = safe < len(rows)
        again = False
        if held and self.fence is None:
            self.fence = GapFence(bound=position(rows[-1]))
            guard.open(self.fence)  # strictly after the select's snapshot
            again = self.fence.resolved and safe == 0
        return SourceRead(rows[:safe], full=full and not held, held=held), again


# --- mapping rows -----------------------------------------------------------------------


def row_event(row: Sequence[Any], meta: dict[str, str]) -> NewEvent:
    """(position, type, data, id, meta) → an event, or Unmappable saying why."""
    _, type_, data, event_id, row_meta = row
    if type(type_) is not str:
        if isinstance(type_, bytes):
            type_ = type_.decode("utf-8", "replace")
        if not isinstance(type_, str):
            raise Unmappable("it has no type (the type column is empty)")
    if type(data) is str or isinstance(data, (bytes, bytearray, memoryview)):
        try:
            raw = _raw.decode(data)
        except msgspec.DecodeError as exc:
            raise Unmappable(f"its data is not JSON ({exc})") from None
    elif data is None:
        raw = _NULL
    else:  # a driver that decodes JSON itself
        raw = msgspec.Raw(_encoder.encode(data))
    if row_meta is not None:
        try:
            extra = _meta.decode(row_meta) if not isinstance(row_meta, dict) else row_meta
        except msgspec.DecodeError as exc:
            raise Unmappable(f"its meta is not a JSON object of strings ({exc})") from None
        for key, value in extra.items():
            if not (isinstance(key, str) and isinstance(value, str)
                    and 0 < len(key) <= MAX_META_KEY_LENGTH):
                raise Unmappable("its meta is not a JSON object of strings "
                                 f"(keys of 1 to {MAX_META_KEY_LENGTH} characters)")
        meta = {**extra, **meta}  # Herald's source and source_position win
    if event_id is None:
        return NewEvent(type=type_, data=raw, meta=meta)
    return NewEvent(type=type_, data=raw, id=str(event_id), meta=meta)


def _first(row: Sequence[Any]) -> int:
    position = row[0]
    if type(position) is not int:
        raise SourceError(f"the position column holds {position!r}, not an integer",
                          code="bad_position")
    return position


# --- the common part of the three SQL sources ----------------------------------------------


class SqlSource(Source):
    """A table (or a query) in a SQL database. Subclasses connect and quote."""

    settings: ClassVar[type[SqlSettings]] = SqlSettings
    options: SqlSettings

    def __init__(self, config: GatherConfig, options: SqlSettings) -> None:
        super().__init__(config, options)
        self.tail = Tail(None)

    # The row functions themselves, not methods calling them: they run once per row.
    position = staticmethod(_first)  # type: ignore[assignment]
    event = staticmethod(row_event)  # type: ignore[assignment]

    def read(self, after: int | None, limit: int) -> SourceRead:
        return self.tail.read(self._select, _first, after, limit)

    def _select(self, after: int | None, limit: int) -> Sequence[Any]:
        return self._fetch(self._select_sql, {"after": START if after is None else after,
                                              "limit": limit})

    def bounds(self) -> tuple[int, int] | None:
        if self._bounds_sql is None:
            return None
        rows = self._fetch(self._bounds_sql, {})
        if not rows or rows[0][0] is None:
            return None
        return int(rows[0][0]), int(rows[0][1])

    # what subclasses provide

    _select_sql: Any
    _bounds_sql: Any = None

    def _fetch(self, query: Any, params: dict[str, Any]) -> Sequence[Any]:
        raise NotImplementedError

    def _build(self, quote: Callable[[str], str], param: Callable[[str], str],
               fields: Sequence[str | None] | None = None) -> None:
        """Build the select (and bounds) statements with a dialect's quoting.

        A row is (position, *fields); by default the fields are the configured
        columns for type, data, id and meta, NULL where one is not configured.
        """
        c = self.options
        if fields is None:
            fields = [c.columns.get(f) for f in ("type", "data", "id", "meta")]
        columns = [quote(c.position)] + [quote(f) if f else "NULL" for f in fields]
        select = ", ".join(columns)
        position = quote(c.position)
        if c.query is not None:
            query = c.query.replace("%(after)s", param("after")).replace(
                "%(limit)s", param("limit"))
            self._select_sql = (f"SELECT {select} FROM ({query}) AS herald_rows "
                                f"ORDER BY {position}")
        else:
            assert c.table is not None
            self._select_sql = (f"SELECT {select} FROM {_qualified(c.table, quote)} "
                                f"WHERE {position} > {param('after')} ORDER BY {position} "
                                f"LIMIT {param('limit')}")
        if c.table is not None:
            self._bounds_sql = (f"SELECT min({position}), max({position}) "
                                f"FROM {_qualified(c.table, quote)}")


def _qualified(table: str, quote: Callable[[str], str]) -> str:
    return ".".join(quote(part) for part in table.split("."))


def _double_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- SQLite -----------------------------------------------------------------------------


class SqliteSource(SqlSource):
    """SQLite allows one writer at a time: a transaction takes its ids and commits
    before the next writer can take any, so ids become visible in order and every
    row read is safe (Tail without a guard). One caveat, documented: without
    AUTOINCREMENT, SQLite reuses the largest rowid after it is deleted."""

    kind = "sqlite"
    settings = SqliteSettings
    options: SqliteSettings

    def __init__(self, config: GatherConfig, options: SqliteSettings,
                 fields: Sequence[str | None] | None = None) -> None:
        super().__init__(config, options)
        self.path = options.path(config.base)
        self._conn: sqlite3.Connection | None = None
        # SQLite takes :name parameters; a query is written with %(name)s (and %% for a
        # literal %) like the others, and translated here.
        self._build(_double_quote, lambda name: f":{name}", fields)
        if options.query is not None:
            self._select_sql = self._select_sql.replace("%%", "%")

    def open(self) -> None:
        if self._conn is not None:
            return
        try:
            # Read-only, and in autocommit mode: each SELECT is its own read transaction
            # and sees every commit before it (a long-lived one would pin a snapshot).
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                         timeout=CONNECT_TIMEOUT_SECONDS,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise SourceUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _fetch(self, query: Any, params: dict[str, Any]) -> Sequence[Any]:
        if self._conn is None:
            raise SourceUnavailable(f"SQLite database {self.path} is not open")
        try:
            return self._conn.execute(query, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise SourceUnavailable(f"SQLite {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise SourceError(f"SQLite {self.path}: {exc}") from exc

    def describe(self) -> str:
        return f"sqlite {self.path} " + (f"table {self.options.table}" if self.options.table
                                         else "query")


# --- PostgreSQL -------------------------------------------------------------------------


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


# --- MariaDB / MySQL --------------------------------------------------------------------


class InnodbTransactions(Guard):
    """MariaDB/MySQL: an auto-increment id is taken inside the inserting transaction,
    which is an InnoDB transaction from its first statement (before the id is taken)
    to its end. ``information_schema.innodb_trx`` lists them — but from a cache (see
    INNODB_TRX_SPACING_SECONDS). A cache that lists a transaction Herald itself began
    after the read (the *marker*, on a fresh connection, so with a fresh thread id) was
    filled after that read: its transactions are the holders. Any later cache that no
    longer lists a holder proves it ended. innodb_trx does not say which tables a
    transaction writes, so every transaction counts; identity is (thread, start time),
    which survives a transaction's promotion from read-only to read-write.
    """

    def __init__(self, source: MysqlSource) -> None:
        self.source = source
        self.marker: pymysql.connections.Connection[Any] | None = None
        self.marker_id: int | None = None
        self.last_read = 0.0

    def open(self, fence: GapFence) -> None:
        self._drop_marker()
        self.marker = self.source._connect()
        self.marker_id = self.marker.thread_id()  # type: ignore[no-untyped-call]
        self.source._execute(self.marker, "START TRANSACTION WITH CONSISTENT SNAPSHOT", {})
        self.check(fence)

    def check(self, fence: GapFence) -> None:
        wait = INNODB_TRX_SPACING_SECONDS - (time.monotonic() - self.last_read)
        if wait > 0:
            return  # reading now would only freeze the cache; the gatherer comes back
        rows = self.source._fetch(
            "SELECT trx_mysql_thread_id, trx_started FROM information_schema.innodb_trx", {})
        self.last_read = time.monotonic()
        current = frozenset((row[0], row[1]) for row in rows)
        if fence.holders is None:
            if self.marker_id is None:
                self.open(fence)
                return
            if not any(thread == self.marker_id for thread, _ in current):
                return  # a cache older than the read: wait for a fresh one
            own = (self.marker_id, self.source.thread_id)
            fence.holders = frozenset(t for t in current if t[0] not in own)
            self._drop_marker()
        else:
            fence.holders = fence.holders & current
        fence.resolved = not fence.holders

    def drop(self) -> None:
        self._drop_marker()

    def _drop_marker(self) -> None:
        marker, self.marker, self.marker_id = self.marker, None, None
        if marker is not None:
            try:
                marker.close()
            except Exception:  # closing a broken connection may fail: it is gone anyway
                pass


def _mysql_quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MysqlSource(SqlSource):
    kind = "mysql"
    settings = MysqlSettings
    options: MysqlSettings

    def __init__(self, config: GatherConfig, options: MysqlSettings) -> None:
        super().__init__(config, options)
        url = urlsplit(options.conninfo)  # a mysql:// URL: checked by MysqlSettings
        self._params: dict[str, Any] = {
            "host": url.hostname or "127.0.0.1", "port": url.port or 3306,
            "user": unquote(url.username or "root"), "password": unquote(url.password or ""),
            "database": url.path.lstrip("/") or None}
        self._conn: pymysql.connections.Connection[Any] | None = None
        self.thread_id: int | None = None
        self._build(_mysql_quote, lambda name: f"%({name})s")
        self.guard = InnodbTransactions(self)
        self.tail = Tail(self.guard)

    def _connect(self) -> pymysql.connections.Connection[Any]:
        import pymysql

        try:
            # autocommit: every SELECT is its own transaction with a fresh read view
            # (under REPEATABLE READ a long one would never see new rows).
            return pymysql.connect(**self._params, autocommit=True, charset="utf8mb4",
                                   connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                   read_timeout=QUERY_TIMEOUT_SECONDS,
                                   write_timeout=QUERY_TIMEOUT_SECONDS)
        except pymysql.MySQLError as exc:
            raise SourceUnavailable(f"cannot connect to {self.describe()}: {exc}") from exc

    def open(self) -> None:
        if self._conn is not None and self._conn.open:
            return
        self._conn = self._connect()
        self.thread_id = self._conn.thread_id()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.guard._drop_marker()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing more to release
                pass

    def _fetch(self, query: Any, params: dict[str, Any]) -> Sequence[Any]:
        if self._conn is None:
            raise SourceUnavailable(f"{self.describe()} is not connected")
        return self._execute(self._conn, query, params)

    def _execute(self, conn: Any, query: str, params: dict[str, Any]) -> Sequence[Any]:
        import pymysql

        try:
            with conn.cursor() as cursor:
                cursor.execute(query, params or None)
                rows: Sequence[Any] = cursor.fetchall()
                return rows
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in (1227, 1142):  # access denied
                raise SourceError(f"{self.describe()}: {exc.args[1]} (the gatherer's user "
                                  "needs SELECT on the table and the PROCESS privilege, to "
                                  "read information_schema.innodb_trx)") from exc
            raise SourceUnavailable(f"{self.describe()}: {exc}") from exc
        except pymysql.MySQLError as exc:
            raise SourceError(f"{self.describe()}: {exc}") from exc

    def describe(self) -> str:
        p = self._params
        what = f"table {self.options.table}" if self.options.query is None else "query"
        return f"mysql {p['host']}:{p['port']}/{p['database'] or ''} {what}"
