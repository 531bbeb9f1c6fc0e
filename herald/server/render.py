"""Pages and records → the JSON and Server-Sent-Events forms of the read API. Pure.

Every detail of the SSE form is here (its media type, frames, ``retry``, heartbeats,
``Last-Event-ID``). ``data`` stays raw JSON bytes from the record to the answer
(msgspec ``Raw``): the server never builds Python objects for event payloads. Events
come from ``codec.events_of``, the one place a record becomes events.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from .. import codec
from ..codec import Record
from ..errors import InvalidRequest
from ..hub import ReadPage, Start
from ..model import MAX_POSITION, Event, validate_position

__all__ = ["SSE_MEDIA_TYPE", "SSE_PREAMBLE", "render_json_page", "render_sse", "sse_heartbeat",
           "sse_start"]

SSE_MEDIA_TYPE = "text/event-stream"
# An SSE "retry" tells a browser how soon to reconnect after a drop (ms).
SSE_PREAMBLE = b"retry: 2000\n\n"


class _PageOut(msgspec.Struct):
    events: list[Event]
    next: int
    head: int


_encoder = msgspec.json.Encoder()


def render_json_page(page: ReadPage) -> bytes:
    """``{"events": […], "next": N, "head": H}``."""
    return _encoder.encode(_PageOut(events=page.events(), next=page.next, head=page.head))


def render_sse(records: Iterable[Record], start: int) -> tuple[bytes, int]:
    """SSE frames for the events at positions ≥ ``start``; and the next position.

    Each event's SSE ``id`` is its position, so a browser's ``Last-Event-ID``
    resumes exactly after the last event it received.
    """
    parts: list[bytes] = []
    next_position = start
    for record in records:
        if record.end <= next_position:
            continue
        for event in codec.events_of(record, next_position):
            parts.append(b"id: %d\ndata: %s\n\n" % (event.position, _encoder.encode(event)))
        next_position = record.end
    return b"".join(parts), next_position


def sse_heartbeat(position: int) -> bytes:
    """An SSE comment: keeps proxies from closing an idle stream, names the position."""
    return b": heartbeat %d\n\n" % position


def sse_start(last_event_id: str | None, start: Start) -> Start:
    """Where an SSE answer begins: just after the ``Last-Event-ID`` a reconnecting
    browser sends (an event's position, see ``render_sse``), else at ``start``.

    Parsed as strictly as every position (``validate_position``: ASCII digits only),
    and the last position has no next. An empty value is no ID, as the SSE standard
    has it (an ``id:`` line with no value resets the browser's last event ID)."""
    if last_event_id:
        position = validate_position(last_event_id, "Last-Event-ID")
        if position == MAX_POSITION:
            raise InvalidRequest(f"Last-Event-ID must be below {MAX_POSITION}: no event "
                                 "comes after it", code="invalid_parameter",
                                 parameter="Last-Event-ID")
        return position + 1
    return start
