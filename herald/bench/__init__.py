"""``herald bench``: Herald's own workloads against a real server over TLS, with
durable acks — W1–W4 (``workloads.py``) on the files and postgres engines, and G1/G2,
gathering from real databases (``gather.py``).

The server is a real ``herald serve`` process on a fresh data directory (and, for
``--engine postgres``, a fresh schema in the ``--dsn`` database); every workload
runs in its own process. Each workload runs ``--runs`` times (on a fresh server for
W1/W2/W3 so that each run appends and reads the same amount), and the report gives
the median with the spread. Results go to BENCH.md, a section per engine, and with
``--json PATH`` every run and the medians to a JSON file too.

The comparisons with other systems are not part of the package; they run from a
checkout of the repository, in its ``bench/`` directory: ``bench/peers.py`` (NATS,
Redis, a PostgreSQL table, a raw file, loopback TLS), ``bench/postgres.py`` (the
PostgreSQL bound and the table design), ``bench/soak.py`` and ``bench/compare.py``
(a commit against the working tree). They use this module's server, report and
BENCH.md helpers.
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
from collections.abc import Callable, Iterator
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

__all__ = ["run_bench", "run_engines", "herald_server", "engine_server", "ensure_database",
           "machine_description", "postgres_description", "render_report", "write_section",
           "Measure", "JSON_FORMAT", "medians", "write_json"]

TARGETS = {"W1": 500_000.0, "W2": 1_000_000.0, "W4": 10.0}
DEFAULT_BENCH_DSN = "postgresql://postgres@127.0.0.1:5432/herald_bench"
# The ``--json`` file's "format": raised when its layout changes incompatibly.
JSON_FORMAT = 1


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

    assert dsn is not None
    ensure_database(dsn)
    directory = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    config = directory / "herald.toml"
    # json.dumps: a TOML basic string, whatever quotes or backslashes the DSN holds.
    config.write_text(f'[storage]\nengine = "postgres"\n\n[storage.postgres]\n'
                      f'dsn = {json.dumps(dsn)}\nschema = "{schema}"\n')
    try:
        with herald_server(directory / "data", ["--config", str(config)]) as server:
            yield server
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        shutil.rmtree(directory, ignore_errors=True)


def ensure_database(dsn: str) -> None:
    """Create the DSN's database if it does not exist (connecting to ``postgres``)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = conninfo_to_dict(dsn).get("dbname")
    if not name:
        return
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        try:
            conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.errors.DuplicateDatabase:
            pass


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

    def emit(title: str, report: str) -> None:
        _emit(args, title, report)

    measured = run_engines(engines, dsn, workloads, events, runs, command, emit)
    if getattr(args, "json", None):
        write_json(Path(args.json), measured, events, runs, command)
        print(f"wrote the medians to {args.json}")
    return 0


def run_engines(engines: list[str], dsn: str, workloads: set[str], events: int, runs: int,
                command: str, emit: Callable[[str, str], None]) -> dict[str, dict[str, Measure]]:
    """W1–W4 on each engine in turn; each engine's section goes to ``emit(title,
    report)`` as soon as it is measured. Returns the measures, by engine and workload."""
    measured: dict[str, dict[str, Measure]] = {}
    for engine in engines:
        print(f"engine {engine}", flush=True)
        measured[engine] = results = _run_engine(engine, dsn, workloads, events, runs)
        notes = [postgres_description(dsn)] if engine == "postgres" else []
        emit(f"{engine} engine: W1–W4",
             render_report(results, events, runs, command, engine, notes))
    return measured


def medians(measure: Measure) -> dict[str, float]:
    """The median of every figure the runs of ``measure`` recorded."""
    keys = sorted({key for run in measure.runs for key in run})
    return {key: statistics.median(r[key] for r in measure.runs if key in r) for key in keys}


def write_json(path: Path, measured: dict[str, dict[str, Measure]], events: int, runs: int,
               command: str) -> None:
    """Every run's figures and their medians, by engine and workload (``W2d``: W2 with
    every event's data decoded), for scripts such as ``bench/compare.py``."""
    from ..version import __version__

    document = {
        "format": JSON_FORMAT,
        "herald": __version__,
        "measured": f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
        "machine": machine_description(),
        "command": command,
        "events": events,
        "runs": runs,
        "engines": {
            engine: {name: {"median": medians(m), "runs": m.runs}
                     for name, m in results.items() if m.runs}
            for engine, results in measured.items()
        },
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


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
