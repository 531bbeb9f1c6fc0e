"""The hub (``herald.hub``), in-process on the memory engine.

What this proves:

* appends on an engine only this node writes (the "trusted" path): group commit
  (appends that arrive while a write is in flight go to the engine together, at
  contiguous positions, each answered only once its write returned); a failed write
  fails its appends and every one queued behind it with the engine's error, the next
  append reuses the durable head and the failed ids can be appended again;
  ``PartlyWritten`` answers the durable part only; a retry of an append in flight
  waits for it, and becomes a new append if it failed; the dedup window survives a
  restart and a failed write; a head moved by someone else fails the group and is
  loaded again;
* what every append is checked for: ``expected_head`` (with the head), an empty
  batch, the stream name, an id twice in one batch (nothing written);
* appends on a ``SharedEngine``: another node appending between load and write is
  absorbed (``Write.replace``, or ``HeadMoved`` and a new placement), a conditional
  append against a moved head is a conflict, one that holds against the stored head
  lands, a stream that keeps moving ends in ``StorageUnavailable``;
* reads: pages (``from=head``, the limit's bounds, ``ReadPage.events``/``next``, the
  intact events before a damaged record); the records just appended come from the
  tail cache (the storage is asked only whether there is more at the head);
* subscriptions: catch-up then live, heartbeats, a damaged start raised on enter,
  ``follow=False``, no lost wake-up when an append races the entering;
* ``wait``: at once, timeout, woken by an append, by a shared engine's ``advance``,
  its ``alarm`` (the head asked again: a lost storage fails the wait), the poll;
* memory: reads, waits and subscriptions leave no per-stream state behind;
* ``close``: the appends accepted are finished, later ones refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import msgspec
import pytest

from herald import codec
from herald.codec import Record
from herald.engines.base import HeadListener, PartlyWritten, SharedEngine, Write
from herald.engines.memory import MemoryEngine, MemoryStore
from herald.errors import (
    CorruptRecord,
    EmptyBatch,
    ExpectedHeadMismatch,
    HeraldError,
    InvalidRequest,
    InvalidStreamName,
    NotFound,
    StorageFull,
    StorageUnavailable,
)
from herald.hub import Hub, Subscription
from herald.hub import appends as appends_module
from herald.hub import heads as heads_module
from herald.model import Batch, Limits, new_id_prefix, now_us
from herald.placement import Append, StreamState, check_ids, place

# --- helpers -------------------------------------------------------------------------

_serial = itertools.count()


def batch(*ids: str | None) -> Batch:
    """A validated batch of events with these ids (None: no id)."""
    events = []
    for event_id in ids:
        event: dict[str, Any] = {"type": "t", "data": {"n": next(_serial)}}
        if event_id is not None:
            event["id"] = event_id
        events.append(event)
    return codec.decode_append(msgspec.json.encode(events), Limits())


def events(n: int) -> Batch:
    return batch(*[None] * n)


async def settle(rounds: int = 20) -> None:
    """Let every ready task run as far as it can."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0)


async def take(subscription: Subscription, n: int) -> list[list[Record]]:
    """The first ``n`` lists a subscription yields (closing its iterator)."""
    out: list[list[Record]] = []
    async with contextlib.aclosing(aiter(subscription)) as batches:
        async for records in batches:
            out.append(records)
            if len(out) == n:
                break
    return out


def positions(records: list[Record], start: int = 0) -> list[int]:
    out: list[int] = []
    for record in records:
        out += [e.position for e in codec.events_of(record, start)]
    return out


def ids(records: list[Record]) -> list[str]:
    return [e.id for record in records for e in codec.events_of(record)]


async def stored(store: MemoryStore, stream: str) -> list[Record]:
    engine = MemoryEngine(store)
    return await engine.read(stream, 0, 1 << 30)


async def other_node(store: MemoryStore, stream: str, *event_ids: str | None) -> None:
    """Another node appends to ``stream``, straight into the shared store (no
    notification reaches this node)."""
    engine = MemoryEngine(store)
    await engine.open()
    b = batch(*event_ids) if event_ids else events(1)
    window = Limits().dedup_window
    state = await engine.load(stream, window)
    placement = place(state, [Append(b, None, check_ids(b))], window=window,
                      now_us=now_us(), new_prefix=new_id_prefix, stream=stream)
    await engine.write(stream, Write(state.head, placement.written, placement.head,
                                     placement.last_time))


class ProbeEngine(MemoryEngine):
    """A memory engine that counts its calls and lets a test stop or fail them.

    ``before[n]``/``after[n]``: write call ``n`` (from 0) waits for that event before
    storing / after storing (before returning). ``faults[n]``: write call ``n``
    raises it (a PartlyWritten stores its first records first). ``race``: awaited
    at the start of every write, after the hub loaded the state (another node's
    append). ``load_gates``/``read_gates``: the next load/read waits for the first
    event (a read computes its answer first, then waits). ``corrupt_at``: the record
    holding that position is damaged. ``head_error``: ``head`` raises it.
    """

    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        super().__init__(self.store)
        self.writes: list[list[tuple[int, int]]] = []  # (base, count) per record, per call
        self.before: dict[int, asyncio.Event] = {}
        self.after: dict[int, asyncio.Event] = {}
        self.faults: dict[int, Exception] = {}
        self.race: Callable[[str], Awaitable[None]] | None = None
        self.loads = 0
        self.load_gates: list[asyncio.Event] = []
        self.reads = 0
        self.served = 0  # reads that returned records (a read at the head returns none)
        self.read_gates: list[asyncio.Event] = []
        self.corrupt_at: int | None = None
        self.head_error: HeraldError | None = None

    async def load(self, stream: str, window: int,
                   ids: Collection[str] | None = None) -> StreamState:
        self.loads += 1
        if self.load_gates:
            await self.load_gates.pop(0).wait()
        return await super().load(stream, window, ids)

    async def write(self, stream: str, write: Write) -> None:
        n = len(self.writes)
        self.writes.append([(r.base, r.count) for r in write.records])
        if n in self.before:
            await self.before[n].wait()
        if self.race is not None:
            await self.race(stream)
        fault = self.faults.pop(n, None)
        if isinstance(fault, PartlyWritten):
            keep = list(write.written[:fault.durable])
            if keep:
                last = keep[-1].record
                await self._commit(stream, Write(write.expected_head, keep, last.end,
                                                 last.time_us))
            raise fault
        if fault is not None:
            raise fault
        await self._commit(stream, write)
        if n in self.after:
            await self.after[n].wait()

    async def _commit(self, stream: str, write: Write) -> None:
        await MemoryEngine.write(self, stream, write)

    async def read(self, stream: str, start: int,
                   max_bytes: int = 1 << 20) -> list[Record]:
        self.reads += 1
        records = await super().read(stream, start, max_bytes)
        if self.corrupt_at is not None:
            bad = self.corrupt_at
            for index, record in enumerate(records):
                if record.base <= bad < record.end:
                    if index == 0:
                        raise CorruptRecord(f"record at position {record.base} is damaged",
                                            first=record.base)
                    records = records[:index]
                    break
        if self.read_gates:
            await self.read_gates.pop(0).wait()
        self.served += bool(records)
        return records

    async def head(self, stream: str) -> int:
        if self.head_error is not None:
            raise self.head_error
        return await super().head(stream)


class SharedMemoryEngine(ProbeEngine, SharedEngine):
    """A memory engine "several nodes write": the hub takes the shared path. With
    ``replace``, a write that finds the head moved is placed again "under the lock"
    (Write.replace), as PostgreSQL does; without, it raises HeadMoved."""

    name = "shared-memory"

    def __init__(self, store: MemoryStore | None = None, *, replace: bool = True) -> None:
        super().__init__(store)
        self.replace = replace
        self.replaced = 0
        self.listener: HeadListener | None = None

    def watch(self, listener: HeadListener) -> None:
        self.listener = listener

    async def _commit(self, stream: str, write: Write) -> None:
        # No suspension from the head check to the store: the stream's "lock".
        if self.replace and write.replace is not None:
            head = await MemoryEngine.head(self, stream)
            if head != write.expected_head:
                self.replaced += 1
                state = await MemoryEngine.load(self, stream, write.replace.window,
                                                write.replace.ids)
                write = write.replace.place(state)
                if not write.written:
                    return
        await MemoryEngine.write(self, stream, write)


def once(action: Callable[[str], Awaitable[None]]) -> Callable[[str], Awaitable[None]]:
    done: list[bool] = []

    async def race(stream: str) -> None:
        if not done:
            done.append(True)
            await action(stream)

    return race


def assert_contiguous(results: list[Any], start: int = 0) -> None:
    head = start
    for result in results:
        assert result.first == head
        head = result.head


# --- appends: group commit -----------------------------------------------------------


async def test_appends_arriving_during_a_write_go_to_the_engine_together() -> None:
    engine = ProbeEngine()
    engine.before[0] = gate = asyncio.Event()
    async with Hub(engine) as hub:
        first = asyncio.create_task(hub.append("s", events(1)))
        await until(lambda: len(engine.writes) == 1)
        rest = [asyncio.create_task(hub.append("s", events(2))) for _ in range(10)]
        await settle()
        assert not first.done() and not any(t.done() for t in rest)
        assert len(engine.writes) == 1  # the others wait behind the write in flight
        gate.set()
        results = await asyncio.gather(first, *rest)
        assert engine.writes == [[(0, 1)], [(1 + 2 * i, 2) for i in range(10)]]
        assert_contiguous(results)
        assert [r.appended for r in results] == [1] + [2] * 10
        assert await hub.head("s") == 21
        assert positions(await stored(engine.store, "s")) == list(range(21))


async def test_an_append_is_answered_only_once_its_write_returned() -> None:
    engine = ProbeEngine()
    engine.after[0] = gate = asyncio.Event()  # stored, but the write has not returned
    async with Hub(engine) as hub:
        task = asyncio.create_task(hub.append("s", events(1)))
        await until(lambda: "s" in engine.store.streams
                    and engine.store.streams["s"].head == 1)
        await settle()
        assert not task.done()  # stored, but not known to be durable yet
        gate.set()
        assert (await task).head == 1


async def test_a_failed_write_fails_its_appends_and_those_queued_behind_it() -> None:
    engine = ProbeEngine()
    error = StorageFull("the disk is full")
    engine.before[1] = gate = asyncio.Event()
    engine.faults[1] = error
    async with Hub(engine) as hub:
        assert (await hub.append("s", batch("a0"))).first == 0
        failing = asyncio.create_task(hub.append("s", batch("x1")))
        await until(lambda: len(engine.writes) == 2)
        queued = [asyncio.create_task(hub.append("s", batch(f"x{i}"))) for i in (2, 3)]
        await settle()
        gate.set()
        for task in (failing, *queued):
            with pytest.raises(StorageFull) as raised:
                await task
            assert raised.value is error  # the engine's own error
        assert engine.writes == [[(0, 1)], [(1, 1)]]  # the queued ones never reached it
        assert await hub.head("s") == 1
        # The next append takes the durable head (no gap), and the failed ids were
        # forgotten: appending them again appends them.
        again = [await hub.append("s", batch(i)) for i in ("x2", "x1", "x3")]
        assert [(r.first, r.appended) for r in again] == [(1, 1), (2, 1), (3, 1)]
        records = await stored(engine.store, "s")
        assert positions(records) == [0, 1, 2, 3]
        assert ids(records) == ["a0", "x2", "x1", "x3"]


async def test_a_failed_write_forgets_no_id_still_in_the_window() -> None:
    """The window is pruned against the head of appends not yet durable; when they
    fail, what was pruned for them must still be known."""
    engine = ProbeEngine()
    engine.faults[1] = StorageFull("the disk is full")
    async with Hub(engine, Limits(dedup_window=10)) as hub:
        assert (await hub.append("s", batch("a"))).first == 0
        with pytest.raises(StorageFull):
            await hub.append("s", events(20))  # would have moved "a" out of the window
        assert await hub.head("s") == 1
        retry = await hub.append("s", batch("a"))  # one event behind the head
        assert (retry.appended, retry.first) == (0, 0)
        assert await hub.head("s") == 1


@pytest.mark.parametrize("shared", [False, True], ids=["trusted", "shared"])
async def test_partly_written_answers_the_durable_appends_only(shared: bool) -> None:
    engine = SharedMemoryEngine() if shared else ProbeEngine()
    error = StorageFull("the disk filled up half-way")
    engine.before[0] = gate = asyncio.Event()
    engine.faults[1] = PartlyWritten(1, error)
    async with Hub(engine) as hub:
        first = asyncio.create_task(hub.append("s", events(1)))
        await until(lambda: len(engine.writes) == 1)
        group = [asyncio.create_task(hub.append("s", batch(f"p{i}"))) for i in range(3)]
        await settle()
        gate.set()
        assert (await first).first == 0
        assert (await group[0]).first == 1
        for task in group[1:]:
            with pytest.raises(StorageFull) as raised:
                await task
            assert raised.value is error
        assert engine.writes[1] == [(1, 1), (2, 1), (3, 1)]  # one write of three records
        assert await hub.head("s") == 2
        page = await hub.read("s", 0, 10)  # the durable one is served (tail cache too)
        assert [e.position for e in page.events()] == [0, 1]
        assert (await hub.append("s", batch("p1"))).first == 2  # no gap, id forgotten
        assert ids(await stored(engine.store, "s"))[1:] == ["p0", "p1"]


async def test_a_retry_of_an_append_in_flight_waits_for_it() -> None:
    engine = ProbeEngine()
    engine.before[0] = gate = asyncio.Event()
    async with Hub(engine) as hub:
        original = asyncio.create_task(hub.append("s", batch("r1", "r2")))
        await until(lambda: len(engine.writes) == 1)
        retry = asyncio.create_task(hub.append("s", batch("r1", "r2")))
        await settle()
        assert not retry.done()  # not answered before the original is durable
        gate.set()
        first, again = await original, await retry
        assert (first.first, first.head, first.appended) == (0, 2, 2)
        assert (again.first, again.head, again.appended) == (0, 2, 0)
        assert [(d.index, d.id, d.position) for d in again.duplicates] == [
            (0, "r1", 0), (1, "r2", 1)]
        assert engine.writes == [[(0, 2)]]


async def test_a_retry_of_an_append_that_fails_in_flight_becomes_the_append() -> None:
    engine = ProbeEngine()
    engine.before[0] = gate = asyncio.Event()
    engine.faults[0] = StorageUnavailable("the storage went away")
    async with Hub(engine) as hub:
        original = asyncio.create_task(hub.append("s", batch("r1", "r2")))
        await until(lambda: len(engine.writes) == 1)
        retry = asyncio.create_task(hub.append("s", batch("r1", "r2")))
        await settle()
        assert not retry.done()
        gate.set()
        with pytest.raises(StorageUnavailable):
            await original
        landed = await retry
        assert (landed.first, landed.head, landed.appended) == (0, 2, 2)
        assert not landed.duplicates
        assert ids(await stored(engine.store, "s")) == ["r1", "r2"]


async def test_the_dedup_window_survives_a_restart() -> None:
    store = MemoryStore()
    async with Hub(ProbeEngine(store)) as hub:
        await hub.append("s", batch(None, "k"))
    engine = ProbeEngine(store)
    async with Hub(engine) as hub:
        retry = await hub.append("s", batch(None, "k"))  # one event new, one known
        assert (retry.first, retry.appended) == (2, 1)
        assert [(d.id, d.position) for d in retry.duplicates] == [("k", 1)]
        assert engine.loads == 1  # loaded once, then trusted
        await hub.append("s", events(1))
        assert engine.loads == 1


async def test_someone_else_writing_a_trusted_stream_fails_the_group_and_reloads() -> None:
    store = MemoryStore()
    async with Hub(ProbeEngine(store)) as mine, Hub(ProbeEngine(store)) as theirs:
        await mine.append("s", events(1))
        await theirs.append("s", events(1))  # loads head 1: lands at 1
        with pytest.raises(StorageUnavailable) as raised:
            await mine.append("s", events(1))  # placed at 1 against the cached head
        assert raised.value.code == "storage_unavailable"
        assert (await mine.append("s", events(1))).first == 2  # loaded again
        assert positions(await stored(store, "s")) == [0, 1, 2]


# --- appends: what is refused --------------------------------------------------------


async def test_expected_head() -> None:
    async with Hub(ProbeEngine()) as hub:
        await hub.append("s", events(2))
        with pytest.raises(ExpectedHeadMismatch) as raised:
            await hub.append("s", events(1), expected_head=1)
        assert raised.value.head == 2 and raised.value.code == "expected_head_mismatch"
        assert (await hub.append("s", events(1), expected_head=2)).first == 2
        with pytest.raises(ExpectedHeadMismatch):
            await hub.append("new", events(1), expected_head=1)
        assert (await hub.append("new", events(1), expected_head=0)).first == 0


async def test_what_an_append_is_refused_for() -> None:
    engine = ProbeEngine()
    async with Hub(engine) as hub:
        with pytest.raises(EmptyBatch) as empty:
            await hub.append("s", Batch([]))
        assert empty.value.code == "empty_batch"
        with pytest.raises(EmptyBatch):
            await hub.append_body("s", b"[]")
        for name in ("", ".hidden", "a/b", "x" * 1000):
            with pytest.raises(InvalidStreamName):
                await hub.append(name, events(1))
            with pytest.raises(InvalidStreamName):
                await hub.append_body(name, b'[{"type": "t", "data": 1}]')
        with pytest.raises(InvalidRequest) as twice:
            await hub.append("s", batch("a", "b", "a"))
        assert twice.value.code == "duplicate_id"
        assert twice.value.details["index"] == 2
        assert engine.writes == [] and engine.store.streams == {}
        assert await hub.head("s") == 0
        with pytest.raises(NotFound) as missing:
            await hub.stream("s")
        assert missing.value.code == "stream_not_found"


# --- appends: a shared engine --------------------------------------------------------


@pytest.mark.parametrize("replace", [True, False], ids=["replace", "head-moved"])
async def test_another_node_appending_between_load_and_write(replace: bool) -> None:
    store = MemoryStore()
    engine = SharedMemoryEngine(store, replace=replace)
    async with Hub(engine) as hub:
        engine.race = once(lambda stream: other_node(store, stream, "o1", "o2"))
        result = await hub.append("s", batch("m1", None))
        assert (result.first, result.head, result.appended) == (2, 4, 2)
        # Without ids this node guesses the head from its last write; the other node
        # moved it again meanwhile.
        engine.race = once(lambda stream: other_node(store, stream))
        result = await hub.append("s", events(1))
        assert (result.first, result.head) == (5, 6)
        assert engine.replaced == (2 if replace else 0)
        assert len(engine.writes) == (2 if replace else 4)
        records = await stored(store, "s")
        assert positions(records) == list(range(6))
        assert ids(records)[:3] == ["o1", "o2", "m1"]
        page = await hub.read("s", 0, 10)
        assert [e.position for e in page.events()] == list(range(6)) and page.head == 6


@pytest.mark.parametrize("replace", [True, False], ids=["replace", "head-moved"])
async def test_a_conditional_append_against_a_moved_head_is_a_conflict(replace: bool) -> None:
    store = MemoryStore()
    engine = SharedMemoryEngine(store, replace=replace)
    async with Hub(engine) as hub:
        engine.race = once(lambda stream: other_node(store, stream))
        with pytest.raises(ExpectedHeadMismatch) as raised:
            await hub.append("s", events(1), expected_head=0)
        assert raised.value.head == 1
        assert positions(await stored(store, "s")) == [0]


async def test_a_conditional_append_is_checked_against_the_stored_head() -> None:
    """On a shared engine the head of this node's last write is only a guess: a
    condition that holds against the stored head must not be refused because of it."""
    store = MemoryStore()
    engine = SharedMemoryEngine(store)
    async with Hub(engine) as hub:
        await hub.append("s", events(1))  # this node's guess: head 1
        await other_node(store, "s")  # the stored head: 2
        result = await hub.append("s", events(1), expected_head=2)
        assert (result.first, result.head) == (2, 3)
        await other_node(store, "s")  # the stored head: 4
        with pytest.raises(ExpectedHeadMismatch) as raised:
            await hub.append("s", events(1), expected_head=3)  # this node's guess
        assert raised.value.head == 4


async def test_a_shared_retry_is_answered_from_the_stored_ids() -> None:
    store = MemoryStore()
    engine = SharedMemoryEngine(store)
    async with Hub(engine) as hub:
        await other_node(store, "s", "d1")
        retry = await hub.append("s", batch("d1"))
        assert (retry.first, retry.appended) == (0, 0)
        assert engine.writes == []  # nothing to write


async def test_a_stream_that_keeps_moving_is_unavailable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(appends_module, "MAX_ATTEMPTS", 3)
    store = MemoryStore()
    engine = SharedMemoryEngine(store, replace=False)
    async with Hub(engine) as hub:
        engine.race = lambda stream: other_node(store, stream)  # before every write
        with pytest.raises(StorageUnavailable) as raised:
            await hub.append("s", batch("mine"))
        assert raised.value.code == "storage_unavailable"
        assert len(engine.writes) == 3
        assert "mine" not in ids(await stored(store, "s"))
        # With Write.replace the engine places it under its lock: it lands at once.
        engine.replace = True
        result = await hub.append("s", batch("mine"))
        assert result.appended == 1 and result.first == await hub.head("s") - 1
        assert len(engine.writes) == 4


# --- reads ---------------------------------------------------------------------------


async def test_read_pages() -> None:
    async with Hub(ProbeEngine(), Limits(max_read_events=5)) as hub:
        await hub.append("s", events(2))
        await hub.append("s", events(1))
        page = await hub.read("s", "head", 5)
        assert (page.start, page.head, page.next, page.events()) == (3, 3, 3, [])
        await hub.append("s", events(2))
        page = await hub.read("s", 3, 5)
        assert [e.position for e in page.events()] == [3, 4] and page.next == 5
        page = await hub.read("s", 1, 2)  # from inside a record, limited
        assert [e.position for e in page.events()] == [1, 2]
        assert page.next == 3 and page.head == 5
        page = await hub.read("s", 0, 5)
        assert [e.position for e in page.events()] == [0, 1, 2, 3, 4]
        assert (await hub.read("s", 9, 5)).events() == []
        for limit in (0, -1, 6):
            with pytest.raises(InvalidRequest) as raised:
                await hub.read("s", 0, limit)
            assert raised.value.code == "invalid_parameter"
            assert raised.value.details["parameter"] == "limit"
        with pytest.raises(InvalidStreamName):
            await hub.read("a/b", 0, 1)


async def test_a_page_stops_before_a_damaged_record() -> None:
    store = MemoryStore()
    async with Hub(ProbeEngine(store)) as hub:
        for _ in range(4):
            await hub.append("s", events(1))
    engine = ProbeEngine(store)  # a fresh hub: nothing cached, the engine reads
    engine.corrupt_at = 2
    async with Hub(engine) as hub:
        page = await hub.read("s", 0, 10)
        assert [e.position for e in page.events()] == [0, 1] and page.next == 2
        with pytest.raises(CorruptRecord):
            await hub.read("s", 2, 10)


async def test_records_just_appended_are_served_from_memory() -> None:
    engine = ProbeEngine()
    async with Hub(engine) as hub:
        for _ in range(3):
            await hub.append("s", events(2))
        page = await hub.read("s", 0, 100)
        assert [e.position for e in page.events()] == list(range(6))
        assert [e.position for e in (await hub.read("s", 3, 100)).events()] == [3, 4, 5]
        async with hub.subscribe("s", 1, follow=False) as sub:
            assert positions([r for rs in await take(sub, 5) for r in rs], 1) == [
                1, 2, 3, 4, 5]
        # The storage is asked only whether there is more at the head (there is not).
        assert engine.served == 0
    cold = ProbeEngine(engine.store)
    async with Hub(cold) as hub:
        await hub.read("s", 0, 100)
        assert cold.served > 0


# --- subscriptions -------------------------------------------------------------------


async def test_a_subscription_catches_up_then_goes_live() -> None:
    engine = ProbeEngine()
    async with Hub(engine) as hub:
        await hub.append("s", events(2))
        await hub.append("s", events(1))
        async with asyncio.timeout(2), hub.subscribe("s", 1, heartbeat=10) as sub:
            got: list[list[Record]] = []

            async def collect() -> None:
                got.extend(await take(sub, 3))

            task = asyncio.create_task(collect())
            await until(lambda: len(got) == 0 and sub.position == 3)
            await settle()
            await hub.append("s", events(2))
            await task
        assert positions(got[0], 1) == [1, 2]  # catch-up, from inside the first record
        assert got[1] == []  # caught up: a heartbeat at once
        assert positions(got[2]) == [3, 4]  # live
        assert engine.served == 0  # every record came from the tail cache


async def test_an_idle_subscription_gets_heartbeats() -> None:
    async with Hub(ProbeEngine()) as hub:
        await hub.append("s", events(1))
        async with asyncio.timeout(2), hub.subscribe("s", "head", heartbeat=0.01) as sub:
            assert await take(sub, 4) == [[], [], [], []]
            assert sub.position == 1


async def test_a_subscription_at_a_damaged_start_raises_on_enter() -> None:
    store = MemoryStore()
    async with Hub(ProbeEngine(store)) as hub:
        for _ in range(4):
            await hub.append("s", events(1))
    engine = ProbeEngine(store)
    engine.corrupt_at = 2
    async with Hub(engine) as hub:
        with pytest.raises(CorruptRecord):
            async with hub.subscribe("s", 2):
                pytest.fail("entered a subscription at a damaged record")
        assert hub.heads._waiting == {}
        # From before the damage: the intact records, then the error.
        async with hub.subscribe("s", 0) as sub:
            it = aiter(sub)
            assert positions(await anext(it)) == [0, 1]
            with pytest.raises(CorruptRecord):
                await anext(it)
        assert hub.heads._waiting == {}


async def test_a_subscription_without_follow_ends_at_the_head() -> None:
    async with Hub(ProbeEngine()) as hub:
        await hub.append("s", events(2))
        await hub.append("s", events(2))
        async with asyncio.timeout(2), hub.subscribe("s", 0, follow=False) as sub:
            got = [records async for records in sub]
        assert positions([r for rs in got for r in rs]) == [0, 1, 2, 3]
        async with hub.subscribe("s", "head", follow=False) as sub:
            assert [records async for records in sub] == []
        assert [e.position async for e in hub.events("s", 1)] == [1, 2, 3]
        assert [e.position async for e in hub.events("none")] == []
        with pytest.raises(InvalidStreamName):
            hub.subscribe("..", 0)


async def test_no_wake_up_is_lost_when_an_append_races_the_entering() -> None:
    engine = ProbeEngine()
    engine.read_gates.append(gate := asyncio.Event())
    async with Hub(engine) as hub:
        got: list[list[Record]] = []

        async def follow() -> None:
            async with hub.subscribe("s", 0, heartbeat=30) as sub:
                got.extend(await take(sub, 2))

        task = asyncio.create_task(follow())
        await until(lambda: engine.reads == 1)  # its first read found nothing…
        await hub.append("s", events(1))  # …and the append lands before it returns
        gate.set()
        async with asyncio.timeout(1):  # not after the heartbeat (30 s)
            await task
        assert got[0] == [] and positions(got[1]) == [0]


# --- wait ----------------------------------------------------------------------------


async def test_wait() -> None:
    async with Hub(ProbeEngine()) as hub:
        await hub.append("s", events(3))
        async with asyncio.timeout(0.5):
            assert await hub.wait("s", 1, 10) == 3  # already past
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await hub.wait("s", 3, 0.05) == 3  # times out
        assert loop.time() - began >= 0.04
        assert await hub.wait("none", 0, 0.01) == 0
        waiting = asyncio.create_task(hub.wait("s", 3, 10))
        await settle()
        assert not waiting.done()
        await hub.append("s", events(2))
        async with asyncio.timeout(0.5):
            assert await waiting == 5  # woken by the append
        with pytest.raises(InvalidStreamName):
            await hub.wait("", 0, 0)
        assert hub.heads._waiting == {}


async def test_close_ends_the_waits() -> None:
    hub = Hub(ProbeEngine())
    await hub.open()
    waiting = asyncio.create_task(hub.wait("s", 0, 30))
    await settle()
    async with asyncio.timeout(1):
        await hub.close()
        assert await waiting == 0


async def test_a_shared_engines_notification_wakes_the_waiters() -> None:
    engine = SharedMemoryEngine()
    async with Hub(engine) as hub:
        assert engine.listener is hub.heads
        waiting = asyncio.create_task(hub.wait("s", 0, 10))
        await until(lambda: "s" in hub.heads._waiting)
        await settle()
        engine.listener.advance("s", 7)
        async with asyncio.timeout(0.5):
            assert await waiting == 7
        assert hub.heads._waiting == {}


async def test_an_alarm_makes_the_waiters_ask_the_head() -> None:
    store = MemoryStore()
    engine = SharedMemoryEngine(store)
    async with Hub(engine) as hub:
        assert engine.listener is not None
        waiting = asyncio.create_task(hub.wait("s", 0, 10))
        await until(lambda: "s" in hub.heads._waiting
                    and hub.heads._waiting["s"].changed is not None)
        await other_node(store, "s")  # a notification that never came
        engine.listener.alarm()
        async with asyncio.timeout(0.5):
            assert await waiting == 1
        # A node cut off from its storage fails its waiters over.
        waiting = asyncio.create_task(hub.wait("s", 1, 10))
        await until(lambda: "s" in hub.heads._waiting
                    and hub.heads._waiting["s"].changed is not None)
        engine.head_error = StorageUnavailable("the database is gone")
        engine.listener.alarm()
        async with asyncio.timeout(0.5):
            with pytest.raises(StorageUnavailable):
                await waiting
        engine.head_error = None
        assert hub.heads._waiting == {}


async def test_a_shared_engine_is_polled_for_lost_notifications(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heads_module, "POLL_SECONDS", 0.01)
    store = MemoryStore()
    async with Hub(SharedMemoryEngine(store)) as hub:
        waiting = asyncio.create_task(hub.wait("s", 0, 10))
        await until(lambda: "s" in hub.heads._waiting)
        await other_node(store, "s")
        async with asyncio.timeout(1):
            assert await waiting == 1


# --- memory --------------------------------------------------------------------------


async def test_reads_waits_and_subscriptions_leave_no_state_behind() -> None:
    engine = ProbeEngine()
    async with Hub(engine) as hub:
        async def follow(name: str, heartbeat: float = 0.001) -> None:
            async with hub.subscribe(name, 0, heartbeat=heartbeat) as sub:
                assert await take(sub, 2) == [[], []]

        async with asyncio.timeout(2):
            await asyncio.gather(*(follow(f"ghost-{i}") for i in range(50)),
                                 *(hub.wait(f"ghost-{i}", 0, 0.005) for i in range(50)))
            for i in range(50):
                await hub.read(f"ghost-{i}", "head", 10)
                await hub.read(f"ghost-{i}", 0, 10)
                assert await hub.records(f"ghost-{i}", 0) == []
            # followers that are cancelled while they wait
            followers = [asyncio.create_task(follow(f"gone-{i}", 30)) for i in range(10)]
            waiters = [asyncio.create_task(hub.wait(f"gone-{i}", 0, 30)) for i in range(10)]
            await settle()
            for task in followers + waiters:
                task.cancel()
            await asyncio.gather(*followers, *waiters, return_exceptions=True)
        assert hub.heads._waiting == {}
        assert hub._appender._slots == {}
        assert hub.tail._tails == {}
        assert engine.store.streams == {}
        assert await hub.streams() == []


async def test_appends_leave_one_slot_per_stream() -> None:
    async with Hub(ProbeEngine()) as hub:
        for i in range(5):
            await hub.append(f"s{i}", events(1))
            await hub.append(f"s{i}", events(1))
        for i in range(5):
            await hub.wait(f"s{i}", 5, 0.001)
            async with hub.subscribe(f"s{i}", 0, heartbeat=0.001) as sub:
                await take(sub, 2)
        assert len(hub._appender._slots) == 5
        assert hub.heads._waiting == {}
        assert [info.head for info in await hub.streams()] == [2] * 5


# --- close ---------------------------------------------------------------------------


async def test_close_finishes_the_appends_accepted_and_refuses_later_ones() -> None:
    engine = ProbeEngine()
    engine.before[0] = gate = asyncio.Event()
    hub = Hub(engine)
    await hub.open()
    in_flight = asyncio.create_task(hub.append("s", events(1)))
    await until(lambda: len(engine.writes) == 1)
    queued = asyncio.create_task(hub.append("s", events(1)))
    await settle()
    closing = asyncio.create_task(hub.close())
    await settle()
    assert not closing.done()
    with pytest.raises(StorageUnavailable):
        await hub.append("s", events(1))
    gate.set()
    async with asyncio.timeout(1):
        await closing
    assert ((await in_flight).first, (await queued).first) == (0, 1)
    with pytest.raises(StorageUnavailable):
        await hub.append("s", events(1))
    assert positions(await stored(engine.store, "s")) == [0, 1]


async def test_close_finishes_an_append_still_loading_its_stream() -> None:
    engine = ProbeEngine()
    engine.load_gates.append(gate := asyncio.Event())
    hub = Hub(engine)
    await hub.open()
    accepted = asyncio.create_task(hub.append("s", events(1)))
    await until(lambda: engine.loads == 1)  # accepted, loading the stream's state
    closing = asyncio.create_task(hub.close())
    await settle()
    gate.set()
    async with asyncio.timeout(1):
        result = await accepted
        await closing
    assert result.first == 0
    assert positions(await stored(engine.store, "s")) == [0]


# --- a caller that leaves --------------------------------------------------------------


class _GatedEngine(MemoryEngine):
    """Writes wait for ``gate``: appends stay in flight as long as a test wants."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.gate = asyncio.Event()

    async def write(self, stream: str, write: Write) -> None:
        await self.gate.wait()
        await super().write(stream, write)


async def test_an_append_whose_caller_leaves_is_still_written_and_its_retry_answered() -> None:
    """The class: every wait on the append path (the hub's writer, the files engine's
    commit) is a plain future, not asyncio.shield. A caller cancelled while its append
    is in flight must neither stop the write nor cancel anyone else waiting on it — a
    retry of that append (same ids) gets the first attempt's answer once durable."""
    store = MemoryStore()
    engine = _GatedEngine(store)
    hub = Hub(engine, Limits())
    await hub.open()
    try:
        first = asyncio.create_task(hub.append("s", batch("a", "b")))
        behind = asyncio.create_task(hub.append("s", batch("c")))  # queued behind it
        await settle()
        retry = asyncio.create_task(hub.append("s", batch("a", "b")))
        await settle()
        first.cancel()  # the caller left (a closed connection cancels its handler)
        behind.cancel()
        await settle()
        assert not retry.done()  # it waits for the original to be durable
        engine.gate.set()
        answer = await asyncio.wait_for(retry, 5)
        assert (answer.first, answer.head) == (0, 2)
        assert [d.id for d in answer.duplicates] == ["a", "b"]
        assert first.cancelled() and behind.cancelled()
        assert ids(await stored(store, "s")) == ["a", "b", "c"]  # both written anyway
        assert await hub.head("s") == 3
    finally:
        await hub.close()
