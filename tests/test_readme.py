"""The README's tour runs as written, against a real server.

Every ``sh`` and ``python`` block after the quick start is executed in order, in a
directory whose ``herald-data`` is the server's data directory — the layout
``make serve`` creates — with only the port rewritten. A ``json`` block right after
a command is the answer that command must print.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, ServerProcess

BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def tour_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    tour = text[text.index("## A 60-second tour"):]
    return [(lang, body) for lang, body in BLOCK.findall(tour)]


def test_the_readme_tour_runs(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    server = server_factory(data=tmp_path / "herald-data").start()
    bin_dir = Path(sys.executable).parent
    blocks = tour_blocks()
    assert [lang for lang, _ in blocks].count("python") == 1
    previous_output = None
    for lang, body in blocks:
        body = body.replace("https://127.0.0.1:8443", server.url)
        if lang == "sh":
            body = body.replace(".venv/bin/herald", f"{bin_dir}/herald")
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=60,
                                    env={**os.environ, "HERALD_URL": server.url})
            assert result.returncode == 0, f"{body}\n{result.stdout}\n{result.stderr}"
            previous_output = result.stdout
        elif lang == "python":
            result = subprocess.run([sys.executable, "-c", body], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            lines = result.stdout.splitlines()
            assert lines[0] == "0 ItemAdded {'sku': 'A1', 'qty': 5}"
            assert lines[-1] == "2 ItemRemoved {'sku': 'A1', 'qty': 2}"
        elif lang == "json":
            assert previous_output is not None
            assert json.loads(previous_output) == json.loads(body)
    # the CLI block published a fourth event
    with server.client() as client:
        assert client.stream("inventory").head == 4
        assert [e.type for e in client.read("inventory").events] == [
            "ItemAdded", "ItemAdded", "ItemRemoved", "ItemAdded"]


def test_the_first_start_banner_lines_work(server_factory: type[ServerProcess],
                                           tmp_path: Path) -> None:
    """On first start Herald prints a curl line and a Python line; both work as printed."""
    server = server_factory(data=tmp_path / "herald-data").start()
    banner = "".join(server.output)
    assert "(created)" in banner
    assert str(server.data / "admin-token") in banner or "herald-data/admin-token" in banner
    curl = next(line.strip() for line in server.output if line.strip().startswith("curl "))
    python = next(line.strip() for line in server.output if " -c \"import herald" in line)
    for command in (curl, python):
        result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        assert "streams" in result.stdout or result.stdout.startswith("[")
    # later starts reuse the files and say nothing was created
    server.stop()
    server.start()
    assert "(created)" not in "".join(server.output)
