"""A stream's deduplication window, kept by the hub for an engine it trusts alone.

The window covers *at least* the last ``size`` events of a stream: a batch's ids are
forgotten, oldest first, once every event of the batch is more than ``size`` events
behind the head (placement's rule: whole batches). Only ids that producers supplied
are kept — an id Herald assigned is new by construction, so it can never come back
in a retry. It is rebuilt from the stream's tail (``Engine.load``) the first time a
stream is appended to after a start, so it survives restarts without a file.

It is the ``known`` mapping placement reads: id → (position, end of its batch).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping

__all__ = ["DedupWindow"]


class DedupWindow(Mapping[str, tuple[int, int]]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._where: dict[str, tuple[int, int]] = {}
        # (first position, end position, ids) per batch with supplied ids, oldest first
        self._batches: deque[tuple[int, int, list[str]]] = deque()

    def __getitem__(self, event_id: str) -> tuple[int, int]:
        return self._where[event_id]

    def get(self, event_id: str, default: object = None) -> tuple[int, int] | None:  # type: ignore[override]
        return self._where.get(event_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def add(self, first: int, end: int, ids: list[tuple[str, int]]) -> None:
        """Remember a batch at ``first`` … ``end - 1`` and its (id, position) pairs;
        forget the batches that left the window behind ``end``."""
        if ids:
            for event_id, position in ids:
                self._where[event_id] = (position, end)
            self._batches.append((first, end, [i for i, _ in ids]))
        batches = self._batches
        while batches and batches[0][1] <= end - self.size:
            pop = self._where.pop
            for event_id in batches.popleft()[2]:
                pop(event_id, None)

    def forget_from(self, position: int) -> None:
        """Drop the batches at or after ``position`` (appends that failed)."""
        batches = self._batches
        while batches and batches[-1][0] >= position:
            for event_id in batches.pop()[2]:
                self._where.pop(event_id, None)

    @classmethod
    def of(cls, size: int, known: Mapping[str, tuple[int, int]]) -> DedupWindow:
        """A window holding ``known`` (id → (position, batch end)), as Engine.load
        returns it."""
        window = cls(size)
        by_batch: dict[int, list[tuple[str, int]]] = {}
        for event_id, (position, end) in known.items():
            by_batch.setdefault(end, []).append((event_id, position))
        for end in sorted(by_batch):
            ids = sorted(by_batch[end], key=lambda pair: pair[1])
            window.add(ids[0][1], end, ids)
        return window
