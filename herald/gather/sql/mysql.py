"""MariaDB/MySQL sources: the gap fence asks ``information_schema.innodb_trx``
(``InnodbTransactions``). The driver, PyMySQL, is imported only when it is used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

from ...config import GatherConfig, SettingError
from ...errors import SourceError, SourceUnavailable
from .fence import GapFence, Guard, Tail
from .source import CONNECT_TIMEOUT_SECONDS, QUERY_TIMEOUT_SECONDS, SqlSettings, SqlSource

if TYPE_CHECKING:
    import pymysql

__all__ = ["MysqlSettings", "MysqlSource", "InnodbTransactions"]

# MariaDB/MySQL serve information_schema.innodb_trx from a cache that is refreshed
# only when it has not been read for 0.1 s (trx0i_s.cc: CACHE_MIN_IDLE_TIME_NS, and
# trx_i_s_cache_end_read updates last_read on *every* read). Reading it more often
# freezes it; so the fence reads it at most this often.
INNODB_TRX_SPACING_SECONDS = 0.15


@dataclass(frozen=True)
class MysqlSettings(SqlSettings):
    kind: ClassVar[str] = "mysql"

    def __post_init__(self) -> None:
        super().__post_init__()
        if urlsplit(self.conninfo).scheme not in ("mysql", "mariadb"):
            raise SettingError("dsn", "a mysql dsn looks like "
                               "mysql://user:password@host:3306/database")


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
