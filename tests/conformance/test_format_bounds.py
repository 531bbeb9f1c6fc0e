"""Every limit at its maximum, on every engine: what is acknowledged reads back.

The limits a node accepts are bounded by what the record format (and the engine)
can read back: ``hub.check_limits`` refuses the rest at start. Here each limit is
set to the largest value the hub accepts, a batch at that limit is appended, and it
is read back as every reader reads it — a page (the JSON form), the records (the
compact form, decoded as the client decodes them), after a reopen (recovery), and,
on the files engine, by the offline check. One byte or one event more is refused
before anything is acknowledged.
"""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from herald import codec
from herald.errors import ConfigError, TooLarge
from herald.hub import Hub
from herald.model import Limits

from .engines import EngineKit


def largest_limits(hub_engine_bound: int = codec.MAX_RECORD_BODY) -> Limits:
    biggest = hub_engine_bound - codec.BODY_OVERHEAD
    return Limits(max_batch_bytes=biggest, max_batch_events=codec.MAX_RECORD_COUNT,
                  max_event_bytes=biggest, max_read_events=codec.MAX_RECORD_COUNT)


def body_of_size(size: int) -> bytes:
    """One event whose request body is exactly ``size`` bytes."""
    shell = msgspec.json.encode([{"type": "Big", "data": ""}])
    return msgspec.json.encode([{"type": "Big", "data": "x" * (size - len(shell))}])


async def read_back(hub: Hub, stream: str) -> list[tuple[int, str, int]]:
    """(position, type, len(raw data)) of every event, read as records."""
    out: list[tuple[int, str, int]] = []
    position = 0
    while records := await hub.records(stream, position):
        for record in records:
            for event in codec.events_of(record, position):
                out.append((event.position, event.type, len(bytes(event.raw))))
            position = record.end
    return out


async def test_each_limit_at_its_maximum_reads_back(kit: EngineKit, tmp_path: object) -> None:
    limits = largest_limits()
    hub = await kit.open(limits)
    bound = hub.limits.max_batch_bytes
    # The most events one batch may hold, and the largest body one batch may be.
    many = msgspec.json.encode([{"type": "T", "data": i} for i in range(limits.max_batch_events)])
    assert (await hub.append_body("bounds", many)).head == limits.max_batch_events
    big = body_of_size(bound)
    assert len(big) == bound
    result = await hub.append_body("bounds", big)
    assert (result.first, result.head) == (limits.max_batch_events, limits.max_batch_events + 1)

    expected = [(i, "T", len(str(i))) for i in range(limits.max_batch_events)]
    expected.append((limits.max_batch_events, "Big", len(big) - len(b'[{"type":"Big","data":}]')))
    assert await read_back(hub, "bounds") == expected
    page = await hub.read("bounds", limits.max_batch_events - 1, 2)
    assert [(e.position, e.type) for e in page.events()] == [
        (limits.max_batch_events - 1, "T"), (limits.max_batch_events, "Big")]

    # One more byte, one more event: refused, nothing acknowledged.
    with pytest.raises(TooLarge) as too_big:
        await hub.append_body("bounds", body_of_size(bound + 1))
    assert too_big.value.code == "batch_too_large"
    more = msgspec.json.encode([{"type": "T", "data": 0}] * (limits.max_batch_events + 1))
    with pytest.raises(TooLarge):
        await hub.append_body("bounds", more)
    assert await hub.head("bounds") == limits.max_batch_events + 1

    # Recovery and a fresh engine read the same.
    await kit.close_all()
    reopened = await kit.open(limits)
    assert await reopened.head("bounds") == limits.max_batch_events + 1
    assert await read_back(reopened, "bounds") == expected
    # A batch the hub builds itself (a gatherer's) is held to the same bound.
    from herald.model import Batch, NewEvent
    events = msgspec.json.decode(body_of_size(bound + 1), type=list[NewEvent])
    with pytest.raises(TooLarge):
        await reopened.append("bounds", Batch(events))
    await kit.close_all()


def test_the_check_of_a_files_directory_at_the_bounds_is_clean(tmp_path: object) -> None:
    """The offline check reads what the writer wrote at the bounds (files engine)."""
    import asyncio
    from pathlib import Path

    from herald.engines.files import FilesConfig, FilesEngine
    from herald.engines.files.check import check_data_dir

    data = Path(str(tmp_path)) / "data"
    limits = largest_limits()

    async def fill() -> None:
        async with Hub(FilesEngine(FilesConfig(data, segment_bytes=64 * 1024)), limits) as hub:
            await hub.append_body("bounds", body_of_size(limits.max_batch_bytes))
            await hub.append_body("bounds", msgspec.json.encode(
                [{"type": "T", "data": i} for i in range(limits.max_batch_events)]))

    asyncio.run(fill())
    report = check_data_dir(data)
    assert report.clean, report


@pytest.mark.parametrize("key, over", [
    ("max_batch_bytes", codec.MAX_RECORD_BODY - codec.BODY_OVERHEAD + 1),
    ("max_batch_events", codec.MAX_RECORD_COUNT + 1),
])
async def test_limits_beyond_the_format_are_refused_at_start(
        kit: EngineKit, key: str, over: int) -> None:
    try:
        limits = dataclasses.replace(Limits(), **{key: over})
    except ValueError:
        return  # refused even earlier, by Limits itself
    with pytest.raises(ConfigError) as refused:
        await kit.open(limits)
    assert f"[limits] {key}" in str(refused.value)


def test_the_body_overhead_is_what_encode_batch_adds() -> None:
    from herald.model import Batch, new_id_prefix
    events = b'[{"type":"T"}]'
    assert len(codec.encode_batch(Batch([], events), new_id_prefix())) == (
        len(events) + codec.BODY_OVERHEAD)
