"""`herald check`: verify a data directory offline, and repair what is safe to.

Every record's CRC and sequence, and every index entry, judged as reads and recovery
judge them (``segments._classify``). ``--repair`` cuts a torn tail of a stream's last
segment and rewrites indexes; damage in the middle of a stream is only reported.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import StorageUnavailable
from .segments import (
    _INDEX_ENTRY,
    _SEGMENT_NAME,
    FILE_MODE,
    INDEX_INTERVAL_BYTES,
    _classify,
    _index_step,
    _pack_index,
    _scan,
    _write_index,
)

__all__ = ["CheckReport", "Damage", "check_data_dir"]


@dataclass
class Damage:
    """A damaged stretch of a segment. ``last`` is None when unknown."""

    stream: str
    segment: str
    offset: int
    first: int
    last: int | None
    reason: str

    def describe(self) -> str:
        where = f"positions {self.first}…{self.last}" if self.last is not None else (
            f"positions from {self.first}")
        return f"stream {self.stream}: {where} damaged ({self.reason}) in {self.segment} " \
               f"at byte {self.offset}"


@dataclass
class CheckReport:
    streams: int = 0
    segments: int = 0
    records: int = 0
    events: int = 0
    bytes: int = 0
    damage: list[Damage] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    index_problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.damage and not self.index_problems


def check_data_dir(
    data_dir: Path, repair: bool = False, progress: Callable[[int, int], None] | None = None
) -> CheckReport:
    """Verify every record's CRC and sequence, and every index entry.

    With ``repair``, cut a torn tail of a stream's last segment and rewrite indexes;
    damage in the middle of a stream is only reported. ``progress(done, total)`` is
    called with bytes checked. Must not run against a data directory in use when
    repairing (the lock is taken).
    """
    report = CheckReport()
    streams_dir = Path(data_dir) / "streams"
    if not streams_dir.is_dir():
        raise StorageUnavailable(f"{data_dir} is not a Herald data directory (no streams/)")
    lock_fd = None
    if repair:
        lock_fd = os.open(Path(data_dir) / "herald.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock_fd)
            raise StorageUnavailable(
                f"{data_dir} is in use by a running Herald; stop it before --repair") from exc
    try:
        segments_by_stream: list[tuple[str, list[Path]]] = []
        total = 0
        for directory in sorted(p for p in streams_dir.iterdir() if p.is_dir()):
            paths = sorted(p for p in directory.iterdir() if _SEGMENT_NAME.fullmatch(p.name))
            segments_by_stream.append((directory.name, paths))
            total += sum(p.stat().st_size for p in paths)
        done = 0

        def step(offset: int) -> None:
            if progress is not None:
                progress(done + offset, total)

        for name, paths in segments_by_stream:
            report.streams += 1
            expected: int | None = None
            for i, path in enumerate(paths):
                report.segments += 1
                next_base = int(paths[i + 1].stem) if i + 1 < len(paths) else None
                expected, checked = _check_segment(name, path, expected, next_base, repair,
                                                   report, step)
                done += checked
                step(0)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    return report


def _check_segment(
    stream: str, path: Path, expected: int | None, next_base: int | None, repair: bool,
    report: CheckReport, progress: Callable[[int], object],
) -> tuple[int | None, int]:
    """Check one segment; ``next_base`` is the next segment's first position (None for
    the last segment, the only one that may end in a torn tail)."""
    base = int(path.stem)
    if expected is not None and base != expected:
        report.damage.append(Damage(stream, path.name, 0, expected, base - 1,
                                    f"segment starts at {base}, expected {expected}"))
    size = path.stat().st_size
    position = base
    rebuilt: list[tuple[int, int]] = []
    since = INDEX_INTERVAL_BYTES
    record_at: dict[int, int] = {}
    fd = os.open(path, os.O_RDWR if repair else os.O_RDONLY)
    try:
        scan_from: int | None = 0
        while scan_from is not None:
            steps, scan_from = _scan(fd, scan_from, size), None
            for at, step in steps:
                record = step.record
                if record is not None and record.base == position:
                    record_at[at] = record.base
                    indexed, since = _index_step(since, at, len(record.raw))
                    if indexed:
                        rebuilt.append((record.base, at))
                    report.records += 1
                    report.events += record.count
                    report.bytes += len(record.raw)
                    position = record.end
                    progress(at + len(record.raw))
                    continue
                # The same judgement as reads and recovery make: the damaged range ends
                # where the next intact record begins.
                damaged = _classify(fd, at, position, step, size, next_base)
                if damaged.torn and next_base is None:
                    if repair:
                        os.ftruncate(fd, at)
                        os.fsync(fd)
                        report.repaired.append(
                            f"stream {stream}: cut a torn tail of {size - at} bytes at position "
                            f"{position} in {path.name}")
                        size = at
                    else:
                        report.damage.append(Damage(
                            stream, path.name, at, position, None,
                            f"torn tail: {damaged.reason} (--repair cuts it)"))
                    break
                report.damage.append(Damage(stream, path.name, at, position, damaged.last,
                                            damaged.reason))
                if damaged.resume_offset is not None and damaged.last is not None:
                    scan_from, position = damaged.resume_offset, damaged.last + 1
                elif next_base is not None:
                    position = next_base  # reported up to the next segment: not twice
                break
    finally:
        os.close(fd)
    _check_index(stream, path, record_at, rebuilt, repair, report)
    return position, size


def _check_index(stream: str, path: Path, record_at: dict[int, int],
                 rebuilt: list[tuple[int, int]], repair: bool, report: CheckReport) -> None:
    idx = path.with_suffix(".idx")
    try:
        data = idx.read_bytes()
    except FileNotFoundError:
        data = b""
    entries = list(_INDEX_ENTRY.iter_unpack(data[: len(data) - len(data) % _INDEX_ENTRY.size]))
    bad = [(p, o) for p, o in entries if record_at.get(o) != p]
    if bad or len(data) % _INDEX_ENTRY.size:
        if repair:
            _write_index(idx, _pack_index(rebuilt))
            report.repaired.append(f"stream {stream}: rewrote index {idx.name}")
        else:
            report.index_problems.append(
                f"stream {stream}: index {idx.name} has {len(bad)} entries that do not point at "
                f"a record (--repair rewrites it)")
