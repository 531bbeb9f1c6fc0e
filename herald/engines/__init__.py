"""Storage engines, chosen by name and imported only when chosen.

``files`` is the embedded default. Each engine module exposes a class with a
``from_config(config)`` classmethod; see ``base.Engine`` for the contract.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..config import ConfigError

if TYPE_CHECKING:
    from ..config import Config
    from .base import Engine

__all__ = ["ENGINES", "create_engine"]

# name → "module:Class". An engine's dependencies (psycopg, azure…) are imported
# only when it is configured.
ENGINES: dict[str, str] = {
    "files": "herald.engines.files:FilesEngine",
    "memory": "herald.engines.memory:MemoryEngine",
    "postgres": "herald.engines.postgres:PostgresEngine",
}


def create_engine(config: Config) -> Engine:
    target = ENGINES.get(config.storage.engine)
    if target is None:
        raise ConfigError(
            f"[storage] engine: unknown engine {config.storage.engine!r} "
            f"(known: {', '.join(sorted(ENGINES))})"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    engine: Engine = cls.from_config(config)
    return engine
