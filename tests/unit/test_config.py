"""Configuration: one TOML file, ``HERALD_…`` environment variables, overrides (flags).

What this proves:

* a TOML file sets every section; defaults apply without one;
* environment variables (``HERALD_DATA``, ``HERALD_SERVER_LISTEN``,
  ``HERALD_LIMITS_DEDUP_WINDOW``, ``HERALD_STORAGE_SEGMENT_BYTES``…) are read and
  converted to the key's type;
* precedence: defaults < file < environment < overrides;
* every mistake is a ``ConfigError`` whose message names the key (unknown key, wrong
  type, bad ``listen``, out-of-range limit, unreadable file) — never a bare
  ValueError or TypeError;
* relative paths written in the file are relative to the file; relative paths in
  the environment are relative to the working directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from herald.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_LISTEN,
    Config,
    ConfigError,
    load_config,
    parse_listen,
)
from herald.errors import HeraldError
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
    assert config.storage.segment_bytes == 256 * 1024 * 1024
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
    assert config.storage.segment_bytes == 8192
    assert config.limits == Limits(max_batch_bytes=1000, max_batch_events=10,
                                   max_event_bytes=100, max_read_events=50, dedup_window=7)


def test_environment_variables(tmp_path: Path) -> None:
    config = load_config(environ={
        "HERALD_DATA": str(tmp_path / "d"),
        "HERALD_SERVER_LISTEN": "127.0.0.1:0",
        "HERALD_LIMITS_DEDUP_WINDOW": "42",
        "HERALD_LIMITS_MAX_BATCH_EVENTS": " 9 ",
        "HERALD_STORAGE_SEGMENT_BYTES": "4096",
        "HERALD_STORAGE_DSN": "postgresql://localhost/herald",
        "HERALD_UNRELATED": "ignored",
        "HERALD_LIMITS_NOT_A_KEY": "ignored too",
    })
    assert config.data == tmp_path / "d"
    assert config.server.listen == "127.0.0.1:0"
    assert config.limits.dedup_window == 42
    assert config.limits.max_batch_events == 9
    assert config.storage.segment_bytes == 4096
    assert config.storage.dsn == "postgresql://localhost/herald"


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
    ('[limits]\ndedup_window = 0\n', "limits.dedup_window must be at least 1"),
    ('[limits]\nmax_batch_events = 70000\n', "limits.max_batch_events must be at most 65536"),
    ('[server]\nlisten = 8443\n', "[server] listen: expected a string"),
    ('[server]\nlisten = "8443"\n', '[server] listen: expected "HOST:PORT"'),
    ('[server]\nlisten = "localhost:99999"\n', '[server] listen: expected "HOST:PORT"'),
    ('[server]\nlisten = "localhost:http"\n', '[server] listen: expected "HOST:PORT"'),
    ('[storage]\nsegment_bytes = 100\n', "storage.segment_bytes must be at least 4096"),
    ('[storage]\nengine = 3\n', "[storage] engine: expected a string"),
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
    ("HERALD_LIMITS_DEDUP_WINDOW", "-5", "limits.dedup_window must be at least 1"),
    ("HERALD_STORAGE_SEGMENT_BYTES", "1024", "storage.segment_bytes must be at least 4096"),
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
