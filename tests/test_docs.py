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
    assert loaded.storage == defaults.storage
    assert loaded.limits == defaults.limits
    assert loaded.data == tmp_path / "herald-data"
