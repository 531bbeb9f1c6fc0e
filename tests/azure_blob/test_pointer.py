"""The azure-blob pointer's format (pure): it round-trips, and any bytes either
decode as a pointer or raise CorruptRecord — never anything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.engines.azure_blob.pointer import (
    POINTER_VERSION,
    DataBlob,
    Pointer,
    data_blob_name,
    decode_pointer,
    encode_pointer,
    new_token,
)
from herald.engines.azure_blob.reader import BlobIndex
from herald.errors import CorruptRecord


def test_a_pointer_round_trips_and_finds_blobs() -> None:
    pointer = Pointer(POINTER_VERSION, 30, 7, 999, new_token(), (
        DataBlob("a", 0, 100, 2), DataBlob("b", 10, 50, 1), DataBlob("c", 25, 10, 1)))
    assert decode_pointer("s", encode_pointer(pointer)) == pointer
    assert [pointer.blob_of(p) for p in (0, 9, 10, 24, 25, 29)] == [0, 0, 1, 1, 2, 2]
    assert [pointer.end_of(i) for i in range(3)] == [10, 25, 30]
    assert pointer.metadata == {"head": "30", "bytes": "999"}


def test_blob_names_are_unique_per_writer() -> None:
    assert data_blob_name("s", 5, new_token()) != data_blob_name("s", 5, new_token())
    assert data_blob_name("s", 5, "f" * 32).startswith("streams/s/00000000000000000005-")


@pytest.mark.parametrize("raw", [
    b"", b"{}", b"[]", b"null", b'{"v":2,"head":0,"last_time":0,"bytes":0,"token":"","blobs":[]}',
    b'{"v":1,"head":1,"last_time":0,"bytes":0,"token":"","blobs":[]}',
    b'{"v":1,"head":1,"last_time":0,"bytes":0,"token":"","blobs":[["a",3,1,1]]}',
    b'{"v":1,"head":1,"last_time":0,"bytes":0,"token":"","blobs":[["a",0,1,1],["b",-1,1,1]]}',
])
def test_what_is_not_a_pointer_is_corrupt(raw: bytes) -> None:
    with pytest.raises(CorruptRecord):
        decode_pointer("s", raw)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_are_corrupt(raw: bytes) -> None:
    try:
        decode_pointer("s", raw)
    except CorruptRecord:
        pass


def test_the_index_keeps_entries_apart_and_finds_the_floor() -> None:
    index = BlobIndex()
    index.add(10, 0)
    index.add(11, 100)  # too close to the one before: worth nothing
    index.add(500, 300_000)
    index.add(200, 100_000)  # too close to neither? 100 KiB from both: dropped
    assert index.positions == [10, 500]
    assert index.floor(5, 0) == (0, 0)
    assert index.floor(499, 0) == (10, 0)
    assert index.floor(900, 0) == (500, 300_000)
