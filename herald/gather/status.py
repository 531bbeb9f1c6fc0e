"""What a gatherer reports: its state and its numbers. Pure values; no I/O.

The server sends these as JSON (``GET /v1/gatherers``) and the client decodes them
into the same structs, so both sides share one definition.
"""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

__all__ = ["GatherState", "GatherSkip", "GatherFailure", "GathererStatus"]


class GatherState(enum.Enum):
    """A gatherer's lifecycle. Every state but ``stopped`` moves on by itself."""

    STARTING = "starting"  # connecting; reading where its stream stopped
    BACKFILLING = "backfilling"  # the source holds more than one batch: copying flat out
    LIVE = "live"  # caught up; waiting for new rows (NOTIFY or a backing-off poll)
    RETRYING = "retrying"  # the source or the storage failed; retrying with back-off
    STOPPED_BAD_ROW = "stopped-bad-row"  # a row cannot be mapped: waits for a skip
    STOPPED = "stopped"  # Herald is shutting down


class GatherSkip(msgspec.Struct):
    """An operator's decision to leave a source row out of the stream."""

    position: int
    by: str
    at: datetime
    reason: str = ""


class GatherFailure(msgspec.Struct):
    """The last error a gatherer met (it may have recovered since: see ``state``)."""

    code: str
    message: str
    at: datetime
    position: int | None = None


class GathererStatus(msgspec.Struct):
    """One gatherer as ``herald gather status`` shows it.

    ``source_position`` is the last source position gathered (or skipped);
    ``source_max`` the highest position the source holds (refreshed about once a
    second); ``lag_events`` is their difference — exact for gap-free positions, an
    upper bound otherwise; ``lag_seconds`` is how long the gatherer has been behind
    the source (0 when caught up). ``duplicates`` counts events the engine did not
    append because their id was already in the stream's dedup window: the source
    repeats an event id (the first one stays; see docs/gathering.md).
    """

    name: str
    stream: str
    source: str
    description: str
    state: GatherState
    source_position: int | None
    source_max: int | None
    stream_head: int
    lag_events: int | None
    lag_seconds: float
    gathered: int
    conflicts: int
    started_at: datetime
    duplicates: int = 0
    last_error: GatherFailure | None = None
    skips: list[GatherSkip] = []
