"""The ``files`` engine: Herald's embedded default. One node, crash-safe.

Layout under the data directory::

    streams/<stream>/<first position, 20 digits>.log   segments of records (codec)
    streams/<stream>/<first position, 20 digits>.idx   sparse index: (position, offset)
    checkpoints/<name>                                 one small file per checkpoint
    herald.lock                                        one process at a time

All of it owner-only, whatever the umask: directories 0700, files 0600
(``segments.FILE_MODE``).

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

The package::

    __init__.py   the engine: lifecycle, load, write, read, heads, checkpoints
    segments.py   the format: file names, the sparse index and its rule, scanning a
                  segment, judging damage (shared by everything below)
    recovery.py   recovery on open
    writer.py     the queue, the commit task and the commit thread's work
    reader.py     reads, and the ids of the dedup window
    check.py      `herald check`: verify a data directory offline, ``--repair``
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...codec import Record
from ...config import bounded, check_bounds
from ...errors import CorruptRecord, StorageUnavailable
from ...model import StreamInfo, validate_stream_name
from ...placement import StreamState
from ...secretfiles import private_dir
from ..base import (
    READ_CHUNK_BYTES,
    Checkpoint,
    CheckpointConflict,
    Engine,
    HeadMoved,
    Write,
    validate_checkpoint_name,
)
from .check import CheckReport, Damage, check_data_dir
from .reader import _read, _read_ids
from .recovery import _recover
from .segments import FILE_MODE, _fsync_dir, _storage_error, _Stream
from .segments import INDEX_INTERVAL_BYTES as INDEX_INTERVAL_BYTES
from .writer import _Committer, _Pending

if TYPE_CHECKING:
    from ...config import Config

__all__ = ["CheckReport", "Damage", "FilesConfig", "FilesEngine", "FilesSettings", "check_data_dir"]

# Segments roll when the next record would take them past this size. Smaller
# segments make retention and backup finer-grained; larger ones mean fewer files.
DEFAULT_SEGMENT_BYTES = 256 * 1024 * 1024
# The range: below a page a segment rolls at nearly every append; above 64 GiB
# retention, backup and `herald check --repair` only get coarser.
MIN_SEGMENT_BYTES = 4096
MAX_SEGMENT_BYTES = 64 * 1024**3


@dataclass(frozen=True)
class FilesSettings:
    """``[storage.files]``: the engine's own keys (docs/configuration.md)."""

    # Segments roll when the next record would take them past this size.
    segment_bytes: int = bounded(DEFAULT_SEGMENT_BYTES, MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES,
                                 unit="bytes")

    def __post_init__(self) -> None:
        check_bounds(self)  # SettingError: build_section names [storage.files]


@dataclass(frozen=True)
class FilesConfig:
    data_dir: Path
    segment_bytes: int = DEFAULT_SEGMENT_BYTES

    def __post_init__(self) -> None:
        FilesSettings(self.segment_bytes)  # the same check


class FilesEngine(Engine):
    name = "files"

    def __init__(self, config: FilesConfig) -> None:
        self.config = config
        self.root = Path(config.data_dir)
        self._streams: dict[str, _Stream] = {}
        self._commit = _Committer(self._streams, config.segment_bytes)
        self._checkpoint_lock = asyncio.Lock()
        self._lock_fd: int | None = None

    settings = FilesSettings

    @classmethod
    def from_config(cls, config: Config, settings: FilesSettings) -> FilesEngine:
        return cls(FilesConfig(config.data, settings.segment_bytes))

    # lifecycle

    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)
        self._commit.start()

    def _open_sync(self) -> None:
        try:
            # Private: every local user could read every stream of a 0755 directory.
            private_dir(self.root)
            private_dir(self.root / "streams")
            private_dir(self.root / "checkpoints")
            lock_fd = os.open(self.root / "herald.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
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
                    self._streams[entry.name] = _recover(entry.name, entry)
        except OSError as exc:
            os.close(lock_fd)  # the data directory is free again for another try
            raise StorageUnavailable(f"cannot recover {self.root}: {exc}") from exc
        except BaseException:
            os.close(lock_fd)
            raise
        self._lock_fd = lock_fd

    async def close(self) -> None:
        if self._commit.task is None:
            return
        await self._commit.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # appends: the hub places, the engine writes

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            validate_stream_name(name)
            stream = _Stream(name=name, dir=self.root / "streams" / name)
            self._streams[name] = stream
        return stream

    def _writable(self, st: _Stream) -> None:
        if not self._commit.running:
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
            batches = await asyncio.to_thread(_read_ids, st, start, st.head)
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
        self._commit.submit(_Pending(st, records, future))
        # The write happens whether or not the caller stays to hear about it: the
        # commit task holds it, and skips answering a cancelled future. (Not
        # asyncio.shield: that costs every write one more turn of the event loop.)
        await future

    # reads

    async def read(
        self, stream: str, start: int, max_bytes: int = READ_CHUNK_BYTES
    ) -> list[Record]:
        st = self._streams.get(stream)
        if st is None:
            validate_stream_name(stream)
            return []
        return await _read(st, start, max_bytes)

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
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
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
