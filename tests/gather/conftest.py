"""Fixtures for gathering: real PostgreSQL and MariaDB databases, made per test.

Other engineers use the same database servers, so every test gets a database of its
own, named ``herald_gather_<random>``, dropped afterwards. The servers are found at
``HERALD_TEST_POSTGRES`` (an admin DSN) and ``HERALD_TEST_MYSQL`` (host:port, user
root), defaulting to this machine's.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from herald.engines.files import FilesConfig, FilesEngine
from herald.hub import Hub
from herald.model import Event

from ..conftest import require_service

PG_ADMIN = os.environ.get("HERALD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_HOST, _, MYSQL_PORT = os.environ.get("HERALD_TEST_MYSQL", "127.0.0.1:3306").partition(":")


def new_name() -> str:
    return f"herald_gather_{uuid.uuid4().hex[:12]}"


def pg_url(name: str) -> str:
    url = urlsplit(PG_ADMIN)
    return url._replace(path=f"/{name}").geturl()


def require_postgres() -> None:
    url = urlsplit(PG_ADMIN)
    require_service("PostgreSQL", url.hostname or "127.0.0.1", url.port or 5432)


def require_mysql() -> None:
    require_service("MariaDB", MYSQL_HOST, int(MYSQL_PORT or 3306))


def create_pg_database(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return pg_url(name)


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A fresh, empty PostgreSQL database of this test's own."""
    require_postgres()
    name = new_name()
    dsn = create_pg_database(name)
    yield dsn
    drop_pg_database(name)


def mysql_connect(database: str | None = None, **options: Any) -> Any:
    import pymysql

    options.setdefault("autocommit", True)
    return pymysql.connect(host=MYSQL_HOST, port=int(MYSQL_PORT or 3306), user="root",
                           database=database, **options)


@pytest.fixture
def mysql_dsn() -> Iterator[str]:
    """A fresh, empty MariaDB database of this test's own."""
    require_mysql()
    name = new_name()
    with mysql_connect() as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    yield f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT or 3306}/{name}"
    with mysql_connect() as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Hub]:
    """A hub over a files engine: what gatherers append through."""
    async with Hub(FilesEngine(FilesConfig(tmp_path / "data"))) as hub:
        yield hub


async def read_all(engine: Hub, stream: str, start: int = 0) -> list[Event]:
    return [event async for event in engine.events(stream, start)]


async def wait_for_head(engine: Hub, stream: str, head: int, timeout: float = 30.0) -> None:
    """Wait until ``stream`` holds at least ``head`` events (fail after ``timeout``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (current := await engine.head(stream)) < head:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"stream {stream} has {current} events, not {head}, "
                                 f"after {timeout} s")
        await engine.wait(stream, current, 0.2)


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0,
                     what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
