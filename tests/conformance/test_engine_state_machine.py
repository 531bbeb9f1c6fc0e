"""The engine contract as a state machine: hypothesis drives random sequences of
operations against every engine of ``engines.py`` and against a simple in-memory
model, and checks after every step that they agree.

Operations: appends to several streams (with and without ``expected_head`` — right,
stale or ahead —, with fresh ids, ids already in the stream, an id twice in one
batch, none at all; events of every size, so that segments roll), concurrent appends
sharing a group commit, a retry racing its first attempt, reads from any position,
``wait`` (timing out, returning at once, woken by an append), a follow that catches
up and then goes live, and closing and reopening the engine.

The model knows the contract, not an engine: positions are dense and given in
order; a batch is all or nothing; ``expected_head`` must equal the head; ids within
the dedup window are never appended twice and answer with their original positions,
ids outside it may or may not be remembered (the contract promises *at least* the
window); ids Herald assigns never change; event times never go backwards and a batch
shares one time. Hypothesis shrinks a failure to a short sequence of steps.

Each example runs its own event loop (``asyncio.Runner``) over a fresh storage
location. ``make test`` runs a bounded number of examples, derandomized (the same
every run); ``make proof`` many more.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from herald import codec
from herald.errors import ExpectedHeadMismatch, InvalidRequest
from herald.hub import Hub
from herald.model import Batch, Event, Limits

from .engines import KITS, EngineKit

T = TypeVar("T")

STREAMS = ["orders", "stock", "s.x-1"]
# A small window, so that ids drop out of it within a few steps.
LIMITS = Limits(dedup_window=6)
# Mostly small events; now and then large ones, so that segments roll.
PADS = st.sampled_from([0, 0, 0, 10, 3000, 25_000])


@dataclass
class Sent:
    id: str | None  # as supplied; None: Herald assigns one
    type: str
    data: Any
    meta: dict[str, str]


@dataclass
class StreamModel:
    events: list[Sent] = field(default_factory=list)
    batches: list[tuple[int, int, list[str]]] = field(default_factory=list)  # first, end, ids
    ids: dict[str, int] = field(default_factory=dict)  # supplied id → its latest position
    seen_ids: dict[int, str] = field(default_factory=dict)  # position → id read back
    last_time: Any = None

    @property
    def head(self) -> int:
        return len(self.events)

    def certain(self, event_id: str) -> bool:
        """Whether the contract promises that the window still has ``event_id``."""
        if event_id not in self.ids:
            return False
        position = self.ids[event_id]
        end = next(end for first, end, _ in self.batches if first <= position < end)
        return end > self.head - LIMITS.dedup_window

    def add(self, first: int, events: list[Sent]) -> None:
        assert first == self.head
        self.events += events
        supplied = [e.id for e in events if e.id is not None]
        self.batches.append((first, first + len(events), supplied))
        for i, e in enumerate(events):
            if e.id is not None:
                self.ids[e.id] = first + i


def encode(events: list[Sent]) -> Batch:
    body = [{"type": e.type, "data": e.data,
             **({"id": e.id} if e.id is not None else {}),
             **({"meta": e.meta} if e.meta else {})} for e in events]
    return codec.decode_append(msgspec.json.encode(body), LIMITS)


class EngineMachine(RuleBasedStateMachine):
    kit_name = "files"

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.dir = Path(tempfile.mkdtemp(prefix="herald-machine-"))
        self.kit: EngineKit = KITS[self.kit_name](self.dir)
        self.engine: Hub | None = None
        self.model = {name: StreamModel() for name in STREAMS}
        self.serial = 0

    def run(self, coroutine: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await asyncio.wait_for(coroutine, 60)
        return self.runner.run(wrapped())

    @initialize()
    def open_engine(self) -> None:
        if self.kit.setup is not None:
            self.run(self.kit.setup())
        self.engine = self.run(self.kit.open(LIMITS))

    def teardown(self) -> None:
        try:
            self.run(self.kit.close_all())
            if self.kit.teardown is not None:  # a schema, a container: not left behind
                self.run(self.kit.teardown())
        finally:
            self.runner.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def live(self) -> Hub:
        assert self.engine is not None
        return self.engine

    # --- what is sent ---------------------------------------------------------------

    def fresh_id(self) -> str:
        self.serial += 1
        return f"id-{self.serial}"

    def make_events(self, stream: str, count: int, id_kinds: list[str], pad: int,
                    data: st.DataObject) -> list[Sent]:
        model = self.model[stream]
        events = []
        for i in range(count):
            kind = id_kinds[i % len(id_kinds)]
            if kind == "old" and model.ids:
                event_id: str | None = data.draw(st.sampled_from(sorted(model.ids)))
            elif kind in ("fresh", "old"):
                event_id = self.fresh_id()
            else:
                event_id = None
            events.append(Sent(event_id, data.draw(st.sampled_from(["Placed", "Paid"])),
                               {"n": self.serial, "i": i, "pad": "p" * pad},
                               data.draw(st.sampled_from([{}, {"k": "v"}]))))
        return events

    # --- appends ----------------------------------------------------------------------

    @rule(stream=st.sampled_from(STREAMS), count=st.integers(1, 4),
          id_kinds=st.lists(st.sampled_from(["none", "fresh", "old"]), min_size=1,
                            max_size=4),
          expected=st.sampled_from(["none", "none", "head", "stale", "ahead"]),
          twice=st.booleans(), pad=PADS, data=st.data())
    def append(self, stream: str, count: int, id_kinds: list[str], expected: str,
               twice: bool, pad: int, data: st.DataObject) -> None:
        model = self.model[stream]
        events = self.make_events(stream, count, id_kinds, pad, data)
        if twice and count > 1 and events[0].id is not None:
            events[1].id = events[0].id  # the same id twice in one batch
        expected_head = {"none": None, "head": model.head, "stale": max(0, model.head - 1),
                         "ahead": model.head + 1}[expected]
        ids = [e.id for e in events if e.id is not None]
        if len(ids) != len(set(ids)):
            with pytest.raises(InvalidRequest) as refused:
                self.run(self.live.append(stream, encode(events), expected_head))
            assert refused.value.code == "duplicate_id"
            return
        self.check_append(stream, events, expected_head)

    def check_append(self, stream: str, events: list[Sent], expected_head: int | None) -> None:
        model = self.model[stream]
        certain = {i for i, e in enumerate(events) if e.id is not None and model.certain(e.id)}
        possible = {i for i, e in enumerate(events) if e.id is not None and e.id in model.ids}
        try:
            result = self.run(self.live.append(stream, encode(events), expected_head))
        except ExpectedHeadMismatch as exc:
            assert expected_head is not None and expected_head != model.head
            assert exc.head == model.head
            assert len(certain) < len(events), "a retry must not conflict with itself"
            return
        reported = {d.index for d in result.duplicates}
        assert certain <= reported <= possible, (certain, reported, possible)
        for d in result.duplicates:
            assert (d.id, d.position) == (events[d.index].id, model.ids[d.id])
        appended = [e for i, e in enumerate(events) if i not in reported]
        if not appended:
            positions = [d.position for d in result.duplicates]
            assert (result.appended, result.first, result.head) == (
                0, result.duplicates[0].position, max(positions) + 1)
            return
        assert expected_head is None or expected_head == model.head
        assert (result.first, result.head, result.appended) == (
            model.head, model.head + len(appended), len(appended))
        model.add(result.first, appended)

    @rule(stream=st.sampled_from(STREAMS), sizes=st.lists(st.integers(1, 3), min_size=2,
                                                           max_size=5), with_ids=st.booleans())
    def concurrent_appends(self, stream: str, sizes: list[int], with_ids: bool) -> None:
        model = self.model[stream]
        batches = [[Sent(self.fresh_id() if with_ids else None, "Concurrent",
                         {"w": w, "i": i}, {}) for i in range(size)]
                   for w, size in enumerate(sizes)]

        async def together() -> list[Any]:
            return list(await asyncio.gather(
                *(self.live.append(stream, encode(b)) for b in batches)))

        results = self.run(together())
        # Each batch got its own contiguous range; together they are dense from the head.
        placed = sorted(zip((r.first for r in results), batches, results, strict=True),
                        key=lambda x: x[0])
        for first, batch, result in placed:
            assert (result.appended, result.head - result.first) == (len(batch), len(batch))
            model.add(first, batch)

    @rule(stream=st.sampled_from(STREAMS), count=st.integers(1, 3))
    def retry_races_its_first_attempt(self, stream: str, count: int) -> None:
        events = [Sent(self.fresh_id(), "Retried", {"i": i}, {}) for i in range(count)]

        async def both() -> list[Any]:
            return list(await asyncio.gather(self.live.append(stream, encode(events)),
                                             self.live.append(stream, encode(events))))

        results = sorted(self.run(both()), key=lambda r: -r.appended)
        first, retry = results
        assert (first.appended, first.first) == (count, self.model[stream].head)
        assert retry.appended == 0 and (retry.first, retry.head) == (first.first, first.head)
        assert [d.position for d in retry.duplicates] == list(range(first.first, first.head))
        self.model[stream].add(first.first, events)

    # --- reads, waits, follows --------------------------------------------------------

    def read_all(self, stream: str, start: int) -> list[Event]:
        async def read() -> list[Event]:
            events: list[Event] = []
            position = start
            while True:
                records = await self.live.records(stream, position)
                if not records:
                    return events
                assert records[0].base <= position < records[0].end
                for record in records:
                    events += codec.events_of(record, position)
                    position = record.end
        return self.run(read())

    def assert_events(self, stream: str, start: int, events: list[Event]) -> None:
        model = self.model[stream]
        assert [e.position for e in events] == list(range(start, model.head))
        for event in events:
            sent = model.events[event.position]
            assert (event.type, event.data, event.meta) == (sent.type, sent.data, sent.meta)
            if sent.id is not None:
                assert event.id == sent.id
            # An id, once read, is the same ever after (assigned ones included).
            assert model.seen_ids.setdefault(event.position, event.id) == event.id
        times = [e.time for e in events]
        assert times == sorted(times), "time went backwards"

    @rule(stream=st.sampled_from(STREAMS), back=st.integers(-2, 12))
    def read_from(self, stream: str, back: int) -> None:
        start = max(0, self.model[stream].head - back)
        events = self.read_all(stream, start)
        if start >= self.model[stream].head:
            assert events == []
        self.assert_events(stream, start, events)

    @rule(stream=st.sampled_from(STREAMS))
    def wait_times_out_or_returns_at_once(self, stream: str) -> None:
        head = self.model[stream].head
        assert self.run(self.live.wait(stream, head, 0.01)) == head
        if head:
            assert self.run(self.live.wait(stream, head - 1, 5.0)) == head

    @rule(stream=st.sampled_from(STREAMS), back=st.integers(0, 8))
    def follow_catches_up_then_goes_live(self, stream: str, back: int) -> None:
        model = self.model[stream]
        start = max(0, model.head - back)
        batch = [Sent(None, "Live", {"n": self.serial}, {})]

        async def follow() -> tuple[list[Event], Any, int]:
            got: list[Event] = []
            position = start
            async with self.live.subscribe(stream, start, heartbeat=0.05) as sub:
                followed = aiter(sub)
                async for records in followed:  # catch up, to the heartbeat at the head
                    if not records:
                        break
                    for record in records:
                        got += codec.events_of(record, position)
                        position = record.end
                waiting = asyncio.create_task(self.live.wait(stream, position, 5.0))
                result = await self.live.append(stream, encode(batch))
                woken = await waiting
                async for records in followed:  # live
                    for record in records:
                        got += codec.events_of(record, position)
                        position = record.end
                    if position >= result.head:
                        break
            return got, result, woken

        got, result, woken = self.run(follow())
        assert result.first == model.head and woken >= result.head
        model.add(result.first, batch)
        self.assert_events(stream, start, got)

    # --- reopen -------------------------------------------------------------------------

    @rule()
    def close_and_reopen(self) -> None:
        self.run(self.kit.close_all())
        self.engine = self.run(self.kit.open(LIMITS))

    @precondition(lambda self: self.engine is not None)
    @invariant()
    def heads_agree(self) -> None:
        for name, model in self.model.items():
            assert self.run(self.live.head(name)) == model.head
        listed = {s.name: s.head for s in self.run(self.live.streams())}
        assert listed == {n: m.head for n, m in self.model.items() if m.head}


@pytest.mark.parametrize("kit_name", sorted(KITS))
def test_the_engine_behaves_like_the_model(kit_name: str) -> None:
    machine = type(f"{kit_name.title()}EngineMachine", (EngineMachine,),
                   {"kit_name": kit_name})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=25, stateful_step_count=25, deadline=None, derandomize=True,
        database=None, suppress_health_check=[HealthCheck.too_slow]))


@pytest.mark.proof
@pytest.mark.skipif(not os.environ.get("HERALD_PROOF"),
                    reason="the long state-machine run is `make proof` (HERALD_PROOF=1)")
@pytest.mark.parametrize("kit_name", sorted(KITS))
def test_the_engine_behaves_like_the_model_at_length(kit_name: str) -> None:
    machine = type(f"{kit_name.title()}EngineMachine", (EngineMachine,),
                   {"kit_name": kit_name})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=500, stateful_step_count=60, deadline=None,
        database=None, suppress_health_check=[HealthCheck.too_slow]))
