"""The PostgreSQL bound, and the table-design measurement behind the postgres engine.

Raw psycopg against the same PostgreSQL, with the same events as W1 (batches of
1,000 ~250-byte events, ``W1_IN_FLIGHT`` writers, one COMMIT per batch: a durable
ack per batch, as W1 asks of Herald). No HTTP, no TLS, no Herald: what the
database itself can take is the bound for the engine.

Both table designs the engine could use are measured the same way:

* **row per batch** — ``(stream_id, last, base, record bytea)``: one row per
  batch, the record in the codec format, compressed with lz4 (what the engine
  does; also measured uncompressed and with pglz);
* **row per event** — ``(stream_id, position, time_us, id, event bytea)``: one
  row per event, the event's JSON as sent.

Appends by ``COPY … FROM STDIN (FORMAT BINARY)`` and by ``INSERT``
(``executemany`` for rows per event); reads of the whole stream in position
order in ~1 MiB pages, producing records (for rows per event: joining the
events of each batch back into a record body, the least a reader needs).

Run from a checkout (not part of the installed package), with the venv's Python:

    .venv/bin/python bench/postgres.py                  # both engines, the bound, 4 sections
    .venv/bin/python bench/postgres.py --bound-only     # the bound and the table design
    .venv/bin/python bench/postgres.py --quick          # small sizes, printed, BENCH.md kept

It measures the files and postgres engines (as ``herald bench --engine
files,postgres`` does, writing their sections), then the bound, and writes BENCH.md's
"postgres engine: next to files and the PostgreSQL bound" and "postgres engine: table
design" sections (``make bench-postgres``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from herald import codec
from herald.bench import (
    DEFAULT_BENCH_DSN,
    Measure,
    ensure_database,
    machine_description,
    postgres_description,
    run_engines,
    write_section,
)
from herald.bench.workloads import BATCH, PAYLOAD_BYTES, W1_IN_FLIGHT, W4_RATE, make_event
from herald.model import Batch, assigned_id, new_id_prefix, now_us

__all__ = ["run_bound", "render_comparison", "render_design", "main"]

# Rows per read for the row-per-event design: ~1 MiB of ~250-byte events, the
# same page size the engine reads (READ_CHUNK_BYTES).
EVENT_ROWS_PER_READ = 4000
BATCH_ROWS_PER_READ = 4


def _batches(events: int) -> tuple[list[bytes], list[list[bytes]]]:
    """The W1 batches as records (row per batch) and as event JSON (row per event)."""
    body = msgspec.json.encode([make_event(i) for i in range(BATCH)])
    raw_events = [bytes(r) for r in msgspec.json.decode(body, type=list[msgspec.Raw])]
    records = []
    per_event = []
    for n in range(events // BATCH):
        base = n * BATCH
        batch = Batch(events=[], raw=body)
        records.append(codec.encode_record(base, BATCH, now_us(),
                                           codec.encode_batch(batch, new_id_prefix())))
        per_event.append(raw_events)
    return records, per_event


async def _append(dsn: str, design: str, method: str, records: list[bytes],
                  per_event: list[list[bytes]], table: str) -> float:
    """Append every batch, ``W1_IN_FLIGHT`` connections, a COMMIT per batch."""
    import psycopg

    next_batch = 0

    async def writer() -> None:
        nonlocal next_batch
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            while next_batch < len(records):
                n = next_batch
                next_batch += 1
                base = n * BATCH
                async with conn.cursor() as cur:
                    if design == "batch":
                        row = (1, base + BATCH - 1, base, records[n])
                        if method == "copy":
                            async with cur.copy(f"COPY {table} (stream_id, last, base, record) "
                                                f"FROM STDIN (FORMAT BINARY)") as copy:
                                copy.set_types(["int8", "int8", "int8", "bytea"])
                                await copy.write_row(row)
                        else:
                            await cur.execute(f"INSERT INTO {table} (stream_id, last, base, "
                                              f"record) VALUES (%s, %s, %s, %s)", row)
                    else:
                        t = now_us()
                        prefix = new_id_prefix()
                        rows = [(1, base + i, t, assigned_id(prefix, i), e)
                                for i, e in enumerate(per_event[n])]
                        if method == "copy":
                            async with cur.copy(f"COPY {table} (stream_id, position, time_us, "
                                                f"id, event) FROM STDIN (FORMAT BINARY)") as copy:
                                copy.set_types(["int8", "int8", "int8", "text", "bytea"])
                                for r in rows:
                                    await copy.write_row(r)
                        else:
                            await cur.executemany(
                                f"INSERT INTO {table} (stream_id, position, time_us, id, event) "
                                f"VALUES (%s, %s, %s, %s, %s)", rows)
                await conn.commit()

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(W1_IN_FLIGHT)))
    return time.perf_counter() - start


async def _read(dsn: str, design: str, table: str, events: int) -> float:
    """Read the whole stream in position order, as records, one reader."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        position = 0
        seen = 0
        async with conn.cursor(binary=True) as cur:
            while True:
                if design == "batch":
                    await cur.execute(f"SELECT record FROM {table} WHERE stream_id = 1 AND "
                                      f"last >= %s ORDER BY last LIMIT %s",
                                      (position, BATCH_ROWS_PER_READ))
                    rows = await cur.fetchall()
                    if not rows:
                        break
                    for (raw,) in rows:
                        record = codec.decode_record_at(raw)
                        assert record is not None
                        seen += record.count
                        position = record.end
                else:
                    await cur.execute(f"SELECT position, time_us, event FROM {table} "
                                      f"WHERE stream_id = 1 AND position >= %s "
                                      f"ORDER BY position LIMIT %s",
                                      (position, EVENT_ROWS_PER_READ))
                    rows = await cur.fetchall()
                    if not rows:
                        break
                    # A record per BATCH events: the least a reader of rows must do
                    # to hand out the same bytes as the row-per-batch design.
                    for i in range(0, len(rows), BATCH):
                        chunk = rows[i:i + BATCH]
                        body = b'{"p":"","e":[' + b",".join(r[2] for r in chunk) + b"]}"
                        codec.encode_record(chunk[0][0], len(chunk), chunk[0][1], body)
                    seen += len(rows)
                    position = rows[-1][0] + 1
        elapsed = time.perf_counter() - start
    if seen != events:
        raise RuntimeError(f"bound read {seen} events of {events}")
    return elapsed


_BATCH_TABLE = """CREATE TABLE {t} (
    stream_id bigint NOT NULL, last bigint NOT NULL, base bigint NOT NULL,
    record bytea NOT NULL, PRIMARY KEY (stream_id, last))"""
_EVENT_TABLE = """CREATE TABLE {t} (
    stream_id bigint NOT NULL, position bigint NOT NULL, time_us bigint NOT NULL,
    id text NOT NULL, event bytea NOT NULL, PRIMARY KEY (stream_id, position))"""

# (key, design, table statements, append methods). "batch" is the engine's table:
# records compressed with lz4. The two other batch variants measure that choice.
CASES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("batch", "batch", (_BATCH_TABLE,
                        "ALTER TABLE {t} ALTER COLUMN record SET COMPRESSION lz4"),
     ("copy", "insert")),
    ("batch-uncompressed", "batch", (_BATCH_TABLE,
                                     "ALTER TABLE {t} ALTER COLUMN record SET STORAGE EXTERNAL"),
     ("copy",)),
    ("batch-pglz", "batch", (_BATCH_TABLE,
                             "ALTER TABLE {t} ALTER COLUMN record SET COMPRESSION pglz"),
     ("copy",)),
    ("event", "event", (_EVENT_TABLE,), ("copy", "insert")),
)


async def _bound(dsn: str, events: int, progress: Any) -> dict[str, dict[str, float]]:
    import psycopg

    records, per_event = _batches(events)
    results: dict[str, dict[str, float]] = {}
    for key, design, statements, methods in CASES:
        for method in methods:
            schema = f"herald_bound_{uuid.uuid4().hex[:12]}"
            table = f"{schema}.rows"
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(f"CREATE SCHEMA {schema}")
                for statement in statements:
                    await conn.execute(statement.format(t=table))
            try:
                seconds = await _append(dsn, design, method, records, per_event, table)
                name = f"{key}/{method}"
                results[name] = {"append_rate": events / seconds}
                progress(f"bound {key}, {method}: {events / seconds:,.0f} events/s appended")
                if method == "copy":
                    seconds = await _read(dsn, design, table, events)
                    results[name]["read_rate"] = events / seconds
                    async with await psycopg.AsyncConnection.connect(dsn) as conn:
                        cursor = await conn.execute("SELECT pg_total_relation_size(%s)",
                                                    (table,))
                        row = await cursor.fetchone()
                        results[name]["bytes"] = float(row[0]) if row else 0.0
                    progress(f"bound {key}, read: {events / seconds:,.0f} events/s, "
                             f"{results[name]['bytes'] / 1e6:,.1f} MB on disk")
            finally:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return results


def run_bound(dsn: str, events: int, progress: Any = print) -> dict[str, dict[str, float]]:
    """Measure both table designs with raw psycopg; see the module docstring."""
    ensure_database(dsn)
    return asyncio.run(_bound(dsn, events, progress))


# --- the reports ----------------------------------------------------------------------


def _median(measure: Measure | None, key: str) -> float | None:
    return measure.median(key) if measure is not None and measure.runs else None


def _rate(value: float | None) -> str:
    return f"{value:,.0f} events/s" if value is not None else "—"


def render_comparison(measured: dict[str, dict[str, Measure]],
                      bound: dict[str, dict[str, float]], events: int, command: str,
                      database: str) -> str:
    """The engines side by side, and the database's own bound for the same work."""
    files, pg = measured.get("files", {}), measured.get("postgres", {})
    copy_batch, copy_event = bound.get("batch/copy", {}), bound.get("event/copy", {})
    insert_event = bound.get("event/insert", {})

    def w4(m: dict[str, Measure]) -> str:
        p50, p99 = _median(m.get("W4"), "p50_ms"), _median(m.get("W4"), "p99_ms")
        return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms" if p50 is not None and p99 else "—"

    w3 = {name: _median(m.get("W3"), "rate") for name, m in measured.items()}
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_description()}; "
        f"{database}. Command: `{command}`; {events:,} events. The engines' figures are "
        "the medians of the sections above (Herald over HTTPS, the Python client); the "
        "bound is raw psycopg on the same database with the same events: "
        f"{W1_IN_FLIGHT} connections, a COMMIT per batch of {BATCH:,} (a durable ack per "
        "batch, as W1), no HTTP, no TLS, no Herald (see `bench/postgres.py`)."
        + ("" if files else " Measure both engines in one run (`--engine files,postgres`) "
           "for the files column."),
        "",
        "| workload | files engine | postgres engine | PostgreSQL bound |",
        "|---|---|---|---|",
        f"| W1 append | {_rate(_median(files.get('W1'), 'rate'))} | "
        f"**{_rate(_median(pg.get('W1'), 'rate'))}** | COPY, row per batch: "
        f"{_rate(copy_batch.get('append_rate'))}; COPY, row per event: "
        f"{_rate(copy_event.get('append_rate'))}; executemany, row per event: "
        f"{_rate(insert_event.get('append_rate'))} |",
        f"| W2 catch-up read | {_rate(_median(files.get('W2'), 'rate'))} | "
        f"**{_rate(_median(pg.get('W2'), 'rate'))}** | SELECT, row per batch: "
        f"{_rate(copy_batch.get('read_rate'))}; row per event: "
        f"{_rate(copy_event.get('read_rate'))} |",
        f"| W3 four readers (total) | {_rate(w3.get('files'))} | "
        f"**{_rate(w3.get('postgres'))}** | — |",
        f"| W4 latency at {W4_RATE:,} events/s | {w4(files)} | **{w4(pg)}** | — |",
    ]
    return "\n".join(lines) + "\n"


def render_design(bound: dict[str, dict[str, float]], events: int) -> str:
    """Row per batch against row per event, measured the same way."""
    rows = []
    for key, label in (("batch", "row per batch, lz4 (the engine's table)"),
                       ("batch-uncompressed", "row per batch, uncompressed"),
                       ("batch-pglz", "row per batch, pglz"),
                       ("event", "row per event")):
        copy, insert = bound.get(f"{key}/copy", {}), bound.get(f"{key}/insert", {})
        if not copy:
            continue
        size = copy.get("bytes")
        rows.append(f"| {label} | {_rate(copy.get('append_rate'))} | "
                    f"{_rate(insert.get('append_rate'))} | {_rate(copy.get('read_rate'))} | "
                    + (f"{size / 1e6:,.1f} MB |" if size else "— |"))
    return "\n".join([
        f"{events:,} events of ~{PAYLOAD_BYTES} bytes in batches of {BATCH:,}, raw psycopg "
        f"(figures from the bound above). Appends: {W1_IN_FLIGHT} connections, a COMMIT "
        "per batch; \"INSERT\" is one INSERT of the record for a row per batch and "
        "`executemany` of the batch's rows for a row per event. Reads: one connection, "
        "the stream in position order in ~1 MiB pages, producing records (for rows per "
        "event: the events of each batch joined back into a record body). Size: "
        "`pg_total_relation_size` after the COPY run. The benchmark's events repeat "
        "themselves more than real ones do, so compression gains more here than it will "
        "on real payloads.",
        "",
        "| design | append, COPY | append, INSERT | read | size |",
        "|---|---|---|---|---|",
        *rows,
        "",
        _design_verdict(bound),
    ]) + "\n"


def _design_verdict(bound: dict[str, dict[str, float]]) -> str:
    batch, event = bound.get("batch/copy", {}), bound.get("event/copy", {})
    keys = ("append_rate", "read_rate")
    if not all(k in batch and k in event for k in keys):
        return "Not all figures were measured; no verdict."
    append = batch["append_rate"] / event["append_rate"]
    read = batch["read_rate"] / event["read_rate"]
    if append >= 1 and read >= 1:
        return (f"A row per batch appends {append:.1f}x and reads {read:.1f}x as fast as a row "
                "per event: the database does its per-row work (tuple header, index entry, "
                "WAL record) once per batch instead of once per event, and a read hands out "
                "the stored record without touching its events. What a row per event would "
                "buy — SQL over single events — Herald does not offer. The engine stores a "
                "row per batch.")
    return (f"Measured: row per batch / row per event = {append:.2f}x on appends, {read:.2f}x "
            "on reads. The engine stores a row per batch; these figures say to revisit that.")


# --- the run ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/postgres.py",
        description="The postgres engine next to the files engine and the PostgreSQL "
                    "bound (raw psycopg), and the table design; writes BENCH.md.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one run; with the default --output, the "
                             "sections are printed and BENCH.md is kept")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload (3)")
    parser.add_argument("--events", type=int, default=1_000_000, help="events (1,000,000)")
    parser.add_argument("--output", default="BENCH.md", help="report file (BENCH.md)")
    parser.add_argument("--engine", default="files,postgres",
                        help="engines measured beside the bound (files,postgres)")
    parser.add_argument("--workloads", default="W1,W2,W3,W4",
                        help="the engines' workloads (W1,W2,W3,W4)")
    parser.add_argument("--bound-only", action="store_true",
                        help="measure the bound only: the table design section, no engines")
    parser.add_argument("--dsn", default=None,
                        help="the database (env HERALD_STORAGE_DSN; default "
                             f"{DEFAULT_BENCH_DSN}); schemas are made and dropped")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = ("python bench/postgres.py " + " ".join(sys.argv[1:] if argv is None else argv)
               ).rstrip()
    events = 20_000 if args.quick else args.events
    runs = 1 if args.quick else max(1, args.runs)
    dsn = args.dsn or os.environ.get("HERALD_STORAGE_DSN") or DEFAULT_BENCH_DSN
    printed = args.quick and args.output == "BENCH.md"

    def emit(title: str, report: str) -> None:
        if printed:
            print(f"## {title}\n\n{report}")
        else:
            write_section(Path(args.output), title, report)
            print(f"wrote {title!r} to {args.output}")

    measured: dict[str, dict[str, Measure]] = {}
    if not args.bound_only:
        engines = [e.strip() for e in args.engine.split(",") if e.strip()]
        workloads = {w.strip().upper() for w in args.workloads.split(",")}
        measured = run_engines(engines, dsn, workloads, events, runs, command, emit)
    bound = run_bound(dsn, events, lambda line: print(line, flush=True))
    if measured:
        emit("postgres engine: next to files and the PostgreSQL bound",
             render_comparison(measured, bound, events, command, postgres_description(dsn)))
    emit("postgres engine: table design", render_design(bound, events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
