"""``herald bench``: W1–W4 against a real server over TLS, with durable acks.

The server is a real ``herald serve`` process on a fresh data directory (and, for
``--engine postgres``, a fresh schema in the ``--dsn`` database); every workload
runs in its own process. Each workload runs ``--runs`` times (on a fresh server for
W1/W2/W3 so that each run appends and reads the same amount), and the report gives
the median with the spread. Results go to BENCH.md, a section per engine.

With the postgres engine, the bound is measured too (``bench/postgres.py``): raw
psycopg inserts and reads of the same events, for both table designs, and a
section puts the engines and the bound side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .workloads import (
    BATCH,
    PAYLOAD_BYTES,
    W1_IN_FLIGHT,
    W4_BATCH,
    W4_RATE,
    W4_SECONDS,
    run_in_process,
    run_parallel,
)

__all__ = ["run_bench", "herald_server", "machine_description", "engine_server"]

TARGETS = {"W1": 500_000.0, "W2": 1_000_000.0, "W4": 10.0}
DEFAULT_BENCH_DSN = "postgresql://postgres@127.0.0.1:5432/herald_bench"


@dataclass
class Server:
    url: str
    token: str
    ca: str
    data: Path
    process: subprocess.Popen[bytes]


@contextmanager
def herald_server(data: Path | None = None, extra: list[str] | None = None) -> Iterator[Server]:
    """A real ``herald serve`` on a free port; stopped (SIGTERM) on exit."""
    owned = data is None
    directory = Path(tempfile.mkdtemp(prefix="herald-bench-")) if data is None else data
    process = subprocess.Popen(
        [sys.executable, "-m", "herald.cli", "serve", "--data", str(directory),
         "--listen", "127.0.0.1:0", *(extra or [])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    drainer: threading.Thread | None = None
    try:
        url, drainer = _wait_for_url(process)
        yield Server(url, (directory / "admin-token").read_text().strip(),
                     str(directory / "tls" / "ca.pem"), directory, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # The drainer reaches the end of the output once the server is gone; then the
        # pipe can be closed (an open one is a ResourceWarning).
        if drainer is not None:
            drainer.join(10)
        if process.stdout is not None:
            process.stdout.close()
        if owned:
            shutil.rmtree(directory, ignore_errors=True)


def _wait_for_url(process: subprocess.Popen[bytes]) -> tuple[str, threading.Thread]:
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode()
        if not line:
            raise RuntimeError("herald serve exited:\n" + "".join(lines))
        lines.append(line)
        match = re.search(r"listening on (https://\S+)", line)
        if match:
            # Keep draining output so the server never blocks on a full pipe.
            drainer = threading.Thread(
                target=lambda: process.stdout.read() if process.stdout else None, daemon=True)
            drainer.start()
            return match.group(1), drainer
    raise RuntimeError("herald serve did not start in 60 s")


@contextmanager
def engine_server(engine: str, dsn: str | None = None) -> Iterator[Server]:
    """A fresh server on ``engine``: a new data directory, and for postgres a new
    schema in the ``dsn`` database (dropped afterwards)."""
    if engine == "files":
        with herald_server() as server:
            yield server
        return
    if engine != "postgres":
        raise SystemExit(f"herald bench: unknown engine {engine!r} (files, postgres)")
    import psycopg

    from .postgres import ensure_database

    assert dsn is not None
    ensure_database(dsn)
    directory = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    config = directory / "herald.toml"
    # json.dumps: a TOML basic string, whatever quotes or backslashes the DSN holds.
    config.write_text(f'[storage]\nengine = "postgres"\ndsn = {json.dumps(dsn)}\n'
                      f'schema = "{schema}"\n')
    try:
        with herald_server(directory / "data", ["--config", str(config)]) as server:
            yield server
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        shutil.rmtree(directory, ignore_errors=True)


def postgres_description(dsn: str) -> str:
    import psycopg

    with psycopg.connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = {name: conn.execute(f"SHOW {name}").fetchone()
                    for name in ("synchronous_commit", "fsync", "shared_buffers", "wal_level")}
    shown = ", ".join(f"{k}={v[0] if v else '?'}" for k, v in settings.items())
    return f"PostgreSQL {version[0] if version else '?'} on the same machine (loopback; {shown})"


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{cpu}, {os.cpu_count()} cores{mem}; Linux {platform.release()}; "
            f"Python {platform.python_version()}")


@dataclass
class Measure:
    name: str
    runs: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.runs)

    def spread(self, key: str) -> str:
        values = [r[key] for r in self.runs]
        return f"{min(values):,.0f}–{max(values):,.0f}" if key == "rate" else \
            f"{min(values):.1f}–{max(values):.1f}"


def run_bench(args: argparse.Namespace) -> int:
    if getattr(args, "peers", False):
        from .peers import run_peers

        return run_peers(args)
    workloads = {w.strip().upper() for w in args.workloads.split(",")}
    gather = {w for w in workloads if w.startswith("G")}
    if gather:  # G1, G2: gathering, against real databases (herald/bench/gather.py)
        from .gather import run_gather_bench

        run_gather_bench(args, gather)
        workloads -= gather
        if not workloads:
            return 0
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    events = 20_000 if args.quick else args.events
    runs = 1 if args.quick else max(1, args.runs)
    dsn = args.dsn or os.environ.get("HERALD_STORAGE_DSN") or DEFAULT_BENCH_DSN
    command = " ".join(["herald", "bench", *sys.argv[2:]])
    measured: dict[str, dict[str, Measure]] = {}
    for engine in engines:
        print(f"engine {engine}", flush=True)
        measured[engine] = results = _run_engine(engine, dsn, workloads, events, runs)
        notes = [postgres_description(dsn)] if engine == "postgres" else []
        report = render_report(results, events, runs, command, engine, notes)
        _emit(args, f"{engine} engine: W1–W4", report)
    if "postgres" in engines and not args.skip_bound:
        from .postgres import run_bound

        bound = run_bound(dsn, events, lambda line: print(line, flush=True))
        _emit(args, "postgres engine: next to files and the PostgreSQL bound",
              render_comparison(measured, bound, events, command, postgres_description(dsn)))
        _emit(args, "postgres engine: table design", render_design(bound, events))
    return 0


def _emit(args: argparse.Namespace, title: str, report: str) -> None:
    if not args.quick or args.output != "BENCH.md":
        write_section(Path(args.output), title, report)
        print(f"wrote {title!r} to {args.output}")
    else:
        print(f"## {title}\n\n{report}")


def _run_engine(engine: str, dsn: str, workloads: set[str], events: int,
                runs: int) -> dict[str, Measure]:
    results: dict[str, Measure] = {n: Measure(n) for n in ("W1", "W2", "W2d", "W3", "W4")}
    for run in range(runs):
        with engine_server(engine, dsn) as server:
            conn = (server.url, server.token, server.ca)
            if workloads & {"W1", "W2", "W3"}:
                r = run_in_process("W1", *conn, "bench", events)
                print(f"run {run + 1}/{runs} W1 append: {r['rate']:,.0f} events/s", flush=True)
                if "W1" in workloads:
                    results["W1"].runs.append(r)
            if "W2" in workloads:
                r = run_in_process("W2", *conn, "bench", events)
                print(f"run {run + 1}/{runs} W2 read: {r['rate']:,.0f} events/s", flush=True)
                results["W2"].runs.append(r)
                r = run_in_process("W2", *conn, "bench", events, True)
                print(f"run {run + 1}/{runs} W2 read, every event's data decoded: "
                      f"{r['rate']:,.0f} events/s", flush=True)
                results["W2d"].runs.append(r)
            if "W3" in workloads:
                start = time.perf_counter()
                parts = run_parallel("W2", 4, *conn, "bench", events)
                elapsed = time.perf_counter() - start
                total = sum(p["events"] for p in parts)
                r = {"rate": total / max(p["seconds"] for p in parts),
                     "per_reader": statistics.median(p["rate"] for p in parts),
                     "wall": elapsed}
                print(f"run {run + 1}/{runs} W3 4 readers: {r['rate']:,.0f} events/s "
                      f"(median reader {r['per_reader']:,.0f})", flush=True)
                results["W3"].runs.append(r)
            if "W4" in workloads:
                r = run_in_process("W4", *conn, "latency")
                print(f"run {run + 1}/{runs} W4 latency: p50 {r['p50_ms']:.2f} ms, p99 "
                      f"{r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms", flush=True)
                results["W4"].runs.append(r)
    return results


_DURABLE = {
    "files": "every append is acknowledged only after fsync.",
    "postgres": "every append is acknowledged only after its transaction's COMMIT "
                "(WAL flushed: synchronous_commit is never off on Herald's connections).",
}


def render_report(results: dict[str, Measure], events: int, runs: int, command: str,
                  engine: str = "files", notes: list[str] | None = None) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_description()}.",
        *[f"{note}." for note in notes or []],
        f"Command: `{command}`. {runs} runs per workload; the median is shown, with the "
        f"range of all runs. Events are ~{PAYLOAD_BYTES} bytes of JSON; TLS on loopback; "
        + _DURABLE.get(engine, ""),
        "",
        "| workload | what | median | range | target | |",
        "|---|---|---|---|---|---|",
    ]
    w = results
    if w["W1"].runs:
        m = w["W1"].median("rate")
        lines.append(f"| W1 append | {events:,} events, batches of {BATCH}, one producer, "
                     f"{W1_IN_FLIGHT} batches in flight | **{m:,.0f} events/s** | "
                     f"{w['W1'].spread('rate')} | ≥ 500,000 | {_verdict(m >= TARGETS['W1'])} |")
    if w["W2"].runs:
        m = w["W2"].median("rate")
        lines.append(f"| W2 catch-up read | {events:,} events, one reader (Python client, "
                     f"events decoded) | **{m:,.0f} events/s** | {w['W2'].spread('rate')} | "
                     f"≥ 1,000,000 | {_verdict(m >= TARGETS['W2'])} |")
    if w["W2d"].runs:
        m = w["W2d"].median("rate")
        lines.append(f"| W2 catch-up read, data used | the same, and the reader accesses every "
                     f"event's `data` | **{m:,.0f} events/s** | {w['W2d'].spread('rate')} | — | |")
    if w["W3"].runs:
        m = w["W3"].median("rate")
        per = w["W3"].median("per_reader")
        lines.append(f"| W3 four readers | each reads all {events:,} events, four processes "
                     f"| **{m:,.0f} events/s** in total ({per:,.0f} per reader) | "
                     f"{w['W3'].spread('rate')} | — | |")
    if w["W4"].runs:
        p50, p99, mx = (w["W4"].median(k) for k in ("p50_ms", "p99_ms", "max_ms"))
        lines.append(f"| W4 latency | append → subscriber, {W4_RATE:,} events/s for "
                     f"{W4_SECONDS:.0f} s ({W4_BATCH} events per append) | p50 **{p50:.2f} ms**, "
                     f"p99 **{p99:.2f} ms**, max {mx:.2f} ms | p99 {w['W4'].spread('p99_ms')} ms | "
                     f"p99 ≤ 10 ms | {_verdict(p99 <= TARGETS['W4'])} |")
    return "\n".join(lines) + "\n"


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
        "batch, as W1), no HTTP, no TLS, no Herald (see `herald/bench/postgres.py`)."
        + ("" if files else " Run both engines in one command (`--engine files,postgres`) "
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


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or add) the ``## title`` section of BENCH.md, keeping the others."""
    text = path.read_text() if path.exists() else "# Herald benchmarks\n"
    heading = f"## {title}\n"
    section = heading + "\n" + body.rstrip() + "\n"
    if heading in text:
        start = text.index(heading)
        rest = text.find("\n## ", start + len(heading))
        end = len(text) if rest == -1 else rest + 1
        text = text[:start] + section + ("\n" + text[end:] if rest != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
