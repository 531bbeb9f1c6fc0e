"""SQLite sources: a database file, read-only."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...config import GatherConfig
from ...errors import SourceError, SourceUnavailable
from .source import CONNECT_TIMEOUT_SECONDS, SqlSettings, SqlSource, _double_quote

__all__ = ["SqliteSettings", "SqliteSource"]


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
