"""``herald bench``: W1–W4 against a real server over TLS, with durable acks.

The server is a real ``herald serve`` process on a fresh data directory; every
workload runs in its own process. Each workload runs ``--runs`` times (on a fresh
server for W1/W2/W3 so that each run appends and reads the same amount), and the
report gives the median with the spread. Results go to BENCH.md.
"""

from __future__ import annotations

import argparse
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

__all__ = ["run_bench", "herald_server", "machine_description"]

TARGETS = {"W1": 500_000.0, "W2": 1_000_000.0, "W4": 10.0}


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
    events = 20_000 if args.quick else args.events
    runs = 1 if args.quick else max(1, args.runs)
    results: dict[str, Measure] = {n: Measure(n) for n in ("W1", "W2", "W2d", "W3", "W4")}
    for run in range(runs):
        with herald_server() as server:
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
    report = render_report(results, events, runs, " ".join(["herald", "bench", *sys.argv[2:]]))
    if not args.quick or args.output != "BENCH.md":
        write_section(Path(args.output), "files engine: W1–W4", report)
        print(f"wrote {args.output}")
    else:
        print(report)
    return 0


def render_report(results: dict[str, Measure], events: int, runs: int, command: str) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_description()}.",
        f"Command: `{command}`. {runs} runs per workload; the median is shown, with the "
        f"range of all runs. Events are ~{PAYLOAD_BYTES} bytes of JSON; TLS on loopback; "
        "every append is acknowledged only after fsync.",
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
