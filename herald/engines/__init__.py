"""Storage engines, chosen by name and imported only when chosen.

``files`` is the embedded default; ``memory`` keeps streams in the process (tests,
trying things out); ``postgres`` serves several nodes. See ``base.Engine`` for the
contract (the storage port) and ``memory.py`` for the smallest whole engine.

A new engine is one module and one entry in ``ENGINES`` (and one in the
conformance kits, tests/conformance/engines.py). Its class says

* ``settings``: a frozen dataclass of its keys, parsed here from its own table
  ``[storage.<name>]`` (keys named in errors as ``[storage.<name>] key``);
* ``from_config(config, settings)``: the engine, from the whole configuration (the
  data directory, the limits) and its parsed settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import build_section, registered_class
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config
    from .base import Engine

__all__ = ["ENGINES", "create_engine", "engine_class", "engine_settings"]

# name → "module:Class". An engine's dependencies (psycopg, azure…) are imported
# only when it is configured.
ENGINES: dict[str, str] = {
    "azure-blob": "herald.engines.azure_blob:AzureBlobEngine",
    "azure-table": "herald.engines.azure_table:AzureTableEngine",
    "files": "herald.engines.files:FilesEngine",
    "memory": "herald.engines.memory:MemoryEngine",
    "postgres": "herald.engines.postgres:PostgresEngine",
}


def engine_class(name: str) -> type[Engine]:
    cls: type[Engine] = registered_class(ENGINES, name, "[storage] engine", "engine")
    return cls


def engine_settings(config: Config) -> tuple[type[Engine], object]:
    """The configured engine's class and its parsed ``[storage.<engine>]`` table.
    ConfigError names the key at fault, or a table for an engine that does not exist
    (a typo there would otherwise be ignored)."""
    for name in config.storage.sections:
        if name not in ENGINES:
            raise ConfigError(f"[storage.{name}]: unknown engine {name!r} "
                              f"(known: {', '.join(sorted(ENGINES))})")  # not chosen: no import
    name = config.storage.engine
    cls = engine_class(name)
    settings = build_section(cls.settings, config.storage.section(), f"storage.{name}",
                             label=f"[storage.{name}]")
    return cls, settings


def create_engine(config: Config) -> Engine:
    cls, settings = engine_settings(config)
    return cls.from_config(config, settings)
