"""Shared fixtures: real servers on port 0, real engines, real services.

Tests that need an outside service (PostgreSQL, NATS…) call ``require_service``:
under ``CI=true`` a missing service fails the test; elsewhere it is skipped with
the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

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


def require_tool(name: str) -> str:
    """The path of a command-line tool (nginx, curl, openssl…): skip without it, or,
    under CI=true, fail — `make test` installs them (see the Makefile)."""
    found = shutil.which(name, path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found:
        return found
    unavailable(f"{name} is not installed (`make system-tools` installs it)")


def unavailable(message: str) -> NoReturn:
    """Skip the test, or fail it under CI=true (where everything it needs is installed)."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


PAGE = 4096  # tmpfs counts space in pages


@contextmanager
def small_filesystem(path: Path, size: int, kind: str = "tmpfs",
                     inodes: int | None = None) -> Iterator[Path]:
    """A filesystem of ``size`` bytes of its own, mounted at ``path``: one a test can
    fill up without touching anyone else's disk.

    ``tmpfs`` (``inodes`` limits its files) or ``ext4`` (an image file on a loop
    device, made with ``mkfs.ext4 -m 0``: no blocks reserved for root, who runs the
    tests). Needs root: skipped without it, or failed under CI=true, where `make test`
    runs as root.
    """
    if os.geteuid() != 0:
        unavailable("mounting a small filesystem needs root")
    path.mkdir(parents=True, exist_ok=True)
    if kind == "tmpfs":
        options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
        command = ["mount", "-t", "tmpfs", "-o", options, "herald-test", str(path)]
    elif kind == "ext4":
        image = path.with_name(path.name + ".img")
        with image.open("wb") as f:
            f.truncate(size)
        made = subprocess.run([require_tool("mkfs.ext4"), "-q", "-F", "-m", "0", str(image)],
                              capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        command = ["mount", "-o", "loop", str(image), str(path)]
    else:
        raise AssertionError(kind)
    mounted = subprocess.run(command, capture_output=True, text=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a {kind}: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazily if something still holds it (a failed test's open file): the mount
        # goes away as soon as that is closed, and the test's own error is reported.
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill_up(path: Path, leave: int, name: str = "filler") -> Path:
    """Fill the filesystem at ``path`` with a file, leaving ``leave`` bytes free."""
    filler = path / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.posix_fallocate(fd, 0, free_bytes(path) - leave)
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


@dataclass
class ServerProcess:
    """A real ``herald serve`` in a subprocess."""

    data: Path
    args: list[str] = field(default_factory=list)
    # extra environment variables, e.g. HERALD_LIMITS_MAX_EVENT_BYTES
    env: dict[str, str] = field(default_factory=dict)
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
            env={**os.environ, **self.env},
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
        self._release()
        return code

    def _release(self) -> None:
        """Let the output drainer reach EOF, then close the pipe (no ResourceWarning)."""
        if self.process is None:
            return
        if self._drainer is not None:
            self._drainer.join(10)
            self._drainer = None
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, the crash the engine must survive."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self._release()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def log(self) -> str:
        return "".join(self.output)

    def client(self, **options: object) -> herald.Client:
        return herald.Client(self.url, token=self.token, ca=self.ca, **options)  # type: ignore[arg-type]

    def async_client(self, **options: object) -> herald.AsyncClient:
        return herald.AsyncClient(self.url, token=self.token, ca=self.ca, **options)  # type: ignore[arg-type]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class Factory(ServerProcess):
        def __init__(self, data: Path | None = None, args: list[str] | None = None,
                     env: dict[str, str] | None = None) -> None:
            super().__init__(data=data or tmp_path / f"data{len(started)}", args=args or [],
                             env=env or {})
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
