"""The gap fence: reading a source in position order, safely when its transactions
commit out of order (the package docstring; docs/architecture.md, "Gathering").

A database supplies a ``Guard``: which transactions could still fill a gap, and
when they have all ended.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from ..base import SourceRead

__all__ = ["GapFence", "Guard", "Tail"]


@dataclass
class GapFence:
    """Rows past a gap, held until the gap is settled.

    ``bound`` is the highest position of the read that found the gap; ``holders``
    the transactions that were running after that read (None while not yet known).
    Once none of them is running, every position ≤ ``bound`` is final: the next read
    (a new snapshot) gathers whatever committed, and the gaps left are permanent.
    """

    bound: int
    holders: frozenset[Hashable] | None = None
    resolved: bool = False


class Guard:
    """How a database tells which transactions could still fill a gap."""

    def open(self, fence: GapFence) -> None:
        """Called right after the read that found the gap: find its holders."""
        raise NotImplementedError

    def check(self, fence: GapFence) -> None:
        """Called before a read: drop holders that ended; resolve when none is left."""
        raise NotImplementedError

    def drop(self) -> None:
        """The fence is no longer needed: release what finding its holders holds."""


class Tail:
    """Reads a source in position order, safely when commits are out of order.

    ``guard`` is None for sources whose commits are in position order (SQLite: one
    writer at a time).
    """

    def __init__(self, guard: Guard | None) -> None:
        self.guard = guard
        self.fence: GapFence | None = None

    def read(self, select: Callable[[int | None, int], Sequence[Any]],
             position: Callable[[Any], int], after: int | None, limit: int) -> SourceRead:
        for _ in range(2):  # a second time at once if the gap settled immediately
            result, again = self._read_once(select, position, after, limit)
            if not again:
                break
        return result

    def _read_once(self, select: Callable[[int | None, int], Sequence[Any]],
                   position: Callable[[Any], int], after: int | None,
                   limit: int) -> tuple[SourceRead, bool]:
        guard = self.guard
        fence = self.fence
        if guard is not None and fence is not None and not fence.resolved:
            guard.check(fence)  # strictly before the snapshot of the select below
        bound = fence.bound if fence is not None and fence.resolved else None
        rows = select(after, limit)
        full = len(rows) >= limit
        if guard is None:
            return SourceRead(rows, full=full), False
        safe = 0
        previous = after
        for row in rows:
            at = position(row)
            if (previous is not None and at == previous + 1) or (bound is not None and at <= bound):
                previous = at
                safe += 1
            else:
                break
        if fence is not None and fence.resolved and bound is not None and not (
                safe == len(rows) and full and position(rows[-1]) < bound):
            self.fence = fence = None  # settled and passed: its work is done
        elif fence is not None and not fence.resolved and previous is not None and (
                previous >= fence.bound):
            self.fence = fence = None  # the gap filled in by itself: a dense run passed it
            guard.drop()
        held = safe < len(rows)
        again = False
        if held and self.fence is None:
            self.fence = GapFence(bound=position(rows[-1]))
            guard.open(self.fence)  # strictly after the select's snapshot
            again = self.fence.resolved and safe == 0
        return SourceRead(rows[:safe], full=full and not held, held=held), again
