"""Helpers for the fault tests: a record of what was acknowledged, whole-stream reads,
``herald check``, and ``SyscallTrap`` (strace attached to a running Herald).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import herald
from herald import cli

from ..conftest import require_tool


@dataclass
class Acked:
    """Batches acknowledged per stream, in order: exactly what must read back."""

    batches: dict[str, list[tuple[int, list[dict[str, Any]]]]] = field(default_factory=dict)

    def add(self, stream: str, first: int, events: list[dict[str, Any]]) -> None:
        self.batches.setdefault(stream, []).append((first, events))

    def expected(self, stream: str) -> list[tuple[int, str, Any]]:
        out: list[tuple[int, str, Any]] = []
        for first, events in sorted(self.batches.get(stream, [])):
            assert first == len(out), f"{stream}: acknowledged batches leave a gap at {len(out)}"
            out += [(first + i, e["type"], e["data"]) for i, e in enumerate(events)]
        return out

    def count(self, stream: str) -> int:
        return sum(len(events) for _, events in self.batches.get(stream, []))


def read_all(client: herald.Client, stream: str) -> list[herald.Event]:
    events: list[herald.Event] = []
    while True:
        page = client.read(stream, start=len(events), limit=10_000)
        events += page.events
        if not page.events:
            return events


def summary(events: list[herald.Event]) -> list[tuple[int, str, Any]]:
    return [(e.position, e.type, e.data) for e in events]


def assert_reads_back(client: herald.Client, acked: Acked, stream: str,
                      exactly: bool = True) -> list[herald.Event]:
    """Every acknowledged event is there, at its position; with ``exactly``, nothing
    else is (no append could have landed without being acknowledged)."""
    events = read_all(client, stream)
    assert [e.position for e in events] == list(range(len(events))), "positions are dense"
    expected = acked.expected(stream)
    got = summary(events)
    if exactly:
        assert got == expected
    else:
        have = {position: (kind, data) for position, kind, data in got}
        assert all(have.get(p) == (k, d) for p, k, d in expected), "an acknowledged event is lost"
    return events


def check(data: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    """``herald check`` in-process: (exit code, what it printed)."""
    capsys.readouterr()
    code = cli.main(["check", "--data", str(data), *flags])
    return code, capsys.readouterr().out


def assert_check_clean(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(data, capsys)
    assert code == 0 and out.rstrip().endswith("clean"), out


class StraceLog:
    """What strace writes to its ``-o`` file, as it writes it."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        """The first line that matches ``pattern`` (a regex), as soon as it is there."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.text().splitlines():
                if compiled.search(line):
                    return line
            time.sleep(0.005)
        raise AssertionError(f"strace never showed {pattern!r}:\n{self.text()[-3000:]}")


class SyscallTrap(StraceLog):
    """strace attached to a running process (all its threads, and those it starts).

    ``args`` choose what is traced and done, e.g. ``-e trace=fdatasync -P FILE -e
    inject=fdatasync:error=ENOSPC`` makes every fdatasync of FILE fail, and ``-e
    inject=openat:delay_enter=2000000`` holds the process two seconds as it enters
    each openat, long enough to kill it there. strace prints a call's name and
    arguments as it is entered (and its result as it returns), before any delay, so
    ``wait_for`` sees the call while the process is held in it. ``-y`` shows the path
    behind every file descriptor; ``-s 0`` leaves out the bytes written.
    """

    def __init__(self, pid: int, args: list[str], log: Path) -> None:
        super().__init__(log)
        self.pid = pid
        strace = require_tool("strace")
        self.process = subprocess.Popen(
            [strace, "-f", "-qq", "-y", "-s", "0", "-o", str(log), "-p", str(pid), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not self._attached():
            if self.process.poll() is not None:
                assert self.process.stderr is not None
                raise RuntimeError(f"strace failed: {self.process.stderr.read().decode()}")
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.01)

    def _attached(self) -> bool:
        tasks = Path(f"/proc/{self.pid}/task")
        try:
            statuses = [(t / "status").read_text() for t in tasks.iterdir()]
        except FileNotFoundError:
            return False
        return all(re.search(r"^TracerPid:\s+[1-9]", s, re.M) for s in statuses)

    def detach(self) -> None:
        """Let the process go on untraced (strace detaches on SIGINT)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        self.close()

    def close(self) -> None:
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
