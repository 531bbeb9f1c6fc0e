"""Herald's own streams (``_herald.…``, the gatherers' skip log) are written by Herald only.

A skip record lets a row go unseen, so it must be an operator's decision as Herald
recorded it: not an event an admin appended over HTTP, nor a row a module's
database produced through a gatherer aimed at the stream. The rule lives in the hub,
the one door every append passes (``Hub.append``'s ``internal``). What this proves:

* over HTTP, nobody — the admin neither — appends to any ``_herald.`` stream, and
  nothing is written; reading it stays a matter of subscribe permission;
* in the hub, an append without ``internal=True`` is refused, by ``append`` and
  ``append_body`` alike, and Herald's own skip log still records;
* a gatherer whose stream is an internal one is refused at its first append and
  retries, saying why; the stream stays empty.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from herald import codec
from herald.engines.memory import MemoryEngine
from herald.errors import Forbidden
from herald.gather.manager import GatherManager
from herald.gather.skips import SKIP_STREAM, SkipLog
from herald.gather.status import GatherState
from herald.hub import INTERNAL_PREFIX, Hub
from herald.model import Batch, Limits, NewEvent
from herald.server.app import create_app
from herald.server.auth import Authenticator

from ..gather.conftest import wait_until
from ..gather.sqldb import sqlite_db

TOKEN = "in-process-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = json.dumps([{"type": "GatherRowSkipped",
                    "data": {"gatherer": "g", "position": 1, "by": "mallory"}}]).encode()
INTERNAL = [SKIP_STREAM, INTERNAL_PREFIX + "anything", INTERNAL_PREFIX + "gather.skips2"]


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub(MemoryEngine(), Limits()) as hub:
        yield hub


@pytest.fixture
async def api(hub: Hub) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(hub, Authenticator(TOKEN)))) as client:
        yield client


def test_the_skip_log_is_internal() -> None:
    assert SKIP_STREAM.startswith(INTERNAL_PREFIX)


@pytest.mark.parametrize("stream", INTERNAL)
@pytest.mark.parametrize("query", ["", "?expected_head=0"])
async def test_not_even_the_admin_appends_to_an_internal_stream(
        api: TestClient[Any, Any], hub: Hub, stream: str, query: str) -> None:
    response = await api.post(f"/v1/streams/{stream}/events{query}", data=BODY, headers=AUTH)
    assert response.status == 403, await response.text()
    error = (await response.json())["error"]
    assert (error["code"], error["permission"], error["stream"]) == (
        "forbidden", "publish", stream)
    assert await hub.head(stream) == 0


async def test_an_internal_stream_is_read_like_any_other(api: TestClient[Any, Any],
                                                         hub: Hub) -> None:
    await SkipLog(hub).record("g", 4, "admin", "not JSON")
    response = await api.get(f"/v1/streams/{SKIP_STREAM}/events", headers=AUTH)
    assert response.status == 200
    [event] = (await response.json())["events"]
    assert (event["data"]["position"], event["data"]["by"]) == (4, "admin")


async def test_a_name_that_only_looks_internal_is_an_ordinary_stream(
        api: TestClient[Any, Any]) -> None:
    for stream in ("_herald", "_heraldx.y", "herald.gather.skips", "x_herald.y"):
        response = await api.post(f"/v1/streams/{stream}/events", data=BODY, headers=AUTH)
        assert response.status == 200, (stream, await response.text())


async def test_the_hub_refuses_every_append_that_is_not_herald_s_own(hub: Hub) -> None:
    batch = Batch([msgspec.json.decode(b'{"type": "T", "data": 1}', type=NewEvent)])
    with pytest.raises(Forbidden):
        await hub.append(SKIP_STREAM, batch)
    with pytest.raises(Forbidden):
        await hub.append_body(SKIP_STREAM, BODY, 0)
    assert await hub.head(SKIP_STREAM) == 0
    result = await hub.append_body(SKIP_STREAM, BODY, internal=True)
    assert (result.first, result.head) == (0, 1)
    [record] = await hub.records(SKIP_STREAM, 0)
    assert codec.events_of(record, 0)[0].type == "GatherRowSkipped"


async def test_a_gatherer_aimed_at_an_internal_stream_is_refused(
        tmp_path: Path, hub: Hub) -> None:
    db = sqlite_db(tmp_path)
    db.create_events()
    db.insert([("T", '{"n": 0}', None, None)])
    manager = GatherManager(hub, [db.config(stream=INTERNAL_PREFIX + "mirror")])
    await manager.start()
    try:
        await wait_until(lambda: manager.statuses()[0].last_error is not None,
                         what="the gatherer's first append to be refused")
        status = manager.statuses()[0]
        assert status.state is GatherState.RETRYING
        assert status.last_error is not None and status.last_error.code == "forbidden"
        assert "Herald's own" in status.last_error.message
    finally:
        await manager.stop()
    assert await hub.head(INTERNAL_PREFIX + "mirror") == 0
