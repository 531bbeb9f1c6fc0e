"""Streams and subscriptions over any engine.

A subscription is a loop over *positions*, never over a live feed: read from the
engine from the next position; when nothing is left, wait for the durable head to
move, and read again. Catch-up and live are the same code, so the switch between
them can neither skip nor repeat an event, however appends race it. Memory is
bounded by one read (``READ_CHUNK_BYTES``) per subscriber; a slow subscriber holds
only its own socket back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from .. import codec
from ..codec import Record
from ..engines.base import READ_CHUNK_BYTES, Engine
from ..errors import CorruptRecord, NotFound
from ..model import AppendResult, Limits, StreamInfo, now_us, validate_stream_name

__all__ = ["Hub", "ReadPage", "HEARTBEAT_SECONDS"]

# An idle subscription gets a heartbeat this often: it keeps proxies from closing the
# connection and tells the client the stream's head.
HEARTBEAT_SECONDS = 15.0


@dataclass(frozen=True)
class ReadPage:
    records: list[Record]
    start: int
    limit: int
    head: int


class Hub:
    def __init__(self, engine: Engine, limits: Limits | None = None) -> None:
        self.engine = engine
        self.limits = limits or Limits()

    async def append(
        self, stream: str, body: bytes, expected_head: int | None = None
    ) -> AppendResult:
        """Validate a request body (a JSON array of events) and append it."""
        validate_stream_name(stream)
        batch = codec.decode_append(body, self.limits)
        return await self.engine.append(stream, batch, expected_head)

    async def read(self, stream: str, start: int, limit: int) -> ReadPage:
        """Records covering up to ``limit`` events from ``start``."""
        validate_stream_name(stream)
        records: list[Record] = []
        position = start
        while position < start + limit:
            try:
                batch = await self.engine.read(stream, position)
            except CorruptRecord:
                if records:
                    # Serve the intact events before the damage; the page's `next` is
                    # the damaged position, and reading from there reports it.
                    break
                raise
            if not batch:
                break
            records += batch
            position = batch[-1].end
        head = await self.engine.head(stream)
        return ReadPage(records=records, start=start, limit=limit, head=head)

    async def follow(
        self, stream: str, start: int, *, follow: bool = True,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> AsyncIterator[list[Record]]:
        """Yield lists of records from ``start`` on: catch up, then follow live.

        An empty list is a heartbeat: it is yielded once on reaching the head, then
        every ``heartbeat`` seconds while idle. With ``follow=False`` the iterator
        ends on reaching the head instead.
        """
        validate_stream_name(stream)
        position = start
        while True:
            records = await self.engine.read(stream, position, READ_CHUNK_BYTES)
            if records:
                yield records
                position = records[-1].end
                continue
            if not follow:
                return
            yield []
            await self.engine.wait(stream, position, heartbeat)

    async def streams(self) -> list[StreamInfo]:
        return await self.engine.streams()

    async def ping(self) -> None:
        await self.engine.ping()

    async def stream(self, stream: str) -> StreamInfo:
        info = await self.engine.stream(validate_stream_name(stream))
        if info is None:
            raise NotFound(f"stream {stream} has no events", code="stream_not_found",
                           stream=stream)
        return info

    async def head(self, stream: str) -> int:
        return await self.engine.head(validate_stream_name(stream))

    @staticmethod
    def heartbeat(head: int) -> bytes:
        return codec.encode_heartbeat(head, now_us())
