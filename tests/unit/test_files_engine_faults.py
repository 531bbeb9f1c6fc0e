"""The files engine under faults: a full disk at every step of an append, and damage
anywhere in a segment or its index. Real files, real filesystems (a small tmpfs the
test mounts, so the disk really fills), no mocks.

What this proves:

* **an index write that fails after the fsync** (the log had room, the index file
  needed a new page) still acknowledges the append: its records are durable. The
  entry is written at a later sync; nothing is ever written twice at one position;
* **a segment that cannot be created** (no inode left) fails only the appends that
  needed it — those before it in the same group commit are durable and acknowledged —
  and no later record is written to the sealed segment, so no segment can start at a
  position inside the one before it; a half-created segment is taken over later;
* **a full disk on restart** (the index cannot be rewritten) does not keep the
  stream from opening and reading;
* **a retry waiting for an append that then fails** is not answered with the
  positions other events took since: it becomes a new append;
* **damage anywhere in a record** (each header field, the body) and a missing record:
  reads and ``herald check`` name the same range — exactly the damaged record's
  positions — and every position outside it reads, including those between the
  damage and the next index entry; in a sealed segment the range runs to the end of
  the segment when nothing intact follows;
* **a wrong but plausible index entry** never makes a read fail or serve wrong data.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from herald.engines.files import check_data_dir
from herald.errors import CorruptRecord, ServerError, StorageFull
from herald.hub import Hub
from herald.model import Limits

from ..conftest import PAGE, fill_up, small_filesystem
from .test_files_engine import (
    INDEX_ENTRY,
    STREAM,
    assert_clean,
    assert_index_points_at_records,
    file_size_limit,
    fill,
    make_batch,
    opened,
    read_all,
    record_offsets,
    segments,
    summary,
)

# --- a full disk -------------------------------------------------------------------------


async def append_until_full(engine: Hub, pad: int = 100) -> int:
    """Append one-event batches until the disk is full; return the head."""
    for _ in range(10_000):
        head = await engine.head(STREAM)
        try:
            result = await engine.append(STREAM, make_batch(head, 1, pad=pad))
        except StorageFull as exc:
            assert exc.status == 507 and exc.code == "storage_full"
            assert await engine.head(STREAM) == head, "a refused append moved the head"
            return head
        assert result.first == head
    raise AssertionError("the disk never filled")


async def test_an_index_write_that_fails_after_the_fsync_still_acknowledges(
    tmp_path: Path
) -> None:
    with small_filesystem(tmp_path / "fs", 1 << 20) as fs:
        root = fs / "data"
        async with opened(root) as engine:
            # One free page: a new stream's first record takes it for the log, and
            # the index entry that follows the fsync finds none.
            filler = fill_up(fs, leave=PAGE)
            result = await engine.append(STREAM, make_batch(0, 2))
            assert (result.first, result.head) == (0, 2), "the records are durable"
            (segment,) = segments(root)
            assert segment.with_suffix(".idx").stat().st_size == 0, "the index write failed"
            # Later records still fit in the log's page; then the disk is full.
            head = await append_until_full(engine)
            assert head > 2
            filler.unlink()
            result = await engine.append(STREAM, make_batch(head, 1))
            assert result.first == head, "no position was skipped or reused"
            events = await read_all(engine)
            assert [e.data["n"] for e in events] == list(range(head + 1))
        assert_index_points_at_records(segment)
        assert_clean(root)
        async with opened(root) as engine:
            assert [e.position for e in await read_all(engine)] == list(range(head + 1))


def use_up_inodes(fs: Path) -> list[Path]:
    """Create empty files until the filesystem has no inode left."""
    made: list[Path] = []
    while True:
        path = fs / f"inode-{len(made)}"
        try:
            path.touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return made
        made.append(path)


async def test_a_segment_that_cannot_be_created_fails_only_what_needed_it(
    tmp_path: Path
) -> None:
    segment_bytes = 4096
    big = make_batch(0, 1, pad=850)  # 975-byte records: four to a segment, and room left
    with small_filesystem(tmp_path / "fs", 1 << 20, inodes=64) as fs:
        root = fs / "data"
        async with opened(root, segment_bytes) as engine:
            for _ in range(3):
                await engine.append(STREAM, big)
            (first_segment,) = segments(root)
            inodes = use_up_inodes(fs)
            # One group commit: a record that fits the segment, then one that rolls it.
            fits, rolls = await asyncio.gather(
                engine.append(STREAM, big), engine.append(STREAM, make_batch(4, 2, pad=850)),
                return_exceptions=True)
            assert not isinstance(fits, BaseException), fits
            assert (fits.first, fits.head) == (3, 4), "sealed before the roll: acknowledged"
            assert isinstance(rolls, StorageFull), rolls
            sealed_size = first_segment.stat().st_size
            # A small record would fit the sealed segment, but it is sealed: the new
            # segment is still needed, and still cannot be created.
            with pytest.raises(StorageFull):
                await engine.append(STREAM, make_batch(4, 1, pad=0))
            assert first_segment.stat().st_size == sealed_size
            # One inode: the new log is created, its index is not.
            inodes.pop().unlink()
            with pytest.raises(StorageFull):
                await engine.append(STREAM, make_batch(4, 1, pad=0))
            stray = root / "streams" / STREAM / f"{4:020d}.log"
            assert stray.exists() and stray.stat().st_size == 0
        # A restart now finds an empty last segment, at the head: what a crash during
        # a roll leaves too.
        async with opened(root, segment_bytes) as engine:
            assert await engine.head(STREAM) == 4
            inodes.pop().unlink()
            result = await engine.append(STREAM, make_batch(4, 1, pad=0))
            assert (result.first, result.head) == (4, 5)
            assert [e.position for e in await read_all(engine)] == list(range(5))
        assert [s.name for s in segments(root)] == [f"{0:020d}.log", f"{4:020d}.log"]
        assert_clean(root)


async def test_a_full_disk_does_not_keep_a_stream_from_opening(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", 1 << 20) as fs:
        root = fs / "data"
        before = await fill(root)
        (segment,) = segments(root)
        segment.with_suffix(".idx").unlink()  # recovery must write it anew…
        filler = fill_up(fs, leave=0)  # …and cannot
        async with opened(root) as engine:
            assert await engine.head(STREAM) == 120
            for start in (0, 61, 119):
                assert summary(await read_all(engine, start)) == before[start:]
            filler.unlink()
            assert (await engine.append(STREAM, make_batch(120, 1))).first == 120
        assert_clean(root)
        async with opened(root) as engine:
            assert summary(await read_all(engine))[:120] == before


async def test_a_retry_waiting_for_an_append_that_fails_becomes_a_new_append(
    tmp_path: Path
) -> None:
    await fill(tmp_path, batches=10)
    (segment,) = segments(tmp_path)
    async with opened(tmp_path) as engine:
        await engine.append(STREAM, make_batch(20, 1, ids=True))  # the window is loaded
        doomed = make_batch(21, 5, pad=400, ids=True)
        with file_size_limit(segment.stat().st_size + 100):
            # The retry arrives while the first attempt is queued: it waits for it.
            first, retry = await asyncio.wait_for(asyncio.gather(
                engine.append(STREAM, doomed), engine.append(STREAM, doomed),
                return_exceptions=True), 10)
        for result in (first, retry):
            assert isinstance(result, ServerError) and result.code == "storage_error", result
        other = await engine.append(STREAM, make_batch(21, 1))
        assert other.first == 21
        again = await engine.append(STREAM, doomed)
        assert (again.first, again.appended, again.duplicates) == (22, 5, [])
        assert [e.id for e in (await read_all(engine))[22:]] == [f"id-{n}" for n in range(21, 26)]
    assert_clean(tmp_path)


# --- damage ------------------------------------------------------------------------------

# Where a flipped bit lands in the record holding positions 30 and 31.
FIELDS = {"magic": 0, "version": 4, "flags": 5, "base": 8, "count": 16, "time": 20,
          "length": 28, "crc": 32, "body": 50}


async def assert_damaged(engine: Hub, first: int, last: int,
                         before: list[tuple[int, str, object]]) -> None:
    """Reads of first…last fail naming exactly that range; every other position reads."""
    for start in {first, (first + last) // 2, last}:
        with pytest.raises(CorruptRecord) as caught:
            await engine.records(STREAM, start)
        error = caught.value
        assert (error.details["first"], error.details["last"]) == (first, last), error.message
        assert error.code == "corrupt_record" and error.status == 500
    with pytest.raises(CorruptRecord):
        await read_all(engine)
    up_to = [r.base for r in await engine.records(STREAM, 0)]
    assert up_to and up_to[-1] < first, "the records before the damage are served"
    for start in range(0, first):
        records = await engine.records(STREAM, start)
        assert records[0].base <= start < records[-1].end <= first
    for start in range(last + 1, len(before)):
        assert summary(await read_all(engine, start)) == before[start:]


@pytest.mark.parametrize("field", FIELDS)
async def test_reads_and_check_name_the_same_damaged_range(tmp_path: Path, field: str) -> None:
    before = await fill(tmp_path)  # 60 records of 2 events, one segment
    (segment,) = segments(tmp_path)
    offsets = {base: offset for offset, base in record_offsets(segment)}
    data = bytearray(segment.read_bytes())
    data[offsets[30] + FIELDS[field]] ^= 0x01
    segment.write_bytes(bytes(data))

    report = check_data_dir(tmp_path)
    assert [(d.first, d.last) for d in report.damage] == [(30, 31)], report.damage
    async with opened(tmp_path) as engine:
        assert await engine.head(STREAM) == 120
        await assert_damaged(engine, 30, 31, before)


async def test_a_missing_record_is_named_as_the_positions_it_held(tmp_path: Path) -> None:
    before = await fill(tmp_path)
    (segment,) = segments(tmp_path)
    offsets = {base: offset for offset, base in record_offsets(segment)}
    data = segment.read_bytes()
    segment.write_bytes(data[:offsets[30]] + data[offsets[32]:])  # cut out 30…31

    report = check_data_dir(tmp_path)
    assert [(d.first, d.last) for d in report.damage] == [(30, 31)]
    assert "record base 32, expected 30" in report.damage[0].reason
    async with opened(tmp_path) as engine:
        await assert_damaged(engine, 30, 31, before)


async def test_damage_in_the_tail_refuses_appends_and_the_rest_still_reads(
    tmp_path: Path
) -> None:
    """The last records are scanned on open: damage there, with intact records after
    it, keeps the head where it was and refuses appends."""
    before = await fill(tmp_path)
    (segment,) = segments(tmp_path)
    offsets = {base: offset for offset, base in record_offsets(segment)}
    data = bytearray(segment.read_bytes())
    data[offsets[116] + 40] ^= 0x01
    segment.write_bytes(bytes(data))
    async with opened(tmp_path) as engine:
        assert await engine.head(STREAM) == 120
        with pytest.raises(CorruptRecord) as caught:
            await engine.append(STREAM, make_batch(120, 1))
        assert (caught.value.details["first"], caught.value.details["last"]) == (116, 117)
        await assert_damaged(engine, 116, 117, before)
    assert segment.read_bytes() == bytes(data), "nothing was cut"


async def test_damage_at_the_end_of_a_sealed_segment_runs_to_the_next_segment(
    tmp_path: Path
) -> None:
    before = await fill(tmp_path, segment_bytes=4096)
    sealed = segments(tmp_path)[1]
    next_base = int(segments(tmp_path)[2].stem)
    offset, base = record_offsets(sealed)[-1]
    data = bytearray(sealed.read_bytes())
    data[offset + 40] ^= 0x01
    sealed.write_bytes(bytes(data))
    assert next_base - base == 2

    report = check_data_dir(tmp_path)
    assert [(d.first, d.last) for d in report.damage] == [(base, next_base - 1)]
    async with opened(tmp_path, 4096) as engine:
        await assert_damaged(engine, base, next_base - 1, before)
        # The dedup window (the last 100,000 events) cannot be rebuilt: appends are
        # refused, as a retry of an event in the damaged record would go unnoticed.
        with pytest.raises(CorruptRecord) as caught:
            await engine.append(STREAM, make_batch(120, 1))
        assert "dedup window" in caught.value.message
        assert (caught.value.details["first"], caught.value.details["last"]) == (
            base, next_base - 1)
    # With the damage older than the window, appends go on.
    async with opened(tmp_path, 4096, Limits(dedup_window=10)) as engine:
        assert (await engine.append(STREAM, make_batch(120, 1))).first == 120


@pytest.mark.parametrize("entry_field", ["position", "offset"])
@pytest.mark.parametrize("sealed", [False, True], ids=["active", "sealed"])
async def test_a_wrong_index_entry_never_fails_a_read(tmp_path: Path, entry_field: str,
                                                      sealed: bool) -> None:
    segment_bytes = 8192 if sealed else 1 << 20
    before = await fill(tmp_path, segment_bytes=segment_bytes)
    segment = segments(tmp_path)[0]
    idx = segment.with_suffix(".idx")
    entries = list(INDEX_ENTRY.iter_unpack(idx.read_bytes()))
    assert len(entries) >= 2 + (not sealed)  # not the last: recovery checks that one
    position, offset = entries[1]
    # Still plausible (increasing, inside the log), so it is loaded and used.
    entries[1] = (position + 1, offset) if entry_field == "position" else (position, offset + 1)
    idx.write_bytes(b"".join(INDEX_ENTRY.pack(*e) for e in entries))

    async with opened(tmp_path, segment_bytes) as engine:
        for start in range(0, 120):
            assert summary(await read_all(engine, start))[:3] == before[start:start + 3]
        assert summary(await read_all(engine)) == before
    report = check_data_dir(tmp_path)
    assert not report.damage and len(report.index_problems) == 1
    check_data_dir(tmp_path, repair=True)
    assert_clean(tmp_path)

