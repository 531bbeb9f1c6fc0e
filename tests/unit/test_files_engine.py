"""The files engine's own promises, beyond the shared conformance suite.

What this proves, each time on real files in a temporary data directory:

* **torn tails** — what a crash mid-write leaves at the end of the last segment (a
  partial record, a short scrap, a last record whose checksum fails, zeros) is cut
  on reopen: the head is the last whole record's end, every earlier event is read
  back unchanged, appends continue at that head, and ``check_data_dir`` is clean;
* a tail that no crash could leave (a long run of non-zero garbage) is *not*
  silently cut: the stream refuses appends with ``corrupt_record``, what lies before
  it still reads, and ``herald check`` reports it;
* **the index** deleted, truncated, overwritten with garbage, or pointing into the
  middle of a record is rebuilt on reopen and reads stay correct; a wrong entry in a
  sealed segment is reported by ``check_data_dir`` and rewritten by ``repair``;
* **the lock**: a second engine on the same data directory is refused with
  ``StorageUnavailable`` (so is ``check --repair``) until the first closes;
* an empty segment left by a crash during a segment roll is tolerated;
* **a failed write** (provoked portably with ``RLIMIT_FSIZE``: the kernel refuses to
  grow the file, EFBIG) fails the append and those queued behind it with
  ``storage_error``, leaves no trace in the log, and later appends reuse no position;
* **mid-segment damage** makes reads of the damaged range fail with
  ``CorruptRecord`` naming the damaged record's positions (as ``herald check`` does),
  while every other position still reads.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import struct
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import msgspec
import pytest

from herald import codec
from herald.engines.files import (
    INDEX_INTERVAL_BYTES,
    FilesConfig,
    FilesEngine,
    check_data_dir,
)
from herald.errors import CorruptRecord, ServerError, StorageUnavailable
from herald.hub import Hub
from herald.model import Batch, Event, Limits

STREAM = "orders"
INDEX_ENTRY = struct.Struct("<QQ")


# --- helpers -------------------------------------------------------------------------


def make_batch(first: int, count: int, pad: int = 100, ids: bool = False) -> Batch:
    events = [{"type": "Counted", "data": {"n": first + i, "pad": "x" * pad},
               **({"id": f"id-{first + i}"} if ids else {})} for i in range(count)]
    return codec.decode_append(msgspec.json.encode(events), Limits())


@asynccontextmanager
async def opened(root: Path, segment_bytes: int = 1 << 20,
                 limits: Limits | None = None) -> AsyncIterator[Hub]:
    """A hub over a files engine on ``root``: what appends and reads go through."""
    limits = limits or Limits()
    async with Hub(FilesEngine(FilesConfig(root, segment_bytes=segment_bytes)),
                   limits) as hub:
        yield hub


async def read_all(engine: Hub, start: int = 0) -> list[Event]:
    return [event async for event in engine.events(STREAM, start)]


def summary(events: list[Event]) -> list[tuple[int, str, object]]:
    return [(e.position, e.id, e.data) for e in events]


async def fill(root: Path, batches: int = 60, per_batch: int = 2,
               segment_bytes: int = 1 << 20) -> list[tuple[int, str, object]]:
    """Append ``batches`` batches (≈180 bytes a record) and return what reads back."""
    async with opened(root, segment_bytes) as engine:
        for i in range(batches):
            await engine.append(STREAM, make_batch(i * per_batch, per_batch, ids=i % 3 == 0))
        events = await read_all(engine)
    assert [e.position for e in events] == list(range(batches * per_batch))
    return summary(events)


def segments(root: Path) -> list[Path]:
    return sorted((root / "streams" / STREAM).glob("*.log"))


def record_offsets(segment: Path) -> list[tuple[int, int]]:
    """(offset, base) of every record in a clean segment."""
    records, used = codec.parse_records(segment.read_bytes())
    assert used == segment.stat().st_size
    out, offset = [], 0
    for record in records:
        out.append((offset, record.base))
        offset += len(record.raw)
    return out


def assert_index_points_at_records(segment: Path) -> None:
    data = segment.with_suffix(".idx").read_bytes()
    assert len(data) % INDEX_ENTRY.size == 0
    entries = list(INDEX_ENTRY.iter_unpack(data))
    assert entries, f"{segment.name} has an index"
    assert entries[0] == (int(segment.stem), 0)
    assert set(entries) <= set((base, offset) for offset, base in record_offsets(segment))


def assert_clean(root: Path) -> None:
    report = check_data_dir(root)
    assert report.clean, ([d.describe() for d in report.damage], report.index_problems)


# --- torn tails ------------------------------------------------------------------------

NEXT = codec.encode_record(120, 1, 1, b'{"p":"x","e":[{"type":"t","data":1}]}')


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


TEARS = {
    "partial header": NEXT[:20],
    "partial body": NEXT[:-5],
    "short scrap": b"\x13\x37scrap",
    "last record fails its checksum": _flip(NEXT, len(NEXT) - 3),
    "zeros": b"\0" * 4096,
    "partial header, then zeros": NEXT[:20] + b"\0" * 4096,
    "partial body, then zeros": NEXT[:50] + b"\0" * 4096,
    "record failing its checksum, then zeros": _flip(NEXT, 40) + b"\0" * 4096,
}


@pytest.mark.parametrize("tear", TEARS.values(), ids=TEARS.keys())
async def test_a_torn_tail_is_cut_on_reopen(tmp_path: Path, tear: bytes) -> None:
    before = await fill(tmp_path)
    last = segments(tmp_path)[-1]
    good_size = last.stat().st_size
    with last.open("ab") as f:
        f.write(tear)

    async with opened(tmp_path) as engine:
        assert await engine.head(STREAM) == 120
        assert summary(await read_all(engine)) == before, "every earlier event intact"
        assert last.stat().st_size == good_size, "the tear is gone from the file"
        result = await engine.append(STREAM, make_batch(120, 3))
        assert (result.first, result.head) == (120, 123), "appends continue at the head"
        after = await read_all(engine)
        assert summary(after[:120]) == before
        assert [e.data["n"] for e in after[120:]] == [120, 121, 122]
    assert_clean(tmp_path)
    assert_index_points_at_records(last)


async def test_a_torn_tail_in_a_later_segment_keeps_the_earlier_segments(
    tmp_path: Path
) -> None:
    before = await fill(tmp_path, segment_bytes=4096)
    assert len(segments(tmp_path)) > 3
    with segments(tmp_path)[-1].open("ab") as f:
        f.write(NEXT[:-1])
    async with opened(tmp_path, 4096) as engine:
        assert summary(await read_all(engine)) == before
        assert (await engine.append(STREAM, make_batch(120, 1))).first == 120
    assert_clean(tmp_path)


async def test_check_reports_a_torn_tail_and_repair_cuts_it(tmp_path: Path) -> None:
    await fill(tmp_path)
    last = segments(tmp_path)[-1]
    good_size = last.stat().st_size
    with last.open("ab") as f:
        f.write(NEXT[:-5])
    report = check_data_dir(tmp_path)
    assert not report.clean
    assert [(d.first, d.last) for d in report.damage] == [(120, None)]
    assert "torn tail" in report.damage[0].reason
    repaired = check_data_dir(tmp_path, repair=True)
    assert repaired.repaired and last.stat().st_size == good_size
    assert_clean(tmp_path)


async def test_garbage_no_crash_could_leave_is_reported_not_cut(tmp_path: Path) -> None:
    """Non-zero bytes that are not the start of a record are not a torn write (a crash
    leaves a prefix of what was written, or zeros): the engine does not guess that
    they may be thrown away."""
    before = await fill(tmp_path)
    last = segments(tmp_path)[-1]
    with last.open("ab") as f:
        f.write(b"not a record, and long enough to hold a header" * 3)
    size = last.stat().st_size
    async with opened(tmp_path) as engine:
        assert await engine.head(STREAM) == 120
        assert summary(await read_all(engine)) == before, "what lies before still reads"
        with pytest.raises(CorruptRecord) as caught:
            await engine.append(STREAM, make_batch(120, 1))
        assert caught.value.code == "corrupt_record"
        assert caught.value.details["first"] == 120
    assert last.stat().st_size == size, "nothing was cut"
    report = check_data_dir(tmp_path)
    assert [d.first for d in report.damage] == [120]


@pytest.mark.parametrize("field", ["length", "checksum"])
async def test_damage_with_records_after_it_is_never_cut(tmp_path: Path, field: str) -> None:
    """A flipped bit that makes a record look longer than the file (or fail its
    checksum) in the tail looks like a torn write — but a torn write has nothing
    valid after it. Acknowledged records after the damage must survive."""
    async with opened(tmp_path) as engine:
        for i in range(10):
            await engine.append(STREAM, make_batch(i, 1, pad=10))
    (segment,) = segments(tmp_path)
    offsets = dict((base, offset) for offset, base in record_offsets(segment))
    data = bytearray(segment.read_bytes())
    if field == "length":
        data[offsets[5] + 30] ^= 0x01  # +64 KiB: past the end of the file
    else:
        data[offsets[9] - 1] ^= 0x01  # the last byte of the record at 8
    segment.write_bytes(bytes(data))
    damaged = 5 if field == "length" else 8

    async with opened(tmp_path) as engine:
        with pytest.raises(CorruptRecord) as caught:
            await engine.append(STREAM, make_batch(10, 1))
        assert (caught.value.details["first"], caught.value.details["last"]) == (damaged, damaged)
        # The records after the damage still count and read: the head did not move back.
        assert await engine.head(STREAM) == 10
        assert [r.base for r in await engine.records(STREAM, 0)] == list(range(damaged))
        with pytest.raises(CorruptRecord) as caught:
            await read_all(engine)
        assert (caught.value.details["first"], caught.value.details["last"]) == (damaged, damaged)
        assert [e.data["n"] for e in await read_all(engine, damaged + 1)] == list(
            range(damaged + 1, 10))
    assert segment.read_bytes() == bytes(data), "nothing was cut"
    report = check_data_dir(tmp_path)
    assert [(d.first, d.last) for d in report.damage] == [(damaged, damaged)]


# --- the index -------------------------------------------------------------------------


def damage_index(segment: Path, how: str) -> None:
    idx = segment.with_suffix(".idx")
    data = idx.read_bytes()
    if how == "deleted":
        idx.unlink()
    elif how == "truncated mid-entry":
        idx.write_bytes(data[: len(data) - INDEX_ENTRY.size // 2])
    elif how == "garbage":
        idx.write_bytes(bytes(range(256)) * 3)
    elif how == "zeros":
        idx.write_bytes(b"\0" * len(data))
    elif how == "last entry points into a record":
        entries = list(INDEX_ENTRY.iter_unpack(data))
        position, offset = entries[-1]
        entries[-1] = (position, offset + 7)
        idx.write_bytes(b"".join(INDEX_ENTRY.pack(*e) for e in entries))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["deleted", "truncated mid-entry", "garbage", "zeros",
                                 "last entry points into a record"])
async def test_a_damaged_index_is_rebuilt_on_reopen(tmp_path: Path, how: str) -> None:
    before = await fill(tmp_path)
    (segment,) = segments(tmp_path)
    assert len(segment.with_suffix(".idx").read_bytes()) >= 4 * INDEX_ENTRY.size
    damage_index(segment, how)

    async with opened(tmp_path) as engine:
        assert await engine.head(STREAM) == 120
        assert summary(await read_all(engine)) == before
        for start in (0, 1, 37, 60, 99, 119):  # reads from anywhere use the index
            assert summary(await read_all(engine, start)) == before[start:]
        assert (await engine.append(STREAM, make_batch(120, 1))).first == 120
    assert_index_points_at_records(segment)
    assert_clean(tmp_path)


async def test_deleted_indexes_of_sealed_segments_are_not_needed(tmp_path: Path) -> None:
    before = await fill(tmp_path, segment_bytes=4096)
    for segment in segments(tmp_path):
        segment.with_suffix(".idx").unlink()
    async with opened(tmp_path, 4096) as engine:
        for start in (0, 5, 50, 119):
            assert summary(await read_all(engine, start)) == before[start:]
    assert_clean(tmp_path)


async def test_check_finds_a_wrong_entry_in_a_sealed_index_and_repair_rewrites_it(
    tmp_path: Path
) -> None:
    before = await fill(tmp_path, batches=100, segment_bytes=16 * 1024)
    sealed = segments(tmp_path)[0]
    assert len(segments(tmp_path)) > 1
    entries = list(INDEX_ENTRY.iter_unpack(sealed.with_suffix(".idx").read_bytes()))
    assert len(entries) >= 2
    position, offset = entries[1]
    entries[1] = (position, offset + 1)
    sealed.with_suffix(".idx").write_bytes(b"".join(INDEX_ENTRY.pack(*e) for e in entries))

    report = check_data_dir(tmp_path)
    assert not report.clean and not report.damage
    assert len(report.index_problems) == 1 and sealed.with_suffix(".idx").name in \
        report.index_problems[0]
    check_data_dir(tmp_path, repair=True)
    assert_clean(tmp_path)
    assert_index_points_at_records(sealed)
    async with opened(tmp_path, 16 * 1024) as engine:
        for start in (0, position, position + 1, 150):
            assert summary(await read_all(engine, start)) == before[start:]


# --- the lock --------------------------------------------------------------------------


async def test_a_second_engine_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    async with opened(tmp_path) as first:
        await first.append(STREAM, make_batch(0, 1))
        second = FilesEngine(FilesConfig(tmp_path))
        with pytest.raises(StorageUnavailable) as caught:
            await second.open()
        assert "in use" in caught.value.message
        assert caught.value.status == 503
        with pytest.raises(StorageUnavailable):
            check_data_dir(tmp_path, repair=True)
        assert await first.head(STREAM) == 1, "the first engine is unharmed"
        await first.append(STREAM, make_batch(1, 1))
    async with opened(tmp_path) as again:  # released on close
        assert await again.head(STREAM) == 2


# --- a crash during a segment roll -----------------------------------------------------


@pytest.mark.parametrize("with_index", [False, True])
async def test_an_empty_last_segment_is_tolerated(tmp_path: Path, with_index: bool) -> None:
    before = await fill(tmp_path, segment_bytes=4096)
    directory = tmp_path / "streams" / STREAM
    empty = directory / f"{120:020d}.log"
    assert not empty.exists()
    empty.touch()
    if with_index:
        empty.with_suffix(".idx").touch()

    async with opened(tmp_path, 4096) as engine:
        assert await engine.head(STREAM) == 120
        assert summary(await read_all(engine)) == before
        for start in (0, 119, 120):
            assert summary(await read_all(engine, start)) == before[start:]
        result = await engine.append(STREAM, make_batch(120, 2))
        assert (result.first, result.head) == (120, 122)
        assert [e.data["n"] for e in await read_all(engine, 118)] == [118, 119, 120, 121]
    assert empty.stat().st_size > 0, "the empty segment was used"
    assert_clean(tmp_path)


# --- a failed write ----------------------------------------------------------------------


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Make the kernel refuse to grow any file of this process beyond ``limit`` bytes
    (EFBIG instead of the default SIGXFSZ). The soft limit only: it is restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE and SIGXFSZ")
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")
async def test_a_failed_write_fails_the_appends_and_leaves_no_trace(tmp_path: Path) -> None:
    before = await fill(tmp_path, batches=10)
    (segment,) = segments(tmp_path)
    async with opened(tmp_path) as engine:
        size = segment.stat().st_size
        with file_size_limit(size + 100):
            # one group: a batch too large to fit, and one queued behind it
            results = await asyncio.gather(
                engine.append(STREAM, make_batch(20, 5, pad=400)),
                engine.append(STREAM, make_batch(25, 1, pad=0)),
                return_exceptions=True)
        for result in results:
            assert isinstance(result, ServerError), result
            assert result.code == "storage_error"
            assert "stream orders" in result.message
        assert segment.stat().st_size == size, "cut back to the last fsync"
        assert await engine.head(STREAM) == 20

        result_ok = await engine.append(STREAM, make_batch(20, 2))
        assert (result_ok.first, result_ok.head) == (20, 22), "no position was skipped"
        events = await read_all(engine)
        assert summary(events[:20]) == before
        assert [e.data["n"] for e in events[20:]] == [20, 21]
    assert_clean(tmp_path)
    async with opened(tmp_path) as engine:
        assert await engine.head(STREAM) == 22


# --- damage in the middle of a segment -------------------------------------------------


async def test_mid_segment_damage_names_the_range_and_later_positions_still_read(
    tmp_path: Path
) -> None:
    before = await fill(tmp_path)  # 60 records of 2 events, one segment
    (segment,) = segments(tmp_path)
    entries = list(INDEX_ENTRY.iter_unpack(segment.with_suffix(".idx").read_bytes()))
    indexed = [position for position, _ in entries]
    assert len(indexed) >= 4, indexed
    offsets = dict((base, offset) for offset, base in record_offsets(segment))
    # damage the record holding position 30 (between two index entries)
    assert indexed[1] < 30 < indexed[2], indexed
    data = bytearray(segment.read_bytes())
    data[offsets[30] + 50] ^= 0x01
    segment.write_bytes(bytes(data))

    async with opened(tmp_path) as engine:
        assert await engine.head(STREAM) == 120, "the tail is intact: the stream opens"
        for start in (30, 31, indexed[1] + 1):
            with pytest.raises(CorruptRecord) as caught:
                await read_all(engine, start)
            error = caught.value
            # exactly the damaged record's positions, as `herald check` reports them
            assert (error.details["first"], error.details["last"]) == (30, 31)
            assert "positions 30…31" in error.message
            assert error.code == "corrupt_record"
        # right after the damaged record (before the next index entry: the read steps
        # over the damage to the intact record that follows it), and further on
        for start in (32, 33, indexed[2] - 1, indexed[2], indexed[2] + 1, 119):
            assert summary(await read_all(engine, start)) == before[start:]
        # the records before the damage are served up to it
        records = await engine.records(STREAM, 0, max_bytes=100)
        assert records and records[0].base == 0

    report = check_data_dir(tmp_path)
    assert [(d.first, d.last) for d in report.damage] == [(30, 31)]
    assert "checksum" in report.damage[0].reason
    assert INDEX_INTERVAL_BYTES == 4096
