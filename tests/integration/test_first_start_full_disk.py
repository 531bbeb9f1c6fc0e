"""A first start on a full disk: a clear refusal, and never an empty or partial key.

The incident (issue 12): ``herald serve`` on a full disk left an empty ``ca.key``
behind, which the next start took for a key. What this proves, for a real
``herald serve`` on a small filesystem of its own (an 8 MiB tmpfs, and a
loop-mounted 8 MiB ext4) filled so that only 0, 1, 2 … pages or blocks are left —
so that the disk runs out at each step of a first start in turn (the data
directory, ``tls/``, each key and certificate, the admin token, the engine's
directories and lock):

* the start either succeeds or stops with a one-line error that says the disk is
  full (``storage_full``, or ``storage_unavailable`` from the engine), never a
  traceback;
* whatever it leaves is whole: every certificate and key parses, the admin token is
  a strong token, no file is empty (but the lock, which is), no temporary file is
  left behind;
* once space is freed, the next start on the same data directory completes what is
  missing and serves: its CA verifies its server certificate, the token works.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from herald.server.auth import token_problem

from ..conftest import PAGE, ServerProcess, fill_up, small_filesystem

FS_BYTES = 8 << 20


def assert_nothing_partial(data: Path) -> None:
    if not data.exists():
        return
    for path in data.rglob("*"):
        if path.is_dir():
            continue
        assert not path.name.endswith(".tmp"), f"left behind: {path}"
        content = path.read_bytes()
        if path.name == "herald.lock":
            continue
        assert content, f"{path} is empty"
        if path.suffix == ".pem":
            x509.load_pem_x509_certificate(content)
        elif path.suffix == ".key":
            serialization.load_pem_private_key(content, password=None)
        elif path.name == "admin-token":
            assert token_problem(content.decode().strip()) is None


def try_start(server: ServerProcess) -> str | None:
    """Start ``server``; None if it listens (it is stopped again), else its output."""
    try:
        server.start()
    except RuntimeError as exc:
        assert server.process is not None and server.process.stdout is not None
        assert server.process.wait(30) == 2
        server.process.stdout.close()
        server.process = None
        return str(exc)
    server.stop()
    return None


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "step"), [("tmpfs", PAGE), ("ext4", 1024)])
def test_a_first_start_on_a_full_disk_leaves_nothing_partial(
    kind: str, step: int, server_factory: type[ServerProcess], tmp_path: Path,
) -> None:
    with small_filesystem(tmp_path / "fs", FS_BYTES, kind) as fs:
        data = fs / "data"
        refusals = 0
        for room in range(0, 16 * step, step):
            shutil.rmtree(data, ignore_errors=True)  # each one a first start
            filler = fill_up(fs, leave=room)
            output = try_start(server_factory(data=data))
            if output is None:
                filler.unlink()
                break
            refusals += 1
            assert "Traceback" not in output, output
            last = output.strip().splitlines()[-1]
            assert last.startswith("herald: error: ") and (
                "[storage_full]" in last or "[storage_unavailable]" in last), output
            assert "no space left" in last.lower(), last
            assert_nothing_partial(data)
            # With room again, the next start completes what is missing, and serves.
            filler.unlink()
            server = server_factory(data=data).start()
            with server.client() as client:
                assert client.append("s", [{"type": "T", "data": {}}]).appended == 1
            server.stop()
            assert_nothing_partial(data)
            tls = data / "tls"
            ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
            x509.load_pem_x509_certificate(
                (tls / "server.pem").read_bytes()).verify_directly_issued_by(ca)
        else:
            pytest.fail(f"herald serve never started with {room} bytes free")
        assert refusals >= 3, "the disk ran out at several steps of the first start"
