"""Bit rot, for a real ``herald serve`` and ``herald check``: damage is named, never
served, and everything else still reads.

One data directory, one stream per kind of damage (segments of 8 KiB, so each stream
has sealed segments and an active one), bytes flipped while Herald is stopped:

* in the body, the base position, the length and the magic of a record in the
  middle of a sealed segment; in the last record of a sealed segment; in two records
  of one stream; in the middle of the active segment, and near its end (where the
  open scans, so appends are refused);
* in index entries (of a sealed and of the active segment), in a stream whose
  records are intact.

What this proves:

* ``herald check`` exits 1 and names every damaged range — exactly the positions of
  the damaged record — and every damaged index, and nothing in the intact streams;
* the API answers reads of a damaged range with 500 ``corrupt_record`` naming the
  same range (JSON and SSE alike), never with data; every event before and after the
  range reads back exactly as it was appended; a JSON page from before the damage
  stops at it (``next`` is its first position); a subscription delivers the events
  before it and then fails with the code;
* a damaged index never changes an answer; ``check --repair`` rewrites it;
* appends to a stream whose damage lies within its dedup window (here: all of them)
  are refused with ``corrupt_record`` saying why; the intact stream takes appends.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import ssl
import struct
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import herald
from herald import cli, codec

from ..conftest import ServerProcess
from .faults import check, read_all

SEGMENT_BYTES = 8192
BATCHES, PER_BATCH = 40, 4
INDEX_ENTRY = struct.Struct("<QQ")


def records(segment: Path) -> list[tuple[int, codec.Record]]:
    data = segment.read_bytes()
    out, offset = [], 0
    while offset < len(data):
        record = codec.decode_record_at(data, offset)
        assert record is not None
        out.append((offset, record))
        offset += len(record.raw)
    return out


def segments(data: Path, stream: str) -> list[Path]:
    return sorted((data / "streams" / stream).glob("*.log"))


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def span(record: codec.Record) -> tuple[int, int]:
    return record.base, record.end - 1


def in_middle_of_sealed(data: Path, stream: str, field_offset: int) -> list[tuple[int, int]]:
    segment = segments(data, stream)[1]
    offset, record = records(segment)[2]
    flip(segment, offset + field_offset)
    return [span(record)]


def last_of_sealed(data: Path, stream: str) -> list[tuple[int, int]]:
    segment = segments(data, stream)[2]
    offset, record = records(segment)[-1]
    flip(segment, offset + 50)
    return [span(record)]


def two_records(data: Path, stream: str) -> list[tuple[int, int]]:
    ranges = []
    for i in (0, 3):
        segment = segments(data, stream)[i]
        offset, record = records(segment)[1]
        flip(segment, offset + 60)
        ranges.append(span(record))
    return ranges


def active(data: Path, stream: str, which: int) -> list[tuple[int, int]]:
    segment = segments(data, stream)[-1]
    found = records(segment)
    assert len(found) >= 4, "the active segment has records before and after"
    offset, record = found[which]
    flip(segment, offset + 45)
    return [span(record)]


def indexes(data: Path, stream: str) -> list[tuple[int, int]]:
    # A sealed segment's second entry; the active segment's first (not its last: the
    # open checks that one and rebuilds the index if it is wrong).
    for segment, entry, delta in ((segments(data, stream)[1], 1, (1, 0)),
                                  (segments(data, stream)[-1], 0, (0, 3))):
        idx = segment.with_suffix(".idx")
        entries = list(INDEX_ENTRY.iter_unpack(idx.read_bytes()))
        assert len(entries) >= 2, entries
        position, offset = entries[entry]
        entries[entry] = (position + delta[0], offset + delta[1])  # plausible, and wrong
        idx.write_bytes(b"".join(INDEX_ENTRY.pack(*e) for e in entries))
    return []


DAMAGE = {
    "body": lambda data, s: in_middle_of_sealed(data, s, 50),
    "base": lambda data, s: in_middle_of_sealed(data, s, 8),
    "length": lambda data, s: in_middle_of_sealed(data, s, 28),
    "magic": lambda data, s: in_middle_of_sealed(data, s, 1),
    "sealed-end": last_of_sealed,
    "twice": two_records,
    "active-middle": lambda data, s: active(data, s, 1),
    "active-end": lambda data, s: active(data, s, -2),
    "index": indexes,
}


@dataclass
class Damaged:
    data: Path
    server: ServerProcess
    sent: dict[str, list[dict[str, Any]]]  # per stream, every event appended
    ranges: dict[str, list[tuple[int, int]]]
    check_output: str
    check_code: int


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("bitrot")
    config = root / "herald.toml"
    config.write_text(f"[storage]\nsegment_bytes = {SEGMENT_BYTES}\n")
    data = root / "data"
    server = ServerProcess(data=data, args=["--config", str(config)]).start()
    sent: dict[str, list[dict[str, Any]]] = {}
    with server.client() as client:
        for stream in DAMAGE:
            events = sent[stream] = []
            b = 0
            # At least BATCHES, and then until the active segment holds five records.
            while b < BATCHES or len(records(segments(data, stream)[-1])) != 5:
                batch = [{"type": "Kept", "data": {"b": b, "i": i, "pad": "k" * 200},
                          "id": f"{stream}-{b}-{i}"} for i in range(PER_BATCH)]
                client.append(stream, batch)
                events += batch
                b += 1
    assert server.stop() == 0
    ranges = {stream: damage(data, stream) for stream, damage in DAMAGE.items()}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # capsys is not there for a module's fixture
        code = cli.main(["check", "--data", str(data)])
    server = ServerProcess(data=data, args=["--config", str(config)]).start()
    yield Damaged(data, server, sent, ranges, out.getvalue(), code)
    assert server.stop() == 0


def test_check_names_every_damaged_range_and_index(damaged: Damaged) -> None:
    assert damaged.check_code == 1, damaged.check_output
    lines = damaged.check_output.splitlines()
    reported = [line for line in lines if line.startswith("DAMAGED: ")]
    expected = [f"DAMAGED: stream {stream}: positions {first}…{last} damaged"
                for stream, ranges in damaged.ranges.items() for first, last in ranges]
    assert len(reported) == len(expected), damaged.check_output
    for line, prefix in zip(sorted(reported), sorted(expected), strict=True):
        assert line.startswith(prefix), (line, prefix)
    index_lines = [line for line in lines if line.startswith("INDEX: ")]
    assert len(index_lines) == 2 and all("stream index:" in line for line in index_lines)
    assert lines[-1].endswith("DAMAGED")


def sse_status(server: ServerProcess, stream: str, start: int) -> tuple[int, dict[str, Any]]:
    query = urllib.parse.urlencode({"from": start, "follow": "false"})
    request = urllib.request.Request(
        f"{server.url}/v1/streams/{stream}/events?{query}",
        headers={"Authorization": f"Bearer {server.token}", "Accept": "text/event-stream"})
    context = ssl.create_default_context(cafile=server.ca)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, {}
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def as_sent(events: list[herald.Event]) -> list[dict[str, Any]]:
    return [{"type": e.type, "data": e.data, "id": e.id} for e in events]


@pytest.mark.parametrize("stream", DAMAGE)
def test_the_api_never_serves_damage_and_serves_everything_else(damaged: Damaged,
                                                                 stream: str) -> None:
    sent, ranges = damaged.sent[stream], damaged.ranges[stream]
    head = len(sent)
    with damaged.server.client() as client:
        assert client.stream(stream).head == head
        bad = {p for first, last in ranges for p in range(first, last + 1)}
        for first, last in ranges:
            for start in sorted({first, (first + last) // 2, last}):
                with pytest.raises(herald.CorruptRecord) as caught:
                    client.read(stream, start=start)
                error = caught.value
                assert (error.code, error.status) == ("corrupt_record", 500)
                assert (error.details["first"], error.details["last"]) == (first, last)
                assert f"positions {first}…{last}" in error.message
                status, body = sse_status(damaged.server, stream, start)
                assert (status, body["error"]["code"]) == (500, "corrupt_record")
        # Every other position reads, exactly as sent: from anywhere outside a range,
        # a page up to the next damage (or the head).
        for start in range(0, head, 7):
            if start in bad:
                continue
            page = client.read(stream, start=start, limit=10_000)
            stop = min([first for first, _ in ranges if first > start] + [head])
            assert page.next == stop and page.head == head
            assert as_sent(page.events) == sent[start:stop]
        if not ranges:
            assert as_sent(read_all(client, stream)) == sent
        # A subscription: the events before the first damage, then the error.
        delivered: list[herald.Event] = []
        with pytest.raises(herald.CorruptRecord) if ranges else contextlib.nullcontext(), \
                client.subscribe(stream, 0, follow=False) as subscription:
            for event in subscription:
                delivered.append(event)
        assert as_sent(delivered) == sent[:min([first for first, _ in ranges] + [head])]

        # Appends: refused while damage lies within the dedup window, saying why.
        if ranges:
            with pytest.raises(herald.CorruptRecord) as caught:
                client.append(stream, [{"type": "New", "data": 1}])
            assert caught.value.details["first"] == ranges[0][0]
        else:
            assert client.append(stream, [{"type": "New", "data": 1}]).first == head


def test_repair_rewrites_damaged_indexes_and_leaves_damaged_records(
    damaged: Damaged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(damaged.data / "streams", copy / "streams")  # Herald runs on the original
    code, out = check(copy, capsys, "--repair")
    assert code == 1, out
    assert out.count("repaired: stream index: rewrote index") == 2, out
    code, out = check(copy, capsys)
    assert code == 1 and "INDEX:" not in out, out
    assert out.count("DAMAGED: ") == sum(len(r) for r in damaged.ranges.values()), out
