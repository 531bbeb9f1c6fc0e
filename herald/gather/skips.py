"""The skip log: operators' decisions to skip a row a gatherer cannot map.

A gatherer stopped on a bad row (``UnmappableRow``) stays there until the row is
fixed in its source or an operator runs ``herald gather skip``; that decision is
recorded here, and every gatherer, on every node, reads it from here.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import msgspec

from .. import codec
from ..hub import INTERNAL_PREFIX, Hub
from .status import GatherSkip

__all__ = ["SKIP_STREAM", "SkipLog"]

log = logging.getLogger("herald.gather")

# Operators' skip decisions are recorded durably in this stream (who, when, which
# row, why). A gatherer stopped on a bad row waits on it. Internal (hub
# INTERNAL_PREFIX): only this module appends to it; an admin may read it, not write.
SKIP_STREAM = INTERNAL_PREFIX + "gather.skips"

_encoder = msgspec.json.Encoder()


class _SkipRecord(msgspec.Struct):
    gatherer: str
    position: int
    by: str
    reason: str = ""


class SkipLog:
    """Operators' ``herald gather skip`` decisions, kept in the stream SKIP_STREAM.

    A stream, not a checkpoint: the record says who and why, its time says when, it
    is durable and replicated by whatever engine runs, and anyone can audit it.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.head = 0
        self.skips: dict[str, list[GatherSkip]] = {}
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read the decisions recorded since the last refresh (by any node)."""
        async with self._lock:
            while True:
                records = await self.hub.records(SKIP_STREAM, self.head)
                if not records:
                    return
                for record in records:
                    at = datetime.fromtimestamp(record.time_us / 1e6, UTC)
                    for event in codec.events_of(record, self.head):
                        try:
                            data = msgspec.json.decode(event.raw, type=_SkipRecord)
                        except msgspec.MsgspecError:
                            log.warning("%s: position %d is not a skip record; ignored",
                                        SKIP_STREAM, event.position)
                            continue
                        self.skips.setdefault(data.gatherer, []).append(
                            GatherSkip(position=data.position, by=data.by, at=at,
                                       reason=data.reason))
                    self.head = record.end

    def positions(self, gatherer: str) -> frozenset[int]:
        return frozenset(s.position for s in self.skips.get(gatherer, ()))

    async def record(self, gatherer: str, position: int, by: str, reason: str) -> None:
        body = _encoder.encode([{
            "type": "GatherRowSkipped",
            "data": _SkipRecord(gatherer=gatherer, position=position, by=by, reason=reason),
            "meta": {"gatherer": gatherer, "position": str(position)},
        }])
        # Validated with the configured limits, as every append is.
        await self.hub.append_body(SKIP_STREAM, body, internal=True)
        await self.refresh()
