"""Reads: only durable records, found with the sparse index and read with ``pread``.

An index entry per ~4 KiB of log: bisect, then scan at most one interval. Every
record read is checked (its CRC, and that it holds the position that follows the
one before); damage is judged as recovery and `herald check` judge it.
"""

from __future__ import annotations

import asyncio
import bisect
import os

import msgspec

from ...codec import Record
from ...errors import CorruptRecord
from ..base import READ_CHUNK_BYTES
from .segments import (
    INDEX_INTERVAL_BYTES,
    _classify,
    _Damaged,
    _scan,
    _Segment,
    _storage_error,
    _Stream,
)

# Reads at most this large run on the event loop: a pread from the page cache of
# this size costs microseconds, less than a hop to a thread.
INLINE_READ_BYTES = 64 * 1024


class _IdOnly(msgspec.Struct):
    id: str | None = None


class _IdsOnly(msgspec.Struct):
    e: list[_IdOnly]


_ids_decoder = msgspec.json.Decoder(_IdsOnly)


class _UntrustedEntry(Exception):
    """An index entry did not lead to the record it names (see _read_from_entry)."""


async def _read(st: _Stream, start: int, max_bytes: int) -> list[Record]:
    """The records from ``start``: inline when the scan is short, else in a thread."""
    if start >= st.head:
        return []
    segment = _segment_for(st, start)
    if segment is None:
        return []
    span = segment.size - _index_offset(segment, start)
    if span <= INLINE_READ_BYTES:
        return _read_sync(st, start, max_bytes, st.head)
    return await asyncio.to_thread(_read_sync, st, start, max_bytes, st.head)


def _segment_for(st: _Stream, position: int) -> _Segment | None:
    segments = st.segments
    lo, hi = 0, len(segments)
    while lo < hi:
        mid = (lo + hi) // 2
        if segments[mid].base <= position:
            lo = mid + 1
        else:
            hi = mid
    if lo == 0:
        return None
    segment = segments[lo - 1]
    # An empty segment left by a crash during a roll holds nothing.
    while segment.end <= position and lo < len(segments):
        segment = segments[lo]
        lo += 1
    return segment


def _index_offset(segment: _Segment, position: int) -> int:
    i = bisect.bisect_right(segment.index_pos, position)
    return segment.index_off[i - 1] if i else 0


def _read_sync(st: _Stream, start: int, max_bytes: int, stop: int) -> list[Record]:
    """Records from the segment holding ``start``, up to ``max_bytes`` and ``stop``."""
    segment = _segment_for(st, start)
    if segment is None:
        return []
    entry = bisect.bisect_right(segment.index_pos, start)
    try:
        fd = os.open(segment.path, os.O_RDONLY)
        try:
            while True:
                try:
                    return _read_from_entry(st, segment, fd, entry, start, max_bytes, stop)
                except _UntrustedEntry:
                    entry -= 1
        finally:
            os.close(fd)
    except OSError as exc:
        raise _storage_error(exc, f"reading stream {st.name}") from exc


def _read_from_entry(st: _Stream, segment: _Segment, fd: int, entry: int, start: int,
                     max_bytes: int, stop: int) -> list[Record]:
    """Scan from index entry ``entry`` (0: the segment's start) to ``start`` and read.

    Every record is checked: its CRC, and that it holds the position that follows
    the one before. Damage between the entry and ``start`` is stepped over when an
    intact record follows it (the damaged positions lie before ``start``); damage
    at or after ``start`` ends the read: the records before it are returned, or, if
    there are none, CorruptRecord names the damaged range.
    """
    offset = segment.index_off[entry - 1] if entry else 0
    position = segment.index_pos[entry - 1] if entry else segment.base
    size = segment.size  # durable bytes only
    out: list[Record] = []
    total = 0
    chunk = max(max_bytes, INDEX_INTERVAL_BYTES)
    at_entry = entry > 0  # the first record must be the one the entry names
    scan_from: int | None = offset
    while scan_from is not None:
        steps, scan_from = _scan(fd, scan_from, size, chunk=chunk), None
        for at, step in steps:
            record = step.record
            if record is not None and record.base == position:
                at_entry = False
                position = record.end
                if record.end <= start:
                    continue
                if record.base >= stop or (out and total + len(record.raw) > max_bytes):
                    return out
                out.append(record)
                total += len(record.raw)
                continue
            if out:
                # The intact records before the damage are served; the next read,
                # from the damaged position, reports it.
                return out
            if at_entry:
                # The index is a hint and is never fsynced: an entry that does not
                # lead to the record it names is not evidence of damage.
                raise _UntrustedEntry
            damaged = _classify(fd, at, position, step, size, segment.end)
            if (damaged.resume_offset is not None and damaged.last is not None
                    and damaged.last < start):
                scan_from, position = damaged.resume_offset, damaged.last + 1
                break
            raise _damage_error(st, segment, damaged)
    return out


def _damage_error(st: _Stream, segment: _Segment, damaged: _Damaged) -> CorruptRecord:
    first = damaged.first
    last = damaged.last if damaged.last is not None else max(first, segment.end - 1)
    return CorruptRecord(
        f"stream {st.name}: positions {first}…{last} are damaged ({damaged.reason}); "
        f"they are not served. Reads from position {last + 1} on still work.",
        stream=st.name, first=first, last=last)


def _read_ids(
    st: _Stream, start: int, stop: int
) -> list[tuple[int, int, list[tuple[str, int]]]]:
    """The supplied ids of the records holding positions ``start`` … ``stop``."""
    batches: list[tuple[int, int, list[tuple[str, int]]]] = []
    position = start
    while position < stop:
        records = _read_sync(st, position, READ_CHUNK_BYTES * 8, stop)
        if not records:
            break
        for record in records:
            try:
                events = _ids_decoder.decode(record.body).e
            except msgspec.MsgspecError as exc:
                raise CorruptRecord(f"stream {st.name}: record at {record.base} does not "
                                    f"decode", stream=st.name, first=record.base) from exc
            ids = [(e.id, record.base + i) for i, e in enumerate(events) if e.id is not None]
            batches.append((record.base, record.end, ids))
        position = records[-1].end
    return batches
