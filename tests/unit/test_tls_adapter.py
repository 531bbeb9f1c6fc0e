"""The pyOpenSSL-backed SSL object, driven like asyncio drives it, in memory.

A stdlib client (``ssl.SSLObject``) and our server object exchange bytes through
memory BIOs: real handshakes and records, no sockets.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest

from herald.certs import CertPair, create_ca, create_client_cert, create_server_cert
from herald.server.tls import MutualTLSContext, PyOpenSSLObject

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    ca = create_ca("Modules CA")
    ca.write(d / "ca.pem", d / "ca.key")
    create_server_cert(ca, ["localhost"]).write(d / "server.pem", d / "server.key")
    leaves: dict[str, CertPair] = {
        "good": create_client_cert(ca, "inventory"),
        "server-only": create_server_cert(ca, ["sales"]),  # serverAuth, no clientAuth
        "expired": create_client_cert(ca, "billing", days=1,
                                      not_before=NOW - datetime.timedelta(days=10)),
        "future": create_client_cert(ca, "later", not_before=NOW + datetime.timedelta(days=3)),
        "stranger": create_client_cert(create_ca("Modules CA"), "stranger"),  # same CA name
    }
    for name, pair in leaves.items():
        pair.write(d / f"{name}.pem", d / f"{name}.key")
    return d


class Pair:
    """A TLS client and our server object, wired back to back in memory."""

    def __init__(self, files: Path, cert: str | None) -> None:
        context = MutualTLSContext(files / "server.pem", files / "server.key", files / "ca.pem")
        client_context = ssl.create_default_context(cafile=str(files / "ca.pem"))
        if cert is not None:
            client_context.load_cert_chain(files / f"{cert}.pem", files / f"{cert}.key")
        self.s_in, self.s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.c_in, self.c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        server = context.wrap_bio(self.s_in, self.s_out, server_side=True)
        assert isinstance(server, PyOpenSSLObject)
        self.server = server
        self.client = client_context.wrap_bio(self.c_in, self.c_out, server_hostname="localhost")

    def pump(self) -> None:
        self.s_in.write(self.c_out.read())
        self.c_in.write(self.s_out.read())

    def handshake(self) -> None:
        done = {"client": False, "server": False}
        for _ in range(10):
            for name, side in (("client", self.client), ("server", self.server)):
                if not done[name]:
                    try:
                        side.do_handshake()
                        done[name] = True
                    except ssl.SSLWantReadError:
                        pass
                self.pump()
            if all(done.values()):
                # TLS 1.3: the client's certificate arrives with its Finished
                break
        assert all(done.values()), done


@pytest.mark.parametrize(("cert", "code", "words"), [
    ("good", None, None),
    ("server-only", "client_cert_not_for_client_auth",
     "client certificate CN=sales has no clientAuth extended key usage (it has: serverAuth)"),
    ("expired", "client_cert_expired", "client certificate CN=billing expired on "),
    ("future", "client_cert_not_yet_valid", "client certificate CN=later is not valid until "),
    ("stranger", "client_cert_unknown_ca",
     "client certificate CN=stranger was issued by CN=Modules CA, which is not a CA Herald "
     "trusts"),
])
def test_handshake_completes_and_judges_the_certificate(files: Path, cert: str,
                                                       code: str | None,
                                                       words: str | None) -> None:
    pair = Pair(files, cert)
    pair.handshake()
    judged = pair.server.client_certificate
    assert judged is not None
    if code is None:
        assert judged.trusted and judged.common_name == "inventory"
        assert pair.server.getpeercert() == {"subject": ((("CN", "inventory"),),)}
    else:
        assert judged.problem is not None and not judged.trusted
        assert judged.problem.code == code
        assert words is not None and judged.problem.message.startswith(words)
        assert pair.server.getpeercert() == {}  # like ssl: nothing for an unverified cert


def test_no_certificate(files: Path) -> None:
    pair = Pair(files, None)
    pair.handshake()
    assert pair.server.client_certificate is None
    assert pair.server.getpeercert() is None
    assert pair.server.version() in ("TLSv1.3", "TLSv1.2")


def test_data_both_ways_and_close(files: Path) -> None:
    pair = Pair(files, "good")
    pair.handshake()
    big = bytes(range(256)) * 40_000  # ~10 MB: many records, one write
    assert pair.server.write(big) == len(big)
    pair.pump()
    received = bytearray()
    while True:
        try:
            received += pair.client.read(1 << 20)
        except ssl.SSLWantReadError:
            break
    assert bytes(received) == big
    pair.client.write(b"hello")
    pair.pump()
    buffer = bytearray(100)
    assert pair.server.read(100, buffer) == 5 and bytes(buffer[:5]) == b"hello"
    with pytest.raises(ssl.SSLWantReadError):
        pair.server.read(100)
    # the client says goodbye: the server reads end-of-stream, then unwraps
    try:
        pair.client.unwrap()
    except ssl.SSLWantReadError:
        pass
    pair.pump()
    assert pair.server.read(100) == b""
    pair.server.unwrap()


def test_server_side_only(files: Path) -> None:
    context = MutualTLSContext(files / "server.pem", files / "server.key", files / "ca.pem")
    with pytest.raises(ValueError):
        context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=False)
