"""Certificates and secured servers for the security tests.

The good certificates come from our own tool (``herald certs``); the bad ones from
the ``openssl`` command, as someone who never heard of Herald would make them.
"""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from herald.passwords import hash_password

from ..conftest import ServerProcess, require_tool

# Cheap scrypt parameters for tests only: the server checks whatever a hash says.
TEST_HASH_LOG_N = 10
ADMIN_PASSWORD = "correct horse battery staple"


def run(*command: str | Path, cwd: Path) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def herald_cli(*args: str | Path, cwd: Path) -> str:
    return run(sys.executable, "-m", "herald.cli", *args, cwd=cwd)


@dataclass
class Pki:
    """A directory of certificates: ``<name>.pem`` and ``<name>.key``."""

    dir: Path

    def pem(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def pair(self, name: str) -> tuple[str, str]:
        return str(self.pem(name)), str(self.key(name))


def _openssl_leaf(openssl: str, pki: Pki, name: str, ca: str, extensions: str,
                  ca_args: list[str] | None = None) -> None:
    """A leaf made by openssl alone: key, request, then signed by ``ca``."""
    d = pki.dir
    run(openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d)
    (d / f"{name}.ext").write_text(extensions)
    if ca_args is None:
        run(openssl, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem",
            "-CAkey", f"{ca}.key", "-set_serial", "0x" + hashlib.sha1(name.encode()).hexdigest(),
            "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    else:
        run(openssl, "ca", "-batch", "-config", "openssl-ca.cnf", "-cert", f"{ca}.pem",
            "-keyfile", f"{ca}.key", "-in", f"{name}.csr", "-out", f"{name}.pem",
            "-extfile", f"{name}.ext", "-notext", *ca_args, cwd=d)


# `openssl ca` keeps a database; this is the least it needs. It is the portable way
# to set exact validity dates (`openssl x509 -not_before` needs OpenSSL 3.4+).
_OPENSSL_CA_CONFIG = """\
[ca]
default_ca = test_ca
[test_ca]
database = index.txt
new_certs_dir = .
serial = serial.txt
default_md = sha256
policy = any_name
unique_subject = no
[any_name]
commonName = supplied
"""


def make_pki(directory: Path) -> Pki:
    """modules CA (herald certs ca); inventory, reader-cert, stranger (herald certs
    client); sales without clientAuth, billing expired, outsider from another CA
    (openssl)."""
    openssl = require_tool("openssl")
    pki = Pki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    herald_cli("certs", "ca", "--out", directory, cwd=directory)
    for module in ("inventory", "nobody"):
        herald_cli("certs", "client", module, "--ca", pki.pem("ca"), "--out", directory,
                   cwd=directory)
    # serverAuth only: the mistake strict TLS stacks punish silently
    _openssl_leaf(openssl, pki, "sales", "ca",
                  "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    # clientAuth, but valid only in January 2020
    (directory / "openssl-ca.cnf").write_text(_OPENSSL_CA_CONFIG)
    (directory / "index.txt").write_text("")
    (directory / "serial.txt").write_text("1000\n")
    _openssl_leaf(openssl, pki, "billing", "ca",
                  "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
                  ["-startdate", "20200101000000Z", "-enddate", "20200201000000Z"])
    # a CA Herald does not know, and a proper client certificate from it
    run(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", "other-ca.key", "-out", "other-ca.pem", "-days", "30",
        "-subj", "/CN=Some other CA", cwd=directory)
    _openssl_leaf(openssl, pki, "outsider", "other-ca",
                  "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    return pki


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


INVENTORY_TOKEN = "inventory-token-" + "x" * 32
READER_TOKEN = "reader-token-" + "y" * 32


def secure_config(pki: Pki, extra: str = "", tls_extra: str = "") -> str:
    password_hash = hash_password(ADMIN_PASSWORD, log_n=TEST_HASH_LOG_N)
    return f"""
[server]
http_redirect = "127.0.0.1:0"
{extra}
[tls]
client_ca = "{pki.pem('ca')}"
{tls_extra}

[[principal]]
name = "inventory"
subject = "CN=inventory"
token_sha256 = "{sha256(INVENTORY_TOKEN)}"
publish = ["inventory"]
subscribe = ["*"]

[[principal]]
name = "reader"
token_sha256 = "{sha256(READER_TOKEN)}"
subscribe = ["other-*"]

[[user]]
name = "ops"
password_hash = "{password_hash}"
"""


def start_secure_server(data: Path, pki: Pki, extra: str = "",
                        tls_extra: str = "") -> ServerProcess:
    config = data.parent / f"{data.name}.toml"
    data.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(secure_config(pki, extra, tls_extra))
    return ServerProcess(data=data, args=["--config", str(config)]).start()


def redirect_url(server: ServerProcess) -> str:
    for line in server.output:
        if "only redirects to HTTPS" in line:
            return line.split()[3]
    raise AssertionError("no redirect port in the banner:\n" + server.log)


def client_context(server: ServerProcess, pki: Pki | None = None,
                   cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=server.ca)
    if cert is not None:
        assert pki is not None
        ctx.load_cert_chain(*pki.pair(cert))
    return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    server = start_secure_server(tmp_path_factory.mktemp("secure") / "data", pki)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log, server.log
