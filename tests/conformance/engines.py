"""The engines the conformance suite runs against, by name.

Each entry makes engines over one storage location: calling ``open()`` twice gives
two hubs over two engine instances on the same storage (how "reopen after close" is
tested). The tests reach the engine through the hub, as everything in Herald does.
A new engine joins the suite by adding an entry here; the tests do not change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from herald.engines.azure_blob import AzureBlobConfig, AzureBlobEngine
from herald.engines.azure_table import AzureTableConfig, AzureTableEngine
from herald.engines.base import Engine
from herald.engines.files import FilesConfig, FilesEngine
from herald.engines.memory import MemoryEngine, MemoryStore
from herald.engines.postgres import PostgresConfig, PostgresEngine
from herald.hub import Hub
from herald.model import Limits

from ..azuretools import new_prefix, require_azurite
from ..pgtools import drop_schema, new_schema, require_postgres


@dataclass
class EngineKit:
    """Opens engines on one storage location and closes them all at the end."""

    make: Callable[[Limits], Engine]
    opened: list[Hub] = field(default_factory=list)
    setup: Callable[[], Awaitable[None]] | None = None
    teardown: Callable[[], Awaitable[None]] | None = None  # after the last close_all
    # Every call an HTTP round trip to a storage service (Azurite): tests that loop
    # over thousands of calls take fewer, asserting the same (make test's budget).
    remote: bool = False

    async def open(self, limits: Limits | None = None) -> Hub:
        limits = limits or Limits()
        hub = Hub(self.make(limits), limits)
        await hub.open()
        self.opened.append(hub)
        return hub

    async def close_all(self) -> None:
        for hub in self.opened:
            await hub.close()
        self.opened.clear()


def files_kit(tmp_path: Path) -> EngineKit:
    # Small segments, so that every test also crosses segment boundaries.
    return EngineKit(lambda limits: FilesEngine(
        FilesConfig(tmp_path / "data", segment_bytes=64 * 1024)))


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


def azure_blob_kit(tmp_path: Path) -> EngineKit:
    # A container of its own per test: "the same storage location" for reopening.
    # Small blobs, so that every test also crosses blobs (a blob rolls over).
    container = new_prefix("blob")
    account: list[str] = []

    async def setup() -> None:
        account.append(require_azurite())

    async def teardown() -> None:
        if account:
            from azure.core.exceptions import ResourceNotFoundError

            from herald.engines.azure_blob.storage import open_service
            async with open_service(account[0]) as service:
                with contextlib.suppress(ResourceNotFoundError):  # never opened
                    await service.delete_container(container)

    return EngineKit(lambda limits: AzureBlobEngine(AzureBlobConfig(
        account[0], container=container, blob_bytes=64 * 1024)),
        setup=setup, teardown=teardown, remote=True)


def azure_table_kit(tmp_path: Path) -> EngineKit:
    # Tables of their own per test (a table name prefix): "the same storage
    # location" for reopening; dropped at the end.
    prefix = new_prefix("t")
    account: list[str] = []

    async def setup() -> None:
        account.append(require_azurite())

    async def teardown() -> None:
        if account:
            from azure.data.tables.aio import TableServiceClient
            async with TableServiceClient.from_connection_string(account[0]) as service:
                for table in ("streams", "checkpoints"):
                    await service.delete_table(prefix + table)

    return EngineKit(lambda limits: AzureTableEngine(AzureTableConfig(
        account[0], table_prefix=prefix), limits), setup=setup, teardown=teardown,
        remote=True)


def memory_kit(tmp_path: Path) -> EngineKit:
    store = MemoryStore()  # "the same storage location": outlives each engine
    return EngineKit(lambda limits: MemoryEngine(store))


KITS: dict[str, Callable[[Path], EngineKit]] = {
    "azure-blob": azure_blob_kit,
    "azure-table": azure_table_kit,
    "files": files_kit,
    "memory": memory_kit,
    "postgres": postgres_kit,
}
