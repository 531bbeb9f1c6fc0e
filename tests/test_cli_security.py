"""`herald certs`, `herald users hash`, `herald tokens`: in-process, on the public CLI."""

from __future__ import annotations

import hashlib
import io
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from herald.cli import main
from herald.passwords import verify_password


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_certs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "ca", "--out", str(tmp_path), "--name", "Test modules CA"]) == 0
    ca_file = str(tmp_path / "ca.pem")
    assert main(["certs", "client", "inventory", "--ca", ca_file, "--out", str(tmp_path)]) == 0
    assert main(["certs", "server", "herald.example", "--san", "10.0.0.5", "--san",
                 "localhost", "--ca", ca_file, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'subject = "CN=inventory"' in out
    ca, client, server = (load(tmp_path / f"{n}.pem")
                          for n in ("ca", "inventory", "herald.example"))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert eku(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "inventory"
    assert eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(getattr(n, "value", n)) for n in names] == [
        "herald.example", "10.0.0.5", "localhost"]
    client.verify_directly_issued_by(ca)
    for key in ("ca", "inventory", "herald.example"):
        assert stat.S_IMODE((tmp_path / f"{key}.key").stat().st_mode) == 0o600
    # nothing is overwritten by accident
    assert main(["certs", "client", "inventory", "--ca", ca_file, "--out", str(tmp_path)]) == 2
    assert "already exist" in capsys.readouterr().err


def test_certs_default_to_the_servers_ca(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "client", "inventory", "--data", str(tmp_path / "none")]) == 2
    assert "herald certs ca" in capsys.readouterr().err
    data = tmp_path / "herald-data"
    from herald.certs import ensure_server_tls

    ensure_server_tls(data / "tls")
    assert main(["certs", "client", "sales", "--data", str(data), "--out", str(tmp_path)]) == 0
    load(tmp_path / "sales.pem").verify_directly_issued_by(load(data / "tls" / "ca.pem"))


def test_users_hash_reads_one_line(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("pass word \nsecond line\n"))
    assert main(["users", "hash"]) == 0
    stored = capsys.readouterr().out.strip()
    assert verify_password("pass word ", stored)  # spaces are part of a password
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["users", "hash"]) == 2


def test_tokens(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokens", "new"]) == 0
    token, line = capsys.readouterr().out.splitlines()
    assert len(token) >= 43
    assert line == f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"'
    monkeypatch.setattr(sys, "stdin", io.StringIO(token + "\n"))
    assert main(["tokens", "hash"]) == 0
    assert capsys.readouterr().out.strip() == line
