"""The crash proof: SIGKILL at random moments loses and corrupts nothing acknowledged.

A real ``herald serve`` (TLS, the files engine with 4 KiB segments, so that kills
also land during segment rolls) takes appends from several writers at once:

* ``chain``: one writer that knows the stream's head and often appends with
  ``expected_head`` (now and then a stale one, which must be refused);
* ``group``: three concurrent writers (so appends share group commits), batches of
  1 to 40 events, some larger than a segment, some carrying event ids.

The server is killed with SIGKILL at a random moment, again and again, and
restarted on the same data directory and port. The writers record exactly what was
acknowledged (with its ``first``/``head``), what was refused, and what is unknown
(the answer was lost in the crash). After every restart, reading both streams whole:

* positions are dense: 0, 1, 2, … with no gap;
* every acknowledged batch is present exactly once, at its acknowledged positions,
  with the ids, types, data and meta that were sent;
* every batch present is whole (all its events, in order): a batch is all or
  nothing; refused batches are absent; unknown ones may be either;
* what was read after one restart is a prefix of what is read after the next: a
  durable event is never lost or replaced, not even an unacknowledged one;
* an unknown batch that carried ids, retried after the restart, is either appended
  whole or answered as a full duplicate at its original positions (exactly once);
* ``herald check --data COPY`` on a copy of the data directory reports it clean
  (and on the data directory itself after the final, orderly stop).

``make test`` runs 20 kills; ``make proof`` runs 100 (``@pytest.mark.proof``, skipped
unless ``HERALD_PROOF`` is set, as ``make proof`` does).
Set ``HERALD_CRASH_SEED`` to replay another seed; the kill moments depend on timing,
so a failure prints the seed and the round.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import herald
from herald import cli
from herald.errors import ExpectedHeadMismatch, NotFound, TransportError

from ..conftest import ServerProcess

SEGMENT_BYTES = 4096  # the minimum: rolls every few appends
CHAIN, GROUP = "chain", "group"
GROUP_WRITERS = 3
READ_TIMEOUT = 120.0


@dataclass
class Sent:
    """One append as the writer knows it."""

    uid: str
    stream: str
    events: list[dict[str, Any]]
    status: str = "pending"  # acked | refused | unknown
    first: int = -1
    head: int = -1

    def ack(self, first: int, head: int) -> None:
        assert head - first == len(self.events), (self.uid, first, head)
        self.status, self.first, self.head = "acked", first, head


@dataclass
class Ledger:
    sent: dict[str, Sent] = field(default_factory=dict)
    # per stream: the events read after the last restart, to check the next read
    # extends them
    seen: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for s in self.sent.values() if s.status == status)


class Writer:
    def __init__(self, name: str, stream: str, seed: int, ledger: Ledger, chained: bool):
        self.name = name
        self.stream = stream
        self.rng = random.Random(f"{seed}-{name}")
        self.ledger = ledger
        self.chained = chained
        self.known_head: int | None = None
        self.retry: list[Sent] = []
        self.serial = 0

    def make_batch(self) -> Sent:
        rng = self.rng
        self.serial += 1
        uid = f"{self.name}-{self.serial}"
        count = rng.choice([1, 1, 1, 2, 3, 5, 8, 13, 40])
        blob = "b" * (rng.randint(3000, 6000) if rng.random() < 0.05 else rng.randint(0, 60))
        with_ids = rng.random() < 0.4
        events = []
        for i in range(count):
            event: dict[str, Any] = {
                "type": rng.choice(["Placed", "Paid", "Shipped"]),
                "data": {"w": self.name, "serial": self.serial, "i": i, "blob": blob},
                "meta": {"batch": uid, "i": str(i), "n": str(count)},
            }
            if with_ids:
                event["id"] = f"{uid}-{i}"
            events.append(event)
        sent = Sent(uid, self.stream, events)
        self.ledger.sent[uid] = sent
        return sent

    async def run(self, client: herald.AsyncClient, stop: asyncio.Event) -> None:
        try:
            if self.chained:
                self.known_head = await head_of(client, self.stream)
            for sent in list(self.retry):
                await self.retry_one(client, sent)
        except TransportError:
            return  # killed already
        while not stop.is_set():
            await self.append_one(client)

    async def append_one(self, client: herald.AsyncClient) -> None:
        sent = self.make_batch()
        expected: int | None = None
        stale = False
        if self.chained and self.known_head is not None:
            roll = self.rng.random()
            if roll < 0.5:
                expected = self.known_head
            elif roll < 0.6:
                expected = self.known_head + 1 if self.known_head == 0 else self.known_head - 1
                stale = True
        try:
            result = await client.append(self.stream, sent.events, expected_head=expected)
        except ExpectedHeadMismatch as exc:
            assert stale, f"{sent.uid}: expected_head {expected} refused, head {exc.head}"
            assert exc.head == self.known_head
            sent.status = "refused"
            return
        except TransportError as exc:
            # A refused connection never carried the request; anything else may have.
            never_sent = isinstance(exc.__cause__, aiohttp.ClientConnectorError)
            sent.status = "refused" if never_sent else "unknown"
            if sent.status == "unknown" and "id" in sent.events[0] and not self.chained:
                self.retry.append(sent)
            self.known_head = None
            await asyncio.sleep(0.01)  # the server is gone: do not spin
            return
        assert not stale, f"{sent.uid}: stale expected_head {expected} was accepted"
        assert result.appended == len(sent.events) and not result.duplicates, result
        if expected is not None:
            assert result.first == expected, result
        if self.chained and self.known_head is not None:
            assert result.first == self.known_head, "a single writer sees no one else's events"
        sent.ack(result.first, result.head)
        if self.chained:
            self.known_head = result.head

    async def retry_one(self, client: herald.AsyncClient, sent: Sent) -> None:
        """Send an unknown batch with ids again: exactly once, whatever happened."""
        result = await client.append(self.stream, sent.events)
        count = len(sent.events)
        if result.appended == count:
            assert not result.duplicates
            sent.ack(result.first, result.head)
        else:
            assert result.appended == 0, f"{sent.uid}: a batch landed in part: {result}"
            assert [d.index for d in result.duplicates] == list(range(count))
            positions = [d.position for d in result.duplicates]
            assert positions == list(range(positions[0], positions[0] + count)), positions
            assert (result.first, result.head) == (positions[0], positions[0] + count)
            sent.ack(positions[0], positions[0] + count)
        self.retry.remove(sent)


async def head_of(client: herald.AsyncClient, stream: str) -> int:
    try:
        return (await client.stream(stream)).head
    except NotFound:
        return 0


async def read_stream(client: herald.AsyncClient, stream: str) -> list[herald.Event]:
    events: list[herald.Event] = []

    async def collect() -> None:
        async with client.subscribe(stream, 0, follow=False) as subscription:
            async for batch in subscription.batches():
                events.extend(batch)

    await asyncio.wait_for(collect(), READ_TIMEOUT)
    return events


def verify_stream(stream: str, events: list[herald.Event], ledger: Ledger, where: str) -> None:
    # dense
    positions = [e.position for e in events]
    assert positions == list(range(len(events))), f"{where}: {stream} positions have gaps"
    # nothing durable is ever lost or replaced
    snapshot = [(e.position, e.id, e.type, e.data, e.meta, e.time) for e in events]
    previous = ledger.seen.get(stream, [])
    assert snapshot[: len(previous)] == previous, \
        f"{where}: {stream} lost or changed events it had before the crash"
    ledger.seen[stream] = snapshot

    # every batch present is whole, sent, and present once
    found: dict[str, int] = {}
    i = 0
    while i < len(events):
        uid = events[i].meta.get("batch", "")
        sent = ledger.sent.get(uid)
        assert sent is not None and sent.stream == stream, \
            f"{where}: position {i} holds an event nobody sent to {stream}: {events[i]!r}"
        assert uid not in found, f"{where}: batch {uid} at {found.get(uid)} and again at {i}"
        count = len(sent.events)
        run = events[i:i + count]
        assert len(run) == count and all(e.meta.get("batch") == uid for e in run), \
            f"{where}: batch {uid} is only partly present at {i}"
        for event, original in zip(run, sent.events, strict=True):
            assert (event.type, event.data, event.meta) == (
                original["type"], original["data"], original["meta"]), f"{where}: {uid}"
            if "id" in original:
                assert event.id == original["id"]
            else:
                assert uuid.UUID(event.id).version == 7
        if "id" not in sent.events[0]:
            assert [int(e.id[-4:], 16) for e in run] == list(range(count))
            assert len({e.id[:-4] for e in run}) == 1, "one id prefix per batch"
        found[uid] = i
        i += count

    for sent in ledger.sent.values():
        if sent.stream != stream:
            continue
        if sent.status == "acked":
            assert found.get(sent.uid) == sent.first, (
                f"{where}: acknowledged batch {sent.uid} at {sent.first}…{sent.head - 1} "
                f"is {'at ' + str(found[sent.uid]) if sent.uid in found else 'missing'}")
        elif sent.status == "refused":
            assert sent.uid not in found, f"{where}: refused batch {sent.uid} is present"


def check_copy(data: Path, copy: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    """``herald check`` on a copy of the data directory, taken while the server idles."""
    mirror(data / "streams", copy / "streams")
    run_check(copy, capsys, where)


def mirror(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source``, copying only files that changed (sealed
    segments never do, and a full copy of thousands of files each round is slow)."""
    target.mkdir(parents=True, exist_ok=True)
    wanted: set[Path] = set()
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        wanted.add(relative)
        copy = target / relative
        if path.is_dir():
            copy.mkdir(exist_ok=True)
            continue
        stat = path.stat()
        try:
            mine = copy.stat()
            same = (mine.st_size, mine.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            same = False
        if not same:
            shutil.copy2(path, copy)
    for path in sorted(target.rglob("*"), reverse=True):  # files before their directories
        if path.relative_to(target) not in wanted:
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()


def run_check(data: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    capsys.readouterr()
    code = cli.main(["check", "--data", str(data)])
    out = capsys.readouterr().out
    assert code == 0 and out.rstrip().endswith("clean"), f"{where}: herald check:\n{out}"


async def crash_proof(
    server_factory: type[ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    kills: int, seed: int,
) -> None:
    seed = int(os.environ.get("HERALD_CRASH_SEED", seed))
    rng = random.Random(seed)
    config = tmp_path / "herald.toml"
    config.write_text(f"[storage]\nsegment_bytes = {SEGMENT_BYTES}\n")
    data = tmp_path / "data"
    server = server_factory(data=data, args=["--config", str(config)])
    ledger = Ledger()
    writers = [Writer("chain", CHAIN, seed, ledger, chained=True)] + [
        Writer(f"group{i}", GROUP, seed, ledger, chained=False) for i in range(GROUP_WRITERS)]
    listen = "127.0.0.1:0"

    for round_number in range(kills + 1):
        where = f"seed {seed}, after {round_number} kills"
        server.start(listen)
        listen = f"127.0.0.1:{server.port}"  # the same port every time
        async with server.async_client() as client:
            for stream in (CHAIN, GROUP):
                verify_stream(stream, await read_stream(client, stream), ledger, where)
            check_copy(data, tmp_path / "copy", capsys, where)
            if round_number == kills:
                break
            stop = asyncio.Event()
            tasks = [asyncio.create_task(w.run(client, stop)) for w in writers]
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            server.kill()
            stop.set()
            await asyncio.gather(*tasks)

    assert server.stop() == 0
    run_check(data, capsys, f"seed {seed}, the data directory after an orderly stop")
    # the proof proved something
    assert ledger.count("acked") >= kills, (ledger.count("acked"), kills)
    assert len(list((data / "streams" / GROUP).glob("*.log"))) > kills, "segments rolled"
    print(f"seed {seed}: {kills} kills, {ledger.count('acked')} acknowledged, "
          f"{ledger.count('unknown')} unknown, {ledger.count('refused')} refused batches")


@pytest.mark.slow
async def test_sigkill_loses_nothing_acknowledged(
    server_factory: type[ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await crash_proof(server_factory, tmp_path, capsys, kills=20, seed=20)


@pytest.mark.proof
@pytest.mark.skipif(not os.environ.get("HERALD_PROOF"),
                    reason="the 100-kill proof runs with `make proof` (HERALD_PROOF=1)")
async def test_sigkill_loses_nothing_acknowledged_100_kills(
    server_factory: type[ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await crash_proof(server_factory, tmp_path, capsys, kills=100, seed=100)
