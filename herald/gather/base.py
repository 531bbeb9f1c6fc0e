"""The exactly-once loop: copy one source into one stream, whatever the source.

A gatherer keeps no checkpoint of its own. Every event it appends carries
``meta.source`` (the gatherer's name) and ``meta.source_position``; the stream's
last event therefore says where the gatherer stopped, durably and atomically with
the events themselves. The loop:

1. read the stream's head and its last event → resume after its source position;
2. read the next rows of the source (only rows that can no longer be preceded by a
   row committed later — see ``sql.GapFence``), map them to events;
3. append them as one batch with ``expected_head`` = the head it knows;
4. on ``ExpectedHeadMismatch`` (another gatherer, a restart racing an old append)
   go back to 1: the stream, not memory, is the truth.

A crash between any two steps either lost the append (the stream still ends at
the old position: the rows are read again) or kept it (the stream says so): no
row is lost or doubled, with no time window (DESIGN.md, "Exactly once").

Sources block (their drivers are synchronous): each gatherer runs its source in a
thread of its own (``worker``), so a slow or dead database never stalls the event
loop, the engine's threads, or another gatherer. A row that cannot be mapped stops
its gatherer until the row is fixed or an operator skips it (``skips``).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import msgspec
from msgspec import UNSET

from .. import codec
from ..codec import number_problem
from ..config import GatherConfig
from ..errors import (
    ExpectedHeadMismatch,
    HeraldError,
    SourceError,
    UnmappableRow,
)
from ..hub import Hub
from ..logsafe import logsafe
from ..model import MAX_ID_LENGTH, MAX_TYPE_LENGTH, Batch, NewEvent
from .skips import SKIP_STREAM, SkipLog
from .status import GathererStatus, GatherFailure, GatherState
from .worker import _Worker

__all__ = [
    "Gatherer",
    "Source",
    "SourceRead",
    "Unmappable",
    "SkipLog",
    "SKIP_STREAM",
    "RETRY_INITIAL_SECONDS",
    "RETRY_MAX_SECONDS",
    "POLL_MIN_SECONDS",
    "POLL_MAX_SECONDS",
]

log = logging.getLogger("herald.gather")
T = TypeVar("T")

# A source that fails (down, refusing connections, a query error) is retried after
# this long, doubling up to the maximum: a database that comes back is caught up
# within half a minute, and one that struggles is not hammered.
RETRY_INITIAL_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
# A source without a wake-up (SQLite, MySQL, PostgreSQL without `notify`) is polled:
# every 50 ms while rows keep coming (that bounds the added latency), doubling to once
# a second when idle (one indexed query a second costs a database nothing).
POLL_MIN_SECONDS = 0.05
POLL_MAX_SECONDS = 1.0
# Even with LISTEN/NOTIFY, look anyway this often: a notification is lost when the
# connection drops, and a writer that does not NOTIFY should still be gathered.
NOTIFY_FALLBACK_SECONDS = 2.0
# A thread blocked waiting for a NOTIFY returns this often, so that stopping a
# gatherer (shutdown) never waits longer than this for it.
WAKE_SLICE_SECONDS = 0.5
# Rows held back behind a gap that may still be filled (sql.GapFence) are looked at
# again after this long, doubling: most gaps close within milliseconds (a transaction
# that took a lower id commits), a long transaction is not polled hard.
FENCE_RECHECK_INITIAL_SECONDS = 0.005
FENCE_RECHECK_MAX_SECONDS = 0.5
# The source's highest position (for lag and progress) is refreshed at most this
# often: it costs one indexed query.
STATUS_REFRESH_SECONDS = 1.0
# A gatherer stopped on a bad row reads the row again this often: if the module
# fixed it in place, the gatherer moves on by itself, without a skip.
BAD_ROW_RECHECK_SECONDS = 5.0
# Rows are mapped into batches of at most this share of `max_batch_bytes`: the estimate
# per row is cheap but not exact (JSON escaping), so keep a margin.
BATCH_BYTES_SHARE = 0.5
# What a row costs in a batch beyond its data, type, id and meta strings: field names,
# quotes, the meta keys Herald adds.
EVENT_OVERHEAD_BYTES = 96

_encoder = msgspec.json.Encoder()


class Unmappable(Exception):
    """Raised by ``Source.event``: this row cannot become an event (says why)."""


@dataclass
class SourceRead:
    """One read of a source. ``rows`` are safe to gather now, in position order.

    ``full``: the read hit its limit, more rows are waiting. ``held``: rows exist
    beyond a gap that may still be filled by a transaction still running; they are
    read again once the gap is settled.
    """

    rows: Sequence[Any]
    full: bool = False
    held: bool = False


class Source(abc.ABC):
    """A module's private store, as a gatherer reads it.

    Every method blocks; a gatherer calls them from its own thread, one at a time.
    Errors are HeraldErrors: ``SourceUnavailable`` for anything worth retrying.
    Built by ``manager.create_source`` from the gatherer's config and its parsed
    ``settings``; a new kind of source is one class and one entry in manager.SOURCES.
    """

    kind: str = "source"
    # True when ``wait`` returns early on new rows (LISTEN/NOTIFY); else it is polled.
    wakes: bool = False
    # The frozen dataclass of the source's own keys in its [[gather]] table (all but
    # name, stream, source and batch), parsed by manager.create_source; its checks
    # raise config.SettingError naming the key.
    settings: ClassVar[type[Any]]

    def __init__(self, config: GatherConfig, options: Any) -> None:
        self.config = config
        # the parsed settings: an instance of ``settings``
        self.options = options

    @abc.abstractmethod
    def open(self) -> None:
        """Connect (again). A no-op while connected."""

    @abc.abstractmethod
    def close(self) -> None:
        """Disconnect; ``open`` may follow."""

    @abc.abstractmethod
    def read(self, after: int | None, limit: int) -> SourceRead:
        """Up to ``limit`` rows with position > ``after`` (None: from the start)."""

    @abc.abstractmethod
    def position(self, row: Any) -> int:
        """A row's position."""

    @abc.abstractmethod
    def event(self, row: Any, meta: dict[str, str]) -> NewEvent:
        """The row as an event carrying ``meta`` (more may be added). Raises
        Unmappable, saying why, when it cannot be one."""

    def bounds(self) -> tuple[int, int] | None:
        """The lowest and highest positions in the source (None when empty or when it
        cannot be known cheaply): for lag and progress only."""
        return None

    def wait(self, timeout: float) -> bool:
        """Block until new rows may exist, at most ``timeout`` seconds; True if woken
        (only sources that ``wakes`` are asked)."""
        time.sleep(timeout)
        return False

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the source is, for people: no password, no key."""


# --- the gatherer ---------------------------------------------------------------------


@dataclass
class _Page:
    """Rows mapped to events, ready to append (built in the gatherer's thread)."""

    batch: Batch | None
    count: int
    last: int | None  # the last position this page covers (skipped rows included)
    full: bool
    held: bool
    bad: UnmappableRow | None = None


@dataclass
class _Progress:
    position: int | None = None
    head: int = 0
    source_bounds: tuple[int, int] | None = None
    source_bounds_at: float = 0.0
    behind_since: float | None = None
    gathered: int = 0
    conflicts: int = 0
    duplicates: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    failure: GatherFailure | None = None
    stopped_at: UnmappableRow | None = None


class Gatherer:
    """Copies one source into one stream, exactly once (see the module docstring)."""

    def __init__(self, config: GatherConfig, hub: Hub, source: Source,
                 skips: SkipLog) -> None:
        self.config = config
        self.name = config.name
        self.stream = config.stream
        self.hub = hub
        self.source = source
        self.skips = skips
        self.limits = hub.limits
        self.state = GatherState.STARTING
        self._progress = _Progress()
        self._skipped = skips.positions(self.name)
        self._batch_bytes = int(self.limits.max_batch_bytes * BATCH_BYTES_SHARE)
        self._worker: _Worker | None = None
        self._task: asyncio.Task[None] | None = None

    # lifecycle

    def start(self) -> None:
        # The skip log is read by the manager just before start: take what it knows now,
        # not what it knew when this gatherer was built.
        self._skipped = self.skips.positions(self.name)
        self._worker = _Worker(f"herald-gather-{self.name}")
        self._task = asyncio.create_task(self._run(), name=f"gather {self.name}")

    async def stop(self) -> None:
        """Stop after the current step; the source is closed in its thread."""
        task, self._task = self._task, None
        # Cancel until it is done: on Python 3.11 asyncio.wait_for (inside the engine's
        # wait) swallows a cancellation that arrives as its future completes, and the
        # loop would carry on (seen: a stop() that never returned after a skip).
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=WAKE_SLICE_SECONDS)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("gatherer %s ended with an error", logsafe(self.name),
                      exc_info=task.exception())
        self.state = GatherState.STOPPED
        if self._worker is not None:
            worker, self._worker = self._worker, None
            try:
                await asyncio.wait_for(worker.call(self.source.close), WAKE_SLICE_SECONDS * 4)
            except (TimeoutError, HeraldError, OSError):
                pass
            worker.stop()

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        assert self._worker is not None
        return await self._worker.call(function, *args)

    # status

    def status(self) -> GathererStatus:
        p = self._progress
        lag = source_max = None
        if p.source_bounds is not None:
            low, source_max = p.source_bounds
            lag = source_max - p.position if p.position is not None else source_max - low + 1
            lag = max(0, lag)
        behind = 0.0 if p.behind_since is None else time.monotonic() - p.behind_since
        skips = self.skips.skips.get(self.name, [])
        return GathererStatus(
            name=self.name, stream=self.stream, source=self.source.kind,
            description=self.source.describe(), state=self.state,
            source_position=p.position, source_max=source_max, stream_head=p.head,
            lag_events=lag, lag_seconds=round(behind, 3), gathered=p.gathered,
            conflicts=p.conflicts, started_at=p.started_at, duplicates=p.duplicates,
            last_error=p.failure,
            skips=list(skips))

    @property
    def stopped_at(self) -> UnmappableRow | None:
        """The bad row this gatherer is stopped at, if it is (also while it reads the
        row again to see whether it was fixed)."""
        return self._progress.stopped_at

    # the loop

    async def _run(self) -> None:
        delay = RETRY_INITIAL_SECONDS
        while True:
            gathered = self._progress.gathered
            try:
                await self._session()
            except UnmappableRow as exc:
                await self._stopped(exc)
                delay = RETRY_INITIAL_SECONDS
            except Exception as exc:
                if not isinstance(exc, HeraldError):
                    # A bug or a driver error nobody converted: keep the gatherer alive
                    # (it retries) and say where it happened.
                    log.exception("gatherer %s failed", logsafe(self.name))
                    exc = HeraldError(f"internal error: {exc!r}", code="internal_error")
                if self._progress.gathered > gathered:
                    delay = RETRY_INITIAL_SECONDS  # it worked for a while: start over
                self._failed(exc)
                self.state = GatherState.RETRYING
                log.warning("gatherer %s: %s [%s]; retrying in %.1f s", logsafe(self.name),
                            logsafe(exc.message), exc.code, delay)
                try:
                    await self._call(self.source.close)
                except Exception:  # closing a broken connection may fail too
                    log.debug("gatherer %s: close failed", logsafe(self.name), exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _failed(self, exc: HeraldError) -> None:
        position = exc.details.get("position")
        self._progress.failure = GatherFailure(
            code=exc.code, message=exc.message, at=datetime.now(UTC),
            position=position if isinstance(position, int) else None)

    async def _session(self) -> None:
        if self._progress.stopped_at is None:
            self.state = GatherState.STARTING
        await self._call(self.source.open)
        while True:
            head, after = await self._resume()
            try:
                await self._copy(head, after)
            except ExpectedHeadMismatch as exc:
                # Someone else appended (another node's gatherer, an old append that
                # landed late): the stream is the truth, read it again.
                self._progress.conflicts += 1
                log.info("gatherer %s: %s; resuming from the stream", logsafe(self.name),
                         logsafe(exc.message))

    async def _resume(self) -> tuple[int, int | None]:
        """The stream's head and the source position of its last event."""
        head = await self.hub.head(self.stream)
        position: int | None = None
        if head > 0:
            records = await self.hub.records(self.stream, head - 1)
            last = codec.events_of(records[0], head - 1)[0]
            if last.meta.get("source") != self.name or "source_position" not in last.meta:
                raise HeraldError(
                    f"stream {self.stream}'s last event (position {head - 1}) was not "
                    f"gathered by {self.name}: a stream is gathered into by one gatherer "
                    "and nothing else", code="stream_not_gathered", stream=self.stream)
            try:
                position = int(last.meta["source_position"])
            except ValueError:
                raise HeraldError(
                    f"stream {self.stream}'s last event has source_position "
                    f"{last.meta['source_position']!r}, not an integer",
                    code="stream_not_gathered", stream=self.stream) from None
        self._progress.head = head
        self._progress.position = position
        return head, position

    async def _copy(self, head: int, after: int | None) -> None:
        """Gather until something fails (an exception is the only way out)."""
        # A batch is one append: it keeps to the limits every append keeps to.
        limit = min(self.config.batch, self.limits.max_batch_events)
        poll = POLL_MIN_SECONDS
        fence_delay = FENCE_RECHECK_INITIAL_SECONDS
        page = await self._call(self._collect, after, limit)
        while True:
            if page.bad is None or page.count:
                self.state = GatherState.BACKFILLING if page.full else GatherState.LIVE
            # While this page is appended, the thread reads and maps the next one.
            prefetch = None
            if page.full and page.bad is None:
                prefetch = asyncio.ensure_future(self._call(self._collect, page.last, limit))
            try:
                if page.batch is not None:
                    head = await self._append(page.batch, head)
            except BaseException:
                if prefetch is not None:
                    prefetch.cancel()
                raise
            if page.last is not None:
                after = page.last
            self._progress.position = after
            stopped = self._progress.stopped_at
            if stopped is not None and after is not None and after >= stopped.position:
                self._progress.stopped_at = None  # the row was fixed in the source
                log.info("gatherer %s: row %d can be read now; going on",
                         logsafe(self.name), stopped.position)
            if page.bad is not None:
                raise page.bad
            if prefetch is not None:
                page = await prefetch
                continue
            if page.count:
                poll = POLL_MIN_SECONDS
            if page.held:
                await asyncio.sleep(fence_delay)
                fence_delay = min(fence_delay * 2, FENCE_RECHECK_MAX_SECONDS)
            else:
                fence_delay = FENCE_RECHECK_INITIAL_SECONDS
                if page.count == 0:
                    self._progress.behind_since = None
                    poll = await self._idle(poll)
            page = await self._call(self._collect, after, limit)

    async def _idle(self, poll: float) -> float:
        """Wait for new rows; return the next poll interval."""
        if self.source.wakes:
            for _ in range(round(NOTIFY_FALLBACK_SECONDS / WAKE_SLICE_SECONDS)):
                if await self._call(self.source.wait, WAKE_SLICE_SECONDS):
                    break
            return poll
        await asyncio.sleep(poll)
        return min(poll * 2, POLL_MAX_SECONDS)

    async def _append(self, batch: Batch, head: int) -> int:
        result = await self.hub.append(self.stream, batch, expected_head=head)
        if result.duplicates:
            # The source repeats an event id that is still in the stream's dedup window:
            # the hub kept the first. Counted, not hidden.
            self._progress.duplicates += len(result.duplicates)
            log.warning("gatherer %s: %d events had ids already in stream %s; not appended "
                        "again", logsafe(self.name), len(result.duplicates),
                        logsafe(self.stream))
        self._progress.gathered += result.appended
        self._progress.head = result.head
        return result.head

    async def _stopped(self, exc: UnmappableRow) -> None:
        """Stay at the bad row until an operator skips it (``herald gather skip``), or
        for BAD_ROW_RECHECK_SECONDS: then the caller reads the row again."""
        previous = self._progress.stopped_at
        self.state = GatherState.STOPPED_BAD_ROW
        self._progress.stopped_at = exc
        if previous is None or previous.position != exc.position:
            self._failed(exc)
            log.error("gatherer %s: %s [%s]; stopped until `herald gather skip %s %d`",
                      logsafe(self.name), logsafe(exc.message), exc.code, logsafe(self.name),
                      exc.position)
        deadline = time.monotonic() + BAD_ROW_RECHECK_SECONDS
        while True:
            # The log may have grown meanwhile (a skip recorded while the row was read
            # again, or on another node): look at it before waiting on it.
            self._skipped = self.skips.positions(self.name)
            if exc.position in self._skipped:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # read it again: it may have been fixed in place
            await self.hub.wait(SKIP_STREAM, self.skips.head, remaining)
            await self.skips.refresh()
        self._progress.stopped_at = None
        log.info("gatherer %s: row %d skipped; resuming", logsafe(self.name), exc.position)

    # in the gatherer's thread

    def _collect(self, after: int | None, limit: int) -> _Page:
        """Read the next rows and map them into one batch (runs in the thread)."""
        source = self.source
        self._refresh_bounds()
        read = source.read(after, limit)
        skipped = self._skipped
        name = self.name
        position_of = source.position
        to_event = source.event
        budget = self._batch_bytes
        limits = self.limits
        events: list[NewEvent] = []
        last = after
        size = 0
        full = read.full
        bad: UnmappableRow | None = None
        # Per-row work is the cost of gathering: this loop is kept flat (no helper
        # calls for checks), measured with herald bench G1.
        max_event = limits.max_event_bytes - EVENT_OVERHEAD_BYTES
        ids: set[str] = set()
        for row in read.rows:
            position = position_of(row)
            if position in skipped:
                last = position
                continue
            try:
                event = to_event(row, {"source": name, "source_position": str(position)})
                # What msgspec checks when it decodes an append (model.NewEvent).
                type_length = len(event.type)
                if not 0 < type_length <= MAX_TYPE_LENGTH:
                    raise Unmappable(f"its type must be 1 to {MAX_TYPE_LENGTH} characters")
                problem = number_problem(event.data)
                if problem is not None:
                    raise Unmappable(f"its data holds {problem}")
                cost = len(event.data) + type_length + EVENT_OVERHEAD_BYTES
                if event.id is not UNSET:
                    if not 0 < len(event.id) <= MAX_ID_LENGTH:
                        raise Unmappable(f"its id must be 1 to {MAX_ID_LENGTH} characters")
                    if event.id in ids:
                        # The hub refuses an id twice in one batch: end the batch
                        # here; in the next one the dedup window answers for it.
                        full = True
                        break
                    ids.add(event.id)
                    cost += len(event.id)
                meta = event.meta
                if len(meta) > 2:  # more than source and source_position
                    for key, value in meta.items():
                        cost += len(key) + len(value) + 6
                if cost > max_event:  # an estimate: measure exactly before refusing
                    exact = len(_encoder.encode(event))
                    if exact > limits.max_event_bytes:
                        raise Unmappable(f"the event is {exact} bytes; the limit is "
                                         f"{limits.max_event_bytes}")
            except Unmappable as exc:
                bad = UnmappableRow(
                    f"gatherer {name} ({source.describe()}): the row at position {position} "
                    f"cannot be mapped: {exc}", gatherer=name, position=position)
                break
            if size + cost > budget and events:
                full = True
                break
            size += cost
            events.append(event)
            last = position
        bounds = self._progress.source_bounds
        if not read.rows and not read.held and last is not None and (
                bounds is None or bounds[1] < last):
            # Caught up: the source holds nothing past `last`; a refresh may be a
            # second old, this is now.
            bounds = self._progress.source_bounds = (bounds[0] if bounds else last, last)
        if bounds is not None and (last is None or bounds[1] > last) and (
                self._progress.behind_since is None):
            self._progress.behind_since = time.monotonic()
        batch = Batch(events, _encoder.encode(events)) if events else None
        return _Page(batch, len(events), last, full, read.held, bad)

    def _refresh_bounds(self) -> None:
        now = time.monotonic()
        if now - self._progress.source_bounds_at < STATUS_REFRESH_SECONDS:
            return
        self._progress.source_bounds_at = now
        try:
            self._progress.source_bounds = self.source.bounds()
        except SourceError:
            pass  # only a status figure: the read that follows reports the failure

