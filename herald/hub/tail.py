"""The tail cache: every stream's most recent records, in memory, so that live
subscribers (who read what was just appended) never touch the storage.

Two named bounds: a stream keeps at most ``STREAM_BYTES`` of its newest records, and
all streams together at most ``TOTAL_BYTES``; past that, the streams appended to
least recently lose their cache first (their readers go to the storage, which is
only slower). Used by both engines from their event loop.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Sequence

from ..codec import Record

__all__ = ["STREAM_BYTES", "TOTAL_BYTES", "TailCache", "records_from"]

STREAM_BYTES = 1024 * 1024
TOTAL_BYTES = 64 * 1024 * 1024


def records_from(records: Sequence[Record], start: int, max_bytes: int) -> list[Record]:
    """The records of ``records`` (in position order) from the one holding ``start``
    on, up to ``max_bytes`` of them (the first is always whole)."""
    first = bisect.bisect_right(records, start, key=lambda r: r.end)  # first with end > start
    out: list[Record] = []
    total = 0
    for i in range(first, len(records)):  # by index: ``records`` may be a deque
        record = records[i]
        if out and total + len(record.raw) > max_bytes:
            break
        out.append(record)
        total += len(record.raw)
    return out


class _Tail:
    __slots__ = ("bytes", "records")

    def __init__(self) -> None:
        self.records: deque[Record] = deque()
        self.bytes = 0


class TailCache:
    def __init__(self, stream_bytes: int = STREAM_BYTES, total_bytes: int = TOTAL_BYTES) -> None:
        self.stream_bytes = stream_bytes
        self.total_bytes = total_bytes
        self.bytes = 0  # held, all streams together
        self._tails: OrderedDict[str, _Tail] = OrderedDict()  # least recently extended first

    def extend(self, stream: str, records: Sequence[Record]) -> None:
        """Keep committed ``records`` (in order) if they continue the stream's cached
        run, or are newer than all of it; the run stays contiguous."""
        tail = self._tails.get(stream)
        if tail is None:
            tail = self._tails[stream] = _Tail()
        else:
            self._tails.move_to_end(stream)
        cached = tail.records
        if cached:
            skip = cached[-1].end
            records = [r for r in records if r.base >= skip]  # already cached
            if records and records[0].base != skip:  # a gap: start a new run
                self.bytes -= tail.bytes
                cached.clear()
                tail.bytes = 0
        for record in records:
            cached.append(record)
            tail.bytes += len(record.raw)
            self.bytes += len(record.raw)
        while tail.bytes > self.stream_bytes and len(cached) > 1:
            size = len(cached.popleft().raw)
            tail.bytes -= size
            self.bytes -= size
        while self.bytes > self.total_bytes and len(self._tails) > 1:
            _, oldest = self._tails.popitem(last=False)
            self.bytes -= oldest.bytes

    def get(self, stream: str, start: int, max_bytes: int) -> list[Record] | None:
        """The cached records from the one holding ``start`` on, or None when the
        cache does not hold ``start``."""
        tail = self._tails.get(stream)
        if tail is None:
            return None
        cached = tail.records
        if not cached or cached[0].base > start or cached[-1].end <= start:
            return None
        return records_from(cached, start, max_bytes)

    def drop(self, stream: str) -> None:
        tail = self._tails.pop(stream, None)
        if tail is not None:
            self.bytes -= tail.bytes
