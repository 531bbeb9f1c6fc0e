"""The segment format, and what scanning a segment finds.

Shared by recovery, the writer, reads and `herald check`: file names, the sparse
index (its entry and the rule for which records get one), walking a segment's
records, and judging damage — the same judgement everywhere, so that the API's
``corrupt_record`` and `herald check` name the same positions. Also the state each
stream keeps of its segments, and small helpers for the files on disk.

Every file the engine creates is FILE_MODE (0600) and every directory private
(0700, herald.secretfiles.private_dir), whatever the umask: the streams are the
modules' data, and no other local user may read them.
"""

from __future__ import annotations

import errno
import os
import re
import struct
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ... import codec
from ...codec import HEADER_SIZE, Record
from ...errors import CorruptRecord, HeraldError, ServerError, StorageFull
from ..base import READ_CHUNK_BYTES

if TYPE_CHECKING:
    from .writer import _Writer

# A sparse-index entry at least every this many bytes of log (Kafka's
# index.interval.bytes): a read from any position scans at most this much plus the
# one batch holding the position.
INDEX_INTERVAL_BYTES = 4096

_INDEX_ENTRY = struct.Struct("<QQ")
# Segments, indexes, checkpoints, the lock: the owner's only.
FILE_MODE = 0o600
_SEGMENT_NAME = re.compile(r"(\d{20})\.log")


def _segment_name(base: int) -> str:
    return f"{base:020d}"


def _index_step(since: int, offset: int, length: int) -> tuple[bool, int]:
    """Whether the record at ``offset`` (``length`` bytes long) gets an index entry,
    and the ``since`` to pass for the record after it.

    The one rule for the sparse index, wherever entries are made: by the writer, by
    recovery's re-scan of the last segment, and by `herald check --repair`. The first
    record of a segment gets an entry, and then the first record that starts
    INDEX_INTERVAL_BYTES or more after the last entry (``since`` counts the bytes of
    log from it), so a read scans at most one interval. A scan that must begin with
    an entry starts with ``since = INDEX_INTERVAL_BYTES``.
    """
    indexed = since >= INDEX_INTERVAL_BYTES or offset == 0
    return indexed, (0 if indexed else since) + length


def _pack_index(entries: Iterable[tuple[int, int]]) -> bytes:
    """Index entries, (position, offset) pairs, as the index file holds them."""
    return b"".join(_INDEX_ENTRY.pack(p, o) for p, o in entries)


# --- the state each stream keeps --------------------------------------------------


@dataclass
class _Segment:
    """A segment as readers see it: only durable bytes."""

    base: int
    path: Path
    size: int = 0  # durable bytes
    end: int = 0  # the position after its last durable record
    index_pos: array = field(default_factory=lambda: array("q"))  # type: ignore[type-arg]
    index_off: array = field(default_factory=lambda: array("q"))  # type: ignore[type-arg]


@dataclass
class _Stream:
    name: str
    dir: Path
    segments: list[_Segment] = field(default_factory=list)
    head: int = 0  # durable head: what readers may see
    next: int = 0  # head counting queued, not yet durable writes
    last_time: int = 0
    bytes: int = 0
    damaged: CorruptRecord | None = None
    failed: HeraldError | None = None  # a write failed and could not be undone
    writer: _Writer | None = None
    roll_due: bool = False  # the last segment is sealed: the next record starts a new one


# --- scanning segments (shared by recovery, reads and `herald check`) ----------------


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


@dataclass
class _ScanStep:
    record: Record | None = None
    damage_offset: int | None = None
    damage_reason: str = ""
    resync_offset: int | None = None  # where a valid record follows the damage
    torn: bool = False  # the damage is an incomplete or torn last record


def _scan(
    fd: int, start: int, size: int, chunk: int = READ_CHUNK_BYTES
) -> Iterator[tuple[int, _ScanStep]]:
    """Walk the records of a segment file from ``start`` to ``size``.

    Yields (offset, step). A step is a record, or damage: then ``torn`` says whether
    it is an unfinished last record (safe to cut), and ``resync_offset`` where the
    scan continues if a valid record follows the damage.
    """
    offset = start
    while offset < size:
        length = min(chunk, size - offset)
        buf = _pread_all(fd, length, offset)
        pos = 0
        while True:
            try:
                record = codec.decode_record_at(buf, pos)
            except CorruptRecord as exc:
                yield offset + pos, _damage_step(fd, offset + pos, size, exc.message)
                return
            if record is None:
                break
            yield offset + pos, _ScanStep(record=record)
            pos += len(record.raw)
        if pos == 0:
            # Not even one record fits the chunk: a large record, or a torn one.
            if size - offset < HEADER_SIZE:
                yield offset, _ScanStep(damage_offset=offset, damage_reason="incomplete header",
                                        torn=True)
                return
            header = _pread_all(fd, HEADER_SIZE, offset)
            try:
                _base, _count, _time, body_len, _crc = codec._check_header(header, 0)
            except CorruptRecord as exc:
                yield offset, _damage_step(fd, offset, size, exc.message)
                return
            need = HEADER_SIZE + body_len
            if offset + need > size:
                # A torn write leaves nothing valid after it; a flipped length bit does.
                later = _next_record(fd, offset + 1, size)
                yield offset, _ScanStep(
                    damage_offset=offset, torn=later is None, resync_offset=later,
                    damage_reason="incomplete record" if later is None else
                    "record length runs past the end of the segment")
                return
            chunk = need
            continue
        offset += pos
        chunk = READ_CHUNK_BYTES


def _damage_step(fd: int, offset: int, size: int, reason: str) -> _ScanStep:
    """Classify damage at ``offset``: a torn tail, or damage with data after it."""
    step = _ScanStep(damage_offset=offset, damage_reason=reason)
    header = _pread_all(fd, HEADER_SIZE, offset)
    try:
        _b, _c, _t, body_len, _crc = codec._check_header(header, 0)
        declared_end: int | None = offset + HEADER_SIZE + body_len
    except (CorruptRecord, struct.error):
        declared_end = None
    if declared_end is not None:
        if declared_end >= size:
            step.torn = True  # the last record, torn mid-write
            return step
        try:
            following = codec.decode_record_at(_read_record_bytes(fd, declared_end, size), 0)
        except CorruptRecord:
            following = None
        if following is not None:
            step.resync_offset = declared_end
        elif size - declared_end <= (1 << 20) and not _pread_all(
                fd, size - declared_end, declared_end).strip(b"\0"):
            # Zeros after it: the writes that followed never reached the disk either.
            step.torn = True
        else:
            # The length itself may be what was damaged: look for the next record.
            step.resync_offset = _next_record(fd, offset + 1, size)
        return step
    # A broken header. Zeros to the end of the file are an unwritten tail (a crash
    # after the size grew but before the data reached the disk): torn. So is the start
    # of a header followed by zeros (the header straddled a page that was not written).
    if size - offset <= (1 << 20) and len(
            _pread_all(fd, size - offset, offset).rstrip(b"\0")) < HEADER_SIZE:
        step.torn = True
    else:
        step.resync_offset = _next_record(fd, offset + 1, size)
    return step


@dataclass(frozen=True)
class _Damaged:
    """A damaged stretch of a segment, as reads, recovery and `herald check` all see it.

    Positions ``first`` … ``last`` are unreadable; ``last`` is None when nothing valid
    follows and the segment's end is unknown. ``resume_offset`` is where the next valid
    record starts (holding ``last + 1``), if there is one.
    """

    first: int
    last: int | None
    reason: str
    resume_offset: int | None = None
    torn: bool = False


def _classify(fd: int, at: int, position: int, step: _ScanStep, size: int,
              end: int | None) -> _Damaged:
    """What a scan found at ``at`` where the record holding ``position`` should be.

    The damaged range ends where the next valid record begins: the positions between
    are exactly those of the damaged record(s). A record found by searching must hold
    later positions than the damage, or it is no anchor (a stray copy, say). Without
    an anchor the range runs to ``end`` (the segment's end, when known).
    """
    unknown_last = end - 1 if end is not None and end > position else None
    record = step.record
    if record is not None:  # intact, but not the record that should be here
        reason = f"record base {record.base}, expected {position}"
        if record.base > position:  # positions are missing; this record is an anchor
            return _Damaged(position, record.base - 1, reason, resume_offset=at)
        return _Damaged(position, unknown_last, reason)
    reason = step.damage_reason or "damaged record"
    resume = step.resync_offset
    if resume is not None:
        try:
            following = codec.decode_record_at(_read_record_bytes(fd, resume, size), 0)
        except CorruptRecord:
            following = None
        if following is not None and following.base > position:
            return _Damaged(position, following.base - 1, reason, resume_offset=resume)
    return _Damaged(position, unknown_last, reason, torn=step.torn)


def _read_record_bytes(fd: int, offset: int, size: int) -> bytes:
    header = _pread_all(fd, HEADER_SIZE, offset)
    if len(header) < HEADER_SIZE:
        return header
    try:
        _b, _c, _t, body_len, _crc = codec._check_header(header, 0)
    except CorruptRecord:
        return header
    return _pread_all(fd, min(HEADER_SIZE + body_len, size - offset), offset)


def _next_record(fd: int, start: int, size: int) -> int | None:
    """The offset of the first valid record at or after ``start``, if any (only on
    the damage path: it tells a torn tail, after which nothing is valid, from damage
    with records after it, which must never be cut)."""
    offset = start
    while offset < size:
        buf = _pread_all(fd, min(READ_CHUNK_BYTES, size - offset), offset)
        at = buf.find(codec.MAGIC)
        while at != -1:
            try:
                if codec.decode_record_at(_read_record_bytes(fd, offset + at, size)) is not None:
                    return offset + at
            except CorruptRecord:
                pass
            at = buf.find(codec.MAGIC, at + 1)
        offset += max(len(buf) - len(codec.MAGIC) + 1, 1)  # a magic may straddle chunks
    return None


def _record_starts_at(fd: int, offset: int, position: int) -> bool:
    """Whether a record holding ``position`` first starts at ``offset``."""
    try:
        return codec._check_header(_pread_all(fd, HEADER_SIZE, offset), 0)[0] == position
    except (CorruptRecord, struct.error):
        return False


def _load_index(path: Path, log_size: int) -> tuple[array, array]:  # type: ignore[type-arg]
    """Index entries that are plausible: increasing, and inside the log."""
    positions: array = array("q")  # type: ignore[type-arg]
    offsets: array = array("q")  # type: ignore[type-arg]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return positions, offsets
    usable = len(data) - len(data) % _INDEX_ENTRY.size
    last_pos = last_off = -1
    for pos, off in _INDEX_ENTRY.iter_unpack(data[:usable]):
        if pos <= last_pos or off <= last_off or off >= log_size:
            break
        positions.append(pos)
        offsets.append(off)
        last_pos, last_off = pos, off
    return positions, offsets


def _write_index(path: Path, data: bytes) -> None:
    """Replace an index file's contents (created FILE_MODE if missing). Not atomic, and
    need not be: an index is checked against its log on open, a cut one is cut."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(exc: OSError, what: str) -> HeraldError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left on the storage device ({what}); nothing was written")
    return ServerError(f"storage error ({what}): {exc.strerror or exc}", code="storage_error")
