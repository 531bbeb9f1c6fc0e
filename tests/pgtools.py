"""The PostgreSQL the tests run against: a database of their own, a schema per test.

Other projects use the same server, so every test works in a fresh schema of the
``herald_pg_test`` database (``HERALD_TEST_POSTGRES_DSN`` overrides the DSN) and
drops it afterwards: tests never see each other's streams.
"""

from __future__ import annotations

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
