"""The azure-blob engine's fences, beyond the conformance suite: several nodes (engine
instances over one container) writing one stream at once, a writer that died after
appending but before committing (garbage past the committed end), blobs rolling
over, and the pointer naming where each blob's committed records end.

Everything is checked by reading back through a fresh node: what was acknowledged
is there once, in order, at dense positions; nothing else is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from herald import codec
from herald.engines.azure_blob import AzureBlobConfig, AzureBlobEngine
from herald.engines.azure_blob.pointer import decode_pointer, pointer_blob
from herald.engines.azure_blob.storage import open_service
from herald.errors import ExpectedHeadMismatch
from herald.hub import Hub
from herald.model import Batch, Event, Limits

from ..azuretools import new_prefix, require_azurite


def batch(*events: dict[str, Any]) -> Batch:
    return codec.decode_append(msgspec.json.encode(list(events)), Limits())


def ev(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "Counted", "data": {"n": n}, **extra}


async def read_all(hub: Hub, stream: str) -> list[Event]:
    events: list[Event] = []
    position = 0
    while records := await hub.records(stream, position):
        for record in records:
            events += codec.events_of(record, position)
            position = record.end
    return events


class Nodes:
    """Hubs over one container: each one a Herald node of its own."""

    def __init__(self, account: str, container: str, blob_bytes: int) -> None:
        self.account, self.container, self.blob_bytes = account, container, blob_bytes
        self.hubs: list[Hub] = []

    def engine(self) -> AzureBlobEngine:
        return AzureBlobEngine(AzureBlobConfig(self.account, container=self.container,
                                               blob_bytes=self.blob_bytes))

    async def open(self, limits: Limits | None = None) -> Hub:
        hub = Hub(self.engine(), limits or Limits())
        await hub.open()
        self.hubs.append(hub)
        return hub

    async def pointer(self, stream: str) -> Any:
        async with open_service(self.account) as service:
            blob = service.get_blob_client(self.container, pointer_blob(stream))
            raw = await (await blob.download_blob()).readall()
        return decode_pointer(stream, raw)

    async def append_raw(self, blob_name: str, data: bytes) -> None:
        """Bytes appended behind Herald's back: what a writer that died between its
        append and its commit leaves."""
        async with open_service(self.account) as service:
            await service.get_blob_client(self.container, blob_name).append_block(data)


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    account = require_azurite()
    made = Nodes(account, new_prefix("fence"), 16 * 1024)
    yield made
    for hub in made.hubs:
        await hub.close()
    from azure.core.exceptions import ResourceNotFoundError
    async with open_service(account) as service:
        with contextlib.suppress(ResourceNotFoundError):
            await service.delete_container(made.container)


async def test_several_nodes_append_to_one_stream(nodes: Nodes) -> None:
    """Four nodes, each with concurrent appenders, on one stream: every acknowledged
    batch exactly once, whole, in each appender's order, at dense positions."""
    hubs = [await nodes.open() for _ in range(4)]
    acknowledged: dict[str, int] = {}

    async def appender(hub: Hub, name: str) -> None:
        for a in range(8):
            events = [ev(a, id=f"{name}-{a}-{e}") for e in range(3)]
            result = await hub.append("shared", batch(*events))
            assert result.appended == 3
            acknowledged[f"{name}-{a}"] = result.first

    await asyncio.gather(*(appender(hub, f"n{n}w{w}") for n, hub in enumerate(hubs)
                           for w in range(3)))
    reader = await nodes.open()
    events = await read_all(reader, "shared")
    assert [e.position for e in events] == list(range(len(events)))
    assert len(events) == 3 * len(acknowledged) == 4 * 3 * 8 * 3
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)
    for key, first in acknowledged.items():
        assert ids[first:first + 3] == [f"{key}-{e}" for e in range(3)]
    assert await reader.head("shared") == len(events)


async def test_expected_head_across_nodes_has_one_winner(nodes: Nodes) -> None:
    one, two = await nodes.open(), await nodes.open()
    await one.append("s", batch(ev(0)))
    results = await asyncio.gather(
        *(hub.append("s", batch(ev(i)), expected_head=1) for i, hub in
          enumerate([one, two, one, two])), return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1 and winners[0].first == 1
    assert all(isinstance(r, ExpectedHeadMismatch) and r.head == 2
               for r in results if isinstance(r, BaseException))
    assert len(await read_all(await nodes.open(), "s")) == 2


async def test_a_retry_on_another_node_is_a_duplicate(nodes: Nodes) -> None:
    one, two = await nodes.open(), await nodes.open()
    first = await one.append("d", batch(ev(0, id="a"), ev(1, id="b")))
    await two.append("d", batch(ev(2)))
    retry = await two.append("d", batch(ev(0, id="a"), ev(1, id="b")))
    assert (retry.appended, retry.first, retry.head) == (0, first.first, first.head)
    again = await one.append("d", batch(ev(1, id="b"), ev(3, id="c")))
    assert again.appended == 1 and [d.id for d in again.duplicates] == ["b"]
    assert [e.id for e in await read_all(await nodes.open(), "d")][3] == "c"


async def test_garbage_after_the_committed_end_is_never_read(nodes: Nodes) -> None:
    """A writer that appended a record and died before moving the pointer leaves it
    after the blob's committed end: readers ignore it, and the next write, unable to
    append after it, continues in a new blob."""
    hub = await nodes.open()
    await hub.append("g", batch(ev(0), ev(1)))
    pointer = await nodes.pointer("g")
    dead = codec.encode_record(2, 1, 0, codec.encode_batch(
        batch(ev(666)), "x" * 32))  # a whole, valid record for position 2
    await nodes.append_raw(pointer.blobs[-1].name, dead)

    fresh = await nodes.open()
    assert await fresh.head("g") == 2
    assert [e.data["n"] for e in await read_all(fresh, "g")] == [0, 1]
    result = await fresh.append("g", batch(ev(2)))
    assert (result.first, result.head) == (2, 3)
    after = await nodes.pointer("g")
    assert len(after.blobs) == len(pointer.blobs) + 1
    assert after.blobs[-2].end == pointer.blobs[-1].end  # the garbage stays outside
    for reader in (hub, fresh, await nodes.open()):
        assert [e.data["n"] for e in await read_all(reader, "g")] == [0, 1, 2]


async def test_a_stale_node_cannot_commit_over_a_newer_head(nodes: Nodes) -> None:
    """A node whose copy of the pointer is old appends after the blob's end it knows
    (or finds it taken) and loses the pointer's ETag race: it places again."""
    one, two = await nodes.open(), await nodes.open()
    await one.append("st", batch(ev(0)))
    assert await two.head("st") == 1  # two now knows the pointer at head 1
    for i in range(3):
        await one.append("st", batch(ev(i + 1)))
    late = await two.append("st", batch(ev(99)))
    assert late.first == 4
    assert [e.data["n"] for e in await read_all(await nodes.open(), "st")] == [0, 1, 2, 3, 99]


async def test_blobs_roll_over_and_read_back(nodes: Nodes) -> None:
    hub = await nodes.open()
    pad = "p" * 3000
    for i in range(40):
        await hub.append("roll", batch(*({"type": "Padded", "data": {"n": i * 2 + j, "pad": pad}}
                                         for j in range(2))))
    pointer = await nodes.pointer("roll")
    assert len(pointer.blobs) > 3
    assert all(b.end <= nodes.blob_bytes for b in pointer.blobs)
    fresh = await nodes.open()
    for start in (0, 1, 37, 79):
        page = await fresh.read("roll", start, 5)
        assert [e.data["n"] for e in page.events()] == list(range(start, min(start + 5, 80)))
    assert [e.data["n"] for e in await read_all(fresh, "roll")] == list(range(80))


async def test_checkpoints_across_nodes(nodes: Nodes) -> None:
    one, two = await nodes.open(), await nodes.open()
    await one.set_checkpoint("group:g:s", 1, expected_version=0)
    results = await asyncio.gather(
        *(hub.set_checkpoint("group:g:s", 10 + i, expected_version=1)
          for i, hub in enumerate([one, two, one, two])), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    # Unconditional sets from two nodes: each gets a version of its own.
    versions = await asyncio.gather(*(hub.set_checkpoint("plain", i)
                                      for i, hub in enumerate([one, two] * 3)))
    assert sorted(v.version for v in versions) == list(range(1, 7))
