"""The azure-blob engine when the storage goes away: Azurite killed (SIGKILL) while
appends run, then started again on the same ports and data. Appends fail with
Herald's storage_unavailable (never a driver exception) while it is down; nothing
is written twice or out of sequence; the stream takes appends again afterwards.

Azurite is not Azure: it saves its metadata every few seconds
(``AZURITE_SAVE_SECONDS``), so a SIGKILL loses what it acknowledged since — Azure
acknowledges a write only once it is durable. What Azurite had saved before the kill
must be there afterwards.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from herald import codec
from herald.engines.azure_blob import AzureBlobConfig, AzureBlobEngine
from herald.errors import HeraldError, StorageUnavailable
from herald.hub import Hub
from herald.model import Limits

from ..azuretools import Azurite, new_prefix

# Azurite's LokiJS metadata store saves itself this often (autosaveInterval).
AZURITE_SAVE_SECONDS = 5


def body(n: int) -> bytes:
    return msgspec.json.encode([{"type": "T", "data": n, "id": f"e{n}"}])


@pytest.mark.slow
async def test_azurite_killed_and_restarted_under_load(tmp_path: Path) -> None:
    azurite = Azurite(tmp_path / "azurite").start()
    container = new_prefix("fault")
    hubs: list[Hub] = []

    async def node() -> Hub:
        hub = Hub(AzureBlobEngine(AzureBlobConfig(azurite.connection_string,
                                                  container=container)), Limits())
        await hub.open()
        hubs.append(hub)
        return hub

    try:
        hub = await node()
        acknowledged: list[int] = []
        failures: list[HeraldError] = []
        stop = asyncio.Event()

        async def producer(p: int) -> None:
            n = p * 100_000
            while not stop.is_set():
                try:
                    await hub.append_body("load", body(n))
                    acknowledged.append(n)
                except HeraldError as exc:
                    failures.append(exc)
                    await asyncio.sleep(0.05)
                n += 1

        tasks = [asyncio.create_task(producer(p)) for p in range(4)]
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        saved = list(acknowledged)
        await asyncio.sleep(AZURITE_SAVE_SECONDS + 2)  # Azurite saved them
        stop.clear()
        tasks = [asyncio.create_task(producer(p + 4)) for p in range(4)]
        await asyncio.sleep(0.5)
        azurite.kill()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(azurite.start)
        await asyncio.sleep(2.0)  # the producers recover
        stop.set()
        await asyncio.gather(*tasks)
        # Each failure is Herald's (a driver exception would have ended a producer,
        # and gather raised it); the SDK's retries may also ride over the outage.
        assert all(isinstance(f, StorageUnavailable) or f.code == "storage_error"
                   for f in failures), failures[:3]
        assert len(acknowledged) > len(saved), "appends went on after the restart"

        # A fresh node reads what Azurite kept: densely, each event once.
        reader = await node()
        seen: list[int] = []
        position = 0
        while records := await reader.records("load", position):
            for record in records:
                events = codec.events_of(record, position)
                assert [e.position for e in events] == list(
                    range(position, position + len(events)))
                seen += [int(e.data) for e in events]
                position = record.end
        assert set(saved) <= set(seen)
        # Ids make a retried append a duplicate, never a second copy.
        assert len(seen) == len(set(seen))
        more = await reader.append_body("load", body(-1))
        assert more.first == len(seen)
    finally:
        for opened in hubs:
            await opened.close()
        azurite.kill()
