"""The examples in docs/ run as written.

``python`` blocks run against a real server (only the port is rewritten, in a
directory whose ``herald-data`` is the server's); ``toml`` blocks that are whole
config files load without error and mean what the text says.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from herald.config import load_config
from herald.engines import engine_settings

from .conftest import ROOT, ServerProcess

BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(name: str, lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall((ROOT / "docs" / name).read_text())
            if kind == lang]


@pytest.mark.parametrize("doc", ["api.md"])
def test_python_examples_run(doc: str, server_factory: type[ServerProcess],
                             tmp_path: Path) -> None:
    server = server_factory(data=tmp_path / "herald-data").start()
    examples = blocks(doc, "python")
    assert examples
    for body in examples:
        body = body.replace("https://127.0.0.1:8443", server.url)
        result = subprocess.run([sys.executable, "-c", body], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{body}\n{result.stderr}"


def test_configuration_example_is_the_defaults(tmp_path: Path) -> None:
    (example,) = blocks("configuration.md", "toml")
    path = tmp_path / "herald.toml"
    path.write_text(example)
    loaded = load_config(path, environ={})
    defaults = load_config(None, environ={})
    assert loaded.server == defaults.server
    assert loaded.storage.engine == defaults.storage.engine
    # the engine's table, as the engine parses it, holds the defaults too
    assert engine_settings(loaded) == engine_settings(defaults)
    assert loaded.limits == defaults.limits
    assert loaded.data == tmp_path / "herald-data"


def _postgres_section() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    return text[text.index("## PostgreSQL and high availability"):]


def test_postgres_operations_examples(tmp_path: Path) -> None:
    """The HA section's config loads as the postgres engine, and its client line builds a
    client over both nodes (it connects lazily, so no node has to exist)."""
    text = _postgres_section()
    (toml,) = [b for k, b in BLOCK.findall(text) if k == "toml"]
    path = tmp_path / "herald.toml"
    path.write_text(toml)
    config = load_config(path, environ={})
    assert config.storage.engine == "postgres"
    assert config.storage.section()["dsn"].startswith("postgresql://")
    (python,) = [b for k, b in BLOCK.findall(text) if k == "python"]
    from herald.certs import create_ca

    create_ca().write(tmp_path / "ca.pem", tmp_path / "ca.key")
    (tmp_path / "admin-token").write_text("token\n")
    check = python + "\nassert client.urls == ['https://herald-1:8443', 'https://herald-2:8443']" \
                     "\nclient.close()\n"
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
