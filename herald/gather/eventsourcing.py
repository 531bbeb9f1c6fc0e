"""Python ``eventsourcing`` applications: gather an application's notification log.

Herald is configured with the application's name and the *same environment* the
application runs with (``PERSISTENCE_MODULE``, ``POSTGRES_*`` or ``SQLITE_DBNAME``,
``CIPHER_TOPIC``/``CIPHER_KEY``, ``COMPRESSOR_TOPIC``…). The library itself turns
that environment into the recorder's table and connection settings, and into the
cipher and compressor the application uses; the application does not change.

Herald reads the recorder's table as ``select_notifications`` does — by
notification id — over its own connection, so that the gap fence (sql.GapFence),
its timeouts and LISTEN apply. The PostgreSQL recorder NOTIFYs a channel named
after its table on every insert: Herald listens to it, no trigger needed.

Each stored event becomes a Herald event:

* ``type`` — the topic's class path: ``dogschool.domain:Dog.TrickAdded`` →
  ``Dog.TrickAdded``; ``meta`` keeps ``topic``, ``originator_id`` and
  ``originator_version``;
* ``data`` — the stored state, decrypted and decompressed with the application's
  own cipher and compressor when its environment configures them, then decoded as
  the library's JSON transcoder wrote it, with its ``{"_type_", "_data_"}`` envelopes
  (UUIDs, datetimes, decimals) replaced by their plain JSON value;
* a state that is not JSON (an encrypted or compressed store whose settings Herald
  was not given, or a different transcoder) stops the gatherer at that row, saying
  so — unless ``state = "base64"``, which passes every state as
  ``{"base64": "…"}`` (after decryption and decompression, when configured).
"""

from __future__ import annotations

import base64
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from uuid import UUID

import msgspec

from ..config import GatherConfig, SettingError
from ..errors import SourceError
from ..model import NewEvent
from .base import Source, SourceRead, Unmappable
from .sql import PostgresSettings, PostgresSource, SqliteSettings, SqliteSource, pg_describe

__all__ = ["EventsourcingSettings", "EventsourcingSource", "unwrap"]

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
# The library's JSONTranscoder writes objects it cannot represent in JSON as
# {"_type_": name, "_data_": value} (eventsourcing.persistence.JSONTranscoder).
_ENVELOPE = frozenset(("_type_", "_data_"))


def unwrap(value: Any) -> Any:
    """The JSON value with every transcoding envelope replaced by its ``_data_``."""
    if isinstance(value, dict):
        if len(value) == 2 and value.keys() == _ENVELOPE:
            return unwrap(value["_data_"])
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


_IN_ENV = "not for an eventsourcing source (configure it in env, as the application does)"
PERSISTENCE_MODULES = ("eventsourcing.sqlite", "eventsourcing.postgres")


@dataclass(frozen=True)
class EventsourcingSettings:
    """An eventsourcing source reads the notification log of the application named
    ``application``, whose persistence is configured by ``env`` exactly as the
    application's own environment configures it."""

    misplaced_keys: ClassVar[Mapping[str, str]] = dict.fromkeys(
        ("dsn", "table", "query", "notify"), _IN_ENV)

    application: str | None = None
    # repr=False: an env may hold a password (POSTGRES_PASSWORD, CIPHER_KEY).
    env: dict[str, str] = field(default_factory=dict, repr=False)
    state: str = "json"

    def __post_init__(self) -> None:
        if not self.application:
            raise SettingError("application", "required for an eventsourcing source "
                               "(the application's name, e.g. \"DogSchool\")")
        module = self.env.get("PERSISTENCE_MODULE", "")
        if module not in PERSISTENCE_MODULES:
            raise SettingError("env", "PERSISTENCE_MODULE must be eventsourcing.sqlite "
                               f"or eventsourcing.postgres, not {module!r}")
        if self.state not in ("json", "base64"):
            raise SettingError("state", "must be json or base64")

    @property
    def name(self) -> str:
        assert self.application is not None  # checked above
        return self.application


class EventsourcingSource(Source):
    kind = "eventsourcing"
    settings = EventsourcingSettings
    options: EventsourcingSettings

    def __init__(self, config: GatherConfig, options: EventsourcingSettings) -> None:
        super().__init__(config, options)
        try:
            from eventsourcing.persistence import InfrastructureFactory, JSONTranscoder
            from eventsourcing.utils import Environment
        except ImportError as exc:
            raise SourceError("an eventsourcing source needs the eventsourcing package: "
                              "pip install 'herald[gather]'", code="missing_driver") from exc
        name = options.name
        env = dict(options.env)
        # Herald only reads: it must never create the application's tables.
        env["CREATE_TABLE"] = env[f"{name.upper()}_CREATE_TABLE"] = "no"
        self.env = Environment(name=name, env=env)
        try:
            factory = InfrastructureFactory.construct(self.env)
            recorder: Any = factory.application_recorder()
            self.cipher = factory.cipher()
            self.compressor = factory.compressor()
            transcoder = factory.transcoder()
        except Exception as exc:  # the library raises OSError, ValueError, its own…
            raise SourceError(f"gatherer {config.name}: the eventsourcing environment does "
                              f"not work: {exc}", code="bad_source_config") from exc
        self.json = isinstance(transcoder, JSONTranscoder)
        self.table: str = recorder.events_table_name
        datastore = recorder.datastore
        # UUID ids are shown as UUIDs whatever the store keeps (SQLite: hex, no dashes).
        self.uuids = getattr(datastore, "originator_id_type", "uuid") == "uuid"
        if options.env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres":
            self.inner: PostgresSource | SqliteSource = self._postgres(recorder, datastore)
        else:
            self.inner = self._sqlite(datastore)
        self.wakes = self.inner.wakes

    def _postgres(self, recorder: Any, datastore: Any) -> PostgresSource:
        from psycopg.conninfo import make_conninfo

        schema = datastore.schema
        pool = datastore.pool
        params = {k: v for k, v in pool.kwargs.items()
                  if k in ("dbname", "host", "port", "user", "password")}

        def conninfo() -> str:
            if pool.get_password_func is not None:
                params["password"] = pool.get_password_func()
            return make_conninfo(**params)

        self._where = pg_describe(make_conninfo(
            **{k: v for k, v in params.items() if k != "password"}))
        inner = dataclasses.replace(self.config, source="postgres", options={})
        settings = PostgresSettings(dsn="(from env)", table=f"{schema}.{self.table}",
                                    position="notification_id", notify=recorder.channel_name)
        return PostgresSource(inner, settings,
                              ["topic", "state", "originator_id", "originator_version"],
                              conninfo)

    def _sqlite(self, datastore: Any) -> SqliteSource:
        path = datastore.pool.db_name
        if not path or ":memory:" in path or "mode=memory" in path:
            raise SourceError(f"gatherer {self.config.name}: an in-memory SQLite database "
                              "cannot be read by another process", code="bad_source_config")
        self._where = f"sqlite {path}"
        # The library's path, as the application opens it (not the config file's).
        inner = dataclasses.replace(self.config, source="sqlite", options={}, base=None)
        settings = SqliteSettings(dsn=path, table=self.table, position="rowid")
        return SqliteSource(inner, settings,
                            ["topic", "state", "originator_id", "originator_version"])

    # delegated to the table reader

    def open(self) -> None:
        if isinstance(self.inner, SqliteSource) and not os.path.exists(self.inner.path):
            from ..errors import SourceUnavailable

            raise SourceUnavailable(f"{self.describe()}: no such database file")
        self.inner.open()

    def close(self) -> None:
        self.inner.close()

    def read(self, after: int | None, limit: int) -> SourceRead:
        return self.inner.read(after, limit)

    def position(self, row: Any) -> int:
        return self.inner.position(row)

    def bounds(self) -> tuple[int, int] | None:
        return self.inner.bounds()

    def wait(self, timeout: float) -> bool:
        return self.inner.wait(timeout)

    def describe(self) -> str:
        return f"eventsourcing {self.options.name} ({self._where} table {self.table})"

    # mapping

    def event(self, row: Any, meta: dict[str, str]) -> NewEvent:
        _, topic, state, originator_id, version = row
        if not isinstance(topic, str) or not topic:
            raise Unmappable("it has no topic")
        state = bytes(state) if state is not None else b""
        try:
            if self.cipher is not None:
                state = self.cipher.decrypt(state)
            if self.compressor is not None:
                state = self.compressor.decompress(state)
        except Exception as exc:  # the library's cipher and compressor raise their own
            raise Unmappable(f"its state cannot be decrypted or decompressed with the "
                             f"configured CIPHER_*/COMPRESSOR_TOPIC settings ({exc})") from None
        if self.options.state == "base64":
            data = msgspec.Raw(_encoder.encode({"base64": base64.b64encode(state).decode()}))
        else:
            data = self._json(state)
        if self.uuids and not isinstance(originator_id, UUID):
            try:
                originator_id = UUID(str(originator_id))
            except ValueError:
                pass  # shown as stored
        meta = {"topic": topic, "originator_id": str(originator_id),
                "originator_version": str(version), **meta}
        return NewEvent(type=topic.rpartition(":")[2], data=data, meta=meta)

    def _json(self, state: bytes) -> msgspec.Raw:
        try:
            value = _decoder.decode(state)
        except msgspec.DecodeError:
            hint = ("the application's transcoder is not JSON" if not self.json else
                    "the application may encrypt (CIPHER_TOPIC, CIPHER_KEY) or compress "
                    "(COMPRESSOR_TOPIC) its events: give Herald the same settings in env")
            raise Unmappable(f"its state is not JSON ({hint}; or set state = \"base64\" to "
                             "pass states as they are)") from None
        if b'"_type_"' not in state:
            return msgspec.Raw(state)
        return msgspec.Raw(_encoder.encode(unwrap(value)))
