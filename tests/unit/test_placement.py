"""The rules of a stream (``herald.placement``): what an append means.

What this proves:

* each rule of the module docstring, by example: positions in order, a batch is one
  record; a supplied id in the dedup window is answered with the position it already
  has, and one whose batch ended at or before ``head - window`` is appended again;
  the window holds whole batches (a retried batch is never half re-appended); an
  append of nothing but duplicates appends nothing and answers like its first
  attempt; ``expected_head`` is checked after deduplication, and a mismatch does
  not stop the appends after it; times never go backwards; ``check_ids`` refuses an
  id twice in one batch;
* against a reference model that takes appends one at a time: however the appends
  are grouped into calls (all in one, one per call, anything between; with the
  state's ``known`` holding every id ever written or only those in the window), the
  outcomes and the records are the same; positions are contiguous and the records'
  bases and counts match the answers; each record decodes back to the events that
  were not duplicates, in order, with their ids (supplied, or prefix + suffix);
  times never decrease; the same inputs give the same placement.

Hypothesis runs derandomized: every run checks the same examples.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald import codec
from herald.errors import ExpectedHeadMismatch, InvalidRequest
from herald.model import AppendResult, Batch, Duplicate, Limits, id_suffixes
from herald.placement import Append, Placement, StreamState, check_ids, place

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=250,
                    suppress_health_check=[HealthCheck.too_slow])


# --- helpers -------------------------------------------------------------------------

_serial = itertools.count()


def batch(*ids: str | None) -> Batch:
    """A validated batch (as the server decodes it) of events with these ids (None:
    no id); each event's data is unique, so it can be recognised in a record."""
    events = []
    for event_id in ids:
        event: dict[str, Any] = {"type": "t", "data": {"n": next(_serial)}}
        if event_id is not None:
            event["id"] = event_id
        events.append(event)
    return codec.decode_append(msgspec.json.encode(events), Limits())


def append(*ids: str | None, expected: int | None = None) -> Append:
    b = batch(*ids)
    return Append(b, expected, check_ids(b))


def again(a: Append, expected: int | None = None) -> Append:
    """The retry of an append: the same events (and, by default, the same condition)."""
    return Append(a.batch, a.expected_head if expected is None else expected, a.supplied)


def prefixes() -> Callable[[], str]:
    """A deterministic id-prefix source (model.new_id_prefix's stand-in)."""
    counter = itertools.count()
    return lambda: f"0190a1b2-c3d4-7e5f-8a6b-{next(counter):08x}"


def run(state: StreamState, appends: Sequence[Append], *, window: int = 100,
        now: int = 1_000, new_prefix: Callable[[], str] | None = None) -> Placement:
    return place(state, appends, window=window, now_us=now,
                 new_prefix=new_prefix or prefixes(), stream="s")


def known_after(state: StreamState, placement: Placement) -> dict[str, tuple[int, int]]:
    """``state.known`` fed forward with what ``placement`` writes."""
    known = dict(state.known)
    for placed in placement.written:
        for event_id, position in placed.ids:
            known[event_id] = (position, placed.record.end)
    return known


def next_state(state: StreamState, placement: Placement) -> StreamState:
    return StreamState(placement.head, placement.last_time, known_after(state, placement))


def stored(record: codec.Record) -> list[tuple[str, Any]]:
    """A record's events as (id, data), ids derived where none was supplied."""
    body = codec.decode_batch(record.body)
    suffixes = id_suffixes(len(body.e))
    return [(e.id if e.id is not None else body.p + suffixes[i], msgspec.json.decode(e.data))
            for i, e in enumerate(body.e)]


def datas(b: Batch, skip: Sequence[int] = ()) -> list[Any]:
    return [msgspec.json.decode(e.data) for i, e in enumerate(b.events) if i not in skip]


def ok(placement: Placement, index: int) -> AppendResult:
    outcome = placement.outcomes[index]
    assert isinstance(outcome, AppendResult), outcome
    return outcome


# --- positions, records --------------------------------------------------------------

def test_appends_get_positions_in_order_and_each_batch_is_one_record() -> None:
    a, b, c = append("a", "b"), append(None), append("c", None, "d")
    placement = run(StreamState(head=5), [a, b, c])
    assert placement.outcomes == [
        AppendResult(first=5, head=7, appended=2),
        AppendResult(first=7, head=8, appended=1),
        AppendResult(first=8, head=11, appended=3),
    ]
    assert [(r.base, r.count) for r in placement.records] == [(5, 2), (7, 1), (8, 3)]
    assert placement.head == 11
    assert [p.ids for p in placement.written] == [[("a", 5), ("b", 6)], [], [("c", 8), ("d", 10)]]
    for record, appended in zip(placement.records, [a, b, c], strict=True):
        assert codec.decode_record_at(record.raw) == record  # a whole, valid record
        assert [d for _, d in stored(record)] == datas(appended.batch)


def test_events_without_an_id_get_the_batch_prefix_and_their_index() -> None:
    placement = run(StreamState(), [append(None, "x", None)],
                    new_prefix=lambda: "0190a1b2-c3d4-7e5f-8a6b-00000000")
    ids = [event_id for event_id, _ in stored(placement.records[0])]
    assert ids == ["0190a1b2-c3d4-7e5f-8a6b-000000000000", "x",
                   "0190a1b2-c3d4-7e5f-8a6b-000000000002"]


def test_a_fresh_prefix_is_drawn_for_each_written_batch_only() -> None:
    drawn: list[str] = []
    source = prefixes()

    def new_prefix() -> str:
        drawn.append(source())
        return drawn[-1]

    state = StreamState(head=3, known={"x": (1, 2)})
    placement = run(state, [append("x"), append("y", expected=99), append(None), append("z")],
                    new_prefix=new_prefix)
    assert len(placement.written) == 2 and len(drawn) == 2  # not for the dup nor the conflict
    assert [codec.decode_batch(r.body).p for r in placement.records] == drawn


def test_nothing_to_place_changes_nothing() -> None:
    state = StreamState(head=4, last_time=77)
    assert run(state, [], now=1_000) == Placement([], [], 4, 77)


# --- duplicates ----------------------------------------------------------------------

def test_a_duplicate_in_the_window_is_answered_with_its_original_position() -> None:
    state = StreamState(head=10, known={"x": (3, 5)})
    placement = run(state, [append("x")])
    assert placement.outcomes == [AppendResult(first=3, head=4, appended=0,
                                               duplicates=[Duplicate(index=0, id="x", position=3)])]
    assert placement.written == [] and placement.head == 10


def test_only_the_new_events_of_a_partly_duplicate_batch_are_appended() -> None:
    state = StreamState(head=10, known={"x": (3, 5)})
    a = append("n1", "x", None, "n2")
    placement = run(state, [a])
    assert placement.outcomes == [AppendResult(first=10, head=13, appended=3,
                                               duplicates=[Duplicate(index=1, id="x", position=3)])]
    [placed] = placement.written
    assert (placed.record.base, placed.record.count) == (10, 3)
    assert placed.ids == [("n1", 10), ("n2", 12)]
    got = stored(placed.record)
    assert [d for _, d in got] == datas(a.batch, skip=[1])
    assert got[0][0] == "n1" and got[2][0] == "n2"


def test_an_id_whose_batch_ended_at_or_before_head_minus_window_is_appended_again() -> None:
    # head 10, window 5: the edge is 5. x's batch ended at 5 (its last event, 4, is
    # 6 behind the head): gone. y's batch ends at 6 (last event 5 behind): still in.
    state = StreamState(head=10, known={"x": (4, 5), "y": (4, 6)})
    gone = run(state, [append("x")], window=5)
    assert gone.outcomes == [AppendResult(first=10, head=11, appended=1)]
    assert gone.written[0].ids == [("x", 10)]
    kept = run(state, [append("y")], window=5)
    assert kept.outcomes == [AppendResult(first=4, head=5, appended=0,
                                          duplicates=[Duplicate(index=0, id="y", position=4)])]


def test_the_window_holds_whole_batches() -> None:
    # A batch a…e at 2…6 (ends at 7); head 11, window 5: a (position 2) is 9 events
    # behind, but the batch's last event (6) is 5 behind: the batch is in the window,
    # and its retry is a duplicate through and through, not half re-appended.
    first = run(StreamState(head=2), [append("a", "b", "c", "d", "e")])
    state = StreamState(head=11, known=known_after(StreamState(head=2), first))
    assert state.known["a"] == (2, 7)
    retry = run(state, [append("a", "b", "c", "d", "e")], window=5)
    [outcome] = retry.outcomes
    assert outcome == AppendResult(first=2, head=7, appended=0, duplicates=[
        Duplicate(index=i, id=event_id, position=2 + i) for i, event_id in enumerate("abcde")])
    assert retry.written == []
    # One event later the whole batch has left the window: all of it is appended again.
    later = run(StreamState(head=12, known=state.known), [append("a", "b", "c", "d", "e")],
                window=5)
    assert later.outcomes == [AppendResult(first=12, head=17, appended=5)]


def test_all_duplicates_append_nothing_first_is_the_first_duplicate_head_after_the_last() -> None:
    state = StreamState(head=20, last_time=5, known={"x": (8, 9), "y": (3, 4), "z": (5, 7)})
    placement = run(state, [append("x", "y", "z")], now=1_000)
    assert placement.outcomes == [AppendResult(first=8, head=9, appended=0, duplicates=[
        Duplicate(index=0, id="x", position=8),
        Duplicate(index=1, id="y", position=3),
        Duplicate(index=2, id="z", position=5),
    ])]
    assert placement.written == []
    assert (placement.head, placement.last_time) == (20, 5)  # nothing written, no time taken


def test_ids_written_earlier_in_the_same_call_are_in_the_window() -> None:
    a = append("x", "y")
    placement = run(StreamState(head=1), [a, again(a), append("y", "w")])
    assert placement.outcomes == [
        AppendResult(first=1, head=3, appended=2),
        AppendResult(first=1, head=3, appended=0, duplicates=[
            Duplicate(index=0, id="x", position=1), Duplicate(index=1, id="y", position=2)]),
        AppendResult(first=3, head=4, appended=1,
                     duplicates=[Duplicate(index=0, id="y", position=2)]),
    ]
    assert placement.head == 4 and len(placement.written) == 2


def test_an_id_written_earlier_in_the_call_leaves_the_window_as_the_head_moves() -> None:
    # window 2: x at 0 (ends at 1); two more events → head 3, edge 1: x has left.
    placement = run(StreamState(), [append("x"), append(None, None), append("x")], window=2)
    assert ok(placement, 2) == AppendResult(first=3, head=4, appended=1)


def test_an_id_twice_in_one_batch_is_the_callers_mistake() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_ids(batch("a", "b", "a"))
    assert caught.value.code == "duplicate_id"
    assert caught.value.details == {"index": 2, "id": "a"}


def test_check_ids_lists_the_supplied_ids_with_their_index() -> None:
    assert check_ids(batch(None, "a", None, "b")) == ((1, "a"), (3, "b"))
    assert check_ids(batch(None, None)) == ()


# --- expected_head -------------------------------------------------------------------

def test_a_matching_expected_head_appends() -> None:
    placement = run(StreamState(head=4), [append("a", expected=4)])
    assert placement.outcomes == [AppendResult(first=4, head=5, appended=1)]


def test_a_stale_expected_head_is_a_mismatch_naming_the_head() -> None:
    placement = run(StreamState(head=4), [append("a", expected=3)])
    [outcome] = placement.outcomes
    assert isinstance(outcome, ExpectedHeadMismatch)
    assert outcome.code == "expected_head_mismatch"
    assert (outcome.head, outcome.details["expected"]) == (4, 3)
    assert "stream s" in outcome.message
    assert placement.written == [] and placement.head == 4


def test_expected_head_is_checked_after_dedup_a_landed_retry_is_a_retry() -> None:
    a = append("x", "y", expected=0)
    first = run(StreamState(), [a])
    assert first.outcomes == [AppendResult(first=0, head=2, appended=2)]
    state = next_state(StreamState(), first)
    # The response was lost; the producer retries with the same condition.
    retry = run(state, [again(a)])
    assert retry.outcomes == [AppendResult(first=0, head=2, appended=0, duplicates=[
        Duplicate(index=0, id="x", position=0), Duplicate(index=1, id="y", position=1)])]
    # In the same call as well.
    both = run(StreamState(), [a, again(a)])
    assert both.outcomes[1] == retry.outcomes[0]


def test_expected_head_applies_to_what_is_left_after_dedup() -> None:
    state = StreamState(head=2, known={"x": (0, 2)})
    stale = run(state, [append("x", "z", expected=0)])
    assert isinstance(stale.outcomes[0], ExpectedHeadMismatch)
    assert stale.outcomes[0].head == 2 and stale.written == []
    fresh = run(state, [append("x", "z", expected=2)])
    assert fresh.outcomes == [AppendResult(first=2, head=3, appended=1,
                                           duplicates=[Duplicate(index=0, id="x", position=0)])]


def test_a_mismatch_does_not_stop_the_appends_after_it() -> None:
    placement = run(StreamState(), [append("a", expected=99), append("b"),
                                    append("c", expected=1), append("a")])
    mismatch, *rest = placement.outcomes
    assert isinstance(mismatch, ExpectedHeadMismatch) and mismatch.head == 0
    assert rest == [AppendResult(first=0, head=1, appended=1),
                    AppendResult(first=1, head=2, appended=1),
                    # the failed append's id never entered the window
                    AppendResult(first=2, head=3, appended=1)]
    assert [r.base for r in placement.records] == [0, 1, 2]


# --- time ----------------------------------------------------------------------------

def test_the_time_is_now() -> None:
    placement = run(StreamState(last_time=500), [append(None), append(None)], now=600)
    assert [r.time_us for r in placement.records] == [600, 600]
    assert placement.last_time == 600


def test_a_clock_that_jumps_back_does_not_move_time_back() -> None:
    placement = run(StreamState(last_time=500), [append(None)], now=400)
    assert placement.records[0].time_us == 500 and placement.last_time == 500
    assert codec.decode_record_at(placement.records[0].raw).time_us == 500  # type: ignore[union-attr]


# --- properties against a reference model --------------------------------------------

ALPHABET = "abcdefg"


@dataclass
class Reference:
    """The rules restated, one append at a time, event by event."""

    window: int
    head: int
    last_time: int
    # every supplied id ever written: (position, the position of its batch's last event)
    where: dict[str, tuple[int, int]] = field(default_factory=dict)
    written: int = 0  # batches written (the k-th takes the k-th prefix)

    def in_window(self, event_id: str) -> bool:
        if event_id not in self.where:
            return False
        _, last = self.where[event_id]
        return self.head - last <= self.window  # its batch's last event is close enough

    def append(self, a: Append, now: int) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
        """The normalized outcome, and the record written: (base, count, time, number
        of the batch, [(supplied id or None, data)])."""
        events = a.batch.events
        dups = [(i, e.id, self.where[e.id][0]) for i, e in enumerate(events)
                if isinstance(e.id, str) and self.in_window(e.id)]
        if dups and len(dups) == len(events):
            positions = [p for _, _, p in dups]
            return ("ok", positions[0], max(positions) + 1, 0, tuple(dups)), None
        dup_index = {i for i, _, _ in dups}
        kept = [e for i, e in enumerate(events) if i not in dup_index]
        if a.expected_head is not None and a.expected_head != self.head:
            return ("mismatch", self.head, a.expected_head), None
        base, count = self.head, len(kept)
        self.last_time = max(self.last_time, now)
        for offset, e in enumerate(kept):
            if isinstance(e.id, str):
                self.where[e.id] = (base + offset, base + count - 1)
        self.head += count
        self.written += 1
        record = (base, count, self.last_time, self.written - 1,
                  [(e.id if isinstance(e.id, str) else None, msgspec.json.decode(e.data))
                   for e in kept])
        return ("ok", base, base + count, count, tuple(dups)), record


def normalize(outcome: AppendResult | ExpectedHeadMismatch) -> tuple[Any, ...]:
    if isinstance(outcome, ExpectedHeadMismatch):
        assert outcome.code == "expected_head_mismatch"
        return ("mismatch", outcome.head, outcome.details["expected"])
    return ("ok", outcome.first, outcome.head, outcome.appended,
            tuple((d.index, d.id, d.position) for d in outcome.duplicates))


@dataclass
class Scenario:
    window: int
    head: int
    last_time: int
    appends: list[Append]
    groups: list[int]  # sizes, summing to len(appends)
    nows: list[int]  # one per group

    def now_of_each_append(self) -> list[int]:
        return [now for size, now in zip(self.groups, self.nows, strict=True)
                for _ in range(size)]

    def __repr__(self) -> str:
        shown = [([e.id if isinstance(e.id, str) else None for e in a.batch.events],
                  a.expected_head) for a in self.appends]
        return (f"Scenario(window={self.window}, head={self.head}, "
                f"last_time={self.last_time}, appends={shown}, groups={self.groups}, "
                f"nows={self.nows})")


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    window = draw(st.integers(1, 12))
    head = draw(st.integers(0, 20))
    last_time = draw(st.integers(0, 1_000))
    # Resolves expected heads ("correct" = the head the append will meet); times are
    # irrelevant to heads.
    ref = Reference(window, head, last_time)
    appends: list[Append] = []
    for _ in range(draw(st.integers(1, 14))):
        earlier: Append | None = None
        if appends and draw(st.integers(0, 3)) == 0:
            # a retry of an earlier append, with its condition or a new one
            earlier = draw(st.sampled_from(appends))
            events = earlier.batch
        else:
            ids = draw(st.lists(st.none() | st.sampled_from(ALPHABET), min_size=1, max_size=5))
            ids = [event_id if event_id not in ids[:i] else None
                   for i, event_id in enumerate(ids)]
            events = batch(*ids)
        kind = draw(st.sampled_from(["none", "none", "correct", "incorrect", "keep"]))
        if kind == "keep" and earlier is not None:
            expected = earlier.expected_head
        elif kind == "correct":
            expected = ref.head
        elif kind == "incorrect":
            expected = draw(st.integers(0, ref.head + 3).filter(lambda h: h != ref.head))
        else:
            expected = None
        a = Append(events, expected, check_ids(events))
        ref.append(a, 0)
        appends.append(a)
    cuts = draw(st.lists(st.booleans(), min_size=len(appends) - 1, max_size=len(appends) - 1))
    groups, size = [], 1
    for cut in cuts:
        if cut:
            groups.append(size)
            size = 0
        size += 1
    groups.append(size)
    nows = draw(st.lists(st.integers(0, 2_000), min_size=len(groups), max_size=len(groups)))
    return Scenario(window, head, last_time, appends, groups, nows)


@dataclass
class Run:
    outcomes: list[AppendResult | ExpectedHeadMismatch]
    placements: list[Placement]
    prefixes: list[str]  # in the order drawn

    @property
    def records(self) -> list[codec.Record]:
        return [r for p in self.placements for r in p.records]

    @property
    def written(self) -> list[Any]:
        return [w for p in self.placements for w in p.written]


def place_in_groups(s: Scenario, groups: Sequence[int], nows: Sequence[int], *,
                    trim: bool = False) -> Run:
    """Place the scenario's appends group after group, feeding the state forward.
    ``trim``: pass in ``known`` only the ids still in the window (as an engine might)."""
    drawn: list[str] = []
    source = prefixes()

    def new_prefix() -> str:
        drawn.append(source())
        return drawn[-1]

    state = StreamState(s.head, s.last_time, {})
    outcomes: list[AppendResult | ExpectedHeadMismatch] = []
    placements: list[Placement] = []
    start = 0
    for size, now in zip(groups, nows, strict=True):
        known = state.known
        if trim:
            known = {k: v for k, v in known.items() if v[1] > state.head - s.window}
        placement = place(StreamState(state.head, state.last_time, known),
                          s.appends[start:start + size], window=s.window, now_us=now,
                          new_prefix=new_prefix, stream="s")
        assert len(placement.outcomes) == size
        outcomes += placement.outcomes
        placements.append(placement)
        state = next_state(state, placement)
        start += size
    return Run(outcomes, placements, drawn)


def reference(s: Scenario) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], Reference]:
    ref = Reference(s.window, s.head, s.last_time)
    outcomes, records = [], []
    for a, now in zip(s.appends, s.now_of_each_append(), strict=True):
        outcome, record = ref.append(a, now)
        outcomes.append(outcome)
        if record is not None:
            records.append(record)
    return outcomes, records, ref


def comparable(run_: Run) -> tuple[Any, ...]:
    return ([normalize(o) for o in run_.outcomes],
            [(w.record, w.ids) for w in run_.written],
            [(p.head, p.last_time) for p in run_.placements][-1:])


@PROPERTY
@given(scenarios())
def test_outcomes_and_records_match_the_reference_model(s: Scenario) -> None:
    expected_outcomes, expected_records, ref = reference(s)
    for trim in (False, True):
        got = place_in_groups(s, s.groups, s.nows, trim=trim)
        assert [normalize(o) for o in got.outcomes] == expected_outcomes, trim
        last = got.placements[-1]
        assert (last.head, last.last_time) == (ref.head, ref.last_time)
        records = got.records
        assert len(records) == len(expected_records) == len(got.prefixes)
        for record, (base, count, time_us, number, events) in zip(
                records, expected_records, strict=True):
            assert (record.base, record.count, record.time_us) == (base, count, time_us)
            body = codec.decode_batch(record.body)
            assert body.p == got.prefixes[number]
            assert [(e.id, msgspec.json.decode(e.data)) for e in body.e] == events
            # ids: supplied, or the batch's prefix and the event's index in the record
            assert [i for i, _ in stored(record)] == [
                event_id if event_id is not None else f"{body.p}{index:04x}"
                for index, (event_id, _) in enumerate(events)]


@PROPERTY
@given(scenarios())
def test_grouping_does_not_change_anything(s: Scenario) -> None:
    nows = s.now_of_each_append()
    grouped = place_in_groups(s, s.groups, s.nows)
    singly = place_in_groups(s, [1] * len(s.appends), nows)
    trimmed = place_in_groups(s, [1] * len(s.appends), nows, trim=True)
    assert comparable(grouped) == comparable(singly) == comparable(trimmed)
    if len(set(s.nows)) <= 1:  # one clock reading: all in one call is the same too
        together = place_in_groups(s, [len(s.appends)], s.nows[:1])
        assert comparable(together) == comparable(grouped)


@PROPERTY
@given(scenarios())
def test_positions_are_contiguous_and_records_match_the_answers(s: Scenario) -> None:
    got = place_in_groups(s, s.groups, s.nows)
    head, time_us = s.head, s.last_time
    written = iter(got.written)
    for a, outcome, now in zip(s.appends, got.outcomes, s.now_of_each_append(), strict=True):
        if isinstance(outcome, ExpectedHeadMismatch):
            assert outcome.head == head
            continue
        dup_index = {d.index for d in outcome.duplicates}
        assert len(dup_index) == len(outcome.duplicates)
        assert all(a.batch.events[d.index].id == d.id for d in outcome.duplicates)
        assert all(d.position < head for d in outcome.duplicates)
        if outcome.appended == 0:
            assert len(outcome.duplicates) == len(a.batch.events)
            assert outcome.first == outcome.duplicates[0].position
            assert outcome.head == max(d.position for d in outcome.duplicates) + 1
            continue
        placed = next(written)
        record = placed.record
        assert (outcome.first, outcome.head) == (head, record.end)
        assert (record.base, record.count) == (head, outcome.appended)
        assert outcome.appended == len(a.batch.events) - len(dup_index)
        assert codec.decode_record_at(record.raw) == record
        # the events not answered as duplicates, in order
        got_events = stored(record)
        assert [d for _, d in got_events] == datas(a.batch, skip=sorted(dup_index))
        kept = [e for i, e in enumerate(a.batch.events) if i not in dup_index]
        assert placed.ids == [(e.id, head + i) for i, e in enumerate(kept)
                              if isinstance(e.id, str)]
        for (event_id, _), e in zip(got_events, kept, strict=True):
            if isinstance(e.id, str):
                assert event_id == e.id
        # times: the later of now and the last record's, so never decreasing
        assert record.time_us == max(now, time_us) >= time_us
        head, time_us = record.end, record.time_us
    assert next(written, None) is None
    assert got.placements[-1].head == head
    assert sum(r.count for r in got.records) == head - s.head


@PROPERTY
@given(scenarios())
def test_the_same_inputs_give_the_same_placement(s: Scenario) -> None:
    def once() -> tuple[Any, ...]:
        p = place(StreamState(s.head, s.last_time, {}), s.appends, window=s.window,
                  now_us=s.nows[0], new_prefix=prefixes(), stream="s")
        return ([normalize(o) for o in p.outcomes],
                [o.message for o in p.outcomes if isinstance(o, ExpectedHeadMismatch)],
                p.written, p.head, p.last_time)

    assert once() == once()
    assert comparable(place_in_groups(s, s.groups, s.nows)) == comparable(
        place_in_groups(s, s.groups, s.nows))
