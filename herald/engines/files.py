"""The ``files`` engine: Herald's embedded default. One node, crash-safe.

Layout under the data directory::

    streams/<stream>/<first position, 20 digits>.log   segments of records (codec)
    streams/<stream>/<first position, 20 digits>.idx   sparse index: (position, offset)
    checkpoints/<name>                                 one small file per checkpoint
    herald.lock                                        one process at a time

**Writes** (the records the hub placed: ``Engine.write``) are queued. One commit
task drains the queue: it writes every queued record to its segment and fsyncs each
touched segment once, in a worker thread, while new writes queue up behind it —
group commit across streams. A write is answered only after its fsync returned. A
failure between two segments (a full disk at a roll) answers ``PartlyWritten``:
the records before it are durable, the rest are not written.

**Reads** see only durable records. Older positions are found with the sparse index
(an entry per ~4 KiB of log: bisect, then scan at most one interval) and read with
``pread``, in a thread when the read is large. (Live readers are served from the
hub's tail cache and rarely get here.)

**Recovery** on open: the index is checked against its segment and cut where it
points past the log; the last segment is scanned from its last index entry and a
torn tail (an incomplete last record, or a last record whose checksum fails) is cut.
Everything acknowledged was fsynced before it was acknowledged, so it is before the
tail. Damage anywhere else is never "repaired" away: the stream is reported damaged
(appends refused), and reads of the damaged range fail with ``corrupt_record``.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import fcntl
import logging
import os
import re
import struct
from array import array
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from .. import codec
from ..codec import HEADER_SIZE, Record
from ..errors import (
    CorruptRecord,
    HeraldError,
    ServerError,
    StorageFull,
    StorageUnavailable,
)
from ..model import StreamInfo, validate_stream_name
from ..placement import StreamState
from .base import (
    READ_CHUNK_BYTES,
    Checkpoint,
    CheckpointConflict,
    Engine,
    HeadMoved,
    PartlyWritten,
    Write,
    validate_checkpoint_name,
)

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["CheckReport", "Damage", "FilesConfig", "FilesEngine", "FilesSettings", "check_data_dir"]

log = logging.getLogger("herald.files")

# Segments roll when the next record would take them past this size. Smaller
# segments make retention and backup finer-grained; larger ones mean fewer files.
DEFAULT_SEGMENT_BYTES = 256 * 1024 * 1024
# A sparse-index entry at least every this many bytes of log (Kafka's
# index.interval.bytes): a read from any position scans at most this much plus the
# one batch holding the position.
INDEX_INTERVAL_BYTES = 4096
# Reads at most this large run on the event loop: a pread from the page cache of
# this size costs microseconds, less than a hop to a thread.
INLINE_READ_BYTES = 64 * 1024

_INDEX_ENTRY = struct.Struct("<QQ")
_SEGMENT_NAME = re.compile(r"(\d{20})\.log")


class _IdOnly(msgspec.Struct):
    id: str | None = None


class _IdsOnly(msgspec.Struct):
    e: list[_IdOnly]


_ids_decoder = msgspec.json.Decoder(_IdsOnly)


@dataclass(frozen=True)
class FilesSettings:
    """``[storage.files]``: the engine's own keys (docs/configuration.md)."""

    # Segments roll when the next record would take them past this size.
    segment_bytes: int = DEFAULT_SEGMENT_BYTES

    def __post_init__(self) -> None:
        if self.segment_bytes < 4096:
            raise ValueError("segment_bytes must be at least 4096")


@dataclass(frozen=True)
class FilesConfig:
    data_dir: Path
    segment_bytes: int = DEFAULT_SEGMENT_BYTES

    def __post_init__(self) -> None:
        FilesSettings(self.segment_bytes)  # the same check


def _segment_name(base: int) -> str:
    return f"{base:020d}"


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
class _Writer:
    """The active segment as the commit thread writes it. Only that thread uses it."""

    seg_base: int
    log_fd: int
    idx_fd: int
    size: int
    since_index: int
    idx_size: int = 0  # bytes of whole entries in the index file: where the next goes
    synced_size: int = 0  # the size at the last fsync: what a failed write undoes to
    # (position, offset) entries not yet in the index file: those of records not yet
    # fsynced (an index entry must never point at a record a crash could take back),
    # and those whose index write failed (tried again at the next sync)
    pending_index: list[tuple[int, int]] = field(default_factory=list)
    index_failing: bool = False  # the last index write failed (logged once)

    def sync(self) -> None:
        """Make every written record durable; then write their index entries.

        Raises OSError if the records may not be durable (the caller undoes them).
        An index write that fails does not: see ``write_index``.
        """
        os.fdatasync(self.log_fd)
        self.synced_size = self.size
        self.write_index()

    def write_index(self) -> None:
        """Write the pending index entries, best effort.

        Once the fsync returned, the records are durable and their appends will be
        acknowledged. A failed index write (a full disk: the index file may need a new
        block when the log did not) must not undo that: an index entry only shortens
        the scan of a read, and recovery re-derives missing entries. The entries stay
        pending for the next sync, and a partial entry is cut so that later entries
        stay aligned. (Before this, an ENOSPC here failed appends whose records were
        durable, and the next append reused their positions: two records with the
        same position in the log.)
        """
        if not self.pending_index:
            return
        data = b"".join(_INDEX_ENTRY.pack(p, o) for p, o in self.pending_index)
        try:
            written = os.pwrite(self.idx_fd, data, self.idx_size)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write to the index")
        except OSError as exc:
            if not self.index_failing:
                log.warning("cannot write the index of segment %s (%s); reads scan "
                            "further until it is written", _segment_name(self.seg_base), exc)
                self.index_failing = True
            try:
                os.ftruncate(self.idx_fd, self.idx_size)
            except OSError:
                pass  # the next write goes to idx_size anyway and covers the scrap
            return
        self.idx_size += len(data)
        self.pending_index.clear()
        self.index_failing = False


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


@dataclass
class _Pending:
    """One write: a stream's records, written in order, answered together."""

    stream: _Stream
    records: list[Record]
    future: asyncio.Future[None]


@dataclass
class _Outcome:
    written: list[_Written] = field(default_factory=list)  # durable, in order
    error: HeraldError | None = None  # the rest of the stream's group failed


@dataclass
class _Written:
    """What the commit thread did for one record, for the loop to publish."""

    seg_base: int
    offset: int
    indexed: bool


# --- scanning segments (shared by recovery, reads and `herald check`) ----------------


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


class _UntrustedEntry(Exception):
    """An index entry did not lead to the record it names (see _read_from_entry)."""


# --- the engine ------------------------------------------------------------------


class FilesEngine(Engine):
    name = "files"

    def __init__(self, config: FilesConfig) -> None:
        self.config = config
        self.root = Path(config.data_dir)
        self._streams: dict[str, _Stream] = {}
        self._queue: list[_Pending] = []
        self._checkpoint_lock = asyncio.Lock()
        self._wakeup: asyncio.Event | None = None
        self._committer: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._closing = False

    settings = FilesSettings

    @classmethod
    def from_config(cls, config: Config, settings: FilesSettings) -> FilesEngine:
        return cls(FilesConfig(config.data, settings.segment_bytes))

    # lifecycle

    async def open(self) -> None:
        self._wakeup = asyncio.Event()
        await asyncio.to_thread(self._open_sync)
        self._committer = asyncio.create_task(self._commit_loop(), name="herald-files-commit")

    def _open_sync(self) -> None:
        try:
            (self.root / "streams").mkdir(parents=True, exist_ok=True)
            (self.root / "checkpoints").mkdir(exist_ok=True)
            lock_fd = os.open(self.root / "herald.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageUnavailable(f"cannot use data directory {self.root}: {exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock_fd)
            raise StorageUnavailable(
                f"data directory {self.root} is in use by another Herald process"
            ) from exc
        try:
            for entry in sorted((self.root / "streams").iterdir()):
                if entry.is_dir():
                    self._streams[entry.name] = self._recover(entry.name, entry)
        except OSError as exc:
            os.close(lock_fd)  # the data directory is free again for another try
            raise StorageUnavailable(f"cannot recover {self.root}: {exc}") from exc
        except BaseException:
            os.close(lock_fd)
            raise
        self._lock_fd = lock_fd

    async def close(self) -> None:
        if self._committer is None:
            return
        self._closing = True
        assert self._wakeup is not None
        self._wakeup.set()
        await self._committer
        self._committer = None
        for stream in self._streams.values():
            if stream.writer is not None:
                os.close(stream.writer.log_fd)
                os.close(stream.writer.idx_fd)
                stream.writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # recovery

    def _recover(self, name: str, directory: Path) -> _Stream:
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
                self._recover_tail(stream, segment)
            else:
                # Sealed segments were complete when the next one was created; the next
                # segment's name is this one's end. `herald check` verifies them fully.
                segment.end = bases[i + 1]
            stream.segments.append(segment)
            stream.bytes += segment.size
            expected = segment.end
        stream.head = stream.next = expected
        if stream.segments:
            stream.last_time = self._last_time(stream)
        return stream

    def _recover_tail(self, stream: _Stream, segment: _Segment) -> None:
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
                        if since >= INDEX_INTERVAL_BYTES:
                            new_pos.append(record.base)
                            new_off.append(at)
                            since = 0
                        since += len(record.raw)
                        position = record.end
                        good_end = at + len(record.raw)
                        continue
                    damaged = _classify(fd, at, position, step, segment.size, None)
                    if damaged.torn:
                        log.warning("stream %s: cut a torn tail of %d bytes at position %d "
                                    "(%s)", stream.name, segment.size - at, position,
                                    damaged.reason)
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
                    log.error("%s", error.message)
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
            idx_bytes = b"".join(_INDEX_ENTRY.pack(p, o) for p, o in
                                 zip(segment.index_pos, segment.index_off, strict=True))
            try:
                segment.path.with_suffix(".idx").write_bytes(idx_bytes)
            except OSError as exc:
                # A full disk must not keep Herald from starting: the entries are in
                # memory, and the writer cuts a partial entry before adding more.
                log.warning("stream %s: cannot rewrite the index of %s (%s); reads scan "
                            "further until it is written", stream.name, segment.path.name, exc)
        finally:
            os.close(fd)
        segment.end = position
        # Bytes after the last intact record (garbage no crash could leave) are never
        # read: readers see only up to it.
        segment.size = good_end

    def _last_time(self, stream: _Stream) -> int:
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

    # appends: the hub places, the engine writes

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            validate_stream_name(name)
            stream = _Stream(name=name, dir=self.root / "streams" / name)
            self._streams[name] = stream
        return stream

    def _writable(self, st: _Stream) -> None:
        if self._committer is None or self._closing:
            raise StorageUnavailable("the files engine is not open")
        if st.damaged is not None:
            raise st.damaged
        if st.failed is not None:
            raise st.failed

    async def load(self, stream: str, window: int,
                   ids: Collection[str] | None = None) -> StreamState:
        """The durable head, the last time, and the supplied ids of the records that
        end within the last ``window`` events (read from the tail of the log)."""
        st = self._streams.get(stream)
        if st is None:
            validate_stream_name(stream)
            return StreamState()
        self._writable(st)
        start = max(0, st.head - window)
        try:
            batches = await asyncio.to_thread(self._read_ids, st, start, st.head)
        except CorruptRecord as exc:
            # A retry of an event in the damaged record could not be recognized:
            # appending could duplicate it. Refused, saying why.
            raise CorruptRecord(
                f"stream {st.name}: the dedup window cannot be rebuilt: {exc.message} "
                f"Appends are refused while the damage lies within the last "
                f"{window} events.", **exc.details) from exc
        wanted = None if ids is None else set(ids)
        known = {event_id: (position, end) for _first, end, pairs in batches
                 for event_id, position in pairs if wanted is None or event_id in wanted}
        return StreamState(st.head, st.last_time, known)

    async def write(self, stream: str, write: Write) -> None:
        st = self._stream(stream)
        self._writable(st)
        if write.expected_head != st.next:
            raise HeadMoved(st.next)
        records = write.records
        st.next = write.head
        st.last_time = write.last_time
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(st, records, future))
        assert self._wakeup is not None
        self._wakeup.set()
        # The write happens whether or not the caller stays to hear about it.
        await asyncio.shield(future)

    def _read_ids(
        self, st: _Stream, start: int, stop: int
    ) -> list[tuple[int, int, list[tuple[str, int]]]]:
        """The supplied ids of the records holding positions ``start`` … ``stop``."""
        batches: list[tuple[int, int, list[tuple[str, int]]]] = []
        position = start
        while position < stop:
            records = self._read_sync(st, position, READ_CHUNK_BYTES * 8, stop)
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

    # the commit loop: group commit

    async def _commit_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._queue:
                if self._closing:
                    return
                continue
            group, self._queue = self._queue, []
            try:
                outcome = await asyncio.to_thread(self._write_group, group)
            except BaseException as exc:  # a bug, or cancellation: fail, don't hang
                for pending in group:
                    if not pending.future.done():
                        pending.future.set_exception(
                            ServerError(f"commit failed: {exc!r}", code="storage_error"))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                log.exception("commit failed")
                continue
            self._publish(group, outcome)
            if self._closing and not self._queue:
                return

    def _write_group(self, group: list[_Pending]) -> dict[str, _Outcome]:
        """In the commit thread: write and fsync every stream of the group once."""
        by_stream: dict[str, list[_Pending]] = {}
        for pending in group:
            by_stream.setdefault(pending.stream.name, []).append(pending)
        outcome: dict[str, _Outcome] = {}
        for name, items in by_stream.items():
            st = items[0].stream
            result = outcome[name] = _Outcome()
            unsynced: list[_Written] = []
            try:
                for record in (r for pending in items for r in pending.records):
                    if st.writer is None:
                        st.writer = self._open_writer(st, record.base)
                    if self._needs_roll(st, len(record.raw)):
                        self._seal(st)
                        # Durable now, whatever happens to the new segment.
                        result.written += unsynced
                        unsynced = []
                        st.writer = self._create_segment(st, record.base)
                    unsynced.append(self._write_record(st, record))
                assert st.writer is not None
                st.writer.sync()
                result.written += unsynced
            except OSError as exc:
                result.error = self._undo(st, exc)
        return outcome

    def _needs_roll(self, st: _Stream, size: int) -> bool:
        writer = st.writer
        return (writer is not None and writer.size > 0
                and writer.size + size > self.config.segment_bytes)

    def _seal(self, st: _Stream) -> None:
        """Make the active segment whole and durable, and close it: the next record
        starts a new segment (``_create_segment``).

        The sealed segment is durable before the next one exists, so a crash from here
        on leaves every sealed segment complete. Until the next segment has been
        created, ``roll_due`` keeps the sealed one closed: were a record appended to it
        after a failed creation (a full disk), a later segment would start at a
        position inside it.
        """
        writer = st.writer
        assert writer is not None
        writer.sync()
        if writer.pending_index:
            log.warning("stream %s: segment %s sealed without %d index entries (the disk "
                        "is full); reads scan further there", st.name,
                        _segment_name(writer.seg_base), len(writer.pending_index))
        st.writer = None
        st.roll_due = True
        os.close(writer.log_fd)
        os.close(writer.idx_fd)

    def _write_record(self, st: _Stream, entry: Record) -> _Written:
        writer = st.writer
        assert writer is not None
        record = entry.raw
        offset = writer.size
        view = memoryview(record)
        done = 0
        while done < len(record):
            done += os.pwrite(writer.log_fd, view[done:], offset + done)
        writer.size += len(record)
        indexed = writer.since_index >= INDEX_INTERVAL_BYTES or offset == 0
        if indexed:
            writer.since_index = 0
            writer.pending_index.append((entry.base, offset))
        writer.since_index += len(record)
        return _Written(seg_base=writer.seg_base, offset=offset, indexed=indexed)

    def _open_writer(self, st: _Stream, base: int) -> _Writer:
        if not st.segments:
            st.dir.mkdir(parents=True, exist_ok=True)
            _fsync_dir(st.dir.parent)
            return self._create_segment(st, base)
        if st.roll_due:
            return self._create_segment(st, base)
        last = st.segments[-1]
        log_fd = os.open(last.path, os.O_WRONLY)
        try:
            idx_fd = os.open(last.path.with_suffix(".idx"), os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError:
            os.close(log_fd)
            raise
        # A partial entry (an index write cut short) is overwritten by the next one.
        idx_size = os.fstat(idx_fd).st_size
        idx_size -= idx_size % _INDEX_ENTRY.size
        since = INDEX_INTERVAL_BYTES
        if last.index_off:
            since = last.size - last.index_off[-1]
        return _Writer(last.base, log_fd, idx_fd, last.size, since, idx_size=idx_size,
                       synced_size=last.size)

    def _create_segment(self, st: _Stream, base: int) -> _Writer:
        path = st.dir / f"{_segment_name(base)}.log"
        # O_TRUNC: a creation that failed half-way (a full disk) left at most empty
        # files of this very name, which are taken over.
        log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            idx_fd = os.open(path.with_suffix(".idx"),
                             os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:
            os.close(log_fd)
            raise
        try:
            _fsync_dir(st.dir)
        except OSError:
            os.close(log_fd)
            os.close(idx_fd)
            raise
        st.roll_due = False
        return _Writer(base, log_fd, idx_fd, 0, INDEX_INTERVAL_BYTES)

    def _undo(self, st: _Stream, exc: OSError) -> HeraldError:
        """A write or fsync failed: cut the active segment back to its last fsync."""
        error = _storage_error(exc, f"stream {st.name}")
        log.error("append to stream %s failed: %s", st.name, exc)
        writer = st.writer
        if writer is None:
            return error
        try:
            os.ftruncate(writer.log_fd, writer.synced_size)
            os.fsync(writer.log_fd)
            writer.size = writer.synced_size
            # Keep the entries of durable records that could not be written yet.
            writer.pending_index = [(p, o) for p, o in writer.pending_index
                                    if o < writer.synced_size]
            writer.since_index = INDEX_INTERVAL_BYTES
        except OSError as undo_exc:
            log.error("stream %s: could not undo a failed write (%s); appends to it are "
                      "refused until restart", st.name, undo_exc)
            st.failed = ServerError(
                f"stream {st.name} had a write failure that could not be undone; restart "
                f"Herald to recover it", code="storage_error")
        return error

    def _publish(self, group: list[_Pending], outcome: dict[str, _Outcome]) -> None:
        """On the loop: make what the commit wrote visible, answer the writers."""
        cursor: dict[str, int] = {}
        for pending in group:
            st = pending.stream
            result = outcome[st.name]
            durable = 0
            for record in pending.records:
                n = cursor.get(st.name, 0)
                if n >= len(result.written):
                    break  # not durable: failed below
                self._made_durable(st, record, result.written[n])
                cursor[st.name] = n + 1
                durable += 1
            if pending.future.done():
                continue
            if durable == len(pending.records):
                pending.future.set_result(None)
            elif result.error is not None:
                pending.future.set_exception(
                    PartlyWritten(durable, result.error) if durable else result.error)
        for name, result in outcome.items():
            if result.error is not None:
                self._fail_stream(self._streams[name], result.error)

    def _made_durable(self, st: _Stream, record: Record, written: _Written) -> None:
        if not st.segments or st.segments[-1].base != written.seg_base:
            st.segments.append(_Segment(base=written.seg_base, end=written.seg_base,
                                        path=st.dir / f"{_segment_name(written.seg_base)}.log"))
        segment = st.segments[-1]
        if written.indexed:
            segment.index_pos.append(record.base)
            segment.index_off.append(written.offset)
        size = len(record.raw)
        segment.size = written.offset + size
        segment.end = record.end
        st.head = segment.end
        st.bytes += size

    def _fail_stream(self, st: _Stream, error: HeraldError) -> None:
        """Fail the writes to ``st`` queued behind a failed one: they assumed it would
        land. The stream's next write must start at its durable head again."""
        doomed = [p for p in self._queue if p.stream is st]
        self._queue = [p for p in self._queue if p.stream is not st]
        for pending in doomed:
            if not pending.future.done():
                pending.future.set_exception(error)
        st.next = st.head

    # reads

    async def read(
        self, stream: str, start: int, max_bytes: int = READ_CHUNK_BYTES
    ) -> list[Record]:
        st = self._streams.get(stream)
        if st is None:
            validate_stream_name(stream)
            return []
        if start >= st.head:
            return []
        segment = self._segment_for(st, start)
        if segment is None:
            return []
        span = segment.size - self._index_offset(segment, start)
        if span <= INLINE_READ_BYTES:
            return self._read_sync(st, start, max_bytes, st.head)
        return await asyncio.to_thread(self._read_sync, st, start, max_bytes, st.head)

    @staticmethod
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

    @staticmethod
    def _index_offset(segment: _Segment, position: int) -> int:
        i = bisect.bisect_right(segment.index_pos, position)
        return segment.index_off[i - 1] if i else 0

    def _read_sync(self, st: _Stream, start: int, max_bytes: int, stop: int) -> list[Record]:
        """Records from the segment holding ``start``, up to ``max_bytes`` and ``stop``."""
        segment = self._segment_for(st, start)
        if segment is None:
            return []
        entry = bisect.bisect_right(segment.index_pos, start)
        try:
            fd = os.open(segment.path, os.O_RDONLY)
            try:
                while True:
                    try:
                        return self._read_from_entry(st, segment, fd, entry, start, max_bytes,
                                                     stop)
                    except _UntrustedEntry:
                        entry -= 1
            finally:
                os.close(fd)
        except OSError as exc:
            raise _storage_error(exc, f"reading stream {st.name}") from exc

    def _read_from_entry(self, st: _Stream, segment: _Segment, fd: int, entry: int, start: int,
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
                raise self._damage_error(st, segment, damaged)
        return out

    @staticmethod
    def _damage_error(st: _Stream, segment: _Segment, damaged: _Damaged) -> CorruptRecord:
        first = damaged.first
        last = damaged.last if damaged.last is not None else max(first, segment.end - 1)
        return CorruptRecord(
            f"stream {st.name}: positions {first}…{last} are damaged ({damaged.reason}); "
            f"they are not served. Reads from position {last + 1} on still work.",
            stream=st.name, first=first, last=last)

    # heads, listing

    async def head(self, stream: str) -> int:
        st = self._streams.get(stream)
        return st.head if st is not None else 0

    async def streams(self) -> list[StreamInfo]:
        return [StreamInfo(name=s.name, head=s.head, bytes=s.bytes)
                for name, s in sorted(self._streams.items()) if s.head > 0]

    async def stream(self, stream: str) -> StreamInfo | None:
        validate_stream_name(stream)
        st = self._streams.get(stream)
        if st is None or st.head == 0:
            return None
        return StreamInfo(name=st.name, head=st.head, bytes=st.bytes)

    # checkpoints

    def _checkpoint_path(self, name: str) -> Path:
        return self.root / "checkpoints" / validate_checkpoint_name(name)

    def _read_checkpoint(self, path: Path) -> Checkpoint | None:
        """A checkpoint file holds ``value version`` (a file of an older Herald holds
        only the value: version 1)."""
        try:
            fields = path.read_text().split()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _storage_error(exc, f"checkpoint {path.name}") from exc
        try:
            value = int(fields[0])
            version = int(fields[1]) if len(fields) > 1 else 1
        except (IndexError, ValueError) as exc:
            raise CorruptRecord(f"checkpoint {path.name} does not hold a number",
                                checkpoint=path.name) from exc
        return Checkpoint(value, version)

    async def get_checkpoint(self, name: str) -> Checkpoint | None:
        return self._read_checkpoint(self._checkpoint_path(name))

    async def set_checkpoint(self, name: str, value: int,
                             expected_version: int | None = None) -> Checkpoint:
        path = self._checkpoint_path(name)
        # One process owns the data directory (herald.lock), so a lock in it makes
        # the compare and the set one step.
        async with self._checkpoint_lock:
            current = self._read_checkpoint(path)
            version = current.version if current is not None else 0
            if expected_version is not None and expected_version != version:
                raise CheckpointConflict(name, current)
            checkpoint = Checkpoint(value, version + 1)

            def write() -> None:
                tmp = path.with_name(path.name + ".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, f"{value} {checkpoint.version}".encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
                _fsync_dir(path.parent)

            try:
                await asyncio.to_thread(write)
            except OSError as exc:
                raise _storage_error(exc, f"checkpoint {name}") from exc
            return checkpoint


# --- herald check -----------------------------------------------------------------


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
        lock_fd = os.open(Path(data_dir) / "herald.lock", os.O_RDWR | os.O_CREAT, 0o644)
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
                    if since >= INDEX_INTERVAL_BYTES:
                        rebuilt.append((record.base, at))
                        since = 0
                    since += len(record.raw)
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
            idx.write_bytes(b"".join(_INDEX_ENTRY.pack(p, o) for p, o in rebuilt))
            report.repaired.append(f"stream {stream}: rewrote index {idx.name}")
        else:
            report.index_problems.append(
                f"stream {stream}: index {idx.name} has {len(bad)} entries that do not point at "
                f"a record (--repair rewrites it)")
