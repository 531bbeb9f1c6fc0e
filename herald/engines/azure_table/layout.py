"""The azure-table engine's rows: what is stored under which key, and how records
are cut into entities and put together again. Pure: no I/O, no Azure SDK.

One stream is one partition (``PartitionKey`` = the stream's name) of the streams
table. Its rows, by ``RowKey``::

    h                       the head entity: head, last_time, bytes, version, writer
    b{last:020d}            a segment: consecutive whole records, positions base…last
    s{token}.{seg:03d}.{k:06d}  a staged part of a segment too large to travel in the
                            commit transaction (see below)

A **segment** holds the raw bytes of one or more consecutive records (each record
self-delimiting by its header), keyed by the last position it holds: the segment
holding position ``p`` is the first whose key is ≥ ``b{p:020d}``, so a read from any
position is one range query. Its bytes are in its own binary properties (``d000``…,
at most ``PROPERTY_BYTES`` each) or — for a segment too large for the commit
transaction — in staged rows written before it, named by the segment's ``token``.

Segment rows are only ever created in the transaction that moves the head entity
under its ETag, so every segment row is committed and lies below the head. Staged
rows of a write that lost its race (or died) are never referenced by a segment row,
so no reader ever reads them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...codec import Record

__all__ = [
    "CHUNKS_PER_ENTITY",
    "ENTITY_BYTES",
    "HEAD_ROW",
    "MAX_OPERATIONS",
    "PROPERTY_BYTES",
    "SEGMENT_RANGE_END",
    "STAGE_ENTITIES_PER_TRANSACTION",
    "TRANSACTION_BYTES",
    "Plan",
    "Segment",
    "chunk_properties",
    "data_of",
    "pack",
    "plan",
    "segment_key",
    "staged_key",
    "staged_range",
]

# Azure Tables: a binary property holds at most 64 KiB.
PROPERTY_BYTES = 64 * 1024
# An entity is at most 1 MiB. Azure counts a binary property's raw bytes; Azurite
# counts the request's JSON, where binary travels as base64 (4/3 larger): 12 full
# properties (768 KiB, 1 MiB as base64) are refused there, 11 (704 KiB, 939 KiB as
# base64) pass. Designed to the stricter of the two.
CHUNKS_PER_ENTITY = 11
ENTITY_BYTES = CHUNKS_PER_ENTITY * PROPERTY_BYTES
# An entity-group transaction holds at most 100 operations and 4 MiB of request
# body (base64 again): four full entities (3.7 MiB as base64) pass on Azurite,
# five do not. Three leave room for the multipart framing and the other rows.
STAGE_ENTITIES_PER_TRANSACTION = 3
TRANSACTION_BYTES = STAGE_ENTITIES_PER_TRANSACTION * ENTITY_BYTES
MAX_OPERATIONS = 100

HEAD_ROW = "h"
SEGMENT_PREFIX = "b"
# Row keys of segments sort between "b" and this (the next character after "b").
SEGMENT_RANGE_END = "c"
STAGED_PREFIX = "s"
_POSITION_DIGITS = 20  # 2**63 has 19 digits


def segment_key(last: int) -> str:
    return f"{SEGMENT_PREFIX}{last:0{_POSITION_DIGITS}d}"


def staged_key(token: str, segment: int, part: int) -> str:
    return f"{STAGED_PREFIX}{token}.{segment:03d}.{part:06d}"


def staged_range(token: str, segment: int) -> tuple[str, str]:
    """The row keys (from, to: exclusive) of one segment's staged parts."""
    prefix = f"{STAGED_PREFIX}{token}.{segment:03d}."
    return prefix, prefix[:-1] + "/"  # "/" sorts right after "."


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive records stored as one segment row: positions base…end-1."""

    base: int
    end: int
    data: bytes

    @property
    def last(self) -> int:
        return self.end - 1


def pack(records: Sequence[Record]) -> list[Segment]:
    """Consecutive records into segments of at most ENTITY_BYTES (a larger record
    is a segment of its own), in order."""
    segments: list[Segment] = []
    run: list[Record] = []
    size = 0

    def close() -> None:
        if run:
            segments.append(Segment(run[0].base, run[-1].end, b"".join(r.raw for r in run)))
            run.clear()

    for record in records:
        if run and size + len(record.raw) > ENTITY_BYTES:
            close()
            size = 0
        run.append(record)
        size += len(record.raw)
    close()
    return segments


@dataclass(frozen=True, slots=True)
class Plan:
    """A write's segments: those whose bytes travel in the commit transaction
    (``inline``) and those staged beforehand (by their index in ``segments``)."""

    segments: list[Segment]
    staged: frozenset[int]


def plan(segments: list[Segment]) -> Plan:
    """Which segments fit in the commit transaction beside the head entity (at most
    MAX_OPERATIONS rows, TRANSACTION_BYTES of data); the rest are staged. More
    segments than operations: the tail is merged into one staged segment."""
    room = MAX_OPERATIONS - 1  # the head entity
    if len(segments) > room:
        tail = segments[room - 1:]
        merged = Segment(tail[0].base, tail[-1].end, b"".join(s.data for s in tail))
        segments = [*segments[:room - 1], merged]
    budget = TRANSACTION_BYTES
    staged: set[int] = set()
    for index, segment in enumerate(segments):
        if len(segment.data) <= min(budget, ENTITY_BYTES):
            budget -= len(segment.data)
        else:
            staged.add(index)
    return Plan(segments, frozenset(staged))


def chunk_properties(data: bytes | memoryview) -> dict[str, Any]:
    """``data`` as binary properties ``d000``… of at most PROPERTY_BYTES, and ``n``."""
    view = memoryview(data)
    chunks = {f"d{i:03d}": bytes(view[offset:offset + PROPERTY_BYTES])
              for i, offset in enumerate(range(0, len(view), PROPERTY_BYTES))}
    return {"n": len(chunks), **chunks}


def data_of(entity: Mapping[str, Any]) -> bytes:
    """The bytes ``chunk_properties`` stored in ``entity``. KeyError/TypeError for a
    damaged entity (the caller names it)."""
    count = int(entity["n"])
    return b"".join(bytes(entity[f"d{i:03d}"]) for i in range(count))


def parts(data: bytes) -> Iterator[bytes]:
    """A staged segment's bytes cut into entities of at most ENTITY_BYTES."""
    view = memoryview(data)
    for offset in range(0, len(view), ENTITY_BYTES):
        yield bytes(view[offset:offset + ENTITY_BYTES])
