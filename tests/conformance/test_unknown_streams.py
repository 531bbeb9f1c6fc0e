"""A stream name with no events costs nothing once the request is over (issue:
following thousands of non-existent names, allowed by a wildcard permission, grew
memory by ~1 KB each, for good).

Every way a request can name a stream without appending to it — its head, its info,
a page, records, a subscription that catches up, one that follows and is closed —
is done for thousands of fresh names on every engine; the memory the process holds
afterwards must not grow with the number of names.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import msgspec

from herald import codec
from herald.errors import NotFound
from herald.model import Limits

from .engines import EngineKit

NAMES = 2_000
REMOTE_NAMES = 300  # where each call is a round trip to a storage service
# Per name, what may remain (allocator noise, interned ints): far below the ~1 KB a
# kept entry costs.
MAX_BYTES_PER_NAME = 48


async def touch(hub: object, name: str) -> None:
    from herald.hub import Hub
    assert isinstance(hub, Hub)
    assert await hub.head(name) == 0
    try:
        await hub.stream(name)
    except NotFound:
        pass
    assert (await hub.read(name, 0)).events() == []
    assert await hub.records(name, 0) == []
    async with hub.subscribe(name, 0, follow=False) as sub:
        assert [r async for r in sub] == []
    async with hub.subscribe(name, "head", follow=True, heartbeat=0.001) as sub:
        async for records in sub:
            assert records == []
            break


async def test_names_without_events_leave_nothing_behind(kit: EngineKit) -> None:
    hub = await kit.open(Limits())
    await hub.append_body("real", msgspec.json.encode([{"type": "T", "data": 1}]))
    # Warm every cache and pool first, traced: a bounded cache (yarl's and urllib's URL
    # caches under an HTTP engine's SDK) then replaces traced entries with traced ones,
    # netting zero, not untraced ones with traced ones, which looks like growth up to
    # the cache's size.
    tracemalloc.start()
    try:
        for i in range(200):
            await touch(hub, f"warm-{i}")
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        names = REMOTE_NAMES if kit.remote else NAMES
        for i in range(names):
            await touch(hub, f"ghost-{i}")
        await asyncio.sleep(0)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / names < MAX_BYTES_PER_NAME, f"{grown / names:.0f} bytes kept per name"
    # And the real stream is still what it was.
    assert [e.data for r in await hub.records("real", 0) for e in codec.events_of(r)] == [1]


async def test_over_http_names_without_events_leave_nothing_behind() -> None:
    """The same through the HTTP edge (memory engine, in-process server, a plain
    aiohttp session: the test client would keep every response): pages, SSE and the
    compact form, caught up, and followed then dropped by the client."""
    import aiohttp
    from aiohttp.test_utils import TestServer

    from herald.engines.memory import MemoryEngine
    from herald.hub import Hub
    from herald.server.app import create_app
    from herald.server.auth import Authenticator

    token = "t" * 40
    headers = {"Authorization": f"Bearer {token}"}
    async with Hub(MemoryEngine(), Limits()) as hub, TestServer(
            create_app(hub, Authenticator(token)), handler_cancellation=True) as server, \
            aiohttp.ClientSession(str(server.make_url(""))) as api:

        async def visit(name: str) -> None:
            path = f"/v1/streams/{name}/events"
            async with api.get(path, headers=headers) as answer:
                assert answer.status == 200
            async with api.get(f"/v1/streams/{name}", headers=headers) as answer:
                assert answer.status == 404
            for accept in (codec.MEDIA_TYPE, "text/event-stream"):
                async with api.get(path + "?follow=false",
                                   headers={**headers, "Accept": accept}) as answer:
                    await answer.read()
                async with api.get(path + "?from=head",
                                   headers={**headers, "Accept": accept}) as answer:
                    await answer.content.readany()
                    answer.close()  # the subscriber goes away

        # aiohttp and yarl keep bounded caches (128 entries) of recent URLs: what grows
        # in the second half of the visits, once they are full, is what a name costs.
        names = NAMES // 4
        for i in range(300):
            await visit(f"warm-{i}")
        tracemalloc.start()
        try:
            marks = []
            for half in range(2):
                for i in range(names):
                    await visit(f"ghost-{half}-{i}")
                await asyncio.sleep(0.3)  # the dropped followers' handlers end
                gc.collect()
                marks.append(tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
    grown = marks[1] - marks[0]
    assert grown / names < 2 * MAX_BYTES_PER_NAME, f"{grown / names:.0f} bytes kept per name"
