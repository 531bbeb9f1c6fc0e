"""docs/operations.md runs as written: its certificate commands, its herald.toml,
its curl line, and its nginx.conf — started with real nginx, every path exercised
with curl. Only ports and file locations are rewritten."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from herald.config import load_config
from herald.passwords import verify_password

from ..conftest import ROOT, ServerProcess, require_tool
from .conftest import herald_cli

BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
DOC = ROOT / "docs" / "operations.md"
# The password whose hash the doc's [[user]] holds.
DOC_PASSWORD = "correct horse battery staple"


def blocks(lang: str) -> list[str]:
    """The examples of the security part of the page (the PostgreSQL part has its own)."""
    text = DOC.read_text().split("## PostgreSQL and high availability")[0]
    return [body for kind, body in BLOCK.findall(text) if kind == lang]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rewrite(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"the doc no longer contains {old!r}: update this test"
        text = text.replace(old, new)
    return text


@dataclass
class Setup:
    dir: Path
    herald: ServerProcess


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The doc's certificates and herald.toml, and Herald started with them."""
    require_tool("openssl")
    directory = tmp_path_factory.mktemp("operations")
    (certs,) = [b for b in blocks("sh") if "herald certs ca" in b]
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", certs], cwd=directory,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    (toml,) = blocks("toml")
    toml = rewrite(toml, {'http_redirect = "127.0.0.1:8080"': 'http_redirect = "127.0.0.1:0"'})
    (directory / "herald.toml").write_text(toml)
    herald = ServerProcess(data=directory / "herald-data",
                           args=["--config", str(directory / "herald.toml")]).start()
    yield Setup(directory, herald)
    herald.stop()


def curl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("curl"), "-sS", *map(str, args)],
                          capture_output=True, text=True, timeout=30)


def test_the_doc_config_means_what_it_says(setup: Setup) -> None:
    config = load_config(setup.dir / "herald.toml", environ={})
    inventory, sales = config.principals
    assert (inventory.name, inventory.subject, sales.subscribe) == (
        "inventory", "CN=inventory", ("inventory", "sales-*"))
    assert len(inventory.token_sha256 or "") == 64
    assert verify_password(DOC_PASSWORD, config.users[0].password_hash)
    assert config.tls.client_ca == setup.dir / "ca.pem"


def test_the_doc_curl_line(setup: Setup) -> None:
    (whoami,) = [b for b in blocks("sh") if "/v1/whoami" in b]
    command, _, expected = whoami.partition("# ")
    command = command.replace("https://127.0.0.1:8443", setup.herald.url)
    result = subprocess.run(["bash", "-c", command], cwd=setup.dir, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(expected.replace("#", ""))


@dataclass
class Nginx:
    https: int
    http: int
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def nginx(setup: Setup) -> Iterator[Nginx]:
    binary = require_tool("nginx")
    ports = {"https": free_port(), "http": free_port(), "terminating": free_port()}
    (conf,) = blocks("nginx")
    conf = rewrite(conf, {
        "listen 443;": f"listen 127.0.0.1:{ports['https']};",
        "listen 80;": f"listen 127.0.0.1:{ports['http']};",
        "127.0.0.1:4443": f"127.0.0.1:{ports['terminating']}",
        "127.0.0.1:8443": f"127.0.0.1:{setup.herald.port}",
        "/etc/herald/": f"{setup.dir}/",
        "/var/log/nginx/herald-access.log": f"{setup.dir}/access.log",
    })
    path = setup.dir / "nginx.conf"
    path.write_text(conf)
    process = subprocess.Popen(
        [binary, "-c", str(path),
         "-g", f"daemon off; pid {setup.dir}/nginx.pid; error_log {setup.dir}/error.log;"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", ports["https"]), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = process.communicate()[0].decode(errors="replace")
                pytest.fail(f"nginx did not start:\n{output}")
            time.sleep(0.1)
    yield Nginx(ports["https"], ports["http"], process)
    process.send_signal(signal.SIGQUIT)  # graceful shutdown
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    assert process.stdout is not None
    process.stdout.close()


def via(nginx: Nginx, name: str, setup: Setup) -> list[str]:
    return ["--resolve", f"{name}:{nginx.https}:127.0.0.1", "--cacert", str(setup.dir / "ca.pem")]


def test_dashboard_through_tls_termination(setup: Setup, nginx: Nginx) -> None:
    answer = curl(*via(nginx, "herald.example", setup), "-i", "-u", f"ops:{DOC_PASSWORD}",
                  f"https://herald.example:{nginx.https}/")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("HTTP/1.1 200"), answer.stdout
    assert "Strict-Transport-Security: max-age=31536000" in answer.stdout
    assert "<h2>Streams</h2>" in answer.stdout
    refused = curl(*via(nginx, "herald.example", setup), "-o", "/dev/null", "-w", "%{http_code}",
                   f"https://herald.example:{nginx.https}/")
    assert refused.stdout == "401"


def test_token_through_tls_termination(setup: Setup, nginx: Nginx) -> None:
    # the doc's token_sha256 is a placeholder; the admin token travels the same way
    token = setup.herald.token
    answer = curl(*via(nginx, "herald.example", setup), "-H", f"Authorization: Bearer {token}",
                  "-H", "Content-Type: application/json",
                  "--data-binary", '[{"type": "ThroughNginx", "data": {}}]',
                  f"https://herald.example:{nginx.https}/v1/streams/inventory/events")
    assert json.loads(answer.stdout)["appended"] == 1, answer.stdout + answer.stderr


def test_mutual_tls_is_passed_through(setup: Setup, nginx: Nginx) -> None:
    url = f"https://modules.herald.example:{nginx.https}/v1/whoami"
    good = curl(*via(nginx, "modules.herald.example", setup), "--cert", setup.dir / "inventory.pem",
                "--key", setup.dir / "inventory.key", url)
    assert json.loads(good.stdout)["via"] == "client certificate", good.stdout + good.stderr
    # Herald itself judges the certificate: it reached Herald unopened
    herald_cli("certs", "server", "impostor", "--ca", "ca.pem", cwd=setup.dir)
    bad = curl(*via(nginx, "modules.herald.example", setup), "--cert", setup.dir / "impostor.pem",
               "--key", setup.dir / "impostor.key", url)
    assert json.loads(bad.stdout)["error"]["code"] == "client_cert_not_for_client_auth"
    # terminated connections carry no client certificate
    terminated = curl(*via(nginx, "herald.example", setup), "--cert", setup.dir / "inventory.pem",
                      "--key", setup.dir / "inventory.key", f"https://herald.example:{nginx.https}/v1/whoami")
    assert json.loads(terminated.stdout)["error"]["code"] == "unauthorized"


def test_port_80_only_redirects(nginx: Nginx) -> None:
    answer = curl("-i", "--resolve", f"herald.example:{nginx.http}:127.0.0.1",
                  f"http://herald.example:{nginx.http}/v1/streams?from=0")
    head, _, body = answer.stdout.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 308"), answer.stdout
    assert "Location: https://herald.example/v1/streams?from=0" in head
    assert '"streams"' not in body and '"events"' not in body  # nginx's page, no data
