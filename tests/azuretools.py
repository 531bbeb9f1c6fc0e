"""The Azurite the Azure engines' tests run against: one per test session.

``require_azurite()`` returns the connection string of an Azurite (the Azure Storage
emulator, pinned in tools/azurite and installed there by ``make azurite``) that this
module starts on first use: free ports (it listens on port 0 and says where), its
data in a temporary directory, strict mode — never ``--loose``, which silently
ignores the ``If-Match`` conditions every Azure engine write is fenced by. It is
stopped when the test session ends. ``HERALD_TEST_AZURE_CONNECTION_STRING`` names an
Azurite (or an account) to use instead.

Without Azurite installed (no node, or ``make azurite`` not run) the test skips with
the reason, or fails under CI=true, like ``require_postgres``. Each test works under
names of its own (``new_prefix()``: a table prefix, a container name) and drops
them afterwards, so tests never see each other's streams.

``Azurite`` is also a fault-test tool: a test that kills and restarts the emulator
under load starts one of its own (``Azurite(data).start()``, ``kill()``,
``start()`` again on the same ports and data).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from herald.engines.azure_account import azurite_connection_string

from .conftest import ROOT, unavailable

AZURITE_DIR = ROOT / "tools" / "azurite"
AZURITE_BIN = AZURITE_DIR / "node_modules" / ".bin" / "azurite"
START_TIMEOUT = 60.0

_LISTENING = re.compile(
    r"Azurite (Blob|Queue|Table) service is successfully listening at http://[^:]+:(\d+)")


class Azurite:
    """One Azurite process on 127.0.0.1 with its data in ``data``.

    The first start takes free ports (port 0); a later start (after ``kill`` or
    ``stop``) takes the same ones, so a client's connection string stays valid."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.ports: dict[str, int] = {"Blob": 0, "Queue": 0, "Table": 0}
        self._process: subprocess.Popen[str] | None = None
        self._drainer: threading.Thread | None = None
        self._log: list[str] = []
        self._lock = threading.Lock()

    @property
    def connection_string(self) -> str:
        return azurite_connection_string(
            "127.0.0.1", blob_port=self.ports["Blob"], queue_port=self.ports["Queue"],
            table_port=self.ports["Table"])

    @property
    def log(self) -> str:
        with self._lock:
            return "".join(self._log[-200:])

    def start(self, timeout: float = START_TIMEOUT) -> Azurite:
        node = shutil.which("node")
        if node is None or not AZURITE_BIN.exists():
            unavailable("Azurite is not installed (needs node and npm; `make azurite` "
                        f"installs it into {AZURITE_DIR.relative_to(ROOT)})")
        self.data.mkdir(parents=True, exist_ok=True)
        args = [str(AZURITE_BIN), "--location", str(self.data), "--disableTelemetry",
                "--silent",
                # The SDK may speak a newer storage API version than the pinned
                # Azurite knows; that check only refuses the version header, unlike
                # --loose it ignores no condition.
                "--skipApiVersionCheck",
                "--blobHost", "127.0.0.1", "--blobPort", str(self.ports["Blob"]),
                "--queueHost", "127.0.0.1", "--queuePort", str(self.ports["Queue"]),
                "--tableHost", "127.0.0.1", "--tablePort", str(self.ports["Table"])]
        # Never "--loose": Azurite would then ignore conditions it does not support
        # instead of refusing them, and the engines' fences would go untested.
        assert "--loose" not in args and "-L" not in args
        self._process = subprocess.Popen(
            args, cwd=self.data, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        ready = threading.Event()
        seen: dict[str, int] = {}
        self._drainer = threading.Thread(target=self._drain,
                                         args=(self._process, seen, ready), daemon=True)
        self._drainer.start()
        if not ready.wait(timeout) or self._process.poll() is not None:
            log = self.log
            self.kill()
            unavailable(f"Azurite did not start within {timeout:.0f} s:\n{log}")
        self.ports.update(seen)
        return self

    def _drain(self, process: subprocess.Popen[str], seen: dict[str, int],
               ready: threading.Event) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._lock:
                self._log.append(line)
                del self._log[:-1000]
            match = _LISTENING.search(line)
            if match:
                seen[match.group(1)] = int(match.group(2))
                if len(seen) == 3:
                    ready.set()
        ready.set()  # it exited: start() sees poll() is not None

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crash of the emulator looks like."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        if self._drainer is not None:
            self._drainer.join(10)  # it reads to the end of the output, then
            self._drainer = None    # the pipe can be closed
        if process.stdout is not None:
            process.stdout.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None


_session: Azurite | None = None
_session_dir: tempfile.TemporaryDirectory[str] | None = None


def _stop_session() -> None:
    global _session, _session_dir
    if _session is not None:
        _session.stop()
        _session = None
    if _session_dir is not None:
        _session_dir.cleanup()
        _session_dir = None


def require_azurite() -> str:
    """The connection string of this test session's Azurite, started on first use
    (else skip, or fail under CI=true)."""
    global _session, _session_dir
    external = os.environ.get("HERALD_TEST_AZURE_CONNECTION_STRING")
    if external:
        return external
    if _session is not None and not _session.running:
        # Killed (a test's fault, or a crash): start it again, same ports, same data.
        _session.start()
    if _session is None:
        _session_dir = tempfile.TemporaryDirectory(prefix="herald-azurite-")
        azurite = Azurite(Path(_session_dir.name))
        atexit.register(_stop_session)  # idempotent: _stop_session checks
        try:
            azurite.start()
        except BaseException:
            _session_dir.cleanup()
            _session_dir = None
            raise
        _session = azurite
    return _session.connection_string


def new_prefix(kind: str = "t") -> str:
    """A fresh name for one test's tables or container: letters and digits only (a
    table name is alphanumeric, starts with a letter, at most 63 characters)."""
    return f"{kind}{uuid.uuid4().hex[:16]}{int(time.time()) % 1000:03d}"
