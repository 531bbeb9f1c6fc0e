"""The ``memory`` engine: streams in a dict, gone when the process ends.

For tests and trying things out (``[storage] engine = "memory"``): it passes the
same conformance suite as every engine, so in-process tests of the hub and the HTTP
handlers run on it without touching a disk. Nothing is durable; "durable" here
means "in this process's memory", which is exactly as long as the process lives.

It is the smallest complete implementation of the storage port (``engines.base``):
read it to see what an engine has to do.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import codec
from ..codec import Record
from ..errors import StorageUnavailable
from ..model import StreamInfo, validate_stream_name
from ..placement import StreamState
from .base import (
    READ_CHUNK_BYTES,
    Checkpoint,
    CheckpointConflict,
    Engine,
    HeadMoved,
    Write,
    validate_checkpoint_name,
)

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["MemoryEngine", "MemoryStore"]


@dataclass
class _Stream:
    records: list[Record] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # records[i].end, for bisect
    head: int = 0
    last_time: int = 0
    bytes: int = 0


@dataclass
class MemoryStore:
    """What a memory engine holds; several engines in turn may use one (a restart)."""

    streams: dict[str, _Stream] = field(default_factory=dict)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)


class MemoryEngine(Engine):
    name = "memory"

    def __init__(self, store: MemoryStore | None = None) -> None:
        store = store or MemoryStore()
        self._streams = store.streams
        self._checkpoints = store.checkpoints
        self._open = False

    @classmethod
    def from_config(cls, config: Config, settings: object) -> MemoryEngine:
        return cls()

    @property
    def location(self) -> str:
        return "in memory (nothing survives a restart)"

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        if not self._open:
            raise StorageUnavailable("the memory engine is not open")

    async def load(self, stream: str, window: int,
                   ids: Collection[str] | None = None) -> StreamState:
        st = self._streams.get(validate_stream_name(stream))
        if st is None:
            return StreamState()
        known: dict[str, tuple[int, int]] = {}
        wanted = None if ids is None else set(ids)
        first = bisect.bisect_right(st.ends, st.head - window)
        for record in st.records[first:]:
            for offset, event in enumerate(codec.decode_batch(record.body).e):
                if event.id is not None and (wanted is None or event.id in wanted):
                    known[event.id] = (record.base + offset, record.end)
        return StreamState(st.head, st.last_time, known)

    async def write(self, stream: str, write: Write) -> None:
        await self.ping()
        st = self._streams.get(stream)
        head = st.head if st is not None else 0
        if head != write.expected_head:
            raise HeadMoved(head)
        if st is None:
            st = self._streams[validate_stream_name(stream)] = _Stream()
        for placed in write.written:
            record = placed.record
            st.records.append(record)
            st.ends.append(record.end)
            st.bytes += len(record.raw)
        st.head, st.last_time = write.head, write.last_time
        await asyncio.sleep(0)  # a write is a suspension point, as with real storage

    async def read(self, stream: str, start: int,
                   max_bytes: int = READ_CHUNK_BYTES) -> list[Record]:
        st = self._streams.get(validate_stream_name(stream))
        if st is None:
            return []
        out: list[Record] = []
        total = 0
        for i in range(bisect.bisect_right(st.ends, start), len(st.records)):
            record = st.records[i]
            if out and total + len(record.raw) > max_bytes:
                break
            out.append(record)
            total += len(record.raw)
        return out

    async def head(self, stream: str) -> int:
        st = self._streams.get(validate_stream_name(stream))
        return st.head if st is not None else 0

    async def streams(self) -> list[StreamInfo]:
        return [StreamInfo(name=name, head=st.head, bytes=st.bytes)
                for name, st in sorted(self._streams.items()) if st.head > 0]

    async def stream(self, stream: str) -> StreamInfo | None:
        st = self._streams.get(validate_stream_name(stream))
        if st is None or st.head == 0:
            return None
        return StreamInfo(name=stream, head=st.head, bytes=st.bytes)

    async def get_checkpoint(self, name: str) -> Checkpoint | None:
        return self._checkpoints.get(validate_checkpoint_name(name))

    async def set_checkpoint(self, name: str, value: int,
                             expected_version: int | None = None) -> Checkpoint:
        current = self._checkpoints.get(validate_checkpoint_name(name))
        version = current.version if current is not None else 0
        if expected_version is not None and expected_version != version:
            raise CheckpointConflict(name, current)
        checkpoint = self._checkpoints[name] = Checkpoint(value, version + 1)
        return checkpoint
