"""Exactly once, proven by killing Herald: a real ``herald serve`` gathers a PostgreSQL
table and is SIGKILLed at random moments of the backfill, again and again. At the
end the stream must equal the source: same rows, same order, no duplicate, no gap.

``make test`` runs a scaled-down version (20,000 rows, small batches so that the
backfill lasts long enough to be killed in several times); ``make proof`` runs the
full one: 1,000,000 rows, at least 10 kills. The seed is printed; set
``HERALD_PROOF_SEED`` to replay the same kill moments.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import herald

from ..conftest import ServerProcess


@dataclass(frozen=True)
class Size:
    rows: int
    kills: int
    batch: int


QUICK = Size(rows=20_000, kills=4, batch=40)
FULL = Size(rows=1_000_000, kills=10, batch=2000)
# Each kill lands once the stream has passed a random point of the backfill, plus a
# random delay up to this: the kill hits any phase of an append (reading the source,
# writing, fsync, acknowledging) — not only the moments the test polls.
MAX_EXTRA_DELAY_SECONDS = 0.02


def fill(dsn: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, type text NOT NULL, "
                     "data jsonb NOT NULL)")
        conn.execute("INSERT INTO events (type, data) SELECT 'Counted', "
                     "jsonb_build_object('n', g, 'pad', md5(g::text)) "
                     "FROM generate_series(1, %s) g", (rows,))
        conn.execute("ANALYZE events")


def head(client: herald.Client) -> int:
    return next((s.head for s in client.streams() if s.name == "counted"), 0)


def prove(server_factory: type[ServerProcess], tmp_path: Path, dsn: str, size: Size) -> None:
    fill(dsn, size.rows)
    config = tmp_path / "herald.toml"
    config.write_text(f"""
[[gather]]
name = "counter-db"
stream = "counted"
source = "postgres"
dsn = "{dsn}"
table = "events"
batch = {size.batch}
""")
    data = tmp_path / "herald-data"
    seed = int(os.environ.get("HERALD_PROOF_SEED", time.time_ns() % 1_000_000))
    print(f"HERALD_PROOF_SEED={seed}")
    rng = random.Random(seed)
    # Random points of the backfill, at least 2% of it apart, between 2% and 95%.
    step = size.rows // 50
    targets = sorted(rng.sample(range(1, 47), size.kills))
    kills: list[int] = []  # the head seen just before each kill
    for target in (t * step for t in targets):
        server = server_factory(data=data, args=["--config", str(config)]).start()
        with server.client() as client:
            deadline = time.monotonic() + 120
            while (seen := head(client)) < target:
                assert time.monotonic() < deadline, f"no progress past {seen}"
                time.sleep(0.002)
            time.sleep(rng.uniform(0, MAX_EXTRA_DELAY_SECONDS))
        server.kill()
        assert seen < size.rows, "the backfill ended before the kill"
        kills.append(seen)
    print(f"killed at heads {kills}")

    server = server_factory(data=data, args=["--config", str(config)]).start()
    with server.client() as client:
        deadline = time.monotonic() + max(120, size.rows / 5000)
        while head(client) < size.rows:
            assert time.monotonic() < deadline, f"only {head(client)} of {size.rows} gathered"
            time.sleep(0.1)
        time.sleep(0.5)  # would anything more come?
        compare(client, dsn, size.rows)
    assert server.stop() == 0


def compare(client: herald.Client, dsn: str, rows: int) -> None:
    """The stream equals the table: position i holds row i, in order, exactly once."""
    import psycopg

    with psycopg.connect(dsn) as conn, conn.cursor(name="all_rows") as cursor:
        cursor.itersize = 10_000
        cursor.execute("SELECT id, data FROM events ORDER BY id")
        source = iter(cursor)
        position = 0
        with client.subscribe("counted", 0, follow=False) as subscription:
            for batch in subscription.batches():
                for event in batch:
                    row_id, row_data = next(source)
                    assert event.position == position
                    assert event.meta == {"source": "counter-db",
                                          "source_position": str(row_id)}, (
                        f"position {position}: {event.meta} is not row {row_id}")
                    assert event.data == row_data
                    position += 1
        assert position == rows
        assert next(source, None) is None
    assert client.stream("counted").head == rows


def test_kill_during_backfill(server_factory: type[ServerProcess], tmp_path: Path,
                              pg_dsn: str) -> None:
    prove(server_factory, tmp_path, pg_dsn, QUICK)


@pytest.mark.proof
def test_kill_during_backfill_of_a_million_rows(server_factory: type[ServerProcess],
                                                tmp_path: Path, pg_dsn: str) -> None:
    prove(server_factory, tmp_path, pg_dsn, FULL)
