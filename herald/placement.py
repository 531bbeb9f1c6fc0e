"""The rules of a stream, written once. Pure: no I/O, no clock, no randomness.

Rules of this module:

1. It owns what an append means, whatever the storage: positions, ids, times,
   duplicates and conflicts. Given a stream's state (``StreamState``: its head, the
   time of its last record, and where the ids in question already are) and the
   appends waiting (``Append``), ``place`` decides every append's outcome and
   produces the records to write.
2. It may import the model, the errors and the codec; nothing that does I/O.
3. It never reads a clock or draws randomness itself: the caller passes the time
   and the id-prefix source, so the same inputs give the same placement
   (hypothesis-tested in tests/unit/test_placement.py).
4. It is called by the hub inside a stream's critical section: the placement is
   valid only if the stream's head is still ``state.head`` when its records are
   written, which the engine's conditional write guarantees (engines.base).

The rules themselves:

* An append's events get positions ``head … head+n-1`` in the order the appends
  came; a batch is one record.
* An event whose producer-supplied id is in the stream's **dedup window** is not
  appended again: the answer names the position it already has. The window holds
  whole batches: an id counts while the batch holding it ends less than
  ``window`` events behind the head (so a retried batch is never half re-appended).
  An id twice in one batch is the caller's mistake (``duplicate_id``).
* When every event of an append is a duplicate, nothing is appended and the answer
  is the first attempt's (``appended`` 0): the retry of an append that succeeded.
* ``expected_head`` is checked after deduplication: a retry of a conditional append
  that landed is answered as a retry, not as a conflict with itself.
* Times never go backwards: a record's time is the later of now and the last one's,
  so a clock that jumps back reorders nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from . import codec
from .codec import Record
from .errors import ExpectedHeadMismatch, InvalidRequest
from .model import AppendResult, Batch, Duplicate

__all__ = ["Append", "Placed", "Placement", "StreamState", "check_ids", "place"]


@dataclass(frozen=True, slots=True)
class StreamState:
    """What placement needs to know of a stream, read inside its critical section.

    ``known`` maps producer-supplied ids to ``(position, end)``: where the id is and
    the end of the batch holding it. It must hold every id of the appends to place
    that the stream has within its dedup window; it may hold more (older ids, ids
    not asked about): ``place`` applies the window itself.
    """

    head: int = 0
    last_time: int = 0
    known: Mapping[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Append:
    """An append waiting to be placed: a validated batch and its condition."""

    batch: Batch
    expected_head: int | None = None
    # (index, id) of the events carrying a producer-supplied id (see check_ids)
    supplied: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Placed:
    """A record to write, and the supplied ids it brings into the window."""

    record: Record
    ids: list[tuple[str, int]]  # (id, position)


@dataclass(frozen=True, slots=True)
class Placement:
    """Every append's outcome, in order, and what to write for them.

    ``outcomes[i]`` answers ``appends[i]``: an AppendResult, or the error it fails
    with (a conflict). The appends that write something own one ``Placed`` each, in
    order; ``head`` and ``last_time`` are the stream's once they are written.
    """

    outcomes: list[AppendResult | ExpectedHeadMismatch]
    written: list[Placed]
    head: int
    last_time: int

    @property
    def records(self) -> list[Record]:
        return [p.record for p in self.written]


def check_ids(batch: Batch) -> tuple[tuple[int, str], ...]:
    """The (index, id) pairs of a batch's supplied ids; InvalidRequest
    (``duplicate_id``) if one id appears twice in it. Checked when an append
    arrives, so that one caller's mistake never fails a group it shares."""
    supplied = batch.supplied_ids()
    if len({event_id for _, event_id in supplied}) != len(supplied):
        seen: set[str] = set()
        for index, event_id in supplied:
            if event_id in seen:
                raise InvalidRequest(f"event id {event_id!r} appears twice in the batch",
                                     code="duplicate_id", index=index, id=event_id)
            seen.add(event_id)
    return tuple(supplied)


def place(
    state: StreamState,
    appends: Sequence[Append],
    *,
    window: int,
    now_us: int,
    new_prefix: Callable[[], str],
    stream: str = "",
) -> Placement:
    """Decide the outcome of each append in ``appends`` against ``state``.

    ``window`` is the dedup window's size in events, ``now_us`` the time to stamp
    (made monotonic here), ``new_prefix`` gives each written batch a fresh id prefix
    (model.new_id_prefix), ``stream`` names the stream in conflict messages.
    """
    head = state.head
    last_time = state.last_time
    # Ids written by earlier appends of this placement: they are in the window too.
    added: dict[str, tuple[int, int]] = {}
    known = state.known
    outcomes: list[AppendResult | ExpectedHeadMismatch] = []
    written: list[Placed] = []
    for append in appends:
        batch = append.batch
        supplied = append.supplied
        duplicates: list[Duplicate] = []
        if supplied:
            edge = head - window  # a batch ending at or before this has left the window
            for index, event_id in supplied:
                where = added.get(event_id) or known.get(event_id)
                if where is not None and where[1] > edge:
                    duplicates.append(Duplicate(index=index, id=event_id, position=where[0]))
        if duplicates:
            if len(duplicates) == len(batch.events):
                last = max(d.position for d in duplicates)
                outcomes.append(AppendResult(first=duplicates[0].position, head=last + 1,
                                             appended=0, duplicates=duplicates))
                continue
            skip = {d.index for d in duplicates}
            batch = Batch([e for i, e in enumerate(batch.events) if i not in skip])
            supplied = tuple(batch.supplied_ids())
        expected = append.expected_head
        if expected is not None and expected != head:
            outcomes.append(ExpectedHeadMismatch(
                f"stream {stream} has head {head}, not the expected {expected}",
                head=head, expected=expected))
            continue
        count = len(batch.events)
        last_time = max(now_us, last_time)
        raw = codec.encode_record(head, count, last_time,
                                  codec.encode_batch(batch, new_prefix()))
        end = head + count
        ids = [(event_id, head + index) for index, event_id in supplied]
        for event_id, position in ids:
            added[event_id] = (position, end)
        written.append(Placed(Record(head, count, last_time, raw), ids))
        outcomes.append(AppendResult(first=head, head=end, appended=count,
                                     duplicates=duplicates))
        head = end
    return Placement(outcomes, written, head, last_time)
