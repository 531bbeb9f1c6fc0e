"""Every numeric setting is range-checked, from every way it can be given.

The incident: ``nan`` and ``inf`` were accepted for timeouts and rate limits, and
silently switched them off (``nan <= 0`` is false, so "must be above 0" let it
through; aiohttp then never timed out). What this proves, for every numeric field
of every settings class — found by introspection, so a setting added later without
a range fails here:

* the classes are all of them: the sections of ``Config`` (followed through its
  type hints, lists of tables included), every engine's settings class
  (``herald.engines.ENGINES``) and every gatherer source's (``gather.SOURCES``); a
  class with a numeric field that this file cannot reach is a failure that says so;
* every numeric field declares its range (``config.bounded``) — but ``[limits]``,
  whose upper bounds are checked against the record format where the limits are
  defined (herald.model), and which must here be finite integers of at least 1;
* from the file, the environment (``HERALD_…``) and the flags (``overrides``):
  ``nan``, ``inf``, ``-inf``, a boolean, a value just below the range and one just
  above it, and (for an integer) a fraction are each a ConfigError, code
  ``invalid_config``, one line, naming the table and the key; the range's ends load;
* constructing a settings class directly (as engines and tests do) checks the same;
* docs/configuration.md states each range next to its key;
* the client commands' numeric flags (``--days``, ``--batch``, ``--expected-head``,
  ``--from``) are usage errors naming the flag outside their ranges (``--days
  9999999999`` was an OverflowError).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from herald.config import (
    Bounds,
    Config,
    ConfigError,
    GatherConfig,
    SettingError,
    bounded_fields,
    config_from_dict,
    load_config,
    registered_class,
)
from herald.engines import ENGINES, engine_class, engine_settings
from herald.engines.azure_account import AZURITE_CONNECTION_STRING
from herald.gather.manager import SOURCES, source_settings
from herald.model import Limits

from ..conftest import ROOT

# --- finding every settings class ---------------------------------------------------


def _dataclasses_in(hint: Any) -> Iterator[type[Any]]:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        yield hint
    for arg in typing.get_args(hint):
        yield from _dataclasses_in(arg)


def config_classes() -> list[type[Any]]:
    """Config and every dataclass its fields hold, followed through the type hints."""
    found: list[type[Any]] = []
    todo: list[type[Any]] = [Config]
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.append(cls)
        for hint in typing.get_type_hints(cls).values():
            todo.extend(_dataclasses_in(hint))
    return found


def engine_classes() -> dict[str, type[Any]]:
    return {name: engine_class(name).settings for name in ENGINES}


def source_classes() -> dict[str, type[Any]]:
    return {name: registered_class(SOURCES, name, "source", "source").settings
            for name in SOURCES}


def numeric_fields(cls: type[Any]) -> list[tuple[str, bool]]:
    """(name, is an integer) of every int or float field, optional ones included."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        types = {hints[f.name], *typing.get_args(hints[f.name])} - {type(None)}
        if types & {int, float}:
            out.append((f.name, float not in types))
    return out


# --- how a value reaches each class: the file, the environment, the flags ---------------

_GATHER = {"name": "g", "stream": "s", "source": "sqlite", "dsn": "m.db", "table": "events"}
# A valid table of each source's own keys; a new source needs one here.
SOURCE_BASES: dict[str, dict[str, Any]] = {
    "sqlite": {"dsn": "m.db", "table": "events"},
    "postgres": {"dsn": "postgresql://db/x", "table": "events"},
    "mysql": {"dsn": "mysql://u@db/x", "table": "events"},
    "eventsourcing": {"application": "DogSchool",
                      "env": {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}},
}
# A valid table of each engine's own keys; a new engine with required keys needs one.
ENGINE_BASES: dict[str, dict[str, Any]] = {
    "postgres": {"dsn": "postgresql://db/x"},
    "azure-blob": {"connection_string": AZURITE_CONNECTION_STRING},
    "azure-table": {"connection_string": AZURITE_CONNECTION_STRING},
}


@dataclass(frozen=True)
class Route:
    """How a setting of one class is given, and where its error is raised."""

    cls: type[Any]
    label: str  # as errors name the table: "[server]", "[[gather]] g"
    # the file's shape with ``key = value`` in the right table
    table: Callable[[str, Any], dict[str, Any]]
    # the environment variable of a key, or None (lists of tables: the file only)
    env: Callable[[str], str] | None = None
    # what builds the class from a loaded config (the engine's and sources' tables
    # are parsed when the node is built, not when the file is read)
    build: Callable[[Config], Any] = lambda config: config
    # the keyword arguments the class needs besides the one tested
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _section(name: str, cls: type[Any]) -> Route:
    return Route(cls, f"[{name}]", lambda key, value: {name: {key: value}},
                 env=lambda key: f"HERALD_{name.upper()}_{key.upper()}")


def _engine(name: str, cls: type[Any]) -> Route:
    base = ENGINE_BASES.get(name, {})
    return Route(
        cls, f"[storage.{name}]",
        lambda key, value: {"storage": {"engine": name, name: {**base, key: value}}},
        env=lambda key: f"HERALD_STORAGE_{name.upper().replace('-', '_')}_{key.upper()}",
        build=engine_settings, kwargs=base)


def _source(name: str, cls: type[Any]) -> Route:
    base = SOURCE_BASES[name]
    return Route(
        cls, "[[gather]] g",
        lambda key, value: {"gather": [{**_GATHER, "source": name, **base, key: value}]},
        build=lambda config: source_settings(config.gather[0]), kwargs=base)


def routes() -> dict[type[Any], Route]:
    found: dict[type[Any], Route] = {}
    from herald.config import _SECTIONS

    for name, cls in _SECTIONS.items():
        found[cls] = _section(name, cls)
    found[GatherConfig] = Route(
        GatherConfig, "[[gather]] g", lambda key, value: {"gather": [{**_GATHER, key: value}]},
        kwargs={"name": "g", "stream": "s", "source": "sqlite"})
    for name, cls in engine_classes().items():
        found.setdefault(cls, _engine(name, cls))
    for name, cls in source_classes().items():
        if name not in SOURCE_BASES:
            pytest.fail(f"gather source {name!r} has no valid table in SOURCE_BASES here")
        found.setdefault(cls, _source(name, cls))
    return found


def every_class() -> list[type[Any]]:
    return list(dict.fromkeys([*config_classes(), *engine_classes().values(),
                               *source_classes().values()]))


# [limits]: finite integers of at least 1 here; their upper bounds are the record
# format's (herald.model, checked where Limits is defined).
LIMITS_LOWER = Bounds(1, math.inf)


def bounds_of(cls: type[Any], name: str) -> Bounds:
    declared = {n: b for n, b, _ in bounded_fields(cls)}
    if name in declared:
        return declared[name]
    assert cls is Limits, f"{cls.__qualname__}.{name}: numeric, but has no range (bounded)"
    return LIMITS_LOWER


def settings() -> list[tuple[type[Any], str, bool]]:
    return [(cls, name, integer) for cls in every_class()
            for name, integer in numeric_fields(cls)]


SETTINGS = settings()


def _id(setting: tuple[type[Any], str, bool]) -> str:
    return f"{setting[0].__name__}.{setting[1]}"


def test_the_sweep_finds_the_settings_it_must() -> None:
    """A sanity check of the introspection itself: these are found, among others."""
    found = {(cls.__name__, name) for cls, name, _ in SETTINGS}
    assert {("ServerConfig", "header_timeout"), ("ServerConfig", "body_timeout"),
            ("ServerConfig", "rate_limit"), ("ServerConfig", "rate_burst"),
            ("Limits", "max_batch_bytes"), ("Limits", "dedup_window"),
            ("GatherConfig", "batch"), ("FilesSettings", "segment_bytes"),
            ("PostgresConfig", "pool_size")} <= found
    assert Bounds not in every_class()  # not a setting: the type of a range


def test_every_class_with_a_number_can_be_reached() -> None:
    reachable = routes()
    missing = [cls.__qualname__ for cls in every_class()
               if numeric_fields(cls) and cls not in reachable]
    assert not missing, f"numeric settings this test cannot give a value: {missing}"


@pytest.mark.parametrize("setting", SETTINGS, ids=_id)
def test_every_numeric_setting_declares_a_range(setting: tuple[type[Any], str, bool]) -> None:
    cls, name, _ = setting
    bounds = bounds_of(cls, name)
    assert bounds.low < bounds.high
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    if default is not None and default is not dataclasses.MISSING:
        assert bounds.problem(default, isinstance(default, int)) is None, "the default"


# --- the values -----------------------------------------------------------------------


def below(bounds: Bounds, integer: bool) -> float:
    if bounds.above:
        return int(bounds.low) if integer else float(bounds.low)
    return int(bounds.low) - 1 if integer else bounds.low - max(abs(bounds.low) / 2, 0.5)


def above(bounds: Bounds, integer: bool) -> float | None:
    if math.isinf(bounds.high):
        return None
    return int(bounds.high) + 1 if integer else bounds.high * 2


def bad_values(bounds: Bounds, integer: bool) -> list[Any]:
    values: list[Any] = [math.nan, math.inf, -math.inf, True, False, below(bounds, integer)]
    high = above(bounds, integer)
    if high is not None:
        values.append(high)
    if integer:
        values.append(1.5)
    return values


def good_values(bounds: Bounds, integer: bool) -> list[Any]:
    low = bounds.low if not bounds.above else (
        bounds.low + 1 if integer else bounds.low + min(1e-3, bounds.high / 2))
    values = [int(low) if integer else float(low)]
    if not math.isinf(bounds.high):
        values.append(int(bounds.high) if integer else float(bounds.high))
    return values


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return str(value)


def toml(raw: Mapping[str, Any]) -> str:
    """Just enough TOML for these tables: scalars, tables of scalars or of tables, and
    one array of tables."""
    lines: list[str] = []

    def table(header: str, values: Mapping[str, Any]) -> None:
        lines.append(header)
        for key, value in values.items():
            if isinstance(value, Mapping):
                continue
            if isinstance(value, str):
                lines.append(f"{key} = {value!r}".replace("'", '"'))
            else:
                lines.append(f"{key} = {toml_value(value)}")
        for key, value in values.items():
            if isinstance(value, Mapping):
                if header.startswith("[["):
                    inner = ", ".join(f'{k} = "{v}"' for k, v in value.items())
                    lines.append(f"{key} = {{ {inner} }}")
                else:
                    table(f"[{header.strip('[]')}.{key}]", value)

    for section, values in raw.items():
        if isinstance(values, list):
            for item in values:
                table(f"[[{section}]]", item)
        else:
            table(f"[{section}]", values)
    return "\n".join(lines) + "\n"


def env_texts(bounds: Bounds, integer: bool) -> list[str]:
    texts = ["nan", "inf", "-inf", "1e999", "true", "false", "",
             toml_value(below(bounds, integer))]
    high = above(bounds, integer)
    if high is not None:
        texts.append(str(high))
    if integer:
        texts.append("1.5")
    return texts


def refused(load: Callable[[], Any], route: Route, name: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        route.build(load())
    error = caught.value
    assert error.code == "invalid_config"
    assert "\n" not in error.message
    assert route.label in error.message and name in error.message, error.message
    return error


# --- the sweep ------------------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTINGS, ids=_id)
def test_from_the_file(setting: tuple[type[Any], str, bool], tmp_path: Path) -> None:
    cls, name, integer = setting
    route, bounds = routes()[cls], bounds_of(cls, name)
    path = tmp_path / "herald.toml"
    for value in bad_values(bounds, integer):
        path.write_text(toml(route.table(name, value)))
        refused(lambda: load_config(path, environ={}), route, name)
    for value in good_values(bounds, integer):
        path.write_text(toml(route.table(name, value)))
        built = route.build(load_config(path, environ={}))
        assert built is not None


@pytest.mark.parametrize("setting", SETTINGS, ids=_id)
def test_from_the_flags(setting: tuple[type[Any], str, bool]) -> None:
    """``overrides`` is what flags become: Python values, not TOML's."""
    cls, name, integer = setting
    route, bounds = routes()[cls], bounds_of(cls, name)
    huge = [10**400] if not math.isinf(bounds.high) else []  # no float can hold it
    for value in [*bad_values(bounds, integer), *huge]:
        refused(functools.partial(load_config, None, route.table(name, value), environ={}),
                route, name)
    for value in good_values(bounds, integer):
        route.build(config_from_dict(route.table(name, value)))


@pytest.mark.parametrize("setting", [s for s in SETTINGS if routes()[s[0]].env is not None],
                         ids=_id)
def test_from_the_environment(setting: tuple[type[Any], str, bool]) -> None:
    cls, name, integer = setting
    route, bounds = routes()[cls], bounds_of(cls, name)
    assert route.env is not None
    variable = route.env(name)
    # the engine's own variables are read for the configured engine
    engine = {"HERALD_STORAGE_ENGINE": route.label[len("[storage."):-1]} \
        if route.label.startswith("[storage.") else {}
    base = {f"HERALD_STORAGE_{engine['HERALD_STORAGE_ENGINE'].upper().replace('-', '_')}_"
            f"{k.upper()}": str(v)
            for k, v in route.kwargs.items()} if engine else {}
    for text in env_texts(bounds, integer):
        environ = {**engine, **base, variable: text}
        refused(functools.partial(load_config, None, environ=environ), route, name)
    for value in good_values(bounds, integer):
        environ = {**engine, **base, variable: toml_value(value)}
        route.build(load_config(None, environ=environ))


# Limits is herald.model's, and checks its own values where it is defined; from the
# file, the environment and the flags it is covered above.
@pytest.mark.parametrize("setting", [s for s in SETTINGS if s[0] is not Limits], ids=_id)
def test_built_directly(setting: tuple[type[Any], str, bool]) -> None:
    """Engines and tests build settings classes in code: the class checks, not only
    the loader (nan is a float to the type checker; only the range check stops it)."""
    cls, name, integer = setting
    route, bounds = routes()[cls], bounds_of(cls, name)
    for value in bad_values(bounds, integer):
        with pytest.raises((ConfigError, SettingError, ValueError)) as caught:
            cls(**{**route.kwargs, name: value})
        assert name in str(caught.value) or getattr(caught.value, "key", None) == name
    for value in good_values(bounds, integer):
        cls(**{**route.kwargs, name: value})


# --- the ranges are documented --------------------------------------------------------


def test_the_ranges_are_in_the_configuration_doc() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = []
    for cls, name, _ in SETTINGS:
        declared = {n: b for n, b, _ in bounded_fields(cls)}
        if name not in declared:
            continue  # [limits]: their ranges are the record format's
        lines = [line for line in text.splitlines()
                 if f"`{name}`" in line and declared[name].describe() in line]
        if not lines:
            missing.append(f"{routes()[cls].label} {name}: {declared[name].describe()}")
    assert not missing, f"docs/configuration.md does not state: {missing}"


# --- the pieces -----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "integer", "problem"), [
    (math.nan, False, "must be a finite number above 0 and at most 10 s, got nan"),
    (math.inf, False, "must be a finite number"),
    (0.0, False, "must be above 0 and at most 10 s, got 0.0"),
    (10.5, False, "got 10.5"),
    (True, False, "expected a number, got True"),
    (True, True, "expected an integer, got True"),
    (2.0, True, "expected an integer, got 2.0"),
    (10**400, False, "must be above 0"),  # compared exactly, never converted
    (5, False, None),
    (10, True, None),
    (0.5, False, None),
])
def test_bounds(value: Any, integer: bool, problem: str | None) -> None:
    message = Bounds(0, 10, above=True, unit="s").problem(value, integer)
    if problem is None:
        assert message is None
    else:
        assert message is not None and problem in message


def test_a_message_says_the_whole_range() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"server": {"header_timeout": math.nan}})
    assert caught.value.message == "[server] header_timeout: must be a finite number, got nan"
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"server": {"header_timeout": 0}})
    assert caught.value.message == (
        "[server] header_timeout: must be above 0 and at most 3600 s, got 0.0")
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"HERALD_SERVER_RATE_LIMIT": "1e999"})
    assert caught.value.message == "[server] rate_limit: must be a finite number, got '1e999'"


# --- the client commands' numeric flags -----------------------------------------------


@pytest.mark.parametrize(("argv", "flag"), [
    (["certs", "ca", "--days", "0"], "--days"),
    (["certs", "ca", "--days", "36501"], "--days"),
    (["certs", "ca", "--days", "9999999999"], "--days"),  # was an OverflowError
    (["certs", "ca", "--days", "nan"], "--days"),
    (["certs", "client", "x", "--days", "-1"], "--days"),
    (["publish", "s", "--batch", "0"], "--batch"),
    (["publish", "s", "--batch", "65537"], "--batch"),
    (["publish", "s", "--batch", "True"], "--batch"),
    (["publish", "s", "--expected-head", "-1"], "--expected-head"),
    (["publish", "s", "--expected-head", str(2**63)], "--expected-head"),
    (["tail", "s", "--from", "-1"], "--from"),
    (["tail", "s", "--from", "inf"], "--from"),
])
def test_numeric_flags_are_range_checked(argv: list[str], flag: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from herald.cli import main

    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and ("must be" in err or "expected an integer" in err)
