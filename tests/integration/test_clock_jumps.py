"""The wall clock jumps, back and forward, under a running Herald: nothing is
reordered or refused, and event times never go backwards within a stream.

Herald runs under libfaketime (Debian's ``faketime``), whose offset is read from a
file at every clock reading (``FAKETIME_TIMESTAMP_FILE``, ``FAKETIME_NO_CACHE=1``):
the test rewrites the file to jump Herald's clock mid-run. Only the wall clock jumps
(``FAKETIME_DONT_FAKE_MONOTONIC=1``), as with a clock stepped by NTP or by hand; the
monotonic clock that asyncio's timers use does not.

What this proves: with the clock going to a day back, ten years back, a year ahead,
back to the present and so on, appends of every kind (concurrent ones sharing a group
commit, with ``expected_head``, with ids and their retries) are all accepted; the
stream's positions stay dense and in the order of acknowledgement; event ``time``
never decreases along the stream (a clock that went back gives the last time again,
``max(now, last)``) and follows the clock when it goes ahead; the same holds across a
restart with the clock set ten years back; ``herald check`` is clean.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import herald

from ..conftest import ServerProcess, require_tool, unavailable
from .faults import Acked, assert_check_clean, assert_reads_back, read_all

STREAM = "ticks"
# Every offset the clock visits, in order; 0 is the real time.
JUMPS = ["-1d", "-3650d", "+365d", "+0", "-30d", "+3650d", "-2d"]


def libfaketime() -> str:
    require_tool("faketime")
    # The multithreaded flavour: Herald writes from worker threads.
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        unavailable("libfaketimeMT.so.1 is not installed (`make system-tools` installs it)")
    return found[0]


def faked(clock: Path) -> dict[str, str]:
    return {"LD_PRELOAD": libfaketime(), "FAKETIME_TIMESTAMP_FILE": str(clock),
            "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def set_clock(clock: Path, offset: str) -> None:
    clock.write_text(offset + "\n")


async def append_round(server: ServerProcess, acked: Acked, tag: str) -> None:
    """Appends of every kind; each must be accepted."""
    async with server.async_client() as client:
        head = (await client.stream(STREAM)).head if acked.count(STREAM) else 0
        events: list[dict[str, Any]] = [{"type": "Conditional", "data": {"tag": tag}}]
        result = await client.append(STREAM, events, expected_head=head)
        acked.add(STREAM, result.first, events)
        batches = [[{"type": "Concurrent", "data": {"tag": tag, "w": w, "i": i}}
                    for i in range(w + 1)] for w in range(4)]
        results = await asyncio.gather(*(client.append(STREAM, b) for b in batches))
        for b, r in zip(batches, results, strict=True):
            acked.add(STREAM, r.first, b)
        with_ids = [{"type": "WithId", "data": {"tag": tag}, "id": f"{tag}-{i}"} for i in range(2)]
        first = await client.append(STREAM, with_ids)
        acked.add(STREAM, first.first, with_ids)
        retry = await client.append(STREAM, with_ids)
        assert (retry.appended, retry.first) == (0, first.first)


def assert_times(events: list[herald.Event]) -> None:
    times = [e.time for e in events]
    assert all(a <= b for a, b in itertools.pairwise(times)), "time went backwards"


@pytest.mark.slow
def test_clock_jumps_reorder_and_refuse_nothing(
    server_factory: type[ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = tmp_path / "clock"
    set_clock(clock, "+0")
    server = server_factory(env=faked(clock)).start()
    acked = Acked()
    asyncio.run(append_round(server, acked, "start"))
    with server.client() as client:
        start_time = read_all(client, STREAM)[-1].time
    for offset in JUMPS:
        set_clock(clock, offset)
        asyncio.run(append_round(server, acked, offset))
    with server.client() as client:
        events = assert_reads_back(client, acked, STREAM)
        assert_times(events)
        by_tag = {e.data["tag"]: e.time for e in events}  # each round's last time
        # Back: the last time again, until the clock passes it.
        assert by_tag["-1d"] == by_tag["-3650d"] == by_tag["start"]
        # Ahead: seen at once; back after it: that time again.
        assert by_tag["+365d"] - start_time > timedelta(days=364)
        assert by_tag["+0"] == by_tag["-30d"] == by_tag["+365d"]
        assert by_tag["+3650d"] - start_time > timedelta(days=3649)
        assert by_tag["-2d"] == by_tag["+3650d"]
        last = events[-1].time
    assert server.stop() == 0

    # A restart with the clock ten years back: times go on from the last one.
    set_clock(clock, "-3650d")
    restarted = server_factory(data=server.data, env=faked(clock)).start()
    asyncio.run(append_round(restarted, acked, "restarted"))
    with restarted.client() as client:
        events = assert_reads_back(client, acked, STREAM)
        assert_times(events)
        assert events[-1].time == last
    assert restarted.stop() == 0
    assert "Traceback" not in server.log + restarted.log
    assert_check_clean(server.data, capsys)
    assert last > datetime.now(UTC) + timedelta(days=3000), "the clock really jumped"
