"""Reads: records from a stream's data blobs, never past a committed end.

A data blob holds records back to back (codec), from its first position on; what
follows its committed end (``DataBlob.end``, in the pointer) was never committed and
is never read. A position is found in a blob through a sparse index this node keeps
per blob — (position, offset) of a record every ``INDEX_INTERVAL_BYTES``, learnt from
its own writes and from every read — and, where the index knows nothing yet, by
scanning the blob forward from the nearest entry (once: the scan fills the index).
Committed bytes never change, so what the index learnt stays true.

Rules of this module: it reads through the ``download`` coroutine it is given (the
engine's, which converts driver errors); it never writes. Records out of sequence
or failing their checksum are CorruptRecord naming the position.
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ... import codec
from ...codec import Record
from ...errors import CorruptRecord
from .pointer import Pointer

__all__ = ["INDEX_INTERVAL_BYTES", "BlobIndex", "Download", "read_records"]

# An index entry per this many bytes of a blob: finding a position costs at most one
# download of this size beyond the records wanted; a 1 GiB blob costs ~4,000 entries.
INDEX_INTERVAL_BYTES = 256 * 1024
# The least one download asks for: a header alone would cost a round trip per record.
MIN_DOWNLOAD_BYTES = 64 * 1024
# A scan towards a position the index does not know reads this much per request.
SCAN_BYTES = 4 * 1024 * 1024

# (blob name, offset, length) → the bytes; the blob holds them all (committed).
Download = Callable[[str, int, int], Awaitable[bytes]]


@dataclass
class BlobIndex:
    """Where some records of one blob begin: positions and offsets, both ascending."""

    positions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def add(self, position: int, offset: int) -> None:
        i = bisect.bisect_left(self.positions, position)
        if i < len(self.positions) and self.positions[i] == position:
            return
        # Keep entries INDEX_INTERVAL_BYTES apart: a neighbour that close makes this
        # one worth nothing.
        if i > 0 and offset - self.offsets[i - 1] < INDEX_INTERVAL_BYTES:
            return
        if i < len(self.offsets) and self.offsets[i] - offset < INDEX_INTERVAL_BYTES:
            return
        self.positions.insert(i, position)
        self.offsets.insert(i, offset)

    def floor(self, position: int, first: int) -> tuple[int, int]:
        """The last known record start at or before ``position``: (position, offset);
        the blob's start if none."""
        i = bisect.bisect_right(self.positions, position) - 1
        if i < 0:
            return first, 0
        return self.positions[i], self.offsets[i]


async def read_records(download: Download, stream: str, pointer: Pointer,
                       indexes: dict[str, BlobIndex], start: int,
                       max_bytes: int) -> list[Record]:
    """Committed records holding positions ≥ ``start`` (< pointer.head), at most
    ``max_bytes`` beyond the first, all from the blob that holds ``start``."""
    if start >= pointer.head:
        return []
    which = pointer.blob_of(start)
    blob = pointer.blobs[which]
    last = pointer.end_of(which)  # the position after the blob's committed records
    index = indexes.setdefault(blob.name, BlobIndex())
    expected, offset = index.floor(start, blob.first)
    out: list[Record] = []
    total = 0
    want = MIN_DOWNLOAD_BYTES
    while offset < blob.end and expected < last:
        length = min(blob.end - offset, max(want, MIN_DOWNLOAD_BYTES,
                                            max_bytes if expected >= start else SCAN_BYTES))
        buf = await download(blob.name, offset, length)
        if len(buf) != length:
            raise CorruptRecord(f"stream {stream}: blob {blob.name} is shorter than its "
                                f"committed end", stream=stream, first=expected)
        used = 0
        while True:
            try:
                record = codec.decode_record_at(buf, used)
            except CorruptRecord as exc:
                raise CorruptRecord(f"stream {stream}: the batch at position {expected} is "
                                    f"damaged ({exc.message})", stream=stream,
                                    first=expected) from exc
            if record is None:
                break
            if record.base != expected or record.count == 0:
                raise CorruptRecord(f"stream {stream}: the batch at position {expected} is "
                                    f"out of sequence", stream=stream, first=expected)
            index.add(record.base, offset + used)
            if record.end > start:
                if out and total + len(record.raw) > max_bytes:
                    return out
                out.append(record)
                total += len(record.raw)
            used += len(record.raw)
            expected = record.end
            if expected >= last:
                break
        if out and (total >= max_bytes or expected >= last):
            return out
        offset += used
        # What the next download must hold at least: the whole of the record that
        # did not fit (its header says how long it is).
        want = MIN_DOWNLOAD_BYTES
        if len(buf) - used >= codec.HEADER_SIZE:
            length_field = codec.HEADER.unpack_from(buf, used)[7]
            want = codec.HEADER_SIZE + length_field
        if out and total + want > max_bytes:  # the next record no longer fits
            return out
    if expected < last or (not out and start < last):
        raise CorruptRecord(f"stream {stream}: blob {blob.name} ends before position "
                            f"{last}", stream=stream, first=expected)
    return out
