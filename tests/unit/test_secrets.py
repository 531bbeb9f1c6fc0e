"""Secrets on disk: written durably, read safely, strong enough (herald.secretfiles).

The incidents (issue 12): an admin token of one character was accepted; a token
file that is not UTF-8, or is a directory, gave a traceback; a world-readable token
file got no warning while the banner said 0600; a symlink was followed; a first
start on a full disk left an empty ``ca.key``. What this proves, for every secret
Herald reads or writes — the admin token, the CA's and the server's keys, the keys
``herald certs`` writes, an operator's ``[tls] key``, a config file with secrets:

* ``write_private`` creates 0600 whatever the umask (0 included), replaces a file
  whole (a link in its place is replaced, not followed; a link planted at the
  temporary name is not followed either), and when a write or an fsync fails —
  ENOSPC, EIO — leaves the old file, or none, and no temporary file; the error is
  StorageFull / StorageError naming the file, never an OSError;
* ``read_private`` of Herald's own secret refuses a link, a directory, a FIFO
  (without hanging), a file that is not UTF-8, one too large, and one that its group
  or others may read or change — each a one-line ConfigError naming the file and
  saying what to do; 0600 and 0400 are accepted; an operator's file is followed
  through a link and only warned about when every local user can read it;
* the admin token: created 0600, 256 bits; one that an operator wrote is refused
  when under 32 characters, with fewer than 8 different ones, or not printable
  ASCII; a 32-digit hex one (128 bits) is accepted; an empty file is replaced;
  ``herald tokens hash`` refuses the same weak tokens (``weak_token``);
* ``ensure_server_tls`` on a disk that fills at each of its writes in turn leaves no
  empty or partial file, and the next start completes the set; a wide or linked key
  stops it; an empty key left by an older Herald is replaced;
* a node's banner shows the admin token's real mode, and warns (banner and log)
  about a data directory others can enter, an operator's world-readable ``[tls]
  key`` and a world-readable config file holding secrets; a world-readable admin
  token stops the start (with the message docs/operations.md shows);
* the client's ``token_file`` that is a directory or not UTF-8 is its
  ``bad_token_file`` error, not a traceback;
* an operator's ``[tls] key`` that is too weak (RSA under 2048 bits, a curve under
  256) or a directory stops the start, naming the key.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from herald.certs import create_ca, create_server_cert, ensure_server_tls
from herald.cli import main
from herald.config import load_config
from herald.errors import ConfigError, StorageError, StorageFull
from herald.node import Node
from herald.secretfiles import (
    MAX_SECRET_BYTES,
    operator_file_warning,
    read_private,
    read_private_text,
    write_private,
)
from herald.server.auth import ensure_admin_token, token_problem


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_0() -> Iterator[None]:
    """The widest umask there is: nothing Herald creates may rely on a umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


class FailingWrites:
    """``os.write`` (or ``os.fsync``) fails with ``error`` from its ``nth`` call on:
    a disk that fills part-way through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, call: str, nth: int,
                 error: int = errno.ENOSPC, partial: bool = True) -> None:
        self.calls = 0
        real = getattr(os, call)

        def failing(fd: int, *args: Any) -> Any:
            self.calls += 1
            if self.calls >= nth:
                if call == "write" and partial and self.calls == nth and len(args[0]) > 1:
                    real(fd, bytes(args[0][: len(args[0]) // 2]))  # half of it landed
                raise OSError(error, os.strerror(error))
            return real(fd, *args)

        monkeypatch.setattr(os, call, failing)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --- write_private ----------------------------------------------------------------------


def test_a_secret_is_0600_whatever_the_umask(tmp_path: Path, umask_0: None) -> None:
    write_private(tmp_path / "new" / "secret", b"s3cret")
    assert mode(tmp_path / "new" / "secret") == 0o600
    assert mode(tmp_path / "new") == 0o700  # a directory made for a secret is private
    write_private(tmp_path / "public.pem", b"cert", mode=0o644)
    assert mode(tmp_path / "public.pem") == 0o644


def test_a_public_file_gets_its_mode_under_a_narrow_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_private(tmp_path / "ca.pem", b"cert", mode=0o644)
    finally:
        os.umask(old)
    assert mode(tmp_path / "ca.pem") == 0o644


def test_a_wider_file_is_replaced_by_a_0600_one(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert (mode(path), path.read_bytes()) == (0o600, b"new")


def test_links_are_replaced_never_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not yours")
    (tmp_path / "secret").symlink_to(elsewhere)
    (tmp_path / ".secret.tmp").symlink_to(elsewhere)  # planted at the temporary name
    write_private(tmp_path / "secret", b"mine")
    assert elsewhere.read_text() == "not yours"
    assert not (tmp_path / "secret").is_symlink()
    assert (tmp_path / "secret").read_bytes() == b"mine"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("call", "nth", "error", "raised"), [
    ("write", 1, errno.ENOSPC, StorageFull),
    ("write", 1, errno.EDQUOT, StorageFull),
    ("fsync", 1, errno.ENOSPC, StorageFull),
    ("fsync", 1, errno.EIO, StorageError),
])
def test_a_failed_write_leaves_the_old_file_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, nth: int, error: int,
    raised: type[StorageError],
) -> None:
    old, new = tmp_path / "old-secret", tmp_path / "new-secret"
    write_private(old, b"the old secret")
    FailingWrites(monkeypatch, call, nth, error)
    for path in (old, new):
        with pytest.raises(raised) as caught:
            write_private(path, b"x" * 10_000)
        assert str(path) in caught.value.message and "\n" not in caught.value.message
        assert isinstance(caught.value.__cause__, OSError)
    monkeypatch.undo()
    assert old.read_bytes() == b"the old secret"
    assert not new.exists()
    assert leftovers(tmp_path) == []


# --- read_private ---------------------------------------------------------------------


def refusal(path: Path, **options: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        read_private_text(path, "admin token", **options)
    message = caught.value.message
    assert caught.value.code == "invalid_config"
    assert message.startswith(f"admin token {path}: ") and "\n" not in message
    return message


def test_a_link_to_a_secret_of_ours_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    write_private(target, b"token")
    (tmp_path / "link").symlink_to(target)
    assert "symbolic link" in refusal(tmp_path / "link")
    # an operator's file (the [tls] key they name) is followed: certbot, Kubernetes
    assert read_private(tmp_path / "link", "[tls] key", ours=False) == b"token"


def test_a_directory_fifo_or_huge_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    assert "is a directory" in refusal(tmp_path / "dir")
    assert "is a directory" in refusal(tmp_path / "dir", ours=False)
    os.mkfifo(tmp_path / "fifo", 0o600)
    assert "not a regular file" in refusal(tmp_path / "fifo")  # and it did not hang
    write_private(tmp_path / "huge", b"x" * (MAX_SECRET_BYTES + 1))
    assert "too large" in refusal(tmp_path / "huge")


def test_a_secret_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    write_private(tmp_path / "binary", b"\xff\xfe token")
    assert "not UTF-8" in refusal(tmp_path / "binary")


@pytest.mark.parametrize("wide", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666, 0o610])
def test_a_secret_of_ours_others_may_read_or_change_is_refused(tmp_path: Path,
                                                               wide: int) -> None:
    path = tmp_path / "admin-token"
    write_private(path, b"token")
    path.chmod(wide)
    message = refusal(path)
    assert f"mode {wide:04o}" in message and f"`chmod 600 {path}`" in message


@pytest.mark.parametrize("private", [0o600, 0o400, 0o700])
def test_a_private_secret_is_read(tmp_path: Path, private: int) -> None:
    path = tmp_path / "admin-token"
    write_private(path, b"token\n")
    path.chmod(private)
    assert read_private_text(path, "admin token") == "token\n"


@pytest.mark.parametrize(("file_mode", "warned"), [
    (0o600, None), (0o400, None), (0o640, None),  # a group-readable key is deliberate
    (0o644, "every local user can read it"), (0o604, "every local user can read it"),
    (0o660, "its group can change it"),
    (0o666, "every local user can read it; its group and every local user can change it"),
])
def test_an_operators_key_is_warned_about_not_refused(tmp_path: Path, file_mode: int,
                                                     warned: str | None) -> None:
    key = tmp_path / "server.key"
    write_private(key, b"key")
    key.chmod(file_mode)
    warning = operator_file_warning(key, "[tls] key")
    if warned is None:
        assert warning is None
    else:
        assert warning is not None and warned in warning and f"chmod 600 {key}" in warning
    assert operator_file_warning(tmp_path / "missing.key", "[tls] key") is None


# --- the admin token -------------------------------------------------------------------


def test_the_admin_token_is_created_0600_and_strong(tmp_path: Path, umask_0: None) -> None:
    path = tmp_path / "data" / "admin-token"
    token, created = ensure_admin_token(path)
    assert created and mode(path) == 0o600 and mode(path.parent) == 0o700
    assert len(token) >= 43 and token_problem(token) is None
    assert ensure_admin_token(path) == (token, False)


@pytest.mark.parametrize(("token", "problem"), [
    ("x", "is 1 characters; at least 32"),
    ("a" * 31, "is 31 characters"),
    ("changeme" * 4, "uses only 7 different characters"),
    ("a" * 64, "uses only 1 different"),
    ("correct horse battery staple and more words", "printable ASCII without spaces"),
    ("tökenwithanumlautbutlongenoughforit", "printable ASCII"),
    ("two\nlines-" + secrets.token_hex(16), "printable ASCII"),
])
def test_a_weak_token_is_refused(tmp_path: Path, token: str, problem: str) -> None:
    assert problem in (token_problem(token) or "")
    path = tmp_path / "admin-token"
    write_private(path, token.encode() + b"\n")
    with pytest.raises(ConfigError) as caught:
        ensure_admin_token(path)
    assert caught.value.message.startswith(f"admin token {path}: the token ")
    assert problem in caught.value.message and "\n" not in caught.value.message
    assert path.read_bytes() == token.encode() + b"\n"  # never replaced behind one's back


@pytest.mark.parametrize("token", [secrets.token_hex(16), secrets.token_urlsafe(32),
                                   "Zx8-" + secrets.token_hex(14)])
def test_a_strong_operator_token_is_accepted(tmp_path: Path, token: str) -> None:
    path = tmp_path / "admin-token"
    write_private(path, f"  {token}\r\n".encode())
    assert ensure_admin_token(path) == (token, False)


def test_an_empty_token_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    write_private(path, b"\n")
    token, created = ensure_admin_token(path)
    assert created and path.read_text() == token + "\n" and mode(path) == 0o600


@pytest.mark.parametrize("bad", ["link", "directory", "not-utf8", "world-readable"])
def test_a_bad_token_file_is_a_config_error_not_a_traceback(tmp_path: Path,
                                                            bad: str) -> None:
    path = tmp_path / "admin-token"
    if bad == "link":
        write_private(tmp_path / "real", secrets.token_urlsafe(32).encode())
        path.symlink_to(tmp_path / "real")
    elif bad == "directory":
        path.mkdir()
    elif bad == "not-utf8":
        write_private(path, b"\xc3\x28" * 20)
    else:
        write_private(path, secrets.token_urlsafe(32).encode())
        path.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        ensure_admin_token(path)
    assert caught.value.message.startswith(f"admin token {path}: ")


def test_tokens_hash_refuses_a_weak_token(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hunter2\n"))
    assert main(["tokens", "hash"]) == 2
    err = capsys.readouterr().err
    assert "[weak_token]" in err and "at least 32" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO(secrets.token_hex(16) + "\n"))
    assert main(["tokens", "hash"]) == 0


# --- the TLS files ---------------------------------------------------------------------

TLS_FILES = ("ca.pem", "ca.key", "server.pem", "server.key")


def assert_whole(tls: Path) -> None:
    """Every TLS file there is whole: certificates and keys load."""
    for name in TLS_FILES:
        path = tls / name
        if not path.exists():
            continue
        data = path.read_bytes()
        assert data, f"{name} is empty"
        if name.endswith(".pem"):
            x509.load_pem_x509_certificate(data)
        else:
            serialization.load_pem_private_key(data, password=None)


def test_the_tls_directory_is_private_whatever_the_umask(tmp_path: Path,
                                                         umask_0: None) -> None:
    tls = tmp_path / "tls"
    assert ensure_server_tls(tls)
    assert mode(tls) == 0o700
    assert {name: mode(tls / name) for name in TLS_FILES} == dict.fromkeys(TLS_FILES, 0o600)


@pytest.mark.parametrize("nth", [1, 2, 3, 4, 5])
def test_a_disk_that_fills_during_the_first_start_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nth: int,
) -> None:
    """The nth write fails (half of it written): ca.key, ca.pem, server.key, server.pem
    are written in that order; the fifth never comes (all four succeed)."""
    tls = tmp_path / "tls"
    failing = FailingWrites(monkeypatch, "write", nth)
    if nth <= 4:
        with pytest.raises(StorageFull):
            ensure_server_tls(tls)
    else:
        assert ensure_server_tls(tls)
    monkeypatch.undo()
    assert failing.calls == min(nth, 4)
    assert_whole(tls)
    assert leftovers(tls) == []
    assert ensure_server_tls(tls) is (nth <= 4)  # the next start completes the set
    assert_whole(tls)
    assert all((tls / name).exists() for name in TLS_FILES)
    ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    x509.load_pem_x509_certificate((tls / "server.pem").read_bytes()).verify_directly_issued_by(ca)


def test_an_empty_key_an_older_herald_left_is_replaced(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir(mode=0o700)
    (tls / "ca.pem").write_bytes(create_ca().cert_pem())
    (tls / "ca.key").touch(mode=0o600)
    assert ensure_server_tls(tls)
    assert_whole(tls)


@pytest.mark.parametrize("key", ["ca.key", "server.key"])
def test_a_wide_or_linked_tls_key_stops_the_start(tmp_path: Path, key: str) -> None:
    tls = tmp_path / "tls"
    ensure_server_tls(tls)
    (tls / key).chmod(0o644)
    with pytest.raises(ConfigError, match=f"{key}: mode 0644 lets"):
        ensure_server_tls(tls)
    (tls / key).chmod(0o600)
    (tls / key).rename(tls / "moved.key")
    (tls / key).symlink_to(tls / "moved.key")
    with pytest.raises(ConfigError, match="symbolic link"):
        ensure_server_tls(tls)


# --- a node: refusals, warnings and a banner that tells the truth --------------------------


def node_config(data: Path, **sections: Any) -> Any:
    return load_config(None, {"data": str(data), "server": {"listen": "127.0.0.1:0"},
                              "storage": {"engine": "memory"}, **sections}, environ={})


async def test_the_banner_says_the_real_mode_and_warns(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    async with Node(node_config(data)) as node:
        assert node.warnings == []
        assert "(mode 0600)" in node.banner() and "WARNING" not in node.banner()
    data.chmod(0o755)  # as an older Herald made it, or `mkdir` did
    caplog.set_level(logging.WARNING, "herald.server")
    async with Node(node_config(data)) as node:
        (warning,) = node.warnings
        assert warning == (f"data directory {data} has mode 0755: its group and every "
                           f"local user can look into it, and may read its streams; "
                           f"`chmod 700 {data}`")
        assert f"  WARNING: {warning}" in node.banner()
    assert warning in caplog.text


# docs/operations.md's example user
OPS_HASH = ("$scrypt$ln=14,r=8,p=5$EgVqDaHKzIxrHQOXuYt5Tw$"
            "1J4oTOMYM2JpwKklZmz0We8oRXug+hSWa/Y+LF/V1VA")


async def test_an_operators_wide_key_and_config_file_are_warned_about(tmp_path: Path) -> None:
    ca = create_ca()
    pair = create_server_cert(ca)
    pair.write(tmp_path / "server.pem", tmp_path / "server.key")
    (tmp_path / "server.key").chmod(0o644)
    config = tmp_path / "herald.toml"
    config.write_text(f'data = "data"\n[server]\nlisten = "127.0.0.1:0"\n'
                      f'[storage]\nengine = "memory"\n'
                      f'[tls]\ncert = "server.pem"\nkey = "server.key"\n'
                      f'[[user]]\nname = "ops"\npassword_hash = "{OPS_HASH}"\n')
    config.chmod(0o644)
    async with Node(load_config(config, environ={})) as node:
        key_warning, file_warning = node.warnings
        assert key_warning.startswith(f"[tls] key {tmp_path / 'server.key'} has mode 0644: "
                                      "every local user can read it")
        assert file_warning.startswith(f"config file {config} has mode 0644: every local "
                                       "user can read the secrets in it ([[user]] "
                                       "password hashes)")
        banner = node.banner()
        assert f"  WARNING: {key_warning}" in banner and f"  WARNING: {file_warning}" in banner
    config.chmod(0o640)
    (tmp_path / "server.key").chmod(0o600)
    async with Node(load_config(config, environ={})) as node:
        assert node.warnings == []


@pytest.mark.parametrize(("dsn", "secret"), [
    ("postgresql://herald:hunter2@db/herald", True),
    ("host=db user=herald password=hunter2", True),
    ("postgresql://herald@db/herald", False),  # a password from ~/.pgpass or the env
])
def test_a_config_file_knows_its_secrets(tmp_path: Path, dsn: str, secret: bool) -> None:
    config = tmp_path / "herald.toml"
    config.write_text(f'[storage]\nengine = "postgres"\n[storage.postgres]\ndsn = "{dsn}"\n')
    loaded = load_config(config, environ={})
    assert loaded.file == config
    assert loaded.file_secrets == (("[storage.postgres] dsn",) if secret else ())
    # the same DSN from the environment is not the file's secret
    assert load_config(None, environ={"HERALD_STORAGE_POSTGRES_DSN": dsn}).file_secrets == ()


async def test_a_world_readable_admin_token_stops_the_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with Node(node_config(data)):
        pass
    (data / "admin-token").chmod(0o644)
    with pytest.raises(ConfigError, match=r"admin token .* mode 0644 lets"):
        await Node(node_config(data)).start()


def test_the_refusal_in_the_operations_doc_is_the_real_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ..conftest import ROOT

    monkeypatch.chdir(tmp_path)
    path = Path("herald-data") / "admin-token"
    write_private(path, secrets.token_urlsafe(32).encode())
    path.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        ensure_admin_token(path)
    line = f"herald: error: {caught.value.message} [{caught.value.code}]"
    assert line in (ROOT / "docs" / "operations.md").read_text()


@pytest.mark.parametrize("bad", ["directory", "not-utf8"])
def test_the_clients_bad_token_file_is_its_error_not_a_traceback(tmp_path: Path,
                                                                 bad: str) -> None:
    from herald import Client
    from herald.errors import ClientError

    path = tmp_path / "token"
    if bad == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"\xff" * 40)
    with pytest.raises(ClientError) as caught:
        Client("https://127.0.0.1:1", token_file=path)
    assert caught.value.code == "bad_token_file" and str(path) in caught.value.message


def _self_signed(key: Any) -> bytes:
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(("make", "problem"), [
    ("rsa-1024", "an RSA key of 1024 bits; at least 2048 are required"),
    ("p-224", "an elliptic-curve key on secp224r1 (224 bits); at least 256"),
    ("directory", "is a directory"),
])
async def test_an_operators_weak_or_wrong_key_stops_the_start(tmp_path: Path, make: str,
                                                            problem: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key_path, cert_path = tmp_path / "server.key", tmp_path / "server.pem"
    if make == "directory":
        key_path.mkdir()
        cert_path.write_bytes(create_server_cert(create_ca()).cert_pem())
    else:
        key = (rsa.generate_private_key(65537, 1024) if make == "rsa-1024"
               else ec.generate_private_key(ec.SECP224R1()))
        write_private(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        cert_path.write_bytes(_self_signed(key))
    config = node_config(tmp_path / "data", tls={"cert": str(cert_path), "key": str(key_path)})
    with pytest.raises(ConfigError) as caught:
        await Node(config).start()
    assert caught.value.message.startswith(f"[tls] key {key_path}: ")
    assert problem in caught.value.message
