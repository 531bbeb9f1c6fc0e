"""docs/gathering.md as written: its Python runs against a real server, its
``[[gather]]`` examples are valid configuration (the gatherer's keys and its
source's own)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from herald.config import config_from_dict
from herald.gather.manager import source_settings

from ..conftest import ROOT, ServerProcess

BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
DOC = ROOT / "docs" / "gathering.md"


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(DOC.read_text()) if kind == lang]


def test_the_push_example_runs(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    server = server_factory(data=tmp_path / "herald-data").start()
    (example,) = blocks("python")
    body = example.replace("https://127.0.0.1:8443", server.url)
    result = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_config_examples_are_valid() -> None:
    import tomllib

    readme = [body for kind, body in BLOCK.findall((ROOT / "README.md").read_text())
              if kind == "toml"]
    examples = [tomllib.loads(re.sub(r"(?m)^  ", "", body))
                for body in blocks("toml") + readme]
    assert len(examples) == 4
    for example in examples:
        (gatherer,) = config_from_dict(example).gather
        assert gatherer.name and gatherer.stream
        # The source's own keys, checked as the node checks them when it starts.
        cls, settings = source_settings(gatherer)
        assert isinstance(settings, cls.settings)
