"""Recovery on open: each stream's segments found, the last one re-scanned.

The index is checked against its segment and cut where it points past the log; the
last segment is scanned from its last index entry and a torn tail is cut. Damage
anywhere else is never repaired away: the stream is marked damaged (see the package
docstring).
"""

from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path

from ...errors import CorruptRecord
from ...logsafe import logsafe
from .segments import (
    _SEGMENT_NAME,
    INDEX_INTERVAL_BYTES,
    _classify,
    _index_step,
    _load_index,
    _pack_index,
    _record_starts_at,
    _scan,
    _Segment,
    _segment_name,
    _Stream,
    _write_index,
)

log = logging.getLogger("herald.files")


def _recover(name: str, directory: Path) -> _Stream:
    stream = _Stream(name=name, dir=directory)
    bases = sorted(int(m.group(1)) for p in directory.iterdir()
                   if (m := _SEGMENT_NAME.fullmatch(p.name)))
    expected = bases[0] if bases else 0
    for i, base in enumerate(bases):
        path = directory / f"{_segment_name(base)}.log"
        size = path.stat().st_size
        positions, offsets = _load_index(path.with_suffix(".idx"), size)
        segment = _Segment(base=base, path=path, size=size, end=base,
                           index_pos=positions, index_off=offsets)
        if base != expected and stream.damaged is None:
            stream.damaged = CorruptRecord(
                f"stream {name}: segment {path.name} starts at {base}, expected {expected}",
                stream=name, first=expected, last=base - 1)
        if i == len(bases) - 1:
            _recover_tail(stream, segment)
        else:
            # Sealed segments were complete when the next one was created; the next
            # segment's name is this one's end. `herald check` verifies them fully.
            segment.end = bases[i + 1]
        stream.segments.append(segment)
        stream.bytes += segment.size
        expected = segment.end
    stream.head = stream.next = expected
    if stream.segments:
        stream.last_time = _last_time(stream)
    return stream


def _recover_tail(stream: _Stream, segment: _Segment) -> None:
    """Scan the last segment from its last index entry; cut a torn tail.

    Damage with a valid record after it is stepped over (the stream then refuses
    appends, and reads of the damaged range fail), so that the records after it
    stay readable and the head stays where it was.
    """
    if segment.index_pos:
        start_off = segment.index_off[-1]
        position = segment.index_pos[-1]
    else:
        start_off, position = 0, segment.base
    fd = os.open(segment.path, os.O_RDWR)
    try:
        if start_off and not _record_starts_at(fd, start_off, position):
            # The index is never fsynced: an entry that does not point at the record
            # it names is not trusted. Scan the whole segment; the index is rebuilt.
            del segment.index_pos[:]
            del segment.index_off[:]
            start_off, position = 0, segment.base
        # Entries after the re-scan point are re-derived by the scan below.
        new_pos: list[int] = []
        new_off: list[int] = []
        since = INDEX_INTERVAL_BYTES  # forces an entry at the scan start
        good_end = start_off
        offset: int | None = start_off
        while offset is not None:
            from_offset, offset = offset, None
            for at, step in _scan(fd, from_offset, segment.size):
                record = step.record
                if record is not None and record.base == position:
                    indexed, since = _index_step(since, at, len(record.raw))
                    if indexed:
                        new_pos.append(record.base)
                        new_off.append(at)
                    position = record.end
                    good_end = at + len(record.raw)
                    continue
                damaged = _classify(fd, at, position, step, segment.size, None)
                if damaged.torn:
                    log.warning("stream %s: cut a torn tail of %d bytes at position %d "
                                "(%s)", logsafe(stream.name), segment.size - at, position,
                                logsafe(damaged.reason))
                    os.ftruncate(fd, at)
                    os.fsync(fd)
                    segment.size = good_end = at
                    break
                where = (f"positions {position}…{damaged.last}" if damaged.last is not None
                         else f"position {position}")
                error = CorruptRecord(
                    f"stream {stream.name}: damaged record at {where} in "
                    f"{segment.path.name} ({damaged.reason}); appends are refused until "
                    f"the damage is dealt with (see `herald check --data DIR`)",
                    stream=stream.name, first=position, last=damaged.last)
                log.error("%s", logsafe(error.message))
                if stream.damaged is None:
                    stream.damaged = error
                if damaged.resume_offset is not None and damaged.last is not None:
                    # The records after the damage are intact and stay readable.
                    offset, position = damaged.resume_offset, damaged.last + 1
                    since = INDEX_INTERVAL_BYTES  # an entry right after the damage
                break
        # Rewrite the index tail: keep entries before the scan start, add the rest.
        keep = bisect.bisect_left(segment.index_off, start_off)
        del segment.index_pos[keep:]
        del segment.index_off[keep:]
        segment.index_pos.extend(new_pos)
        segment.index_off.extend(new_off)
        idx_bytes = _pack_index(zip(segment.index_pos, segment.index_off, strict=True))
        try:
            _write_index(segment.path.with_suffix(".idx"), idx_bytes)
        except OSError as exc:
            # A full disk must not keep Herald from starting: the entries are in
            # memory, and the writer cuts a partial entry before adding more.
            log.warning("stream %s: cannot rewrite the index of %s (%s); reads scan "
                        "further until it is written", logsafe(stream.name),
                        logsafe(segment.path.name), logsafe(exc))
    finally:
        os.close(fd)
    segment.end = position
    # Bytes after the last intact record (garbage no crash could leave) are never
    # read: readers see only up to it.
    segment.size = good_end


def _last_time(stream: _Stream) -> int:
    """The time of the last durable record (times never go backwards)."""
    for segment in reversed(stream.segments):
        if segment.end == segment.base:
            continue
        fd = os.open(segment.path, os.O_RDONLY)
        try:
            last_time = 0
            start = segment.index_off[-1] if segment.index_off else 0
            for _offset, step in _scan(fd, start, segment.size):
                if step.record is None:
                    break
                last_time = max(last_time, step.record.time_us)
            if last_time:
                return last_time
        finally:
            os.close(fd)
    return 0
