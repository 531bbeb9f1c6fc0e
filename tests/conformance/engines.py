"""The engines the conformance suite runs against, by name.

Each entry makes engines over one storage location: calling ``open()`` twice gives
two engine instances on the same storage (how "reopen after close" is tested). A
new engine joins the suite by adding an entry here; the tests do not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from herald.engines.base import Engine
from herald.engines.files import FilesConfig, FilesEngine
from herald.engines.postgres import PostgresConfig, PostgresEngine
from herald.model import Limits

from ..pgtools import drop_schema, new_schema, require_postgres


@dataclass
class EngineKit:
    """Opens engines on one storage location and closes them all at the end."""

    make: Callable[[Limits], Engine]
    opened: list[Engine] = field(default_factory=list)
    setup: Callable[[], Awaitable[None]] | None = None
    teardown: Callable[[], Awaitable[None]] | None = None  # after the last close_all

    async def open(self, limits: Limits | None = None) -> Engine:
        engine = self.make(limits or Limits())
        await engine.open()
        self.opened.append(engine)
        return engine

    async def close_all(self) -> None:
        for engine in self.opened:
            await engine.close()
        self.opened.clear()


def files_kit(tmp_path: Path) -> EngineKit:
    # Small segments, so that every test also crosses segment boundaries.
    return EngineKit(lambda limits: FilesEngine(
        FilesConfig(tmp_path / "data", segment_bytes=64 * 1024), limits))


def postgres_kit(tmp_path: Path) -> EngineKit:
    # A schema of its own per test: "the same storage location" for reopening.
    schema = new_schema()
    dsn: list[str] = []

    async def setup() -> None:
        dsn.append(require_postgres())

    async def teardown() -> None:
        if dsn:
            drop_schema(schema)

    # A small pool: the server is shared, and the suite must pass with few
    # connections too.
    return EngineKit(lambda limits: PostgresEngine(
        PostgresConfig(dsn[0], schema=schema, pool_size=4), limits),
        setup=setup, teardown=teardown)


KITS: dict[str, Callable[[Path], EngineKit]] = {
    "files": files_kit,
    "postgres": postgres_kit,
}
