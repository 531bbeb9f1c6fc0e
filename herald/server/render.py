"""Records → the JSON and Server-Sent-Events forms of the read API. Pure.

``data`` stays raw JSON bytes from the record to the answer (msgspec ``Raw``): the
server never builds Python objects for event payloads.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from .. import codec
from ..codec import Record
from ..model import id_suffixes, time_from_us

__all__ = ["render_json_page", "render_sse", "EventOut"]


class EventOut(msgspec.Struct, gc=False):  # see model.NewEvent on gc=False
    position: int
    id: str
    type: str
    data: msgspec.Raw
    meta: dict[str, str]
    time: str


class PageOut(msgspec.Struct):
    events: list[EventOut]
    next: int
    head: int


_encoder = msgspec.json.Encoder()


def _time(us: int) -> str:
    return time_from_us(us).isoformat().replace("+00:00", "Z")


def events_out(records: Iterable[Record], start: int, limit: int | None = None) -> list[EventOut]:
    """The events at positions ≥ ``start`` (at most ``limit``) in ``records``."""
    out: list[EventOut] = []
    for record in records:
        if record.end <= start:
            continue
        time = _time(record.time_us)
        skip = max(0, start - record.base)
        batch = codec.decode_batch(record.body)
        stored, prefix = batch.e, batch.p
        suffixes = id_suffixes(len(stored))
        for offset in range(skip, len(stored)):
            event = stored[offset]
            out.append(EventOut(record.base + offset, event.id or prefix + suffixes[offset],
                                event.type, event.data, event.meta, time))
            if limit is not None and len(out) >= limit:
                return out
    return out


def render_json_page(records: Iterable[Record], start: int, limit: int, head: int) -> bytes:
    """``{"events": […], "next": N, "head": H}``."""
    events = events_out(records, start, limit)
    next_position = events[-1].position + 1 if events else max(start, 0)
    if not events and start > head:
        next_position = start
    return _encoder.encode(PageOut(events=events, next=next_position, head=head))


def render_sse(records: Iterable[Record], start: int) -> tuple[bytes, int]:
    """SSE frames for the events at positions ≥ ``start``; and the next position.

    Each event's SSE ``id`` is its position, so a browser's ``Last-Event-ID``
    resumes exactly after the last event it received.
    """
    parts: list[bytes] = []
    next_position = start
    for event in events_out(records, start):
        parts.append(b"id: %d\ndata: %s\n\n" % (event.position, _encoder.encode(event)))
        next_position = event.position + 1
    return b"".join(parts), next_position
