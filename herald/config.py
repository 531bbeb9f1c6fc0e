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
"""

from __future__ import annotations

import dataclasses
import importlib
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
    "Config",
    "ConfigError",
    "PrincipalConfig",
    "GatherConfig",
    "SettingError",
    "ServerConfig",
    "UserConfig",
    "StorageConfig",
    "TLSConfig",
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


@dataclass(frozen=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    # Plain HTTP "HOST:PORT" that answers every request with a redirect to HTTPS.
    http_redirect: str | None = None
    header_timeout: float = HEADER_TIMEOUT_SECONDS
    body_timeout: float = BODY_TIMEOUT_SECONDS
    rate_limit: float = RATE_LIMIT_PER_SECOND
    rate_burst: int = RATE_BURST

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        if self.http_redirect is not None:
            parse_listen(self.http_redirect, "[server] http_redirect")
        for name in ("header_timeout", "body_timeout", "rate_limit"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[server] {name}: must be above 0")
        if self.rate_burst < 1:
            raise ConfigError("[server] rate_burst: must be at least 1")


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
    batch: int = DEFAULT_GATHER_BATCH
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
        if not 1 <= self.batch <= Limits.max_batch_events:
            raise ConfigError(f"{where} batch: must be 1 to {Limits.max_batch_events}")


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
                return float(value)
        except ValueError:
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


class SettingError(ValueError):
    """Raised by a settings class's checks (``__post_init__``) that know the key at
    fault but not the table's label: ``build_section`` names both, as in
    ``[[gather]] inventory-db dsn: required for a postgres source``."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


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
    except SettingError as exc:
        where = f"{label} {exc.key}" if exc.key else label
        raise ConfigError(f"{where}: {exc.message}") from None
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: {exc}") from exc


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
    env = _from_environment(os.environ if environ is None else environ, str(engine))
    _merge(raw, env)
    if overrides:
        _merge(raw, overrides)
    return config_from_dict(raw, base)


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
