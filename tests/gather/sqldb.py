"""One small helper per SQL dialect: make an event table, insert rows, run SQL.

The same tests run against SQLite, PostgreSQL and MariaDB through it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herald.config import DEFAULT_GATHER_BATCH, GatherConfig

from .conftest import mysql_connect


@dataclass
class SqlDb:
    kind: str
    dsn: str

    def connect(self) -> Any:
        if self.kind == "postgres":
            import psycopg

            return psycopg.connect(self.dsn, autocommit=True)
        if self.kind == "mysql":
            return mysql_connect(self.dsn.rsplit("/", 1)[1])
        return sqlite3.connect(self.dsn, isolation_level=None)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self.kind == "sqlite":
            sql = sql.replace("%s", "?")
        conn = self.connect()
        try:
            cursor = conn.cursor()
            if params:
                cursor.execute(sql, params)
            else:  # no parameters: a % in the SQL is just a %
                cursor.execute(sql)
            try:
                return list(cursor.fetchall())
            except Exception:  # a statement without rows
                return []
        finally:
            conn.close()

    def create_events(self, table: str = "events", data_type: str = "text") -> None:
        """id (auto-increment), type, data, event_id, meta — data as text by default,
        so that tests can store what a JSON column would refuse."""
        if self.kind == "postgres":
            self.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, type text, "
                         f"data {data_type}, event_id text, meta text)")
        elif self.kind == "mysql":
            data = "LONGTEXT" if data_type == "text" else data_type
            self.execute(f"CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                         f"type VARCHAR(300), data {data}, event_id VARCHAR(200), "
                         "meta LONGTEXT)")
        else:
            self.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "type TEXT, data TEXT, event_id TEXT, meta TEXT)")

    def insert(self, rows: Sequence[tuple[Any, ...]], table: str = "events") -> None:
        """(type, data, event_id, meta) rows, in one transaction."""
        conn = self.connect()
        try:
            cursor = conn.cursor()
            sql = f"INSERT INTO {table} (type, data, event_id, meta) VALUES (%s, %s, %s, %s)"
            if self.kind == "sqlite":
                sql = sql.replace("%s", "?")
                cursor.execute("BEGIN")
                cursor.executemany(sql, rows)
                cursor.execute("COMMIT")
            elif self.kind == "postgres":
                with conn.transaction():
                    cursor.executemany(sql, rows)
            else:
                conn.begin()
                cursor.executemany(sql, rows)
                conn.commit()
        finally:
            conn.close()

    def config(self, name: str = "g", stream: str = "s", batch: int = DEFAULT_GATHER_BATCH,
               **options: Any) -> GatherConfig:
        """A gatherer of this database's ``events``; ``options`` are the source's own
        keys, as a [[gather]] table would give them (parsed when the source is made)."""
        values: dict[str, Any] = {
            "dsn": self.dsn, "table": "events",
            "columns": {"type": "type", "data": "data", "id": "event_id", "meta": "meta"},
        }
        values.update(options)
        return GatherConfig(name=name, stream=stream, source=self.kind, batch=batch,
                            options=values)


def sqlite_db(tmp_path: Path) -> SqlDb:
    path = tmp_path / "module.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")  # what a module with concurrent readers uses
    conn.close()
    return SqlDb("sqlite", str(path))
