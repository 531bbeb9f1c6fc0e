"""The group-commit writer: the queue of writes, the commit task, and its thread's work.

The commit task (``_Committer.run``, on the event loop) drains the queue. Each group
is written in a worker thread (``_write_group``: every record to its segment, each
touched segment fsynced once), then published on the loop (``_publish``): the
durable records become readable and their writes are answered. The rules (answered
only after the fsync, ``PartlyWritten`` between two segments) are in the package
docstring.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from dataclasses import dataclass, field

from ...codec import Record
from ...errors import HeraldError, ServerError
from ...logsafe import logsafe
from ...secretfiles import private_dir
from ..base import PartlyWritten
from .segments import (
    _INDEX_ENTRY,
    FILE_MODE,
    INDEX_INTERVAL_BYTES,
    _fsync_dir,
    _index_step,
    _pack_index,
    _Segment,
    _segment_name,
    _storage_error,
    _Stream,
)

log = logging.getLogger("herald.files")


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
        data = _pack_index(self.pending_index)
        try:
            written = os.pwrite(self.idx_fd, data, self.idx_size)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write to the index")
        except OSError as exc:
            if not self.index_failing:
                log.warning("cannot write the index of segment %s (%s); reads scan "
                            "further until it is written",
                            logsafe(_segment_name(self.seg_base)), logsafe(exc))
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


# --- on the loop: the queue and the commit task ------------------------------------


class _Committer:
    """Group commit: the queue of writes and the task that drains it.

    ``streams`` is the engine's own dict (shared, not copied). One per engine: once
    stopped, it stays closing.
    """

    def __init__(self, streams: dict[str, _Stream], segment_bytes: int) -> None:
        self.streams = streams
        self.segment_bytes = segment_bytes
        self.queue: list[_Pending] = []
        self.wakeup: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    def start(self) -> None:
        self.wakeup = asyncio.Event()
        self.task = asyncio.create_task(self.run(), name="herald-files-commit")

    @property
    def running(self) -> bool:
        return self.task is not None and not self.closing

    def submit(self, pending: _Pending) -> None:
        self.queue.append(pending)
        assert self.wakeup is not None
        self.wakeup.set()

    async def stop(self) -> None:
        """Write what is queued, end the task, and close the active segments."""
        self.closing = True
        assert self.wakeup is not None
        self.wakeup.set()
        assert self.task is not None
        await self.task
        self.task = None
        for stream in self.streams.values():
            if stream.writer is not None:
                os.close(stream.writer.log_fd)
                os.close(stream.writer.idx_fd)
                stream.writer = None

    async def run(self) -> None:
        assert self.wakeup is not None
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            if not self.queue:
                if self.closing:
                    return
                continue
            group, self.queue = self.queue, []
            try:
                outcome = await asyncio.to_thread(_write_group, group, self.segment_bytes)
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
            if self.closing and not self.queue:
                return

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
                _made_durable(st, record, result.written[n])
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
                self._fail_stream(self.streams[name], result.error)

    def _fail_stream(self, st: _Stream, error: HeraldError) -> None:
        """Fail the writes to ``st`` queued behind a failed one: they assumed it would
        land. The stream's next write must start at its durable head again."""
        doomed = [p for p in self.queue if p.stream is st]
        self.queue = [p for p in self.queue if p.stream is not st]
        for pending in doomed:
            if not pending.future.done():
                pending.future.set_exception(error)
        st.next = st.head


def _made_durable(st: _Stream, record: Record, written: _Written) -> None:
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


# --- in the commit thread ---------------------------------------------------------


def _write_group(group: list[_Pending], segment_bytes: int) -> dict[str, _Outcome]:
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
                    st.writer = _open_writer(st, record.base)
                if _needs_roll(st, len(record.raw), segment_bytes):
                    _seal(st)
                    # Durable now, whatever happens to the new segment.
                    result.written += unsynced
                    unsynced = []
                    st.writer = _create_segment(st, record.base)
                unsynced.append(_write_record(st, record))
            assert st.writer is not None
            st.writer.sync()
            result.written += unsynced
        except OSError as exc:
            result.error = _undo(st, exc)
    return outcome


def _needs_roll(st: _Stream, size: int, segment_bytes: int) -> bool:
    writer = st.writer
    return (writer is not None and writer.size > 0
            and writer.size + size > segment_bytes)


def _seal(st: _Stream) -> None:
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
                    "is full); reads scan further there", logsafe(st.name),
                    logsafe(_segment_name(writer.seg_base)), len(writer.pending_index))
    st.writer = None
    st.roll_due = True
    os.close(writer.log_fd)
    os.close(writer.idx_fd)


def _write_record(st: _Stream, entry: Record) -> _Written:
    writer = st.writer
    assert writer is not None
    record = entry.raw
    offset = writer.size
    view = memoryview(record)
    done = 0
    while done < len(record):
        done += os.pwrite(writer.log_fd, view[done:], offset + done)
    writer.size += len(record)
    indexed, writer.since_index = _index_step(writer.since_index, offset, len(record))
    if indexed:
        writer.pending_index.append((entry.base, offset))
    return _Written(seg_base=writer.seg_base, offset=offset, indexed=indexed)


def _open_writer(st: _Stream, base: int) -> _Writer:
    if not st.segments:
        private_dir(st.dir)
        _fsync_dir(st.dir.parent)
        return _create_segment(st, base)
    if st.roll_due:
        return _create_segment(st, base)
    last = st.segments[-1]
    log_fd = os.open(last.path, os.O_WRONLY)
    try:
        idx_fd = os.open(last.path.with_suffix(".idx"), os.O_WRONLY | os.O_CREAT, FILE_MODE)
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


def _create_segment(st: _Stream, base: int) -> _Writer:
    path = st.dir / f"{_segment_name(base)}.log"
    # O_TRUNC: a creation that failed half-way (a full disk) left at most empty
    # files of this very name, which are taken over.
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        idx_fd = os.open(path.with_suffix(".idx"),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
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


def _undo(st: _Stream, exc: OSError) -> HeraldError:
    """A write or fsync failed: cut the active segment back to its last fsync."""
    error = _storage_error(exc, f"stream {st.name}")
    log.error("append to stream %s failed: %s", logsafe(st.name), logsafe(exc))
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
                  "refused until restart", logsafe(st.name), logsafe(undo_exc))
        st.failed = ServerError(
            f"stream {st.name} had a write failure that could not be undone; restart "
            f"Herald to recover it", code="storage_error")
    return error
