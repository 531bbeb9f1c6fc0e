"""Shared fixtures: real servers on port 0, real engines, real services.

Tests that need an outside service (PostgreSQL, NATS…) call ``require_service``:
under ``CI=true`` a missing service fails the test; elsewhere it is skipped with
the reason.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import herald

ROOT = Path(__file__).resolve().parent.parent


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, under CI=true, fail) unless ``host:port`` accepts connections."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port} ({exc})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class ServerProcess:
    """A real ``herald serve`` in a subprocess."""

    data: Path
    args: list[str] = field(default_factory=list)
    url: str = ""
    process: subprocess.Popen[bytes] | None = None
    output: list[str] = field(default_factory=list)
    _drainer: threading.Thread | None = None

    @property
    def token(self) -> str:
        return (self.data / "admin-token").read_text().strip()

    @property
    def ca(self) -> str:
        return str(self.data / "tls" / "ca.pem")

    def start(self, listen: str = "127.0.0.1:0", timeout: float = 30.0) -> ServerProcess:
        self.output = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "herald.cli", "serve", "--data", str(self.data),
             "--listen", listen, *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline().decode()
            if not line:
                raise RuntimeError("herald serve exited:\n" + "".join(self.output))
            self.output.append(line)
            match = re.search(r"listening on (https://\S+)", line)
            if match:
                self.url = match.group(1)
                self._drainer = threading.Thread(target=self._drain, daemon=True)
                self._drainer.start()
                return self
        raise RuntimeError("herald serve did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        process = self.process
        if process is None or process.stdout is None:
            return
        for raw in process.stdout:
            self.output.append(raw.decode(errors="replace"))

    def stop(self) -> int:
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reaped()
        return code

    def _reaped(self) -> None:
        """The process has exited: let the drainer reach EOF, close the pipe."""
        process, self.process = self.process, None
        if self._drainer is not None:
            self._drainer.join(5)
            self._drainer = None
        if process is not None and process.stdout is not None:
            process.stdout.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, the crash the engine must survive."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self._reaped()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, **options: object) -> herald.Client:
        return herald.Client(self.url, token=self.token, ca=self.ca, **options)  # type: ignore[arg-type]

    def async_client(self, **options: object) -> herald.AsyncClient:
        return herald.AsyncClient(self.url, token=self.token, ca=self.ca, **options)  # type: ignore[arg-type]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class Factory(ServerProcess):
        def __init__(self, data: Path | None = None, args: list[str] | None = None) -> None:
            super().__init__(data=data or tmp_path / f"data{len(started)}", args=args or [])
            started.append(self)

    yield Factory
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory: type[ServerProcess]) -> ServerProcess:
    return server_factory().start()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[herald.Client]:
    with server.client() as c:
        yield c
