"""Configuration: one TOML file, ``HERALD_…`` environment variables, command-line flags.

Precedence, lowest first: defaults, the file (``--config``), the environment, flags.
Every section is a small frozen dataclass; an unknown or mistyped key is an error
that names the key (``[server] listen: expected "HOST:PORT"``).

Environment variables: ``HERALD_DATA`` for the top-level ``data`` key, and
``HERALD_<SECTION>_<KEY>`` for scalar keys, e.g. ``HERALD_SERVER_LISTEN``,
``HERALD_STORAGE_ENGINE``, ``HERALD_STORAGE_DSN``, ``HERALD_LIMITS_DEDUP_WINDOW``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import HeraldError
from .model import Limits

__all__ = [
    "Config",
    "ConfigError",
    "ServerConfig",
    "StorageConfig",
    "TLSConfig",
    "load_config",
    "parse_listen",
]

DEFAULT_DATA_DIR = Path("herald-data")
DEFAULT_LISTEN = "127.0.0.1:8443"


class ConfigError(HeraldError):
    status = 400
    default_code = "invalid_config"


def parse_listen(value: str, key: str = "[server] listen") -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:8443"`` for IPv6) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f'{key}: expected "HOST:PORT", got {value!r}')
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN

    def __post_init__(self) -> None:
        parse_listen(self.listen)


@dataclass(frozen=True)
class TLSConfig:
    # Default: <data>/tls/server.pem and server.key, created on first start.
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class StorageConfig:
    engine: str = "files"
    # postgres: a libpq connection string or URI ("postgresql://user@host/db").
    dsn: str | None = None
    segment_bytes: int = 256 * 1024 * 1024
    # postgres: the schema Herald's tables live in (created on start). Several
    # Herald deployments can share one database under different schemas.
    schema: str = "herald"
    # postgres: connections per node. Each node needs one more for LISTEN.
    pool_size: int = 10


@dataclass(frozen=True)
class Config:
    data: Path = DEFAULT_DATA_DIR
    server: ServerConfig = field(default_factory=ServerConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: Limits = field(default_factory=Limits)

    @property
    def tls_dir(self) -> Path:
        return self.data / "tls"

    @property
    def admin_token_path(self) -> Path:
        return self.data / "admin-token"


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "tls": TLSConfig,
    "storage": StorageConfig,
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
            return int(value)
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
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    return value


def build_section(cls: type[Any], table: Mapping[str, Any], section: str,
                  base: Path | None = None) -> Any:
    """Build a section dataclass from a table, naming any bad key."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{section}]: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"[{section}] {key}: unknown key (known: {', '.join(sorted(names))})")
        coerced = _coerce(value, hints[key], f"[{section}] {key}")
        if isinstance(coerced, Path) and base is not None and not coerced.is_absolute():
            coerced = base / coerced  # paths in a file are relative to the file
        values[key] = coerced
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}]: {exc}") from exc


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    if "HERALD_DATA" in environ:
        tables["data"] = str(Path(environ["HERALD_DATA"]).absolute())
    for section, cls in _SECTIONS.items():
        prefix = f"HERALD_{section.upper()}_"
        for f in dataclasses.fields(cls):
            name = prefix + f.name.upper()
            if name in environ:
                tables.setdefault(section, {})[f.name] = environ[name]
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
    env = _from_environment(os.environ if environ is None else environ)
    _merge(raw, env)
    if overrides:
        _merge(raw, overrides)
    return config_from_dict(raw, base)


def config_from_dict(raw: Mapping[str, Any], base: Path | None = None) -> Config:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "data":
            data = _coerce(value, Path, "data")
            values["data"] = base / data if base is not None and not data.is_absolute() else data
        elif key in _SECTIONS:
            values[key] = build_section(_SECTIONS[key], value, key, base)
        else:
            known = ", ".join(["data", *(f"[{s}]" for s in _SECTIONS)])
            raise ConfigError(f"{key}: unknown key (known: {known})")
    return Config(**values)
