"""The gatherers of one Herald node: started and stopped with ``herald serve``.

Sources are chosen by name and their modules (and drivers) imported only when a
gatherer uses them, as engines are. A new kind of source is one class and one entry
in ``SOURCES``. Its class says

* ``settings``: a frozen dataclass of its keys — the ``[[gather]]`` table's keys
  other than name, stream, source and batch (``GatherConfig.options``), parsed here
  and named in errors as ``[[gather]] <name> key``;
* ``__init__(config, settings)``: the source, from the gatherer's config and its
  parsed settings.
"""

from __future__ import annotations

import asyncio
import importlib

from ..config import ConfigError, GatherConfig, SettingError, build_section, registered_class
from ..errors import Conflict, HeraldError, NotFound
from ..hub import Hub
from .base import Gatherer, Source
from .skips import SkipLog
from .status import GathererStatus, GatherSkip

__all__ = ["GatherManager", "SOURCES", "create_source", "source_class", "source_settings"]

# source kind → "module:Class", and the distribution its driver comes from.
SOURCES: dict[str, str] = {
    "sqlite": "herald.gather.sql.sqlite:SqliteSource",
    "postgres": "herald.gather.sql.postgres:PostgresSource",
    "mysql": "herald.gather.sql.mysql:MysqlSource",
    "eventsourcing": "herald.gather.eventsourcing:EventsourcingSource",
}
_DRIVERS = {"postgres": "psycopg", "mysql": "pymysql", "eventsourcing": "eventsourcing"}


def source_class(config: GatherConfig) -> type[Source]:
    """The class of a gatherer's source; its module imports no driver."""
    cls: type[Source] = registered_class(SOURCES, config.source,
                                         f"[[gather]] {config.name} source", "source")
    return cls


def source_settings(config: GatherConfig) -> tuple[type[Source], object]:
    """A gatherer's source class and its parsed settings (``config.options``); a
    ConfigError names the key at fault. Needs no driver and opens nothing."""
    cls = source_class(config)
    settings = build_section(cls.settings, config.options, f"gather {config.name}",
                             label=f"[[gather]] {config.name}")
    return cls, settings


def create_source(config: GatherConfig) -> Source:
    """The source for a gatherer; a ConfigError if its driver or settings are wrong."""
    cls, settings = source_settings(config)
    driver = _DRIVERS.get(config.source)
    if driver is not None:
        try:
            importlib.import_module(driver)
        except ImportError:
            raise ConfigError(f"[[gather]] {config.name}: a {config.source} source needs the "
                              f"{driver} package: pip install 'herald[gather]'") from None
    try:
        source = cls(config, settings)
    except HeraldError as exc:
        raise ConfigError(f"[[gather]] {config.name}: {exc.message}") from exc
    except SettingError as exc:  # settings a source derives (eventsourcing: from env)
        raise ConfigError(f"[[gather]] {config.name}: {exc.key or 'settings'}: "
                          f"{exc.message}") from exc
    return source


class GatherManager:
    def __init__(self, hub: Hub,
                 configs: tuple[GatherConfig, ...] | list[GatherConfig]) -> None:
        self.hub = hub
        self.skips = SkipLog(hub)
        # Sources are built now, so that a wrong setting stops `herald serve` at once.
        self.gatherers = {c.name: Gatherer(c, hub, create_source(c), self.skips)
                          for c in configs}

    async def start(self) -> None:
        await self.skips.refresh()
        for gatherer in self.gatherers.values():
            gatherer.start()

    async def stop(self) -> None:
        await asyncio.gather(*(g.stop() for g in self.gatherers.values()))

    def get(self, name: str) -> Gatherer:
        gatherer = self.gatherers.get(name)
        if gatherer is None:
            raise NotFound(f"no gatherer is named {name}", code="gatherer_not_found",
                           gatherer=name)
        return gatherer

    def statuses(self) -> list[GathererStatus]:
        return [g.status() for _, g in sorted(self.gatherers.items())]

    async def skip(self, name: str, position: int, by: str) -> GatherSkip:
        """Record that the row at ``position`` is to be left out; the gatherer resumes.

        Only the row a gatherer is stopped at can be skipped: a skip is an answer to a
        reported error, never a way to drop rows unseen.
        """
        gatherer = self.get(name)
        stopped = gatherer.stopped_at
        if stopped is None or stopped.position != position:
            where = f"is stopped at position {stopped.position}" if stopped else (
                f"is {gatherer.state.value}, not stopped at a bad row")
            raise Conflict(f"gatherer {name} {where}; only that row can be skipped",
                           code="not_stopped_at_position", gatherer=name,
                           state=gatherer.state.value,
                           position=stopped.position if stopped else None)
        await self.skips.record(name, position, by, stopped.message)
        return self.skips.skips[name][-1]
