"""Configuration: one TOML file, ``HERALD_…`` environment variables, overrides (flags).

What this proves:

* a TOML file sets every section; defaults apply without one;
* environment variables (``HERALD_DATA``, ``HERALD_SERVER_LISTEN``,
  ``HERALD_LIMITS_DEDUP_WINDOW``, ``HERALD_STORAGE_FILES_SEGMENT_BYTES``…) are read and
  converted to the key's type;
* each engine's keys live in its own table (``[storage.files]``,
  ``[storage.postgres]``), parsed by the engine's own settings class; the older
  layout (``[storage] dsn``, ``HERALD_STORAGE_DSN``) keeps working, and giving a key
  both ways, or a table for an engine that does not exist, is an error;
* precedence: defaults < file < environment < overrides;
* every mistake is a ``ConfigError`` whose message names the key (unknown key, wrong
  type, bad ``listen``, out-of-range limit, unreadable file) — never a bare
  ValueError or TypeError;
* relative paths written in the file are relative to the file; relative paths in
  the environment are relative to the working directory;
* a ``[[gather]]`` table is flat: what every gatherer has (name, stream, source,
  batch) is checked when the file is read, the other keys are its source's, kept raw
  and parsed by the source's settings class when the gatherers are built — naming
  ``[[gather]] <name> key`` either way; a relative SQLite dsn is relative to the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from herald.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_LISTEN,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_listen,
)
from herald.engines import engine_settings
from herald.errors import HeraldError
from herald.gather.manager import create_source, source_settings
from herald.model import Limits


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(environ={})
    assert config == Config()
    assert config.data == DEFAULT_DATA_DIR
    assert config.server.listen == DEFAULT_LISTEN == "127.0.0.1:8443"
    assert config.storage.engine == "files"
    assert config.storage.section() == {}
    _, files = engine_settings(config)
    assert files.segment_bytes == 256 * 1024 * 1024  # type: ignore[attr-defined]
    assert config.limits == Limits()
    assert config.tls.cert is None and config.tls.key is None
    assert config.tls_dir == DEFAULT_DATA_DIR / "tls"
    assert config.admin_token_path == DEFAULT_DATA_DIR / "admin-token"


def test_a_file_sets_every_section(tmp_path: Path) -> None:
    path = write(tmp_path / "herald.toml", """
data = "/srv/herald"

[server]
listen = "0.0.0.0:9443"

[tls]
cert = "/etc/herald/server.pem"
key = "/etc/herald/server.key"

[storage]
engine = "files"

[storage.files]
segment_bytes = 8192

[limits]
max_batch_bytes = 1000
max_batch_events = 10
max_event_bytes = 100
max_read_events = 50
dedup_window = 7
""")
    config = load_config(path, environ={})
    assert config.data == Path("/srv/herald")
    assert config.server.listen == "0.0.0.0:9443"
    assert config.tls.cert == Path("/etc/herald/server.pem")
    assert config.tls.key == Path("/etc/herald/server.key")
    assert engine_settings(config)[1].segment_bytes == 8192  # type: ignore[attr-defined]
    assert config.limits == Limits(max_batch_bytes=1000, max_batch_events=10,
                                   max_event_bytes=100, max_read_events=50, dedup_window=7)


def test_environment_variables(tmp_path: Path) -> None:
    config = load_config(environ={
        "HERALD_DATA": str(tmp_path / "d"),
        "HERALD_SERVER_LISTEN": "127.0.0.1:0",
        "HERALD_LIMITS_DEDUP_WINDOW": "42",
        "HERALD_LIMITS_MAX_BATCH_EVENTS": " 9 ",
        "HERALD_STORAGE_FILES_SEGMENT_BYTES": "4096",
        "HERALD_STORAGE_DSN": "postgresql://localhost/herald",  # the older name
        "HERALD_UNRELATED": "ignored",
        "HERALD_LIMITS_NOT_A_KEY": "ignored too",
    })
    assert config.data == tmp_path / "d"
    assert config.server.listen == "127.0.0.1:0"
    assert config.limits.dedup_window == 42
    assert config.limits.max_batch_events == 9
    assert config.storage.section("files") == {"segment_bytes": "4096"}
    assert config.storage.section("postgres") == {"dsn": "postgresql://localhost/herald"}
    assert engine_settings(config)[1].segment_bytes == 4096  # type: ignore[attr-defined]


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_LIMITS_DEDUP_WINDOW", "11")
    assert load_config().limits.dedup_window == 11


def test_precedence_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "herald.toml", """
[server]
listen = "127.0.0.1:1111"

[limits]
dedup_window = 1
max_read_events = 1
max_event_bytes = 1
""")
    env = {"HERALD_SERVER_LISTEN": "127.0.0.1:2222", "HERALD_LIMITS_DEDUP_WINDOW": "2",
           "HERALD_LIMITS_MAX_READ_EVENTS": "2"}
    overrides = {"server": {"listen": "127.0.0.1:3333"}, "limits": {"dedup_window": 3}}

    assert load_config(path, environ={}).server.listen == "127.0.0.1:1111"
    assert load_config(path, environ=env).server.listen == "127.0.0.1:2222"
    config = load_config(path, overrides=overrides, environ=env)
    assert config.server.listen == "127.0.0.1:3333"
    # merged key by key, not section by section
    assert config.limits.dedup_window == 3  # override
    assert config.limits.max_read_events == 2  # environment
    assert config.limits.max_event_bytes == 1  # file
    assert config.limits.max_batch_events == Limits().max_batch_events  # default


# --- errors name the key ---------------------------------------------------------------


@pytest.mark.parametrize(("toml", "named"), [
    ('[server]\nport = 1\n', "[server] port: unknown key"),
    ('[limits]\nwindow = 1\n', "[limits] window: unknown key"),
    ('colour = "blue"\n', "colour: unknown key"),
    ('[database]\nurl = "x"\n', "database: unknown key"),
    ('[limits]\ndedup_window = "many"\n', "[limits] dedup_window: expected an integer"),
    ('[limits]\ndedup_window = 1.5\n', "[limits] dedup_window: expected an integer"),
    ('[limits]\ndedup_window = true\n', "[limits] dedup_window: expected an integer"),
    ('[limits]\ndedup_window = 0\n', "[limits] dedup_window: must be at least 1"),
    ('[limits]\nmax_batch_events = 70000\n', "[limits] max_batch_events: must be at most 65536"),
    ('[server]\nlisten = 8443\n', "[server] listen: expected a string"),
    ('[server]\nlisten = "8443"\n', '[server] listen: expected "HOST:PORT"'),
    ('[server]\nlisten = "localhost:99999"\n', '[server] listen: expected "HOST:PORT"'),
    ('[server]\nlisten = "localhost:http"\n', '[server] listen: expected "HOST:PORT"'),
    ('[storage]\nengine = 3\n', "[storage] engine: expected a string"),
    ('[storage]\nsegmnt_bytes = 1\n', "[storage] segmnt_bytes: unknown key"),
    ('[storage]\nsegment_bytes = 8192\n[storage.files]\nsegment_bytes = 4096\n',
     "[storage] segment_bytes and [storage.files] segment_bytes: both given"),
    ('[tls]\ncert = 3\n', "[tls] cert: expected a path"),
    ('data = 5\n', "data: expected a path"),
    ('server = "x"\n', "[server]: expected a table"),
])
def test_file_errors_name_the_key(tmp_path: Path, toml: str, named: str) -> None:
    path = write(tmp_path / "herald.toml", toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert named in caught.value.message
    assert isinstance(caught.value, HeraldError)
    assert caught.value.code == "invalid_config"


@pytest.mark.parametrize(("variable", "value", "named"), [
    ("HERALD_SERVER_LISTEN", "nonsense", '[server] listen: expected "HOST:PORT"'),
    ("HERALD_LIMITS_DEDUP_WINDOW", "lots", "[limits] dedup_window: expected an integer"),
    ("HERALD_LIMITS_DEDUP_WINDOW", "1.5", "[limits] dedup_window: expected an integer"),
    ("HERALD_LIMITS_DEDUP_WINDOW", "--5", "[limits] dedup_window: expected an integer"),
    ("HERALD_LIMITS_DEDUP_WINDOW", "²", "[limits] dedup_window: expected an integer"),
    ("HERALD_LIMITS_DEDUP_WINDOW", "-5", "[limits] dedup_window: must be at least 1"),
])
def test_environment_errors_name_the_key(variable: str, value: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={variable: value})
    assert named in caught.value.message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "[server\nlisten = ")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(path) in caught.value.message


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:8443", ("127.0.0.1", 8443)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    (":9000", ("0.0.0.0", 9000)),
    ("[::1]:8443", ("::1", 8443)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["", "8443", "host:", "host:-1", "host:65536", "host:x"])
def test_parse_listen_refusals_name_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r'^\[server\] listen: expected "HOST:PORT"'):
        parse_listen(value)


# --- relative paths --------------------------------------------------------------------


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "etc" / "herald.toml", """
data = "data"

[tls]
cert = "tls/server.pem"
key = "/abs/server.key"
""")
    config = load_config(path, environ={})
    assert config.data == tmp_path / "etc" / "data"
    assert config.tls.cert == tmp_path / "etc" / "tls" / "server.pem"
    assert config.tls.key == Path("/abs/server.key"), "absolute paths stay as written"


def test_relative_paths_in_the_environment_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "etc" / "herald.toml", "")
    monkeypatch.chdir(tmp_path)
    config = load_config(path, environ={"HERALD_DATA": "d", "HERALD_TLS_CERT": "c.pem",
                                        "HERALD_TLS_KEY": "k.pem"})
    assert config.data == tmp_path / "d"
    assert config.tls.cert == tmp_path / "c.pem"
    assert config.tls.key == tmp_path / "k.pem"


@pytest.mark.parametrize(("toml", "environ", "named"), [
    ('[storage.files]\nsegment_bytes = 100\n', {},
     "[storage.files] segment_bytes: must be 4096 to 68719476736 bytes"),
    ('[storage]\nsegment_bytes = 100\n', {},  # the older layout: the same check
     "[storage.files] segment_bytes: must be 4096 to 68719476736 bytes"),
    ('', {"HERALD_STORAGE_FILES_SEGMENT_BYTES": "1024"},
     "[storage.files] segment_bytes: must be 4096 to 68719476736 bytes"),
    ('[storage.files]\nsegment_byte = 8192\n', {}, "[storage.files] segment_byte: unknown key"),
    ('[storage.postgress]\ndsn = "x"\n', {}, "[storage.postgress]: unknown engine"),
    ('[storage]\nengine = "postgress"\n', {}, "[storage] engine: unknown engine"),
    ('[storage]\nengine = "postgres"\n', {}, "[storage.postgres] dsn: required"),
    ('[storage]\nengine = "postgres"\n[storage.postgres]\ndsn = "x"\npool_size = 0\n', {},
     "[storage.postgres] pool_size: must be 1 to 1000 connections"),
])
def test_engine_settings_errors_name_the_key(tmp_path: Path, toml: str,
                                             environ: dict[str, str], named: str) -> None:
    """Each engine parses its own table (herald.engines.engine_settings, called when
    the node is built): its mistakes name its table and key too."""
    config = load_config(write(tmp_path / "herald.toml", toml), environ=environ)
    with pytest.raises(ConfigError) as caught:
        engine_settings(config)
    assert named in caught.value.message


def test_the_older_storage_layout_means_the_same(tmp_path: Path) -> None:
    older = load_config(write(tmp_path / "old.toml", """
[storage]
engine = "postgres"
dsn = "postgresql://herald@db/herald"
schema = "events"
"""), environ={})
    newer = load_config(write(tmp_path / "new.toml", """
[storage]
engine = "postgres"

[storage.postgres]
dsn = "postgresql://herald@db/herald"
schema = "events"
"""), environ={})
    assert older == newer
    assert engine_settings(older) == engine_settings(newer)
    # The environment overrides the file, under either name.
    for variable in ("HERALD_STORAGE_DSN", "HERALD_STORAGE_POSTGRES_DSN"):
        config = load_config(tmp_path / "new.toml",
                             environ={variable: "postgresql://other@db/herald"})
        assert config.storage.section()["dsn"] == "postgresql://other@db/herald"


# --- gatherers ---------------------------------------------------------------------------

_SQLITE_GATHERER = """
[[gather]]
name = "g"
stream = "s"
source = "sqlite"
batch = 10
dsn = "module.db"
table = "events"
columns = { type = "kind", data = "body" }
"""


def test_a_gather_table_keeps_its_sources_keys_raw(tmp_path: Path) -> None:
    """[[gather]] is one flat table: the gatherer's keys are parsed by the config, the
    others are the source's, kept as written for the source's settings class."""
    path = write(tmp_path / "etc" / "herald.toml",
                 _SQLITE_GATHERER.replace('"module.db"', '"sqlite:///secret.db"'))
    (gatherer,) = load_config(path, environ={}).gather
    assert (gatherer.name, gatherer.stream, gatherer.source, gatherer.batch) == (
        "g", "s", "sqlite", 10)
    assert gatherer.options == {"dsn": "sqlite:///secret.db", "table": "events",
                                "columns": {"type": "kind", "data": "body"}}
    assert gatherer.base == tmp_path / "etc"
    assert "secret" not in repr(gatherer), "a DSN may hold a password"
    cls, settings = source_settings(gatherer)
    assert isinstance(settings, cls.settings)
    assert "secret" not in repr(settings)


def test_a_relative_sqlite_dsn_is_relative_to_the_file(tmp_path: Path) -> None:
    from herald.gather.sql import SqliteSource

    for dsn, expected in [("module.db", tmp_path / "etc" / "module.db"),
                          ("sqlite:///data/module.db", tmp_path / "etc" / "data" / "module.db"),
                          ("/abs/module.db", Path("/abs/module.db"))]:
        path = write(tmp_path / "etc" / "herald.toml",
                     _SQLITE_GATHERER.replace('"module.db"', f'"{dsn}"'))
        (gatherer,) = load_config(path, environ={}).gather
        source = create_source(gatherer)
        assert isinstance(source, SqliteSource)
        assert source.path == str(expected)
    # Without a file (a config built in code): relative to the working directory.
    (gatherer,) = config_from_dict({"gather": [{
        "name": "g", "stream": "s", "source": "sqlite", "dsn": "module.db",
        "table": "events"}]}).gather
    assert gatherer.base is None
    source = create_source(gatherer)
    assert isinstance(source, SqliteSource) and source.path == "module.db"


_GATHERER = '[[gather]]\nname = "g"\nstream = "s"\nsource = "sqlite"\ndsn = "m.db"\n' \
            'table = "events"\n'


@pytest.mark.parametrize(("toml", "named"), [
    ('[[gather]]\nstream = "s"\nsource = "sqlite"\n', "[gather] #1: name is required"),
    ('[[gather]]\nname = "g"\nsource = "sqlite"\n', "[gather] #1: stream is required"),
    ('[[gather]]\nname = "g"\nstream = "s"\n', "[gather] #1: source is required"),
    (_GATHERER.replace('"g"', '"-g"'), "[[gather]] name: '-g' is not a valid gatherer name"),
    (_GATHERER.replace('"s"', '"a b"'), "[[gather]] g stream:"),
    (_GATHERER.replace('"sqlite"', "3"), "[[gather]] g source: expected a string"),
    (_GATHERER + "batch = 0\n", "[[gather]] g batch: must be 1 to 10000"),
    (_GATHERER + 'batch = "many"\n', "[[gather]] g batch: expected an integer"),
    (_GATHERER + _GATHERER.replace('"s"', '"t"'), "[[gather]] g: two gatherers have this name"),
    (_GATHERER + _GATHERER.replace('"g"', '"h"'),
     "[[gather]] h stream: s is already gathered into by another gatherer"),
    ('gather = 3\n', "gather: expected an array of tables"),
])
def test_gatherer_errors_name_the_key(tmp_path: Path, toml: str, named: str) -> None:
    """What is about the gatherer as a whole is checked when the file is read."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "herald.toml", toml), environ={})
    assert named in caught.value.message


_ES = ('[[gather]]\nname = "g"\nstream = "s"\nsource = "eventsourcing"\n'
       'application = "DogSchool"\nenv = { PERSISTENCE_MODULE = "eventsourcing.sqlite" }\n')


@pytest.mark.parametrize(("toml", "named"), [
    (_GATHERER.replace('"sqlite"', '"oracle"'), "[[gather]] g source: unknown source "
     "'oracle' (known: eventsourcing, mysql, postgres, sqlite)"),
    (_GATHERER.replace('dsn = "m.db"\n', ""), "[[gather]] g dsn: required for a sqlite source"),
    (_GATHERER.replace('"sqlite"', '"postgres"').replace('dsn = "m.db"\n', ""),
     "[[gather]] g dsn: required for a postgres source"),
    (_GATHERER.replace('table = "events"\n', ""), "[[gather]] g: give a table or a query"),
    (_GATHERER.replace('"events"', '"ev ents"'), "[[gather]] g table: 'ev ents' is not a table"),
    (_GATHERER.replace('"events"', "3"), "[[gather]] g table: expected a string"),
    (_GATHERER + 'query = "SELECT * FROM events"\n', "[[gather]] g query: must use %(after)s"),
    (_GATHERER + 'columns = { type = "t", data = "d", kind = "k" }\n',
     "[[gather]] g columns: unknown field 'kind'"),
    (_GATHERER + 'columns = { type = "t" }\n', "[[gather]] g columns: data is required"),
    (_GATHERER + 'columns = { type = "t", data = "d; DROP" }\n',
     "[[gather]] g columns: 'd; DROP' is not a column name"),
    (_GATHERER + 'position = "1d"\n', "[[gather]] g columns: '1d' is not a column name"),
    (_GATHERER + 'notify = "ch"\n', "[[gather]] g notify: only a postgres source can LISTEN"),
    (_GATHERER + 'tabel = "x"\n', "[[gather]] g tabel: unknown key (known: columns, dsn, "
     "position, query, table)"),
    (_GATHERER + 'application = "DogSchool"\n', "[[gather]] g application: unknown key"),
    (_GATHERER.replace('"sqlite"', '"mysql"').replace('"m.db"', '"postgresql://db/x"'),
     "[[gather]] g dsn: a mysql dsn looks like mysql://"),
    (_ES.replace('application = "DogSchool"\n', ""),
     "[[gather]] g application: required for an eventsourcing source"),
    (_ES.replace("eventsourcing.sqlite", "eventsourcing.popo"),
     "[[gather]] g env: PERSISTENCE_MODULE must be eventsourcing.sqlite or "
     "eventsourcing.postgres, not 'eventsourcing.popo'"),
    (_ES.replace('"eventsourcing.sqlite"', "3"), "[[gather]] g env: expected a table of strings"),
    (_ES + 'state = "pickle"\n', "[[gather]] g state: must be json or base64"),
    (_ES + 'dsn = "x"\n', "[[gather]] g dsn: not for an eventsourcing source (configure it "
     "in env, as the application does)"),
    (_ES + 'columns = { type = "t", data = "d" }\n', "[[gather]] g columns: unknown key"),
])
def test_source_settings_errors_name_the_key(tmp_path: Path, toml: str, named: str) -> None:
    """A source's own keys are its settings class's: the file loads, and the mistake
    is named when the node builds its gatherers (herald serve does, before listening)."""
    (gatherer,) = load_config(write(tmp_path / "herald.toml", toml), environ={}).gather
    with pytest.raises(ConfigError) as caught:
        source_settings(gatherer)
    assert named in caught.value.message
    with pytest.raises(ConfigError) as again:
        create_source(gatherer)
    assert again.value.message == caught.value.message
