"""The ``herald`` command, run in-process through ``herald.cli.main``.

What this proves:

* ``publish`` appends JSON lines from a file or stdin, in batches; ``tail --from N``
  prints one JSON line per event with the right positions; ``streams --json``;
  client failures exit 2 with Herald's error code, never a traceback;
* ``check`` on a clean data directory exits 0 and says "clean";
* a torn tail (a crash in the middle of writing the last record) makes ``check``
  exit non-zero naming the stream and the position; ``check --repair`` cuts it,
  ``check`` is then clean, and a server on that directory serves every
  acknowledged event and appends again;
* a byte flipped inside an early record makes ``check`` report the damaged position
  range; reading that range through the API fails with ``corrupt_record``, while the
  events before and after it are still served; a subscription (Python client, SSE,
  ``herald tail``) delivers the events before the damage, then fails — it never hangs
  and never ends as if the stream were complete.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import herald
from herald import codec
from herald.cli import main

from ..conftest import ServerProcess

TIMEOUT = 60.0


def connection(server: ServerProcess) -> list[str]:
    """The client flags that reach ``server`` (token and CA from its data directory)."""
    return ["--url", server.url, "--data", str(server.data)]


def json_lines(events: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def batch(kind: str, count: int, **data: Any) -> list[dict[str, Any]]:
    return [{"type": kind, "data": {**data, "i": i}} for i in range(count)]


def only_segment(data: Path, stream: str) -> Path:
    segments = sorted((data / "streams" / stream).glob("*.log"))
    assert len(segments) == 1, segments
    return segments[0]


def records_of(segment: Path) -> list[tuple[int, codec.Record]]:
    """(byte offset, record) of every record in a segment file."""
    data = segment.read_bytes()
    out: list[tuple[int, codec.Record]] = []
    offset = 0
    while offset < len(data):
        record = codec.decode_record_at(data, offset)
        assert record is not None
        out.append((offset, record))
        offset += len(record.raw)
    return out


def tail(server: ServerProcess, stream: str, capsys: pytest.CaptureFixture[str],
         *flags: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["tail", stream, *flags, *connection(server)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def check(data: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["check", "--data", str(data), *flags])
    return code, capsys.readouterr().out


# --- publish, tail, streams ------------------------------------------------------------


def test_publish_a_file_then_tail_it(server: ServerProcess, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    events = [{"type": "ItemAdded", "data": {"sku": f"S{i}"}} for i in range(5)]
    events[3]["id"] = "fourth"
    events[4]["meta"] = {"user": "ann"}
    source = tmp_path / "events.jsonl"
    source.write_text(json_lines(events[:2]) + "\n" + json_lines(events[2:]))  # a blank line

    assert main(["publish", "inventory", str(source), "--batch", "2", *connection(server)]) == 0
    assert "published 5 events to inventory" in capsys.readouterr().err

    lines = tail(server, "inventory", capsys, "--from", "2")
    assert [line["position"] for line in lines] == [2, 3, 4]
    assert [line["data"] for line in lines] == [e["data"] for e in events[2:]]
    assert lines[1]["id"] == "fourth"
    assert (lines[2]["meta"], lines[0]["meta"]) == ({"user": "ann"}, {})
    assert all(set(line) == {"position", "id", "type", "data", "meta", "time"} for line in lines)
    assert [line["position"] for line in tail(server, "inventory", capsys)] == [0, 1, 2, 3, 4]
    assert tail(server, "inventory", capsys, "--from", "5") == []

    # --batch 2: three atomic batches (records), at 0, 2 and 4
    segment = only_segment(server.data, "inventory")
    assert [(r.base, r.count) for _, r in records_of(segment)] == [(0, 2), (2, 2), (4, 1)]


@pytest.mark.parametrize("file_argument", [[], ["-"]])
def test_publish_from_stdin(server: ServerProcess, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str], file_argument: list[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json_lines(batch("Piped", 3))))
    assert main(["publish", "piped", *file_argument, *connection(server)]) == 0
    assert "published 3 events to piped" in capsys.readouterr().err
    assert [(line["position"], line["type"]) for line in tail(server, "piped", capsys)] == [
        (0, "Piped"), (1, "Piped"), (2, "Piped")]


def test_publish_with_expected_head_chains(server: ServerProcess, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text(json_lines(batch("Chained", 5)))
    flags = ["--batch", "2", *connection(server)]
    assert main(["publish", "chain", str(source), "--expected-head", "0", *flags]) == 0
    # stale now: refused with Herald's code, nothing appended
    assert main(["publish", "chain", str(source), "--expected-head", "0", *flags]) == 2
    assert "[expected_head_mismatch]" in capsys.readouterr().err
    assert main(["publish", "chain", str(source), "--expected-head", "5", *flags]) == 0
    assert len(tail(server, "chain", capsys)) == 10


def test_publish_refuses_a_bad_line_and_appends_nothing(
        server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for content, code in (('{"type": "a", "data": 1}\n{"type": \n', "invalid_json"),
                          ('{"type": "a", "data": 1}\n[1, 2]\n', "invalid_event"),
                          ('{"type": "a"}\n', "invalid_event")):
        source = tmp_path / "bad.jsonl"
        source.write_text(content)
        assert main(["publish", "careful", str(source), *connection(server)]) == 2
        error = capsys.readouterr().err
        assert f"[{code}]" in error and "Traceback" not in error
    with server.client() as client, pytest.raises(herald.NotFound):
        client.stream("careful")


def test_streams_json(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    with server.client() as client:
        client.append("sales", batch("Sold", 3))
        client.append("billing", batch("Billed", 1))
    capsys.readouterr()
    assert main(["streams", "--json", *connection(server)]) == 0
    streams = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["head"]) for s in streams] == [("billing", 1), ("sales", 3)]
    assert all(s["bytes"] > 0 for s in streams)


def test_client_failures_exit_2_with_the_code(server: ServerProcess,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["streams", "--token", "not-the-token", *connection(server)]) == 2
    assert "[invalid_token]" in capsys.readouterr().err
    assert main(["tail", "a b", *connection(server)]) == 2
    assert "[invalid_stream_name]" in capsys.readouterr().err
    stopped = server.url
    assert server.stop() == 0
    assert main(["streams", "--url", stopped, "--data", str(server.data)]) == 2
    error = capsys.readouterr().err
    assert "[connection_failed]" in error and "Traceback" not in error


# --- check -----------------------------------------------------------------------------------


def test_check_a_clean_data_dir(server: ServerProcess,
                                capsys: pytest.CaptureFixture[str]) -> None:
    with server.client() as client:
        for n in range(20):
            client.append("clean", batch("Fine", 5, n=n))
        client.append("other", batch("Fine", 1))
    assert server.stop() == 0
    code, out = check(server.data, capsys)
    assert code == 0, out
    assert "checked 2 streams, 2 segments, 21 records, 101 events" in out
    assert out.rstrip().endswith("clean")
    assert "DAMAGED" not in out


def _cut_inside_last_record(segment: Path, record: codec.Record, offset: int) -> None:
    os.truncate(segment, offset + len(record.raw) // 2)


def _append_bytes(segment: Path, data: bytes) -> None:
    with open(segment, "ab") as fh:
        fh.write(data)


# How a crash can leave the last record half-written. ``last`` is the last record on
# disk (at ``offset``) and ``head`` the position after it.
TEARS = {
    "the next record's header cut short":
        lambda seg, last, offset, head: _append_bytes(seg, _next_record(last, head)[:20]),
    "the next record's body cut short":
        lambda seg, last, offset, head: _append_bytes(seg, _next_record(last, head)[:60]),
    "zeros where the next record should be":
        lambda seg, last, offset, head: _append_bytes(seg, b"\0" * 4096),
    "the last record cut in half":
        lambda seg, last, offset, head: _cut_inside_last_record(seg, last, offset),
}


def _next_record(last: codec.Record, head: int) -> bytes:
    return codec.encode_record(head, last.count, last.time_us, bytes(last.body))


@pytest.mark.parametrize("tear", sorted(TEARS))
def test_check_and_repair_a_torn_tail(server_factory: type[ServerProcess], tear: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    server = server_factory().start()
    with server.client() as client:
        for n in range(6):
            client.append("torn", batch("Acked", 5, n=n))
        client.append("untouched", batch("Other", 2))
    assert server.stop() == 0
    segment = only_segment(server.data, "torn")
    offset, last = records_of(segment)[-1]
    TEARS[tear](segment, last, offset, 30)
    # Tearing the last record in half stands for the crash of its own write: that batch
    # was never acknowledged. Every other tear comes after all that was acknowledged.
    acknowledged = 25 if tear == "the last record cut in half" else 30

    code, out = check(server.data, capsys)
    assert code != 0, out
    damaged = [line for line in out.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == 1, out
    assert f"stream torn: positions from {acknowledged}" in damaged[0]
    assert "torn tail" in damaged[0]
    assert out.rstrip().endswith("DAMAGED")

    code, out = check(server.data, capsys, "--repair")
    assert code == 0, out
    assert re.search(rf"repaired: stream torn: cut a torn tail of \d+ bytes at position "
                     rf"{acknowledged}", out), out
    code, out = check(server.data, capsys)
    assert (code, out.rstrip().endswith("clean")) == (0, True), out

    restarted = server_factory(data=server.data).start()
    with restarted.client() as client:
        events = client.read("torn", limit=100).events
        assert [e.position for e in events] == list(range(acknowledged))
        assert [(e.data["n"], e.data["i"]) for e in events] == [
            (n, i) for n in range(acknowledged // 5) for i in range(5)]
        assert client.append("torn", batch("After", 1)).first == acknowledged
        assert client.stream("untouched").head == 2


def test_a_flipped_byte_is_reported_and_never_served(
        server_factory: type[ServerProcess], capsys: pytest.CaptureFixture[str]) -> None:
    server = server_factory().start()
    payload = "x" * 100
    with server.client() as client:
        for n in range(60):  # ~80 KiB: the sparse index has entries after the damage
            client.append("flipped", batch("Entry", 10, n=n, payload=payload))
    assert server.stop() == 0
    segment = only_segment(server.data, "flipped")
    offset, damaged = records_of(segment)[5]  # positions 50…59
    assert (damaged.base, damaged.count) == (50, 10)
    raw = bytearray(segment.read_bytes())
    raw[offset + codec.HEADER_SIZE + len(damaged.body) // 2] ^= 0x01
    segment.write_bytes(bytes(raw))

    code, out = check(server.data, capsys)
    assert code != 0, out
    assert "DAMAGED: stream flipped: positions 50…59 damaged (record checksum mismatch)" in out

    restarted = server_factory(data=server.data).start()
    with restarted.client() as client:
        with pytest.raises(herald.CorruptRecord) as caught:
            client.read("flipped", start=50)
        error = caught.value
        assert (error.code, error.status) == ("corrupt_record", 500)
        first, last = error.details["first"], error.details["last"]
        assert (first, last) == (50, 59), "the damaged record, as check names it"
        for inside in (55, 59, last):
            with pytest.raises(herald.CorruptRecord):
                client.read("flipped", start=inside)

        # after the range: everything, to the head
        after = client.read("flipped", start=last + 1, limit=1000)
        assert [e.position for e in after.events] == list(range(last + 1, 600))
        # before the range: every event, up to the damage
        before = client.read("flipped", start=0, limit=50)
        assert [e.position for e in before.events] == list(range(50))

    # A subscription delivers what precedes the damage, then fails with its code (it
    # neither hangs nor retries forever); so does `herald tail`.
    delivered, failure = subscribe_to_the_end(restarted, "flipped")
    assert delivered == list(range(50))
    assert isinstance(failure, herald.CorruptRecord), failure
    assert main(["tail", "flipped", *connection(restarted)]) == 2
    out, err = capsys.readouterr()
    assert [json.loads(line)["position"] for line in out.splitlines()] == list(range(50))
    assert "[corrupt_record]" in err

    # SSE: from inside the range, a 500 with the code; from before it, the events up to
    # the damage and then a broken stream, never a clean end that looks complete
    status, body = sse_get(restarted, "flipped", {"from": "50", "follow": "false"})
    assert status == 500
    assert json.loads(body)["error"]["code"] == "corrupt_record"
    with pytest.raises(http.client.IncompleteRead) as cut:
        sse_get(restarted, "flipped", {"from": "0", "follow": "false"})
    ids = re.findall(rb"^id: (\d+)$", cut.value.partial, re.M)
    assert [int(i) for i in ids] == list(range(50))


def subscribe_to_the_end(server: ServerProcess,
                         stream: str) -> tuple[list[int], herald.HeraldError | None]:
    """The positions a ``follow=False`` subscription delivers, and the error it ends with."""
    async def run() -> tuple[list[int], herald.HeraldError | None]:
        delivered: list[int] = []
        async with server.async_client() as client, client.subscribe(
                stream, follow=False) as subscription:
            try:
                async for event in subscription:
                    delivered.append(event.position)
            except herald.HeraldError as exc:
                return delivered, exc
        return delivered, None

    return asyncio.run(asyncio.wait_for(run(), TIMEOUT))


def sse_get(server: ServerProcess, stream: str, params: dict[str, str]) -> tuple[int, bytes]:
    """A raw SSE read with urllib: (status, whole body)."""
    request = urllib.request.Request(
        f"{server.url}/v1/streams/{stream}/events?{urllib.parse.urlencode(params)}",
        headers={"Authorization": f"Bearer {server.token}", "Accept": "text/event-stream"})
    context = ssl.create_default_context(cafile=server.ca)
    try:
        with urllib.request.urlopen(request, context=context, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
