"""The hub: the one caller of the engine. What a stream is, whatever the storage.

Everything that reaches a stream goes through ``Hub``: the HTTP handlers, the
gatherers, and what comes later (groups, webhooks, the dashboard). It owns

* appends: validation with the configured limits, placement, group commit
  (``appends``);
* reads: pages of records (``read``, with ``from=head`` and the page limit), the tail
  cache that serves live readers from memory (``tail``);
* subscriptions: a loop over *positions*, never over a live feed — read from the
  next position; when nothing is left, wait for the durable head to move
  (``heads``), and read again. Catch-up and live are the same code, so the switch
  between them can neither skip nor repeat an event, however appends race it.
  Memory is bounded by one read (``READ_CHUNK_BYTES``) per subscriber;
* ``events``: the same as Event objects, for Python callers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from .. import codec
from ..codec import Record
from ..engines.base import READ_CHUNK_BYTES, Checkpoint, Engine, SharedEngine
from ..errors import ConfigError, CorruptRecord, Forbidden, InvalidRequest, NotFound, TooLarge
from ..model import (
    AppendResult,
    Batch,
    Event,
    Limits,
    StreamInfo,
    now_us,
    validate_stream_name,
)
from .appends import Appender
from .heads import HeadWatch, Watcher
from .tail import TailCache

__all__ = ["DEFAULT_PAGE_EVENTS", "HEARTBEAT_SECONDS", "INTERNAL_PREFIX", "Hub", "ReadPage",
           "Start", "Subscription", "check_limits"]

# Streams whose names begin with this are Herald's own (the gatherers' skip log,
# gather.skips.SKIP_STREAM): only Herald's code appends to them, saying so with
# ``internal=True``. Every other append is refused whoever asks — an HTTP caller, the
# admin too, or a gatherer writing its source's rows — since a skip record must be an
# operator's decision as Herald recorded it, never an event someone wrote there.
INTERNAL_PREFIX = "_herald."

# An idle subscription gets a heartbeat this often: it keeps proxies from closing the
# connection and tells the client the stream's head.
HEARTBEAT_SECONDS = 15.0

# Where a read begins: a position, or "head" (only what is appended from now on).
Start = int | Literal["head"]
# The events of a page whose reader named no limit (at most [limits]
# max_read_events, whatever that is configured to).
DEFAULT_PAGE_EVENTS = 1000


@dataclass(frozen=True)
class ReadPage:
    """Records covering up to ``limit`` events from ``start``; the durable head."""

    records: list[Record]
    start: int
    limit: int
    head: int

    def events(self) -> list[Event]:
        """The page's events (at most ``limit``, from ``start``)."""
        out: list[Event] = []
        for record in self.records:
            if record.end <= self.start:
                continue
            out += codec.events_of(record, self.start, self.limit - len(out))
            if len(out) >= self.limit:
                break
        return out

    @property
    def next(self) -> int:
        """Where the next page begins: after the page's last event (from the record
        headers alone: no event is decoded for it), or ``start`` for an empty page."""
        if not self.records or self.records[-1].end <= self.start:
            return self.start
        return min(self.records[-1].end, self.start + self.limit)


class Hub:
    """Streams over one engine. ``async with Hub(engine, limits)`` opens both."""

    def __init__(self, engine: Engine, limits: Limits | None = None) -> None:
        self._engine = engine
        self.limits = limits or Limits()
        check_limits(self.limits, engine)
        self.tail = TailCache()  # recent records, so live readers skip the storage
        self.heads = HeadWatch(engine)
        self._appender = Appender(engine, self.limits.dedup_window, self._written)

    # lifecycle

    @property
    def engine_name(self) -> str:
        return self._engine.name

    @property
    def location(self) -> str | None:
        """Where the data is (no secrets), for the banner; None: the data directory."""
        return self._engine.location

    async def open(self) -> None:
        if isinstance(self._engine, SharedEngine):
            self._engine.watch(self.heads)
        await self._engine.open()
        self.heads.start()

    async def close(self) -> None:
        """Finish the appends in progress, end the waits, close the engine."""
        await self._appender.close()
        await self.heads.close()
        await self._engine.close()

    async def __aenter__(self) -> Hub:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def ping(self) -> None:
        """StorageUnavailable if the storage cannot serve requests now."""
        await self._engine.ping()

    # appends

    async def append(self, stream: str, batch: Batch, expected_head: int | None = None,
                     *, internal: bool = False) -> AppendResult:
        """Append a validated batch; answered once it is durable.

        TooLarge (``batch_too_large``) if its record would exceed what the engine
        stores and reads back: from the HTTP edge that cannot happen (the limits are
        checked against the engine at start), from a caller that builds batches
        itself (a gatherer) it can. A batch without its JSON gets it here, once:
        placement then reuses it."""
        # Rule 5 of the package: only Herald's own records (internal=True) reach its
        # streams; the HTTP edge and the gatherers never pass it.
        if not internal and stream.startswith(INTERNAL_PREFIX):
            raise Forbidden(f"stream {stream} is Herald's own: only Herald appends to it",
                            code="forbidden", permission="publish", stream=stream)
        raw = batch.raw
        if raw is None:
            raw = codec.encode_events(batch.events)
            batch = Batch(batch.events, raw)
        if (len(raw) + codec.BODY_OVERHEAD > self._engine.max_record_body
                or len(batch.events) > codec.MAX_RECORD_COUNT):
            raise TooLarge(
                f"a batch of {len(batch.events)} events and {len(raw)} bytes does not "
                f"fit one record of the {self._engine.name} engine "
                f"({codec.MAX_RECORD_COUNT} events, {self._engine.max_record_body} bytes)",
                code="batch_too_large", limit=self._engine.max_record_body)
        return await self._appender.append(stream, batch, expected_head)

    async def append_body(self, stream: str, body: bytes, expected_head: int | None = None,
                          *, internal: bool = False) -> AppendResult:
        """Validate a request body (a JSON array of events) with the configured
        limits, and append it."""
        validate_stream_name(stream)
        return await self.append(stream, codec.decode_append(body, self.limits), expected_head,
                                 internal=internal)

    def _written(self, stream: str, records: Sequence[Record], head: int) -> None:
        self.tail.extend(stream, records)
        self.heads.advance(stream, head)

    # reads

    async def records(self, stream: str, start: int,
                      max_bytes: int = READ_CHUNK_BYTES) -> list[Record]:
        """Durable records holding positions ≥ ``start`` (the first may begin before
        it), up to ``max_bytes``; empty at or beyond the head."""
        validate_stream_name(stream)
        cached = self.tail.get(stream, start, max_bytes)
        if cached is not None:
            return cached
        durable = self._appender.durable_head(stream)
        if durable is not None and start >= durable:
            return []  # the only writer knows: nothing there yet (a live reader)
        records = await self._engine.read(stream, start, max_bytes)
        if records:
            self.heads.advance(stream, records[-1].end)
        return records

    async def start_of(self, stream: str, start: Start) -> int:
        """A read's first position: ``start``, or the durable head for "head"."""
        if start == "head":
            return await self.head(stream)
        return start

    def page_limit(self, limit: int | None) -> int:
        """A page's limit: ``limit`` if it is 1 to max_read_events (else
        InvalidRequest), and the default page size, within that bound, if None."""
        bound = self.limits.max_read_events
        if limit is None:
            return min(DEFAULT_PAGE_EVENTS, bound)
        if not 1 <= limit <= bound:
            raise InvalidRequest(f"limit must be 1 to {bound}", code="invalid_parameter",
                                 parameter="limit")
        return limit

    async def read(self, stream: str, start: Start, limit: int | None = None) -> ReadPage:
        """One page: records covering up to ``limit`` events from ``start``."""
        validate_stream_name(stream)
        limit = self.page_limit(limit)
        first = await self.start_of(stream, start)
        records: list[Record] = []
        position = first
        while position < first + limit:
            try:
                batch = await self.records(stream, position)
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
        head = await self.head(stream)
        return ReadPage(records=records, start=first, limit=limit, head=head)

    def subscribe(self, stream: str, start: Start, *, follow: bool = True,
                  heartbeat: float = HEARTBEAT_SECONDS) -> Subscription:
        """Records from ``start`` on: catch up, then (``follow``) live. Use as
        ``async with hub.subscribe(…) as sub: async for records in sub``."""
        validate_stream_name(stream)
        return Subscription(self, stream, start, follow=follow, heartbeat=heartbeat)

    async def events(self, stream: str, start: Start = 0, *,
                     follow: bool = False) -> AsyncIterator[Event]:
        """Every event from ``start`` on, as Event objects; with ``follow``, live."""
        async with self.subscribe(stream, start, follow=follow) as subscription:
            async for records in subscription:
                position = subscription.position_before
                for record in records:
                    for event in codec.events_of(record, position):
                        yield event
                    position = record.end

    async def wait(self, stream: str, position: int, timeout: float) -> int:
        """The durable head once it is beyond ``position``, or after ``timeout``."""
        validate_stream_name(stream)
        return await self.heads.wait(stream, position, timeout)

    # streams

    async def head(self, stream: str) -> int:
        return await self._engine.head(validate_stream_name(stream))

    async def streams(self) -> list[StreamInfo]:
        return await self._engine.streams()

    async def stream(self, stream: str) -> StreamInfo:
        info = await self._engine.stream(validate_stream_name(stream))
        if info is None:
            raise NotFound(f"stream {stream} has no events", code="stream_not_found",
                           stream=stream)
        return info

    # checkpoints

    async def get_checkpoint(self, name: str) -> Checkpoint | None:
        return await self._engine.get_checkpoint(name)

    async def set_checkpoint(self, name: str, value: int,
                             expected_version: int | None = None) -> Checkpoint:
        return await self._engine.set_checkpoint(name, value, expected_version)

    @staticmethod
    def heartbeat(head: int) -> bytes:
        """A compact-form heartbeat frame naming the head."""
        return codec.encode_heartbeat(head, now_us())


class Subscription:
    """Lists of records from a start on (an empty list is a heartbeat).

    Entering it resolves the start and reads the first records, so that an error
    there (a damaged record at the start position) is raised before a streaming
    answer begins. ``position`` is the next position to read; ``position_before``
    the one the last yielded list began from.
    """

    def __init__(self, hub: Hub, stream: str, start: Start, *, follow: bool,
                 heartbeat: float) -> None:
        self._hub = hub
        self.stream = stream
        self._start = start
        self.follow = follow
        self.heartbeat = heartbeat
        self.position = 0
        self.position_before = 0
        self._first: list[Record] | None = None
        self._watch: contextlib.ExitStack | None = None
        self._watcher: Watcher | None = None
        self._iterators: list[AsyncGenerator[list[Record], None]] = []

    async def __aenter__(self) -> Subscription:
        hub = self._hub
        self._watch = contextlib.ExitStack()
        # Watched before the first read: a head that moves meanwhile is not missed.
        self._watcher = self._watch.enter_context(hub.heads.watching(self.stream))
        try:
            self.position = await hub.start_of(self.stream, self._start)
            self._first = await hub.records(self.stream, self.position)
        except BaseException:
            self._watch.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        # A caller that broke out of its loop left the generator suspended: closed
        # here, now, rather than whenever the garbage collector gets to it.
        iterators, self._iterators = self._iterators, []
        for iterator in iterators:
            await iterator.aclose()
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def __aiter__(self) -> AsyncIterator[list[Record]]:
        iterator = self._batches()
        self._iterators.append(iterator)
        return iterator

    async def _batches(self) -> AsyncGenerator[list[Record], None]:
        hub, watcher = self._hub, self._watcher
        assert watcher is not None, "use `async with hub.subscribe(…)`"
        records, self._first = self._first, None
        while True:
            if records is None:
                records = await hub.records(self.stream, self.position)
            if records:
                self.position_before = self.position
                self.position = records[-1].end
                yield records
                records = None
                continue
            if not self.follow:
                return
            self.position_before = self.position
            yield []
            records = None
            await watcher.wait(self.position, self.heartbeat)


def check_limits(limits: Limits, engine: Engine) -> None:
    """ConfigError, naming the key, if ``limits`` admit a batch that the record format
    or ``engine`` could not read back: a node refuses to start with them rather than
    acknowledge what it cannot serve."""
    largest = engine.max_record_body - codec.BODY_OVERHEAD
    if limits.max_batch_bytes > largest:
        raise ConfigError(
            f"[limits] max_batch_bytes: at most {largest} with the {engine.name} engine "
            f"(a record body holds at most {engine.max_record_body} bytes), "
            f"not {limits.max_batch_bytes}")
    if limits.max_batch_events > codec.MAX_RECORD_COUNT:
        raise ConfigError(
            f"[limits] max_batch_events: at most {codec.MAX_RECORD_COUNT} (the events "
            f"of one record), not {limits.max_batch_events}")
