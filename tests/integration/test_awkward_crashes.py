"""SIGKILL at the awkward moments: in the middle of a segment roll, and around index
writes — landed exactly there, every time, not by chance.

The technique: ``strace`` attached to the running ``herald serve`` holds it at one
chosen system call, for seconds, at the call's entry (before the kernel does it) or
its exit (after); strace prints the call as the process enters it (and its result as
it returns), so the test sees the call while the process is held in it, and kills the
process there with SIGKILL. Which call is chosen by its name and its file: appends
of one fixed size make the position of the next segment — so its file name —
predictable, and ``-P FILE`` confines strace to the calls on that file. Each test
then checks on disk that the kill landed in its window (the new segment does not
exist yet; exists, empty, without an index; …) before restarting Herald.

Compared with random kills (``test_crash.py``, which lands in a roll window now and
then), every kill here lands in its window: the windows are a few microseconds wide.

The moments, in the order an append meets them:

* **roll, before the next segment exists**: the old one sealed (fsynced, indexed);
* **roll, the next log created, its index not**;
* **roll, both created, the directory not yet fsynced**;
* **roll, the first record written to the next segment, not fsynced**;
* **roll, that record fsynced, its index entry not yet written**;
* **index write, held before it**: records fsynced, their index entry not written;
* **index write, just after it**: written, the append not yet acknowledged;
* **recovery's index rewrite**: on restart, the index truncated and not yet rewritten.

After each kill, Herald restarts on the data directory: every acknowledged event is
there at its position, positions are dense, the batch in flight is either wholly
there or wholly absent (which one the moment decides, and the test says which: a
killed process's written pages survive it), sent again it is appended once or
reported as a duplicate, segments keep rolling, and ``herald check`` is clean.
These are process crashes: the page cache survives them. Power loss is what the
fsync ordering is for, and is not simulated here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import herald
from herald import codec

from ..conftest import ROOT, ServerProcess, require_tool
from .faults import Acked, StraceLog, SyscallTrap, assert_check_clean, assert_reads_back

STREAM = "awkward"
HOLD = 5_000_000  # µs strace holds the process at the chosen call: ample time to kill it
TIMEOUT = 60.0


def batch(n: int) -> list[dict[str, Any]]:
    # Fixed size (numbers zero-padded): every record is as long as the first, so the
    # position at which the next segment starts can be foretold.
    return [{"type": "Awkward", "data": {"n": f"{n:06d}", "pad": "a" * 700}, "id": f"e-{n:06d}"}]


@dataclass(frozen=True)
class Moment:
    segment_bytes: int
    # strace arguments and the line to kill at, from the stream's directory, the base
    # of the next segment and the active segment's index file
    trap: Callable[[Path, int, Path], tuple[list[str], str]]
    # on disk after the kill: proof that it landed in its window
    landed: Callable[[Path, int, str], None]
    in_flight_landed: bool  # whether the batch in flight is in the log after the kill


def held(syscall: str, at: str, path: Path) -> list[str]:
    return ["-e", f"trace={syscall}", "-P", str(path),
            "-e", f"inject={syscall}:delay_{at}={HOLD}"]


def name(base: int, suffix: str) -> str:
    return f"{base:020d}.{suffix}"


def roll_before_create(d: Path, base: int, idx: Path) -> tuple[list[str], str]:
    log = d / name(base, "log")
    return held("openat", "enter", log), rf'openat\(.*"{log}", O_WRONLY\|O_CREAT\|O_TRUNC'


def roll_log_created(d: Path, base: int, idx: Path) -> tuple[list[str], str]:
    log = d / name(base, "log")
    return held("openat", "exit", log), rf'openat\(.*"{log}", O_WRONLY\|O_CREAT.*\) = \d+'


def roll_before_dir_fsync(d: Path, base: int, idx: Path) -> tuple[list[str], str]:
    return held("fsync", "enter", d), rf"fsync\(\d+<{d}>"


def roll_first_record_written(d: Path, base: int, idx: Path) -> tuple[list[str], str]:
    log = d / name(base, "log")
    return held("pwrite64", "exit", log), rf"pwrite64\(\d+<{log}>, .*, 0\) += \d+"


def roll_first_record_synced(d: Path, base: int, idx: Path) -> tuple[list[str], str]:
    log = d / name(base, "log")
    return held("fdatasync", "exit", log), rf"fdatasync\(\d+<{log}>\) += 0"


def index_write_before(d: Path, base: int, idx: Path) -> tuple[list[str], str]:
    # an entry after the first: not the one a roll writes
    return held("pwrite64", "enter", idx), rf"pwrite64\(\d+<{idx}>, .*, 16, [1-9]\d*"


def index_write_after(d: Path, base: int, idx: Path) -> tuple[list[str], str]:
    return held("pwrite64", "exit", idx), rf"pwrite64\(\d+<{idx}>, .*, 16, [1-9]\d*\) += 16"


def files_of(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def landed_before_create(d: Path, base: int, line: str) -> None:
    assert name(base, "log") not in files_of(d)


def landed_log_created(d: Path, base: int, line: str) -> None:
    assert (d / name(base, "log")).stat().st_size == 0
    assert name(base, "idx") not in files_of(d)


def landed_before_dir_fsync(d: Path, base: int, line: str) -> None:
    assert (d / name(base, "log")).stat().st_size == 0
    assert (d / name(base, "idx")).stat().st_size == 0


def landed_first_record_written(d: Path, base: int, line: str) -> None:
    assert (d / name(base, "log")).stat().st_size > 0
    assert (d / name(base, "idx")).stat().st_size == 0


landed_first_record_synced = landed_first_record_written  # the same files; later call


def landed_index(written: bool) -> Callable[[Path, int, str], None]:
    def landed(d: Path, base: int, line: str) -> None:
        match = re.search(r"<([^>]+\.idx)>, .*, 16, (\d+)", line)
        assert match, line
        offset = int(match.group(2))
        assert Path(match.group(1)).stat().st_size == offset + (16 if written else 0)
    return landed


MOMENTS = {
    "roll: before the next segment exists":
        Moment(4096, roll_before_create, landed_before_create, False),
    "roll: next log created, its index not":
        Moment(4096, roll_log_created, landed_log_created, False),
    "roll: both created, directory not fsynced":
        Moment(4096, roll_before_dir_fsync, landed_before_dir_fsync, False),
    "roll: first record written, not fsynced":
        Moment(4096, roll_first_record_written, landed_first_record_written, True),
    "roll: first record fsynced, index entry not written":
        Moment(4096, roll_first_record_synced, landed_first_record_synced, True),
    "index write: held before it":
        Moment(64 * 1024, index_write_before, landed_index(False), True),
    "index write: just after it":
        Moment(64 * 1024, index_write_after, landed_index(True), True),
}


class Writer(threading.Thread):
    """Appends one batch at a time until the server dies; records what was acked."""

    def __init__(self, server: ServerProcess, acked: Acked, first: int) -> None:
        super().__init__(daemon=True)
        self.server, self.acked, self.n = server, acked, first
        self.in_flight: list[dict[str, Any]] | None = None
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with self.server.client(timeout=TIMEOUT) as client:
                while True:
                    events = self.in_flight = batch(self.n)
                    result = client.append(STREAM, events)
                    self.acked.add(STREAM, result.first, events)
                    self.in_flight = None
                    self.n += 1
        except herald.TransportError:
            pass  # killed: the batch in flight (if any) is unknown
        except BaseException as exc:  # reported by the test
            self.failure = exc


def next_roll(d: Path, head: int, segment_bytes: int) -> int:
    """The position the next segment will start at, every record being one size."""
    logs = sorted(d.glob("*.log"))
    first = codec.decode_record_at(logs[0].read_bytes(), 0)
    assert first is not None
    size, active = len(first.raw), logs[-1].stat().st_size
    assert active % size == 0 and active > 0, (active, size)
    return head + (segment_bytes - active) // size


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_kill_at_an_awkward_moment_loses_nothing(
    moment: str, server_factory: type[ServerProcess], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = MOMENTS[moment]
    config = tmp_path / "herald.toml"
    config.write_text(f"[storage]\nsegment_bytes = {spec.segment_bytes}\n")
    data = tmp_path / "data"
    server = server_factory(data=data, args=["--config", str(config)]).start()
    directory = data / "streams" / STREAM
    acked = Acked()
    with server.client() as client:
        # Far enough into the segment that the next index entry is not the first.
        for n in range(7):
            acked.add(STREAM, client.append(STREAM, batch(n)).first, batch(n))
    base = next_roll(directory, acked.count(STREAM), spec.segment_bytes)
    args, pattern = spec.trap(directory, base, sorted(directory.glob("*.idx"))[-1])
    assert server.process is not None
    pid = server.process.pid
    trap = SyscallTrap(pid, args, tmp_path / "strace.log")
    writer = Writer(server, acked, first=7)
    writer.start()
    try:
        line = trap.wait_for(pattern, TIMEOUT)
        os.kill(pid, signal.SIGKILL)  # while strace holds it in that call
    finally:
        # strace would only let go of the dead process when its hold runs out.
        trap.process.kill()
        trap.close()
        server.kill()
        writer.join(TIMEOUT)
    assert writer.failure is None, writer.failure
    in_flight = writer.in_flight
    assert in_flight is not None, "the batch in flight was held, not acknowledged"
    spec.landed(directory, base, line)

    restarted = server_factory(data=data, args=["--config", str(config)]).start()
    with restarted.client() as client:
        events = assert_reads_back(client, acked, STREAM, exactly=False)
        head = acked.count(STREAM)
        landed = [e.id for e in events[head:]]
        assert landed == ([in_flight[0]["id"]] if spec.in_flight_landed else []), landed
        # Sent again: appended once, or recognized as there.
        result = client.append(STREAM, in_flight)
        assert result.first == head and (result.appended == 0) == spec.in_flight_landed
        acked.add(STREAM, head, in_flight)
        for n in range(writer.n + 1, writer.n + 12):  # and on, through more rolls
            acked.add(STREAM, client.append(STREAM, batch(n)).first, batch(n))
        assert_reads_back(client, acked, STREAM)
    assert restarted.stop() == 0
    assert_check_clean(data, capsys)
    assert "Traceback" not in server.log + restarted.log


def test_a_kill_during_the_index_rewrite_on_restart_loses_nothing(
    server_factory: type[ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On open, Herald rewrites the active segment's index (truncate, then write):
    killed in between, it finds an empty index the next time, and rebuilds it."""
    strace = require_tool("strace")
    data = tmp_path / "data"
    server = server_factory(data=data).start()
    acked = Acked()
    with server.client() as client:
        for n in range(40):  # several index entries
            acked.add(STREAM, client.append(STREAM, batch(n)).first, batch(n))
    assert server.stop() == 0
    idx = data / "streams" / STREAM / name(0, "idx")
    entries = idx.stat().st_size
    assert entries >= 4 * 16

    log = tmp_path / "strace.log"
    process = subprocess.Popen(
        [strace, "-f", "--seccomp-bpf", "-qq", "-y", "-s", "0", "-o", str(log), "-P", str(idx),
         # the second open of the index: the first reads it (_load_index)
         "-e", "trace=openat", "-e", f"inject=openat:delay_exit={HOLD}:when=2",
         sys.executable, "-m", "herald.cli", "serve", "--data", str(data),
         "--listen", "127.0.0.1:0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        line = StraceLog(log).wait_for(rf'openat\(.*"{idx}", O_WRONLY\|O_CREAT\|O_TRUNC.*\) = \d+',
                             TIMEOUT)
        os.kill(int(line.split()[0]), signal.SIGKILL)  # strace prefixes the pid
    finally:
        process.kill()
        process.wait(TIMEOUT)
    assert idx.stat().st_size == 0, "killed between the truncation and the write"

    restarted = server_factory(data=data).start()
    with restarted.client() as client:
        assert_reads_back(client, acked, STREAM)
        acked.add(STREAM, client.append(STREAM, batch(40)).first, batch(40))
    assert restarted.stop() == 0
    assert idx.stat().st_size >= entries, "rebuilt"
    assert_check_clean(data, capsys)
