"""Configuration: one TOML file, ``HERALD_…`` environment variables, command-line flags.

Precedence, lowest first: defaults, the file (``--config``), the environment, flags.
Every section is a small frozen dataclass; an unknown or mistyped key is an error
that names the key (``[server] listen: expected "HOST:PORT"``).

Environment variables: ``HERALD_DATA`` for the top-level ``data`` key, and
``HERALD_<SECTION>_<KEY>`` for scalar keys, e.g. ``HERALD_SERVER_LISTEN``,
``HERALD_LIMITS_DEDUP_WINDOW``, ``HERALD_TLS_CLIENT_CA``; ``HERALD_STORAGE_ENGINE``
and ``HERALD_STORAGE_<ENGINE>_<KEY>`` for the engine's own table (``[storage.postgres]
dsn``: ``HERALD_STORAGE_POSTGRES_DSN``, or the older ``HERALD_STORAGE_DSN``).
Principals (``[[principal]]``), dashboard users (``[[user]]``) and gatherers
(``[[gather]]``, one per source, see GatherConfig) are lists of tables and live in
the file only.

Why one module of ~770 lines: a key's whole life — its dataclass field, its range,
its coercion, and the precedence of file, environment and flags — is read in one
place; the engines' and sources' own tables are parsed by their own classes
(``engines.engine_settings``, ``gather.manager.source_settings``), not here.

Every number is range-checked, wherever it came from: a setting is a field declared
with ``bounded(default, low, high)`` and its class's ``__post_init__`` calls
``check_bounds``, so ``nan``, ``inf``, a negative timeout or a rate of 10^300 — each
of which would quietly switch a protection off — is a one-line error naming the key
(``[server] header_timeout: must be above 0 and at most 3600 s, got -1.0``; a
non-finite one is refused as it is read). Booleans are never taken for numbers. The
settings classes of engines and sources do the same; tests/unit/test_config_ranges.py
finds every numeric field of every settings class and proves it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, HeraldError
from .model import Limits, validate_stream_name
from .passwords import PasswordHashError, parse_hash

__all__ = [
    "Bounds",
    "Config",
    "ConfigError",
    "PrincipalConfig",
    "GatherConfig",
    "SettingError",
    "ServerConfig",
    "UserConfig",
    "StorageConfig",
    "TLSConfig",
    "bounded",
    "bounded_fields",
    "check_bounds",
    "load_config",
    "parse_listen",
]

DEFAULT_DATA_DIR = Path("herald-data")
DEFAULT_LISTEN = "127.0.0.1:8443"


def parse_listen(value: str, key: str = "[server] listen") -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:8443"`` for IPv6) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f'{key}: expected "HOST:PORT", got {value!r}')
    return host.strip("[]") or "0.0.0.0", int(port)


class SettingError(ValueError):
    """Raised by a settings class's checks (``__post_init__``) that know the key at
    fault but not the table's label: ``build_section`` names both, as in
    ``[[gather]] inventory-db dsn: required for a postgres source``."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric setting: ``low`` to ``high`` inclusive, or above ``low``
    (``above=True``: a timeout of 0 is none). ``unit`` is for messages ("s")."""

    low: float
    high: float
    above: bool = False
    unit: str = ""

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.above:
            return f"above {_number(self.low)} and at most {_number(self.high)}{unit}"
        return f"{_number(self.low)} to {_number(self.high)}{unit}"

    def problem(self, value: object, integer: bool) -> str | None:
        """Why ``value`` is not a setting in these bounds; None if it is one."""
        if integer:
            if type(value) is not int:  # bool is an int to Python, never to Herald
                return f"expected an integer, got {value!r}"
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {value!r}"
        # nan passes every comparison below (nan <= 0 is false): refused first
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number {self.describe()}, got {value!r}"
        # An int is compared exactly, never converted (10**400 is no float).
        too_low = value <= self.low if self.above else value < self.low
        if too_low or value > self.high:
            return f"must be {self.describe()}, got {value!r}"
        return None


def bounded(default: float, low: float, high: float, *, above: bool = False,
            unit: str = "") -> Any:
    """A numeric setting's dataclass field and its Bounds (checked by check_bounds):
    ``header_timeout: float = bounded(30.0, 0, 3600, above=True, unit="s")``."""
    return field(default=default, metadata={"bounds": Bounds(low, high, above, unit)})


# class → its bounded fields: (name, Bounds, an int, not a float?), found once.
_BOUNDED: dict[type[Any], tuple[tuple[str, Bounds, bool], ...]] = {}


def bounded_fields(cls: type[Any]) -> tuple[tuple[str, Bounds, bool], ...]:
    """The ``bounded`` fields of a settings class: (name, Bounds, is an integer)."""
    found = _BOUNDED.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        fields = []
        for f in dataclasses.fields(cls):
            bounds = f.metadata.get("bounds")
            if bounds is not None:
                types = {hints[f.name], *typing.get_args(hints[f.name])} - {type(None)}
                fields.append((f.name, bounds, float not in types))
        found = _BOUNDED[cls] = tuple(fields)
    return found


def check_bounds(settings: Any, label: str | None = None) -> None:
    """The first ``bounded`` field of ``settings`` that is not a number of its type
    within its Bounds (None passes, for an optional setting): a ConfigError naming
    ``label`` and the key (``[server] rate_limit: …``), or without a label (a class
    that does not know its table's) a SettingError naming the key."""
    for name, bounds, integer in bounded_fields(type(settings)):
        value = getattr(settings, name)
        if value is not None:
            problem = bounds.problem(value, integer)
            if problem is not None:
                if label is not None:
                    raise ConfigError(f"{label} {name}: {problem}")
                raise SettingError(name, problem)


# A client has this long to send a request's headers, counted from connecting or
# from the end of its previous request; an idle keep-alive connection is closed
# after it too. A client that sends its headers byte by byte (slowloris) is cut
# off here. Above the Python client's own keep-alive (15 s), so the client, not
# the server, closes idle connections and never reuses one being closed.
HEADER_TIMEOUT_SECONDS = 30.0
# A request's body must arrive within this long: 16 MiB (the largest batch) at
# 280 KB/s. Slower uploads would pin a connection and the memory of the body.
BODY_TIMEOUT_SECONDS = 60.0
# Requests per second each principal may make, with bursts up to RATE_BURST. A
# module appends batches (up to 10,000 events each), so 500 requests/s is far
# above honest use and still bounds what one misbehaving module costs the rest.
# The admin token is not limited: it is the operator's.
RATE_LIMIT_PER_SECOND = 500.0
RATE_BURST = 1000
# The ranges. A timeout above an hour is no timeout: a connection or an upload that
# may stall that long pins its memory all the same. Below one request per 1000 s a
# principal can hardly work; above a million per second (more than a node serves)
# the rate limit is none, and so is a burst above a million. Nothing here may be 0
# or less: that, or nan or inf, is how a protection used to be switched off.
MAX_TIMEOUT_SECONDS = 3600.0
MIN_RATE_LIMIT = 0.001
MAX_RATE_LIMIT = 1_000_000.0
MAX_RATE_BURST = 1_000_000


@dataclass(frozen=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    # Plain HTTP "HOST:PORT" that answers every request with a redirect to HTTPS.
    http_redirect: str | None = None
    header_timeout: float = bounded(HEADER_TIMEOUT_SECONDS, 0, MAX_TIMEOUT_SECONDS,
                                    above=True, unit="s")
    body_timeout: float = bounded(BODY_TIMEOUT_SECONDS, 0, MAX_TIMEOUT_SECONDS,
                                  above=True, unit="s")
    rate_limit: float = bounded(RATE_LIMIT_PER_SECOND, MIN_RATE_LIMIT, MAX_RATE_LIMIT,
                                unit="requests/s")
    rate_burst: int = bounded(RATE_BURST, 1, MAX_RATE_BURST, unit="requests")

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        if self.http_redirect is not None:
            parse_listen(self.http_redirect, "[server] http_redirect")
        check_bounds(self, "[server]")


@dataclass(frozen=True)
class TLSConfig:
    # Default: <data>/tls/server.pem and server.key, created on first start.
    cert: Path | None = None
    key: Path | None = None
    # CA certificate(s), PEM, that sign the modules' client certificates. Setting it
    # turns on mutual TLS: clients are asked for a certificate.
    client_ca: Path | None = None
    # Refuse requests (401 client_cert_required) from connections without a valid
    # client certificate; /v1/health excepted.
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        if self.require_client_cert and self.client_ca is None:
            raise ConfigError("[tls] require_client_cert: needs [tls] client_ca, the CA "
                              "that signs client certificates")


# Principal and user names appear in logs, error messages and the dashboard.
MAX_NAME_LENGTH = 128
_NAME = re.compile(r"[A-Za-z0-9._@-]+")
# Stream patterns are stream names with fnmatch's wildcards: * ? [seq] [!seq].
_PATTERN = re.compile(r"[A-Za-z0-9._\-*?\[\]!]+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# The admin token's principal; a [[principal]] may not take its name.
ADMIN_NAME = "admin"


def _check_name(name: str, key: str) -> None:
    if not _NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{key}: {name!r} is not a valid name (letters, digits, . _ @ -; "
                          f"at most {MAX_NAME_LENGTH})")


@dataclass(frozen=True)
class PrincipalConfig:
    """A ``[[principal]]``: who may publish to and subscribe to which streams.

    Matched by a client certificate's ``subject`` (RFC 4514, e.g. ``CN=inventory``)
    and/or a Bearer token, stored only as its SHA-256 (``token_sha256``, hex).
    """

    name: str
    subject: str | None = None
    token_sha256: str | None = None
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    admin: bool = False

    def __post_init__(self) -> None:
        key = f"[[principal]] {self.name}"
        _check_name(self.name, "[[principal]] name")
        if self.name == ADMIN_NAME:
            raise ConfigError(f"[[principal]] name: {ADMIN_NAME!r} is the admin token's "
                              "principal; choose another name")
        if self.subject is None and self.token_sha256 is None:
            raise ConfigError(f"{key}: needs subject (a client certificate) and/or "
                              "token_sha256 (a Bearer token)")
        if self.subject is not None:
            subject_name(self.subject, f"{key} subject")
        if self.token_sha256 is not None and not _SHA256_HEX.fullmatch(self.token_sha256):
            raise ConfigError(f"{key} token_sha256: expected 64 lowercase hex digits "
                              "(`herald tokens new` prints a token and its hash)")
        for field_name in ("publish", "subscribe"):
            for pattern in getattr(self, field_name):
                if not _PATTERN.fullmatch(pattern):
                    raise ConfigError(f"{key} {field_name}: {pattern!r} is not a stream "
                                      "pattern (stream name characters and * ? [ ] !)")


def subject_name(text: str, key: str) -> Any:
    """A subject written as RFC 4514 (``CN=inventory,O=Acme``) → an x509.Name."""
    from cryptography import x509

    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise ConfigError(f'{key}: {text!r} is not a subject like "CN=inventory"') from exc
    if not len(name):
        raise ConfigError(f'{key}: empty subject; write it like "CN=inventory"')
    return name


@dataclass(frozen=True)
class UserConfig:
    """A ``[[user]]``: a dashboard login. ``password_hash`` from ``herald users hash``."""

    name: str
    password_hash: str

    def __post_init__(self) -> None:
        _check_name(self.name, "[[user]] name")
        try:
            parse_hash(self.password_hash)
        except PasswordHashError as exc:
            raise ConfigError(f"[[user]] {self.name} password_hash: {exc}") from exc


# Keys older configurations put in [storage] itself, and the engine each belongs to
# now: ``[storage] dsn`` is read as ``[storage.postgres] dsn``. A closed list (new
# engines have only their own table).
LEGACY_STORAGE_KEYS = {"dsn": "postgres", "schema": "postgres", "pool_size": "postgres",
                       "segment_bytes": "files"}
_ENGINE_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")


@dataclass(frozen=True)
class StorageConfig:
    """``[storage]``: the engine, and each engine's own table ``[storage.<engine>]``.

    The tables stay raw here: each engine parses its own with its settings class
    (``herald.engines.create_engine``), so adding an engine never touches this file.
    """

    engine: str = "files"
    # engine name → its table, as written (values from the environment are strings)
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def section(self, engine: str | None = None) -> dict[str, Any]:
        """The table of ``engine`` (the configured one by default)."""
        return dict(self.sections.get(engine or self.engine, {}))


def _storage(table: Any, environ: Mapping[str, str] | None = None) -> StorageConfig:
    if not isinstance(table, Mapping):
        raise ConfigError("[storage]: expected a table")
    engine = _coerce(table.get("engine", "files"), str, "[storage] engine")
    if not _ENGINE_NAME.fullmatch(engine):
        raise ConfigError(f"[storage] engine: {engine!r} is not an engine name")
    sections: dict[str, dict[str, Any]] = {}
    legacy: dict[str, dict[str, Any]] = {}
    for key, value in table.items():
        if key == "engine":
            continue
        if isinstance(value, Mapping):
            if not _ENGINE_NAME.fullmatch(key):
                raise ConfigError(f"[storage.{key}]: {key!r} is not an engine name")
            sections[key] = dict(value)
        elif key in LEGACY_STORAGE_KEYS:
            legacy.setdefault(LEGACY_STORAGE_KEYS[key], {})[key] = value
        else:
            raise ConfigError(f"[storage] {key}: unknown key (engine, or a table "
                              f"[storage.<engine>] of the engine's own keys)")
    for name, keys in legacy.items():
        section = sections.setdefault(name, {})
        for key, value in keys.items():
            if key in section and section[key] != value:
                raise ConfigError(f"[storage] {key} and [storage.{name}] {key}: both given; "
                                  f"keep [storage.{name}] {key}")
            section.setdefault(key, value)
    return StorageConfig(engine=engine, sections=sections)


# A gatherer's name is stamped on every event it gathers (meta.source) and appears in
# URLs and checkpoint names: the alphabet of a stream name, and short.
MAX_GATHERER_NAME_LENGTH = 64
_GATHERER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Rows per append while backfilling. A batch is one record: 2,000 rows of ~200 bytes
# are ~400 KiB, large enough that the per-append cost (one fsync) is shared by many
# rows, small enough to keep a gatherer's memory and a reader's skip-into-batch small.
DEFAULT_GATHER_BATCH = 2000


@dataclass(frozen=True)
class GatherConfig:
    """One ``[[gather]]`` table: copy one source into one stream, exactly once.

    Only what every gatherer has is parsed here; the table's other keys are the
    source's own (``dsn``, ``table``, ``application``…), kept raw in ``options`` and
    parsed by the source's settings class when the node starts
    (``herald.gather.manager.create_source``), so adding a source never touches
    this file.
    """

    name: str
    stream: str
    # the source kind, a key of herald.gather.manager.SOURCES (checked there)
    source: str
    batch: int = bounded(DEFAULT_GATHER_BATCH, 1, Limits.max_batch_events)
    # The source's keys, as written. repr=False: a DSN or an env may hold a password,
    # and a config is never logged whole.
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # The config file's directory: a relative path among the options (a SQLite dsn)
    # is relative to it. None: to the working directory.
    base: Path | None = None

    def __post_init__(self) -> None:
        where = f"[[gather]] {self.name}"
        if not _GATHERER_NAME.fullmatch(self.name) or len(self.name) > MAX_GATHERER_NAME_LENGTH:
            raise ConfigError(f"[[gather]] name: {self.name!r} is not a valid gatherer name "
                              f"(1 to {MAX_GATHERER_NAME_LENGTH} of A-Z a-z 0-9 . _ -)")
        try:
            validate_stream_name(self.stream)
        except HeraldError as exc:
            raise ConfigError(f"{where} stream: {exc.message}") from None
        if not self.source:
            raise ConfigError(f"{where} source: must name a source (sqlite, postgres…)")
        check_bounds(self, where)


@dataclass(frozen=True)
class Config:
    data: Path = DEFAULT_DATA_DIR
    server: ServerConfig = field(default_factory=ServerConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: Limits = field(default_factory=Limits)
    principals: tuple[PrincipalConfig, ...] = ()
    users: tuple[UserConfig, ...] = ()
    gather: tuple[GatherConfig, ...] = ()
    # The file it was read from (None: none), and the secrets written in that file
    # ("[[user]] password hashes", "[storage.postgres] dsn"): the node warns when
    # every local user can read them. Not part of what the configuration means.
    file: Path | None = field(default=None, compare=False)
    file_secrets: tuple[str, ...] = field(default=(), compare=False)

    @property
    def tls_dir(self) -> Path:
        return self.data / "tls"

    @property
    def admin_token_path(self) -> Path:
        return self.data / "admin-token"


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "tls": TLSConfig,
    "limits": Limits,
}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert a TOML (or environment string) value to a field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            try:
                return int(value)
            except ValueError:  # "--5", or "²": a digit to isdigit(), not to int()
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        try:
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                number = float(value)
                if math.isfinite(number):
                    return number
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        except (ValueError, OverflowError):  # "x"; an int too large for a float
            pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if hint is Path:
        if isinstance(value, str):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    if origin is dict:
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(f"{key}: expected a table of strings, got {value!r}")
        return dict(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    return value


def registered_class(registry: Mapping[str, str], name: str, label: str,
                     kind: str) -> type[Any]:
    """The class a registry (name → "module:Class") names, its module imported now:
    how engines and gatherer sources are chosen by name, and their dependencies
    imported only when chosen. ConfigError, naming ``label`` and the known names,
    for a name the registry does not have ("[storage] engine: unknown engine 'x'")."""
    target = registry.get(name)
    if target is None:
        raise ConfigError(f"{label}: unknown {kind} {name!r} "
                          f"(known: {', '.join(sorted(registry))})")
    module_name, class_name = target.split(":")
    cls: type[Any] = getattr(importlib.import_module(module_name), class_name)
    return cls


def build_section(cls: type[Any], table: Mapping[str, Any], section: str,
                  base: Path | None = None, *, label: str | None = None) -> Any:
    """Build a section dataclass from a table, naming any bad key.

    A class may say, in ``misplaced_keys`` (a ClassVar: key → message), why a key
    that is not its own is wrong here: people write it, in the wrong place.
    """
    label = label or f"[{section}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{label}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    misplaced: Mapping[str, str] = getattr(cls, "misplaced_keys", {})
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            if key in misplaced:
                raise ConfigError(f"{label} {key}: {misplaced[key]}")
            raise ConfigError(f"{label} {key}: unknown key (known: {', '.join(sorted(names))})")
        coerced = _coerce(value, hints[key], f"{label} {key}")
        if isinstance(coerced, Path) and base is not None and not coerced.is_absolute():
            coerced = base / coerced  # paths in a file are relative to the file
        values[key] = coerced
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        # A settings class's own check names its key (SettingError, model.LimitError).
        at_fault = getattr(exc, "key", None)
        where = f"{label} {at_fault}" if isinstance(at_fault, str) and at_fault else label
        raise ConfigError(f"{where}: {getattr(exc, 'message', exc)}") from None


def _storage_environment(environ: Mapping[str, str], engine: str) -> dict[str, Any]:
    """``HERALD_STORAGE_ENGINE``, the legacy ``HERALD_STORAGE_DSN`` (and the other
    LEGACY_STORAGE_KEYS), and ``HERALD_STORAGE_<ENGINE>_<KEY>`` for the configured
    engine's own table (``azure-blob``: ``HERALD_STORAGE_AZURE_BLOB_…``)."""
    table: dict[str, Any] = {}
    if "HERALD_STORAGE_ENGINE" in environ:
        table["engine"] = environ["HERALD_STORAGE_ENGINE"]
        engine = environ["HERALD_STORAGE_ENGINE"]
    for key, owner in LEGACY_STORAGE_KEYS.items():
        if f"HERALD_STORAGE_{key.upper()}" in environ:  # into the owner's table: the
            # environment overrides the file's [storage.<owner>] key, as everywhere
            table.setdefault(owner, {})[key] = environ[f"HERALD_STORAGE_{key.upper()}"]
    prefix = f"HERALD_STORAGE_{engine.upper().replace('-', '_')}_"
    for name, value in environ.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            table.setdefault(engine, {})[name[len(prefix):].lower()] = value
    return table


def _from_environment(environ: Mapping[str, str], engine: str = "files") -> dict[str, Any]:
    tables: dict[str, Any] = {}
    if "HERALD_DATA" in environ:
        tables["data"] = str(Path(environ["HERALD_DATA"]).absolute())
    storage = _storage_environment(environ, engine)
    if storage:
        tables["storage"] = storage
    for section, cls in _SECTIONS.items():
        prefix = f"HERALD_{section.upper()}_"
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = prefix + f.name.upper()
            if name in environ:
                value = environ[name]
                if Path in (hints[f.name], *typing.get_args(hints[f.name])) and value:
                    # relative to the working directory, like HERALD_DATA: only paths
                    # written in the file are relative to the file
                    value = str(Path(value).absolute())
                tables.setdefault(section, {})[f.name] = value
    return tables


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read the config file (if any), then the environment, then ``overrides``.

    ``overrides`` has the file's shape, e.g. ``{"server": {"listen": "…"}}``.
    """
    raw: dict[str, Any] = {}
    base: Path | None = None
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        base = Path(path).parent
    file_storage = raw.get("storage")
    engine = file_storage.get("engine", "files") if isinstance(file_storage, Mapping) else "files"
    secrets = _secrets_in_file(raw)
    env = _from_environment(os.environ if environ is None else environ, str(engine))
    _merge(raw, env)
    if overrides:
        _merge(raw, overrides)
    config = config_from_dict(raw, base)
    if path is None:
        return config
    return dataclasses.replace(config, file=Path(path), file_secrets=secrets)


# A password inside a DSN: "scheme://user:password@host", or "password=…".
_DSN_PASSWORD = re.compile(r"://[^/@]*:[^/@]*@|\bpassword\s*=", re.IGNORECASE)
# Environment keys of a source (eventsourcing's) that hold secrets.
_SECRET_ENV_KEY = re.compile(r"PASSWORD|SECRET|KEY|TOKEN", re.IGNORECASE)


def _secrets_in_file(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """What in a config file, as read, is a secret: people copy config files around,
    and these are worth a warning when every local user can read the file. A token's
    SHA-256 is not one (a token of 128 bits and more cannot be found from it)."""
    found: list[str] = []

    def dsn(value: Any, where: str) -> None:
        if isinstance(value, str) and _DSN_PASSWORD.search(value):
            found.append(f"{where} dsn")

    users = raw.get("user")
    if isinstance(users, list) and users:
        found.append("[[user]] password hashes")
    storage = raw.get("storage")
    if isinstance(storage, Mapping):
        dsn(storage.get("dsn"), "[storage]")
        for name, table in storage.items():
            if isinstance(table, Mapping):
                dsn(table.get("dsn"), f"[storage.{name}]")
    gatherers = raw.get("gather")
    for table in gatherers if isinstance(gatherers, list) else ():
        if isinstance(table, Mapping):
            where = f"[[gather]] {table.get('name', '?')}"
            dsn(table.get("dsn"), where)
            env = table.get("env")
            if isinstance(env, Mapping) and any(_SECRET_ENV_KEY.search(str(k)) for k in env):
                found.append(f"{where} env")
    return tuple(found)


# Lists of tables: TOML key → (class, Config field).
_LISTS: dict[str, tuple[type[Any], str]] = {
    "principal": (PrincipalConfig, "principals"),
    "user": (UserConfig, "users"),
}


def _build_list(key: str, value: Any) -> tuple[Any, ...]:
    cls, _field = _LISTS[key]
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected [[{key}]] tables")
    items = []
    for index, table in enumerate(value, 1):
        label = f"[[{key}]] #{index}"
        if isinstance(table, Mapping):
            missing = [f.name for f in dataclasses.fields(cls)
                       if f.default is dataclasses.MISSING and f.name not in table]
            if missing:
                raise ConfigError(f"{label}: missing {', '.join(missing)}")
            if isinstance(table.get("name"), str):
                label = f"[[{key}]] {table['name']}"
        items.append(build_section(cls, table, key, None, label=label))
    names = [item.name for item in items]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"[[{key}]] {name}: the name is used twice")
    return tuple(items)


def _check_principals(principals: tuple[PrincipalConfig, ...]) -> None:
    seen_subjects: dict[Any, str] = {}
    seen_tokens: dict[str, str] = {}
    for principal in principals:
        if principal.subject is not None:
            subject = subject_name(principal.subject, "subject")
            if subject in seen_subjects:
                raise ConfigError(f"[[principal]] {principal.name} subject: "
                                  f"{principal.subject} is also {seen_subjects[subject]}'s")
            seen_subjects[subject] = principal.name
        if principal.token_sha256 is not None:
            if principal.token_sha256 in seen_tokens:
                raise ConfigError(f"[[principal]] {principal.name} token_sha256: "
                                  f"also {seen_tokens[principal.token_sha256]}'s")
            seen_tokens[principal.token_sha256] = principal.name


def config_from_dict(raw: Mapping[str, Any], base: Path | None = None) -> Config:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "data":
            data = _coerce(value, Path, "data")
            values["data"] = base / data if base is not None and not data.is_absolute() else data
        elif key == "storage":
            values[key] = _storage(value)
        elif key in _SECTIONS:
            values[key] = build_section(_SECTIONS[key], value, key, base)
        elif key in _LISTS:
            values[_LISTS[key][1]] = _build_list(key, value)
        elif key == "gather":
            values[key] = _gatherers(value, base)
        else:
            known = ", ".join(["data", "[storage]", *(f"[{s}]" for s in _SECTIONS),
                               *(f"[[{s}]]" for s in _LISTS), "[[gather]]"])
            raise ConfigError(f"{key}: unknown key (known: {known})")
    _check_principals(values.get("principals", ()))
    return Config(**values)


# The keys of a [[gather]] table that are the gatherer's; the others are its source's.
_GATHER_KEYS = ("name", "stream", "source", "batch")


def _gatherers(value: Any, base: Path | None) -> tuple[GatherConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError("gather: expected an array of tables, [[gather]]")
    gatherers: list[GatherConfig] = []
    for index, table in enumerate(value):
        label = f"[gather] #{index + 1}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{label}: expected a table")
        for required in ("name", "stream", "source"):
            if required not in table:
                raise ConfigError(f"{label}: {required} is required")
        own = {k: v for k, v in table.items() if k in _GATHER_KEYS}
        options = {k: v for k, v in table.items() if k not in _GATHER_KEYS}
        name = table["name"]
        gatherer: GatherConfig = build_section(
            GatherConfig, own, "gather", label=f"[[gather]] {name}" if isinstance(name, str)
            else label)
        gatherers.append(dataclasses.replace(gatherer, options=options, base=base))
    names = [g.name for g in gatherers]
    streams = [g.stream for g in gatherers]
    for index, gatherer in enumerate(gatherers):
        if names.index(gatherer.name) != index:
            raise ConfigError(f"[[gather]] {gatherer.name}: two gatherers have this name")
        if streams.index(gatherer.stream) != index:
            # Each gatherer resumes from its stream's last event: two sources in one
            # stream would see each other's events there and stop.
            raise ConfigError(f"[[gather]] {gatherer.name} stream: {gatherer.stream} is "
                              "already gathered into by another gatherer")
    return tuple(gatherers)
