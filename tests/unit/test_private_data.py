"""The data directory is private: directories 0700, files 0600, whatever the umask.

The incident (issue 12): data directories were created 0755 and segments 0644, so
every local user could read every stream. What this proves, with a umask of 0 (the
widest; a umask can only narrow a mode, so nothing may rely on one), checked with
``os.stat`` on everything a real node leaves in its data directory — the directory
itself, ``tls/`` and its four files, the admin token, the lock, ``streams/``, each
stream's directory, its segments and indexes (segments rolled), ``checkpoints/`` and
a checkpoint — and on what recovery (a lost index) and ``herald check --repair`` (a
wrong one) rewrite: every directory is 0700 and every file 0600.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import herald
from herald.config import load_config
from herald.engines.files import check_data_dir
from herald.node import Node


@pytest.fixture(autouse=True)
def umask_0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Every path under ``root`` (``root`` itself as ".") → its permission bits."""
    found = {".": stat.S_IMODE(os.lstat(root).st_mode)}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def assert_private(root: Path) -> dict[str, int]:
    found = modes(root)
    wrong = {name: f"{bits:04o}" for name, bits in found.items()
             if bits != (0o700 if (root / name).is_dir() else 0o600)}
    assert not wrong, f"not private (dirs 0700, files 0600): {wrong}"
    return found


async def run_node(data: Path) -> None:
    config = load_config(None, {"data": str(data), "server": {"listen": "127.0.0.1:0"},
                                "storage": {"files": {"segment_bytes": 4096}}}, environ={})
    async with Node(config) as node:
        assert node.hub is not None
        token = (data / "admin-token").read_text().strip()
        async with herald.AsyncClient(node.url, token=token,
                                      ca=data / "tls" / "ca.pem") as client:
            for n in range(12):  # ~600 bytes a batch: segments of 4 KiB roll
                await client.append("orders", [{"type": "Placed", "data": {
                    "n": n, "pad": "x" * 500}}])
        await node.hub.set_checkpoint("group.billing", 7)


async def test_everything_a_node_writes_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await run_node(data)
    found = assert_private(data)
    segments = [name for name in found if name.endswith(".log")]
    assert len(segments) > 1, "the segments rolled"
    for name in ("tls", "tls/ca.key", "tls/ca.pem", "tls/server.key", "tls/server.pem",
                 "admin-token", "herald.lock", "streams", "streams/orders", "checkpoints",
                 segments[0], segments[0].replace(".log", ".idx")):
        assert name in found, name
    assert any(name.startswith("checkpoints/") for name in found)


async def test_what_recovery_and_repair_rewrite_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await run_node(data)
    streams = data / "streams" / "orders"
    last_index = sorted(streams.glob("*.idx"))[-1]
    last_index.unlink()
    await run_node(data)  # recovery rebuilds the last segment's index
    assert last_index.exists()
    first_index = sorted(streams.glob("*.idx"))[0]
    first_index.write_bytes(b"\x01" * 16)  # an entry that points at no record
    report = check_data_dir(data, repair=True)
    assert report.clean and report.repaired
    assert_private(data)


async def test_a_standalone_files_engine_makes_its_directory_private(tmp_path: Path) -> None:
    from herald.engines.files import FilesConfig, FilesEngine

    engine = FilesEngine(FilesConfig(tmp_path / "new" / "data"))
    await engine.open()
    await engine.close()
    assert_private(tmp_path / "new" / "data")
