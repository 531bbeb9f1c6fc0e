"""A full disk, for a real ``herald serve``: refused, never lost, and resumed.

What this proves:

* on a small filesystem of its own (a 8 MiB tmpfs, and a loop-mounted 8 MiB ext4:
  two different ways of running out), filled with appends to two streams (batches
  of every size, with and without ids, small segments so that segments roll while
  the disk fills): appends are refused with 507 ``storage_full`` and nothing else;
  every acknowledged event reads back at its position and nothing else is there;
  reads, listings and subscriptions keep working while the disk is full; a refused
  batch with ids, sent again once a file on the same filesystem is deleted, is
  appended whole at the head (it was not taken for a duplicate) and positions go on
  with no gap; ``herald check`` is clean, and so is a restart;
* each system call of an append failing on its own (strace makes it fail, for as long
  as it is attached): the log's ``pwrite`` or ``fdatasync`` with ENOSPC → 507 and
  nothing written; ``fdatasync`` with EIO → 500 ``storage_error``; the index write
  with ENOSPC → the append is acknowledged (its records were durable) and the index
  catches up later. Either way reads keep working, later appends reuse no position,
  and ``herald check`` is clean.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import herald

from ..conftest import ServerProcess, fill_up, small_filesystem
from .faults import Acked, SyscallTrap, assert_check_clean, assert_reads_back, read_all

STREAMS = ("alpha", "beta")
FS_BYTES = 8 << 20
ROOM = 1536 << 10  # what the appends get to fill
SEGMENT_BYTES = 128 << 10  # a dozen segment rolls while the disk fills


def make_batch(rng: random.Random, serial: int, ids: bool) -> list[dict[str, Any]]:
    count = rng.choice([1, 2, 5, 16])
    pad = "p" * rng.choice([10, 900, 3000])
    return [{"type": "Filled", "data": {"serial": serial, "i": i, "pad": pad},
             **({"id": f"b{serial}-{i}"} if ids else {})} for i in range(count)]


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_a_full_disk_refuses_appends_with_507_and_loses_nothing(
    kind: str, server_factory: type[ServerProcess], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = random.Random(kind)
    with small_filesystem(tmp_path / "fs", FS_BYTES, kind) as fs:
        config = tmp_path / "herald.toml"
        config.write_text(f"[storage]\nsegment_bytes = {SEGMENT_BYTES}\n")
        server = server_factory(data=fs / "data", args=["--config", str(config)]).start()
        filler = fill_up(fs, leave=ROOM)
        acked = Acked()
        refused: list[tuple[str, list[dict[str, Any]]]] = []
        with server.client() as client:
            serial = 0
            while len(refused) < 8:
                serial += 1
                assert serial < 3000, "the disk never filled"
                stream = STREAMS[serial % 2]
                events = make_batch(rng, serial, ids=serial % 3 == 0)
                try:
                    result = client.append(stream, events)
                except herald.StorageFull as exc:
                    assert (exc.status, exc.code) == (507, "storage_full")
                    assert "nothing was written" in exc.message
                    refused.append((stream, events))
                    continue
                assert result.appended == len(events) and not result.duplicates
                acked.add(stream, result.first, events)
            assert len(list((fs / "data" / "streams" / "alpha").glob("*.log"))) > 3, "rolled"

            # Full: reads, listings and subscriptions work; nothing refused is there.
            for stream in STREAMS:
                assert_reads_back(client, acked, stream)
                assert client.stream(stream).head == acked.count(stream)
                with client.subscribe(stream, 0, follow=False) as subscription:
                    assert sum(1 for _ in subscription) == acked.count(stream)
            assert {s.name for s in client.streams()} == set(STREAMS)

            # A refused batch with ids, still too big for what is left: refused again.
            big = [{"type": "Big", "data": {"pad": "q" * 60_000}, "id": f"big-{i}"}
                   for i in range(4)]
            with pytest.raises(herald.StorageFull):
                client.append("alpha", big)

            # Space again: the same batch is appended whole at the head (its ids were
            # not kept by the refusal), and so is everything after it.
            filler.unlink()
            head = acked.count("alpha")
            result = client.append("alpha", big)
            assert (result.first, result.appended, result.duplicates) == (head, 4, [])
            acked.add("alpha", head, big)
            for stream, events in refused[:4]:
                result = client.append(stream, events)
                assert result.appended == len(events) and not result.duplicates
                assert result.first == acked.count(stream), "no gap, no reused position"
                acked.add(stream, result.first, events)
            for stream in STREAMS:
                assert_reads_back(client, acked, stream)
        assert server.stop() == 0
        assert_check_clean(fs / "data", capsys)

        restarted = server_factory(data=fs / "data", args=["--config", str(config)]).start()
        with restarted.client() as client:
            for stream in STREAMS:
                assert_reads_back(client, acked, stream)
                result = client.append(stream, [{"type": "After", "data": 1}])
                assert result.first == acked.count(stream)
        assert restarted.stop() == 0
        assert "Traceback" not in server.log + restarted.log


# --- one system call failing at a time -------------------------------------------------


@pytest.fixture(scope="module")
def lone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(data=tmp_path_factory.mktemp("faults") / "data").start()
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log, server.log


# name → (system call, file of the stream's segment, errno, status and code of the
# append while it fails; None: acknowledged)
FAILURES: dict[str, tuple[str, str, str, tuple[int, str] | None]] = {
    "log write, ENOSPC": ("pwrite64", "log", "ENOSPC", (507, "storage_full")),
    "log fdatasync, ENOSPC": ("fdatasync", "log", "ENOSPC", (507, "storage_full")),
    "log fdatasync, EIO": ("fdatasync", "log", "EIO", (500, "storage_error")),
    "index write, ENOSPC": ("pwrite64", "idx", "ENOSPC", None),
}


@pytest.mark.parametrize("name", FAILURES)
def test_a_failing_system_call_is_undone_or_harmless(
    name: str, lone_server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    syscall, suffix, error, refusal = FAILURES[name]
    stream = name.replace(",", "").replace(" ", "-")
    acked = Acked()
    with lone_server.client() as client:
        for n in range(3):  # > 4 KiB since the first index entry: the next needs one
            events = [{"type": "Before", "data": {"n": n, "pad": "x" * 1500}}]
            acked.add(stream, client.append(stream, events).first, events)
        segment = lone_server.data / "streams" / stream / f"{0:020d}.{suffix}"
        trap = SyscallTrap(lone_server.process.pid if lone_server.process else 0,
                           ["-e", f"trace={syscall}", "-P", str(segment),
                            "-e", f"inject={syscall}:error={error}"], tmp_path / "strace")
        try:
            during = []
            for n in range(3):
                events = [{"type": "During", "data": {"n": n}, "id": f"{stream}-{n}"}]
                try:
                    result = client.append(stream, events)
                except herald.HeraldError as exc:
                    assert refusal is not None, f"{name}: refused: {exc!r}"
                    assert (exc.status, exc.code) == refusal
                    during.append(events)
                    continue
                assert refusal is None, f"{name}: acknowledged while the disk failed"
                acked.add(stream, result.first, events)
            assert_reads_back(client, acked, stream)
            assert client.stream(stream).head == acked.count(stream)
            assert trap.wait_for(rf"{syscall}\(.*\.{suffix}>.*INJECTED", 5)
        finally:
            trap.detach()
        for events in during:  # sent again, once the fault is gone: appended
            result = client.append(stream, events)
            assert (result.first, result.appended) == (acked.count(stream), 1)
            acked.add(stream, result.first, events)
        events = [{"type": "After", "data": 1}]
        acked.add(stream, client.append(stream, events).first, events)
        assert [e.type for e in read_all(client, stream)][-5:] == (
            ["Before"] + ["During"] * 3 + ["After"])
        assert_reads_back(client, acked, stream)
    assert_check_clean(lone_server.data, capsys)
