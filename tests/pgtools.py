"""The PostgreSQL the tests run against: a database of their own, a schema per test.

Other projects use the same server, so every test works in a fresh schema of the
``herald_pg_test`` database (``HERALD_TEST_POSTGRES_DSN`` overrides the DSN) and
drops it afterwards: tests never see each other's streams.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .conftest import require_service

TEST_DSN = os.environ.get("HERALD_TEST_POSTGRES_DSN",
                          "postgresql://postgres@127.0.0.1:5432/herald_pg_test")

_database_ready = False


def require_postgres() -> str:
    """The test DSN, once its server answers and its database exists (else skip,
    or fail under CI=true)."""
    global _database_ready
    params = conninfo_to_dict(TEST_DSN)
    require_service("PostgreSQL", str(params.get("host") or "127.0.0.1"),
                    int(params.get("port") or 5432))
    if not _database_ready:
        maintenance = make_conninfo(TEST_DSN, dbname="postgres")
        with psycopg.connect(maintenance, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (params["dbname"],)).fetchone()
            if exists is None:
                try:
                    conn.execute(f'CREATE DATABASE "{params["dbname"]}"')
                except psycopg.errors.DuplicateDatabase:
                    pass  # created by a test run beside this one
        _database_ready = True
    return TEST_DSN


def new_schema() -> str:
    return f"test_{uuid.uuid4().hex[:20]}"


def drop_schema(schema: str) -> None:
    with psycopg.connect(TEST_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class TcpProxy:
    """A TCP proxy in front of PostgreSQL that a test can cut and restore: the
    network failing between a Herald node and its database, without touching the
    database other projects share."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def dsn(self, dsn: str, **params: str) -> str:
        return make_conninfo(dsn, host="127.0.0.1", port=str(self.port), **params)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """Refuse new connections and break every open one."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        writers = [writer]
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            writers.append(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            for w in writers:
                w.transport.abort()
            self._handlers.discard(task)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()
