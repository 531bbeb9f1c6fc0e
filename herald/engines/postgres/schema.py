"""The postgres engine's tables: their migrations, and every statement on them.

``MIGRATIONS`` are applied in order on open (``migrate``), each once, by one node
at a time; ``_Statements`` holds every statement the engine runs on the tables,
with the schema spliced in once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import StorageUnavailable
from ...logsafe import logsafe

if TYPE_CHECKING:
    import psycopg

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate"]

log = logging.getLogger("herald.postgres")


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


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Bring ``schema`` up to SCHEMA_VERSION, inside the caller's transaction."""
    quoted = f'"{schema}"'
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
        log.info("schema %s: migration %d: %s", logsafe(schema), migration.version,
                 logsafe(migration.description))
        for statement in migration.statements:
            await conn.execute(statement.replace("{s}", quoted))
        await conn.execute(
            f"INSERT INTO {quoted}.schema_migrations (version, description) "
            f"VALUES (%s, %s)", (migration.version, migration.description))


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
