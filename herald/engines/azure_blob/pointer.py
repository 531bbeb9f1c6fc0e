"""The commit pointer of a stream, and the names of every blob: pure, no I/O.

A stream's **pointer** is the small block blob ``heads/<stream>``: JSON naming the
stream's committed head, the time of its last record, its bytes, and the chain of
append blobs holding its records — for each, its name, the position of its first
record and the byte offset where its *committed* records end (and how many blocks
that took). Bytes of a data blob past its committed end were written by a write that
never committed (it lost the pointer's ETag race, or its node died): readers never
read them, writers never append after them (see the package docstring).

Rules of this module: it owns the pointer's format and the blob names; it does no
I/O, so it is tested and fuzzed without storage. Decoding anything that is not a
pointer raises CorruptRecord.
"""

from __future__ import annotations

import bisect
import uuid

import msgspec

from ...errors import CorruptRecord

__all__ = [
    "POINTER_VERSION",
    "DataBlob",
    "Pointer",
    "checkpoint_blob",
    "data_blob_name",
    "decode_pointer",
    "encode_pointer",
    "pointer_blob",
    "new_token",
]

POINTER_VERSION = 1

# Where the blobs live in the container. Stream and checkpoint names are checked
# before they become blob names (model.validate_stream_name,
# base.validate_checkpoint_name): no "/", no leading ".", ASCII only.
HEADS_PREFIX = "heads/"
STREAMS_PREFIX = "streams/"
CHECKPOINTS_PREFIX = "checkpoints/"


class DataBlob(msgspec.Struct, array_like=True, frozen=True):
    """One append blob of a stream: ``[name, first, end, blocks]``."""

    name: str
    first: int  # the position of its first record
    end: int  # the byte offset where its committed records end
    blocks: int  # append blocks committed up to ``end`` (Azure allows 50,000)


class Pointer(msgspec.Struct, frozen=True):
    """A stream's committed state (the content of ``heads/<stream>``)."""

    v: int
    head: int
    last_time: int
    bytes: int
    # The write that made this pointer: a writer whose conditional PUT was answered
    # "precondition failed" after a retry knows from it whether its first try landed.
    token: str
    blobs: tuple[DataBlob, ...]

    def blob_of(self, position: int) -> int:
        """The index in ``blobs`` of the blob holding ``position`` (< head)."""
        firsts = [b.first for b in self.blobs]
        return max(0, bisect.bisect_right(firsts, position) - 1)

    def end_of(self, index: int) -> int:
        """The position after the last committed record of ``blobs[index]``."""
        return self.blobs[index + 1].first if index + 1 < len(self.blobs) else self.head

    @property
    def metadata(self) -> dict[str, str]:
        """What the pointer blob's metadata repeats, so that one listing of the
        ``heads/`` prefix lists every stream with its head and bytes."""
        return {"head": str(self.head), "bytes": str(self.bytes)}


_decoder = msgspec.json.Decoder(Pointer)
_encoder = msgspec.json.Encoder()


def encode_pointer(pointer: Pointer) -> bytes:
    return _encoder.encode(pointer)


def decode_pointer(stream: str, raw: bytes) -> Pointer:
    try:
        pointer = _decoder.decode(raw)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptRecord(f"stream {stream}: its pointer blob does not decode ({exc})",
                            stream=stream) from exc
    if (pointer.v != POINTER_VERSION or not pointer.blobs or pointer.head < 0
            or pointer.blobs[0].first != 0
            or any(a.first > b.first
                   for a, b in zip(pointer.blobs, pointer.blobs[1:], strict=False))):
        raise CorruptRecord(f"stream {stream}: its pointer blob is not a version "
                            f"{POINTER_VERSION} pointer", stream=stream)
    return pointer


def new_token() -> str:
    return uuid.uuid4().hex


def pointer_blob(stream: str) -> str:
    return HEADS_PREFIX + stream


def data_blob_name(stream: str, first: int, token: str) -> str:
    """A new data blob's name: unique (the writer's token), so that two writers
    rolling over at once never write into the same new blob."""
    return f"{STREAMS_PREFIX}{stream}/{first:020d}-{token[:16]}"


def checkpoint_blob(name: str) -> str:
    return CHECKPOINTS_PREFIX + name
