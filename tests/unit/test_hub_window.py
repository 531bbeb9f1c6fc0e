"""The per-stream deduplication window (``herald.engines.dedup``).

What this proves:

* the window remembers every supplied id of at least the last ``size`` events, and
  stays bounded (at most ``size`` events plus one batch's worth);
* it forgets whole batches only, oldest first, and only once every event of the batch
  is more than ``size`` events behind the head; batches without ids still move it on;
* ``forget_from`` drops the batches at or after a position (appends that failed), and
  an id forgotten that way can be appended again;
* ``deduplicate`` refuses an id twice in one batch, returns the very same batch when
  nothing is a duplicate, and otherwise splits off the duplicates with the position
  the stream already has them at.
"""

from __future__ import annotations

import msgspec
import pytest

from herald import codec
from herald.engines.dedup import DedupWindow, deduplicate
from herald.errors import InvalidRequest
from herald.model import Batch, Duplicate, Limits


def ids_of(first: int, count: int, tag: str = "e") -> list[tuple[str, int]]:
    return [(f"{tag}{first + i}", first + i) for i in range(count)]


def batch(*ids: str | None) -> Batch:
    events = [{"type": "t", "data": i} if event_id is None else
              {"type": "t", "data": i, "id": event_id} for i, event_id in enumerate(ids)]
    return codec.decode_append(msgspec.json.encode(events), Limits())


def test_an_empty_window_knows_nothing() -> None:
    window = DedupWindow(10)
    assert len(window) == 0 and window.get("x") is None


def test_it_remembers_at_least_the_last_size_events_and_stays_bounded() -> None:
    size, per_batch = 10, 3
    window = DedupWindow(size)
    head = 0
    for _ in range(40):
        window.add(head, head + per_batch, ids_of(head, per_batch))
        head += per_batch
        for position in range(max(0, head - size), head):
            assert window.get(f"e{position}") == position, (head, position)
        assert len(window) <= size + per_batch - 1, "bounded"
    assert window.get("e0") is None, "long forgotten"


def test_whole_batches_are_forgotten_only_when_every_event_is_more_than_size_behind() -> None:
    window = DedupWindow(5)
    window.add(0, 4, ids_of(0, 4))  # positions 0…3
    window.add(4, 8, ids_of(4, 4))  # head 8: position 3 is 5 behind, not more
    assert all(window.get(f"e{p}") == p for p in range(8))
    window.add(8, 9, ids_of(8, 1))  # head 9: position 3 is 6 behind → batch 0…3 goes
    assert [window.get(f"e{p}") for p in range(4)] == [None] * 4
    # positions 4…7: 4 is 5 behind (kept, and its batch with it)
    assert all(window.get(f"e{p}") == p for p in range(4, 9))


def test_a_batch_straddling_the_edge_is_kept_whole() -> None:
    window = DedupWindow(3)
    window.add(0, 10, ids_of(0, 10))
    window.add(10, 12, ids_of(10, 2))  # head 12: positions 0…8 are more than 3 behind
    # … but 9 is not, so its batch (0…9) is kept whole
    assert all(window.get(f"e{p}") == p for p in range(12))
    window.add(12, 13, [])  # head 13: 9 is now 4 behind; batches without ids move it on
    assert all(window.get(f"e{p}") is None for p in range(10))
    assert window.get("e10") == 10


def test_only_supplied_ids_are_kept() -> None:
    window = DedupWindow(100)
    window.add(0, 5, [("a", 1), ("b", 3)])
    assert len(window) == 2
    assert (window.get("a"), window.get("b")) == (1, 3)


def test_forget_from_drops_failed_appends() -> None:
    window = DedupWindow(100)
    window.add(0, 2, ids_of(0, 2))
    window.add(2, 4, ids_of(2, 2))
    window.add(4, 6, ids_of(4, 2))
    window.forget_from(2)
    assert [window.get(f"e{p}") for p in range(6)] == [0, 1, None, None, None, None]
    assert len(window) == 2
    # the forgotten ids may come again, at new positions
    window.add(2, 3, [("e4", 2)])
    assert window.get("e4") == 2
    window.forget_from(100)  # nothing at or after 100
    assert len(window) == 3


def test_deduplicate_returns_the_same_batch_when_nothing_is_a_duplicate() -> None:
    window = DedupWindow(100)
    window.add(0, 1, [("old", 0)])
    new = batch("x", None, "y")
    kept, supplied, duplicates = deduplicate(window, new, new.supplied_ids())
    assert kept is new and kept.raw is not None, "the request bytes are reused"
    assert supplied == [(0, "x"), (2, "y")]
    assert duplicates == []


def test_deduplicate_splits_off_duplicates() -> None:
    window = DedupWindow(100)
    window.add(0, 2, [("a", 0), ("b", 1)])
    retry = batch("a", None, "c", "b")
    kept, supplied, duplicates = deduplicate(window, retry, retry.supplied_ids())
    assert duplicates == [Duplicate(index=0, id="a", position=0),
                          Duplicate(index=3, id="b", position=1)]
    assert kept.raw is None, "the events changed: they are encoded again"
    assert [msgspec.json.decode(e.data) for e in kept.events] == [1, 2]
    assert supplied == [(1, "c")], "indexes in the new batch"


def test_deduplicate_refuses_an_id_twice_in_one_batch() -> None:
    twice = batch("a", "b", "a")
    with pytest.raises(InvalidRequest) as caught:
        deduplicate(DedupWindow(100), twice, twice.supplied_ids())
    assert caught.value.code == "duplicate_id"
    assert caught.value.details == {"index": 2, "id": "a"}
