"""The dedup window of one stream as this node last saw it: supplied ids and where
they are, learnt from the stream's own records. Pure: no I/O.

Why from the records, not from id rows (Streamstone's way): a row per id cannot
travel with a 10,000-event batch in one entity-group transaction (100 operations),
and Azure Tables has neither a secondary index nor an ``IN`` query, so finding N
ids would cost N point reads per append. The records already hold every supplied
id; a stream is append-only and every segment row lies below the head, so what a
node once decoded stays true, and it only has to decode what other nodes appended
since (its own writes it records as it makes them). The first append to a stream
after a start reads the last ``window`` events once; after that a ``load`` costs
one point read of the head entity, plus the records other nodes added.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from ... import codec
from ...codec import Record

__all__ = ["IdWindow"]


@dataclass
class IdWindow:
    """Supplied ids of a stream up to ``head``: id → (position, end of its batch),
    in position order, kept while their batch ends within ``window`` of the head."""

    window: int
    head: int = 0
    ids: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add_records(self, records: Iterable[Record]) -> None:
        """Records from ``head`` on, in order (the caller read them)."""
        for record in records:
            if record.end <= self.head:
                continue
            for offset, event in enumerate(codec.decode_batch(record.body).e):
                if event.id is not None:
                    self.ids.pop(event.id, None)  # keep position order
                    self.ids[event.id] = (record.base + offset, record.end)
            self.head = record.end
        self._prune()

    def add_written(self, written: Iterable[tuple[list[tuple[str, int]], int]],
                    head: int) -> None:
        """This node's own write: each record's (id, position) pairs and its end."""
        for pairs, end in written:
            for event_id, position in pairs:
                self.ids.pop(event_id, None)
                self.ids[event_id] = (position, end)
        self.head = head
        self._prune()

    def known(self, ids: Collection[str] | None) -> dict[str, tuple[int, int]]:
        edge = self.head - self.window
        if ids is None:
            return {i: where for i, where in self.ids.items() if where[1] > edge}
        found: dict[str, tuple[int, int]] = {}
        for event_id in ids:
            where = self.ids.get(event_id)
            if where is not None and where[1] > edge:
                found[event_id] = where
        return found

    def _prune(self) -> None:
        # Whole batches leave the window (the placement's rule); ids are in position
        # order, so the oldest are first. Prune only past twice the window, so the
        # cost is amortised over as many ids.
        if len(self.ids) <= 2 * self.window + 16:
            return
        edge = self.head - self.window
        for event_id in list(self.ids):
            if self.ids[event_id][1] > edge:
                break
            del self.ids[event_id]
