"""The per-stream deduplication window: producer-supplied event id → position.

The window covers *at least* the last ``size`` events of a stream: a batch's ids are
forgotten, oldest first, once every event of the batch is more than ``size`` events
behind the head. Only ids that producers supplied are kept — an id Herald assigned
is new by construction, so it can never come back in a retry. The window is rebuilt
from the stream's tail on restart, so it survives restarts without a file of its own.
"""

from __future__ import annotations

from collections import deque

from ..errors import InvalidRequest
from ..model import Batch, Duplicate

__all__ = ["DedupWindow", "deduplicate"]


class DedupWindow:
    def __init__(self, size: int) -> None:
        self.size = size
        self._positions: dict[str, int] = {}
        # (first position, end position, ids) per batch with supplied ids
        self._batches: deque[tuple[int, int, list[str]]] = deque()

    def __len__(self) -> int:
        return len(self._positions)

    def get(self, event_id: str) -> int | None:
        return self._positions.get(event_id)

    def add(self, first: int, end: int, ids: list[tuple[str, int]]) -> None:
        """Remember a batch at ``first`` … ``end - 1`` and its (id, position) pairs."""
        if ids:
            self._positions.update(ids)
            self._batches.append((first, end, [i for i, _ in ids]))
        batches = self._batches
        while batches and batches[0][1] <= end - self.size:
            pop = self._positions.pop
            for event_id in batches.popleft()[2]:
                pop(event_id, None)

    def forget_from(self, position: int) -> None:
        """Drop batches at or after ``position`` (appends that failed)."""
        batches = self._batches
        while batches and batches[-1][0] >= position:
            for event_id in batches.pop()[2]:
                self._positions.pop(event_id, None)


def deduplicate(
    window: DedupWindow, batch: Batch, supplied: list[tuple[int, str]]
) -> tuple[Batch, list[tuple[int, str]], list[Duplicate]]:
    """Split a batch into the events to append and those the window already has.

    Returns the batch to append (the same object when nothing was a duplicate), its
    (index, id) pairs, and the duplicates. An id twice in one batch is refused.
    """
    if len({event_id for _, event_id in supplied}) != len(supplied):
        seen: set[str] = set()
        for index, event_id in supplied:
            if event_id in seen:
                raise InvalidRequest(f"event id {event_id!r} appears twice in the batch",
                                     code="duplicate_id", index=index, id=event_id)
            seen.add(event_id)
    duplicates = [Duplicate(index=i, id=event_id, position=position)
                  for i, event_id in supplied
                  if (position := window.get(event_id)) is not None]
    if not duplicates:
        return batch, supplied, []
    skip = {d.index for d in duplicates}
    events = [e for i, e in enumerate(batch.events) if i not in skip]
    kept = Batch(events).supplied_ids()
    return Batch(events), kept, duplicates
