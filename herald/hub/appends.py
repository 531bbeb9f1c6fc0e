"""Appends: placement (``herald.placement``) in each stream's critical section, then
the engine's conditional write — group-committed per stream.

Every stream has a **slot**: the appends waiting for it, and one writer task that
hands them to the engine, a group at a time (up to ``MAX_GROUP_BYTES``). While one
group is being written (an fsync, a COMMIT), the next gathers behind it: group
commit, whatever the engine.

Where placement happens depends on whether this node is the stream's only writer:

* **An engine only this process writes** (``files``, ``memory``: not a
  ``SharedEngine``). The slot keeps the stream's state — the head counting appends
  not yet durable, the time of the last one, the dedup window — loaded once
  (``Engine.load``) and then trusted. An append is placed the moment it arrives, on
  the event loop (no await between placing it and queueing it), so encoding its
  record overlaps the write in flight. A write that fails fails the appends queued
  behind it too (their positions assumed it would land), and the state goes back
  to the durable head.
* **A shared engine** (``postgres``: several nodes write). Nothing cached can be
  trusted: a group is placed when its write is about to start, against the state
  the engine loads (or, when no event carries an id, against the head of this
  node's last write — a guess the conditional write checks); ``HeadMoved`` means
  another node wrote first: load again, place again (``MAX_ATTEMPTS``).

An append is answered only once its record is durable; the append happens whether
or not the caller stays to hear about it: the writer holds the appends it writes, and
a caller that leaves only cancels its own future (the writer skips answering it).
A retry waiting for the original's durability has a watcher of its own, so the
original's caller leaving cannot cancel the retry. (No ``asyncio.shield`` on this
path: each costs the answer one more turn of the event loop.)
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..codec import Record
from ..engines.base import Engine, HeadMoved, PartlyWritten, Replace, SharedEngine, Write
from ..errors import (
    EmptyBatch,
    ExpectedHeadMismatch,
    HeraldError,
    ServerError,
    StorageUnavailable,
)
from ..logsafe import logsafe
from ..model import AppendResult, Batch, new_id_prefix, now_us, validate_stream_name
from ..placement import Append, Placed, Placement, StreamState, check_ids, place
from .window import DedupWindow

__all__ = ["MAX_ATTEMPTS", "MAX_GROUP_BYTES", "Appender"]

log = logging.getLogger("herald.hub")

# One write hands the engine at most this much (beyond its first record): large
# enough to amortise an fsync or a COMMIT, small enough to bound one transaction.
MAX_GROUP_BYTES = 8 * 1024 * 1024
# A shared engine's group is placed again at most this often when other nodes keep
# writing first; then its appends fail with storage_unavailable (retryable).
MAX_ATTEMPTS = 20

# Called after every durable write: (stream, records, new durable head).
Written = Callable[[str, Sequence[Record], int], None]


@dataclass(eq=False)
class _Item:
    append: Append
    future: asyncio.Future[AppendResult]
    size: int
    # Set when placed (at arrival on a trusted engine, else when written):
    placed: Placed | None = None
    result: AppendResult | None = None
    # Retries of this append waiting for it to be durable (None: the write failed).
    watchers: list[asyncio.Future[HeraldError | None]] = field(default_factory=list)

    def resolve(self, result: AppendResult) -> None:
        if not self.future.done():
            self.future.set_result(result)
        self._tell(None)

    def reject(self, error: HeraldError) -> None:
        if not self.future.done():
            self.future.set_exception(error)
        self._tell(error)

    def _tell(self, error: HeraldError | None) -> None:
        for watcher in self.watchers:
            if not watcher.done():
                watcher.set_result(error)
        self.watchers.clear()


@dataclass(eq=False)
class _Slot:
    name: str
    queue: list[_Item] = field(default_factory=list)  # waiting for the writer
    inflight: list[_Item] = field(default_factory=list)  # being written
    writer: asyncio.Task[None] | None = None
    # The state, when trusted (engine not shared) or guessed (shared): None until
    # loaded, and again whenever it may be wrong.
    head: int = 0  # counting appends placed, not yet durable
    durable: int = 0
    last_time: int = 0
    window: DedupWindow | None = None
    loaded: bool = False
    loading: asyncio.Lock = field(default_factory=asyncio.Lock)


class Appender:
    def __init__(self, engine: Engine, window: int, written: Written) -> None:
        self.engine = engine
        self.window = window
        self.shared = isinstance(engine, SharedEngine)
        self._written = written
        self._slots: dict[str, _Slot] = {}
        self._closing = False
        self._active = 0  # appends accepted and not yet answered
        self._idle = asyncio.Event()
        self._idle.set()

    async def close(self) -> None:
        """Finish the appends already accepted (even one still loading its stream's
        state); refuse new ones."""
        self._closing = True
        await self._idle.wait()
        writers = [s.writer for s in self._slots.values() if s.writer is not None]
        if writers:
            await asyncio.gather(*writers, return_exceptions=True)

    def durable_head(self, stream: str) -> int | None:
        """The stream's durable head if this process is its only writer and knows
        it (an engine that is not shared, a stream appended to since the start)."""
        slot = self._slots.get(stream)
        if self.shared or slot is None or not slot.loaded:
            return None
        return slot.durable

    async def append(self, stream: str, batch: Batch,
                     expected_head: int | None = None) -> AppendResult:
        if self._closing:
            raise StorageUnavailable("Herald is shutting down")
        self._active += 1
        self._idle.clear()
        try:
            return await self._append(stream, batch, expected_head)
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _append(self, stream: str, batch: Batch,
                      expected_head: int | None) -> AppendResult:
        validate_stream_name(stream)
        if not batch.events:
            raise EmptyBatch("a batch needs at least one event")
        append = Append(batch, expected_head, check_ids(batch))
        slot = self._slots.get(stream)
        if slot is None:
            slot = self._slots[stream] = _Slot(stream)
        if self.shared:
            item = _Item(append, asyncio.get_running_loop().create_future(),
                         len(batch.raw) if batch.raw is not None else 256 * len(batch.events))
            return await self._queue(slot, item)
        return await self._append_trusted(slot, append)

    # an engine only this process writes

    async def _append_trusted(self, slot: _Slot, append: Append) -> AppendResult:
        if not slot.loaded:
            await self._load(slot)
        assert slot.window is not None
        # From here to the queueing there is no await: placing, the state and the
        # queue change together, as one step of the event loop.
        placement = place(StreamState(slot.head, slot.last_time, slot.window), [append],
                          window=self.window, now_us=now_us(), new_prefix=new_id_prefix,
                          stream=slot.name)
        outcome = placement.outcomes[0]
        if isinstance(outcome, ExpectedHeadMismatch):
            raise outcome
        if not placement.written:
            return await self._when_durable(slot, append, outcome)
        placed = placement.written[0]
        slot.head, slot.last_time = placement.head, placement.last_time
        slot.window.add(outcome.first, outcome.head, placed.ids)
        item = _Item(append, asyncio.get_running_loop().create_future(),
                     len(placed.record.raw), placed, outcome)
        return await self._queue(slot, item)

    async def _load(self, slot: _Slot) -> None:
        async with slot.loading:
            if slot.loaded:
                return
            state = await self.engine.load(slot.name, self.window, None)
            slot.head = slot.durable = state.head
            slot.last_time = state.last_time
            slot.window = DedupWindow.of(self.window, state.known)
            slot.loaded = True

    async def _when_durable(self, slot: _Slot, append: Append,
                            outcome: AppendResult) -> AppendResult:
        """A retry whose every event is in the stream: answered as the first attempt
        was, once those events are durable; placed anew if the first attempt
        failed (its ids then left the window)."""
        last = outcome.head - 1
        if last < slot.durable:
            return outcome
        for item in slot.inflight + slot.queue:
            if item.result is not None and item.result.first <= last < item.result.head:
                watcher: asyncio.Future[HeraldError | None] = (
                    asyncio.get_running_loop().create_future())
                item.watchers.append(watcher)
                if await watcher is not None:  # the original failed: place it anew
                    return await self._append_trusted(slot, append)
                return outcome
        return outcome  # not reached: a position past the durable head is queued

    # the writer

    async def _queue(self, slot: _Slot, item: _Item) -> AppendResult:
        slot.queue.append(item)
        if slot.writer is None:
            slot.writer = asyncio.create_task(self._write_loop(slot),
                                              name=f"herald-append-{slot.name}")
        return await item.future

    async def _write_loop(self, slot: _Slot) -> None:
        try:
            while slot.queue:
                group: list[_Item] = []
                total = 0
                while slot.queue and (not group or total + slot.queue[0].size
                                      <= MAX_GROUP_BYTES):
                    item = slot.queue.pop(0)
                    group.append(item)
                    total += item.size
                slot.inflight = group
                try:
                    if self.shared:
                        await self._write_shared(slot, group)
                    else:
                        await self._write_trusted(slot, group)
                except HeraldError as exc:
                    self._fail(group, exc)
                except Exception as exc:  # a bug: fail the appends, don't hang them
                    log.exception("append to stream %s failed", logsafe(slot.name))
                    self._fail(group, ServerError(f"append failed: {exc!r}",
                                                  code="storage_error"))
                finally:
                    slot.inflight = []
        finally:
            slot.writer = None

    async def _write_trusted(self, slot: _Slot, group: list[_Item]) -> None:
        placed = [item.placed for item in group if item.placed is not None]
        last = group[-1].result
        assert last is not None and len(placed) == len(group)
        write = Write(slot.durable, placed, last.head, placed[-1].record.time_us)
        try:
            await self.engine.write(slot.name, write)
        except PartlyWritten as exc:
            self._durable(slot, group[:exc.durable])
            self._failed_trusted(slot, group[exc.durable:], exc.error)
            return
        except HeadMoved as exc:  # the cached state was wrong: load it again
            self._failed_trusted(slot, group, StorageUnavailable(
                f"stream {slot.name} was written by someone else (its head is "
                f"{exc.head}); try again", code="storage_unavailable"))
            slot.loaded = False
            return
        except HeraldError as exc:
            self._failed_trusted(slot, group, exc)
            return
        self._durable(slot, group)

    def _durable(self, slot: _Slot, items: list[_Item]) -> None:
        if not items:
            return
        records = [item.placed.record for item in items if item.placed is not None]
        head = records[-1].end
        slot.durable = head
        # The appenders hear first, the waiters next: whoever sees the new head can
        # count on its appender knowing it was appended.
        for item in items:
            if item.result is not None:
                item.resolve(item.result)
        self._written(slot.name, records, head)

    def _failed_trusted(self, slot: _Slot, failed: list[_Item], error: HeraldError) -> None:
        """Fail ``failed`` and everything queued behind it: their positions assumed
        the failed ones would land. The state goes back to the durable head."""
        doomed, slot.queue = failed + slot.queue, []
        self._fail(doomed, error)
        # Loaded again from the storage at the next append: the window was pruned as
        # if the failed appends had landed, and forgetting them would not bring back
        # the ids they pushed out (a retry of one of those would be appended twice).
        slot.loaded = False
        slot.window = None

    @staticmethod
    def _fail(items: list[_Item], error: HeraldError) -> None:
        for item in items:
            item.reject(error)

    # a shared engine

    async def _write_shared(self, slot: _Slot, group: list[_Item]) -> None:
        appends = [item.append for item in group]
        wanted = [event_id for a in appends for _, event_id in a.supplied]
        # What was placed last: the engine may place again under its lock (Replace).
        last: list[tuple[StreamState, Placement]] = []

        def placed(state: StreamState) -> Write:
            placement = place(state, appends, window=self.window, now_us=now_us(),
                              new_prefix=new_id_prefix, stream=slot.name)
            last[:] = [(state, placement)]
            return Write(state.head, placement.written, placement.head,
                         placement.last_time, replace)

        replace = Replace(wanted, self.window, placed)
        for _attempt in range(MAX_ATTEMPTS):
            guessed = not wanted and slot.loaded
            if guessed:
                state = StreamState(slot.durable, slot.last_time)
            else:
                state = await self.engine.load(slot.name, self.window, wanted)
            write = placed(state)
            if guessed and not write.written:
                # Only conflicts, judged against a guess the storage never checked
                # (nothing is written): ask the storage.
                slot.loaded = False
                continue
            error: HeraldError | None = None
            durable: int | None = None
            if write.written:
                try:
                    await self.engine.write(slot.name, write)
                except HeadMoved:
                    slot.loaded = False
                    continue
                except PartlyWritten as exc:
                    durable, error = exc.durable, exc.error
                except HeraldError:
                    slot.loaded = False
                    raise
            state, placement = last[0]
            self._answer_shared(slot, group, state, placement.outcomes, placement.written,
                                len(placement.written) if durable is None else durable, error)
            return
        raise StorageUnavailable(
            f"stream {slot.name}: other nodes kept appending first ({MAX_ATTEMPTS} tries); "
            f"try again", code="storage_unavailable")

    def _answer_shared(self, slot: _Slot, group: list[_Item], state: StreamState,
                       outcomes: list[AppendResult | ExpectedHeadMismatch],
                       written: list[Placed], durable: int, error: HeraldError | None) -> None:
        records = [p.record for p in written[:durable]]
        if records:
            head = records[-1].end
            slot.durable, slot.last_time, slot.loaded = head, records[-1].time_us, True
        elif error is None:
            slot.durable, slot.last_time, slot.loaded = state.head, state.last_time, True
        else:
            slot.loaded = False
        bases = [p.record.base for p in written]
        for item, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, ExpectedHeadMismatch):
                item.reject(outcome)
                continue
            # The record this answer depends on: its own, or (a retry of an append in
            # this very group) the one holding its last event.
            if error is not None and outcome.head > state.head:
                index = bisect.bisect_right(bases, outcome.head - 1) - 1
                if index >= durable:
                    item.reject(error)
                    continue
            item.resolve(outcome)
        if records:  # after the answers, as in _durable
            self._written(slot.name, records, records[-1].end)
