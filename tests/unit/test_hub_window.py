"""The per-stream deduplication window the hub keeps (``herald.hub.window``).

What this proves:

* the window remembers every supplied id of at least the last ``size`` events, and
  stays bounded (at most ``size`` events plus one batch's worth);
* it forgets whole batches only, oldest first, and only once every event of the batch
  is more than ``size`` events behind the head; batches without ids still move it on;
* ``forget_from`` drops the batches at or after a position (appends that failed), and
  an id forgotten that way can be appended again;
* ``DedupWindow.of`` rebuilds the same window from what ``Engine.load`` returns.

Which events are duplicates is placement's (tests/unit/test_placement.py).
"""

from __future__ import annotations

from herald.hub.window import DedupWindow


def at(window: DedupWindow, event_id: str) -> int | None:
    where = window.get(event_id)
    return None if where is None else where[0]


def ids_of(first: int, count: int, tag: str = "e") -> list[tuple[str, int]]:
    return [(f"{tag}{first + i}", first + i) for i in range(count)]


def test_an_empty_window_knows_nothing() -> None:
    window = DedupWindow(10)
    assert len(window) == 0 and at(window, "x") is None


def test_it_remembers_at_least_the_last_size_events_and_stays_bounded() -> None:
    size, per_batch = 10, 3
    window = DedupWindow(size)
    head = 0
    for _ in range(40):
        window.add(head, head + per_batch, ids_of(head, per_batch))
        head += per_batch
        for position in range(max(0, head - size), head):
            assert at(window, f"e{position}") == position, (head, position)
        assert len(window) <= size + per_batch - 1, "bounded"
    assert at(window, "e0") is None, "long forgotten"


def test_whole_batches_are_forgotten_only_when_every_event_is_more_than_size_behind() -> None:
    window = DedupWindow(5)
    window.add(0, 4, ids_of(0, 4))  # positions 0…3
    window.add(4, 8, ids_of(4, 4))  # head 8: position 3 is 5 behind, not more
    assert all(at(window, f"e{p}") == p for p in range(8))
    window.add(8, 9, ids_of(8, 1))  # head 9: position 3 is 6 behind → batch 0…3 goes
    assert [at(window, f"e{p}") for p in range(4)] == [None] * 4
    # positions 4…7: 4 is 5 behind (kept, and its batch with it)
    assert all(at(window, f"e{p}") == p for p in range(4, 9))


def test_a_batch_straddling_the_edge_is_kept_whole() -> None:
    window = DedupWindow(3)
    window.add(0, 10, ids_of(0, 10))
    window.add(10, 12, ids_of(10, 2))  # head 12: positions 0…8 are more than 3 behind
    # … but 9 is not, so its batch (0…9) is kept whole
    assert all(at(window, f"e{p}") == p for p in range(12))
    window.add(12, 13, [])  # head 13: 9 is now 4 behind; batches without ids move it on
    assert all(at(window, f"e{p}") is None for p in range(10))
    assert at(window, "e10") == 10


def test_only_supplied_ids_are_kept() -> None:
    window = DedupWindow(100)
    window.add(0, 5, [("a", 1), ("b", 3)])
    assert len(window) == 2
    assert (at(window, "a"), at(window, "b")) == (1, 3)


def test_forget_from_drops_failed_appends() -> None:
    window = DedupWindow(100)
    window.add(0, 2, ids_of(0, 2))
    window.add(2, 4, ids_of(2, 2))
    window.add(4, 6, ids_of(4, 2))
    window.forget_from(2)
    assert [at(window, f"e{p}") for p in range(6)] == [0, 1, None, None, None, None]
    assert len(window) == 2
    # the forgotten ids may come again, at new positions
    window.add(2, 3, [("e4", 2)])
    assert at(window, "e4") == 2
    window.forget_from(100)  # nothing at or after 100
    assert len(window) == 3


def test_of_rebuilds_the_window_from_what_load_returns() -> None:
    window = DedupWindow(5)
    window.add(0, 4, ids_of(0, 4))
    window.add(4, 8, ids_of(4, 4))
    rebuilt = DedupWindow.of(5, dict(window.items()))
    assert dict(rebuilt.items()) == dict(window.items())
    for w in (window, rebuilt):
        w.add(8, 9, ids_of(8, 1))  # the batch 0…3 leaves both
    assert dict(rebuilt.items()) == dict(window.items())
    assert at(rebuilt, "e0") is None and at(rebuilt, "e4") == 4
