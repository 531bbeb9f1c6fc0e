"""Gathering benchmarks, against a real ``herald serve`` and real databases.

G1  backfill: gather N rows from a PostgreSQL table into a stream (events/s), next to
    ``COPY (SELECT …) TO STDOUT`` of the same rows — the upper bound: the fastest the
    database hands those rows to one client.
G2  latency: a row committed in the source → the event received by a subscriber
    (p50 / p99 / max), for PostgreSQL with LISTEN/NOTIFY, PostgreSQL polled, and
    MariaDB polled.

Databases are created for the run (``herald_bench_gather_*``) and dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import herald_server, machine_description, write_section

__all__ = ["run_gather_bench"]

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
MYSQL = "mysql://root@127.0.0.1:3306"
# G2: one row per commit at this rate, for this long: well below any throughput limit,
# so that what is measured is the wake-up path, not queueing.
G2_RATE = 50
G2_SECONDS = 10.0
G2_WARM_SECONDS = 2.0
# The rows' data: like W1's events, about 250 bytes of JSON.
_DATA_SQL = ("jsonb_build_object('order_id', 'ord-' || lpad(g::text, 12, '0'), "
             "'customer', 'cust-' || lpad((g %% 10007)::text, 8, '0'), "
             "'sku', 'SKU-' || lpad((g %% 997)::text, 6, '0'), 'quantity', g %% 7 + 1, "
             "'price', 19.99, 'currency', 'EUR', 'note', repeat('x', 89))")


def _pg_url(admin: str, name: str) -> str:
    return urlsplit(admin)._replace(path=f"/{name}").geturl()


@contextmanager
def _pg_database(admin: str, name: str) -> Iterator[str]:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fill(dsn: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, type text NOT NULL, "
                     "data jsonb NOT NULL)")
        conn.execute(f"INSERT INTO events (type, data) SELECT 'OrderPlaced', {_DATA_SQL} "
                     "FROM generate_series(1, %s) g", (rows,))
        conn.execute("VACUUM ANALYZE events")


def _copy_seconds(dsn: str) -> float:
    """COPY the columns a gatherer reads, in its order, to this client."""
    import psycopg

    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        start = time.perf_counter()
        with cursor.copy("COPY (SELECT id, type, data FROM events ORDER BY id) TO STDOUT") as copy:
            for _ in copy:
                pass
        return time.perf_counter() - start


def _gather_config(path: Path, dsn: str, source: str, notify: str | None = None) -> Path:
    lines = ["[[gather]]", 'name = "bench"', 'stream = "bench"', f'source = "{source}"',
             f'dsn = "{dsn}"', 'table = "events"']
    if notify:
        lines.append(f'notify = "{notify}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def _head(client: Any, stream: str) -> int:
    return next((s.head for s in client.streams() if s.name == stream), 0)


def g1_backfill(admin: str, rows: int) -> dict[str, float]:
    from ..client import Client

    with _pg_database(admin, "herald_bench_gather_g1") as dsn:
        _fill(dsn, rows)
        copy = _copy_seconds(dsn)
        with tempfile.TemporaryDirectory(prefix="herald-bench-gather-") as tmp:
            config = _gather_config(Path(tmp) / "herald.toml", dsn, "postgres")
            with herald_server(Path(tmp) / "data", ["--config", str(config)]) as server, \
                    Client(server.url, token=server.token, ca=server.ca) as client:
                start = time.perf_counter()
                while (head := _head(client, "bench")) < rows:
                    time.sleep(0.02)
                seconds = time.perf_counter() - start
                assert head == rows
    return {"rows": float(rows), "seconds": seconds, "rate": rows / seconds,
            "copy_seconds": copy, "copy_rate": rows / copy}


# --- G2 ---------------------------------------------------------------------------------


def _latencies(url: str, token: str, ca: str, insert: Any,
               stream: str) -> list[tuple[float, float]]:
    """Insert rows at G2_RATE (``insert()`` commits one, returns its id); the
    subscriber notes when each arrives. Latency: commit returned → event received."""
    from ..client import AsyncClient

    committed: dict[str, float] = {}
    received: dict[str, float] = {}
    total = int(G2_RATE * G2_SECONDS)

    async def subscribe() -> None:
        async with AsyncClient(url, token=token, ca=ca) as client, \
                client.subscribe(stream, 0) as subscription:
            async for batch in subscription.batches():
                now = time.perf_counter()
                for event in batch:
                    received[event.meta["source_position"]] = now
                if len(received) >= total:
                    return

    def write() -> None:
        interval = 1 / G2_RATE
        next_at = time.perf_counter()
        for _ in range(total):
            row = insert()
            committed[str(row)] = time.perf_counter()
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))

    async def main() -> None:
        reader = asyncio.create_task(subscribe())
        await asyncio.sleep(1.0)  # subscribed, gatherer live
        await asyncio.to_thread(write)
        await asyncio.wait_for(reader, 60)

    asyncio.run(main())
    first = min(committed.values())
    return [(committed[k] - first, (received[k] - committed[k]) * 1000) for k in committed]


def _latency_run(source: str, dsn: str, notify: str | None, insert: Any) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="herald-bench-gather-") as tmp:
        config = _gather_config(Path(tmp) / "herald.toml", dsn, source, notify)
        with herald_server(Path(tmp) / "data", ["--config", str(config)]) as server:
            samples = _latencies(server.url, server.token, server.ca, insert, "bench")
    ms = sorted(latency for _, latency in samples)
    # A polled source that was idle has backed off (to POLL_MAX_SECONDS): the first
    # rows wait for that. Past the first seconds, the steady state shows.
    steady = sorted(latency for at, latency in samples if at >= G2_WARM_SECONDS)
    return {"p50_ms": statistics.median(ms), "p99_ms": _p99(ms), "max_ms": ms[-1],
            "steady_p99_ms": _p99(steady), "count": float(len(ms))}


def _p99(values: list[float]) -> float:
    return values[max(0, int(len(values) * 0.99) - 1)]


def g2_postgres(admin: str, notify: bool) -> dict[str, float]:
    import psycopg

    with _pg_database(admin, "herald_bench_gather_g2") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, type text, data jsonb)")
            conn.execute("CREATE FUNCTION herald_notify() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$ BEGIN PERFORM pg_notify(TG_ARGV[0], ''); RETURN NULL; END $$")
            conn.execute("CREATE TRIGGER herald_notify AFTER INSERT ON events FOR EACH "
                         "STATEMENT EXECUTE FUNCTION herald_notify('bench_events')")
        writer = psycopg.connect(dsn, autocommit=True)
        lock = threading.Lock()

        def insert() -> int:
            with lock:
                row = writer.execute("INSERT INTO events (type, data) VALUES ('Ping', '{}') "
                                     "RETURNING id").fetchone()
            assert row is not None
            return int(row[0])

        try:
            return _latency_run("postgres", dsn, "bench_events" if notify else None, insert)
        finally:
            writer.close()


def g2_mariadb(url: str) -> dict[str, float]:
    import pymysql

    parts = urlsplit(url)
    params: dict[str, Any] = {"host": parts.hostname, "port": parts.port or 3306,
                              "user": parts.username or "root", "password": parts.password or ""}
    name = "herald_bench_gather_g2"
    admin = pymysql.connect(**params, autocommit=True)
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.execute(f"CREATE DATABASE `{name}`")
        cursor.execute(f"CREATE TABLE `{name}`.events (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                       "type VARCHAR(50), data JSON)")
    writer = pymysql.connect(**params, database=name, autocommit=True)

    def insert() -> int:
        with writer.cursor() as cursor:
            cursor.execute("INSERT INTO events (type, data) VALUES ('Ping', '{}')")
            return int(cursor.lastrowid)

    try:
        return _latency_run("mysql", f"{url.rstrip('/')}/{name}", None, insert)
    finally:
        writer.close()
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


# --- the report ---------------------------------------------------------------------------


def run_gather_bench(args: argparse.Namespace, workloads: set[str]) -> None:
    runs = 1 if args.quick else max(1, args.runs)
    rows = 20_000 if args.quick else args.events
    admin = getattr(args, "pg_admin", None) or PG_ADMIN
    mysql = getattr(args, "mysql", None) or MYSQL
    command = " ".join(["herald", "bench", *sys.argv[2:]])
    header = (f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_description()}; "
              f"PostgreSQL and MariaDB on the same machine. Command: `{command}`.")
    output = Path(args.output)
    if "G1" in workloads:
        results = []
        for run in range(runs):
            r = g1_backfill(admin, rows)
            print(f"run {run + 1}/{runs} G1 gather {rows:,} rows: {r['rate']:,.0f} events/s "
                  f"(COPY: {r['copy_rate']:,.0f} rows/s)", flush=True)
            results.append(r)
        rate = statistics.median(r["rate"] for r in results)
        copy = statistics.median(r["copy_rate"] for r in results)
        body = "\n".join([
            header, f"{runs} runs, median shown, with the range of all runs.", "",
            "| what | rows | median | range |", "|---|---|---|---|",
            f"| G1 gather: PostgreSQL table → stream (`herald serve`, one gatherer, "
            f"default batch, durable appends) | {rows:,} | **{rate:,.0f} events/s** | "
            f"{min(r['rate'] for r in results):,.0f}–{max(r['rate'] for r in results):,.0f} |",
            f"| upper bound: `COPY (SELECT id, type, data FROM events ORDER BY id) TO STDOUT` "
            f"of the same rows to one client | {rows:,} | **{copy:,.0f} rows/s** | "
            f"{min(r['copy_rate'] for r in results):,.0f}–"
            f"{max(r['copy_rate'] for r in results):,.0f} |",
            "", f"Gathering runs at {rate / copy:.0%} of the rate at which PostgreSQL can hand "
            "over the same rows at all. Rows carry ~250 bytes of JSON; the time runs from "
            "the moment the server is listening (its gatherer already started) to the "
            "stream holding every row.",
        ])
        write_section(output, "gather: PostgreSQL backfill", body)
        print(f"wrote {output}")
    if "G2" in workloads:
        variants: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("PostgreSQL, LISTEN/NOTIFY trigger", lambda: g2_postgres(admin, True)),
            ("PostgreSQL, polled", lambda: g2_postgres(admin, False)),
            ("MariaDB, polled", lambda: g2_mariadb(mysql))]
        lines = [header, f"One row per commit, {G2_RATE} commits/s for {G2_SECONDS:.0f} s; "
                 "latency from the writer's COMMIT returning to the subscriber (Python "
                 "client, compact stream) receiving the event.", "",
                 f"| source | p50 | p99 | max | p99 after the first {G2_WARM_SECONDS:.0f} s |",
                 "|---|---|---|---|---|"]
        for name, run_variant in variants:
            r = run_variant()
            print(f"G2 {name}: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                  f"max {r['max_ms']:.1f} ms, steady p99 {r['steady_p99_ms']:.1f} ms",
                  flush=True)
            lines.append(f"| {name} | **{r['p50_ms']:.1f} ms** | {r['p99_ms']:.1f} ms | "
                         f"{r['max_ms']:.1f} ms | {r['steady_p99_ms']:.1f} ms |")
        lines += ["", "Polled sources are read every 50 ms while rows keep coming, backing "
                  "off to once a second when idle (herald/gather/base.py): the first rows "
                  "after an idle spell wait up to a second, which is what the overall p99 "
                  "and max show; the last column leaves the first seconds out."]
        write_section(output, "gather: commit → subscriber latency", "\n".join(lines))
        print(f"wrote {output}")
