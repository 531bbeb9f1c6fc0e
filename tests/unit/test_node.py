"""The composition root in process: a node from its config, started and stopped.

What this proves: a ``Node`` creates its TLS files and admin token, serves the API
over HTTPS on the port it bound (and the redirect port when configured), names both
in its banner, and closes everything on ``stop``; a start that fails half-way (the
port is taken) closes what it had opened — the files engine's lock is released, so
the next node on the same data directory starts.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from herald.config import Config, load_config
from herald.errors import HeraldError
from herald.node import Node


def config(data: Path, listen: str = "127.0.0.1:0", **sections: Any) -> Config:
    return load_config(None, {"data": str(data), "server": {"listen": listen},
                              **sections}, environ={})


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_node_serves_https_and_the_redirect_port_then_stops(tmp_path: Path) -> None:
    node = Node(config(tmp_path / "data", storage={"engine": "memory"},
                       server={"listen": "127.0.0.1:0", "http_redirect": "127.0.0.1:0"}))
    async with node:
        assert sorted(node.created) == ["tls", "token"]
        assert node.redirect is not None
        banner = node.banner()
        assert f"listening on {node.url}" in banner
        assert f"Plain HTTP on {node.redirect.url}" in banner
        tls = ssl.create_default_context(cafile=tmp_path / "data" / "tls" / "ca.pem")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{node.url}/v1/health", ssl=tls) as response:
                assert (await response.json())["engine"] == "memory"
            async with session.get(f"{node.redirect.url}/v1/health",
                                   allow_redirects=False) as response:
                assert (response.status, response.headers["Location"]) == (
                    308, f"{node.url}/v1/health")
    with pytest.raises(RuntimeError, match="not started"):
        _ = Node(node.config).url
    # Stopped: nothing listens on the port any more.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", node.https.port if node.https else 0)) != 0


async def test_a_start_that_fails_closes_what_it_opened(tmp_path: Path, taken_port: int) -> None:
    data = tmp_path / "data"
    with pytest.raises(HeraldError) as caught:
        await Node(config(data, f"127.0.0.1:{taken_port}")).start()
    assert caught.value.code == "listen_failed"
    # The files engine's lock was released: another node opens the same data.
    async with Node(config(data)) as node:
        assert node.hub is not None and node.hub.engine_name == "files"
