"""Raw request bytes against a real ``herald serve``: never a 5xx, never a traceback.

schemathesis (test_fuzz_api.py) sends what the OpenAPI description allows and what
it forbids; this sends what no description speaks of, as a careless client or an
attacker writes it on the socket: compressed bodies (gzip, deflate, a gzip bomb,
malformed gzip), repeated query parameters and headers, positions that ``int()``
would take (``+3``, ``1_0``, ``١``), huge numbers in event data, odd methods and
paths. Every answer must be a 4xx or a 2xx, and once the run is over the server must
be running, its log free of tracebacks, its memory bounded and its data directory
clean.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import ssl
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..conftest import ServerProcess
from .faults import assert_check_clean

EXAMPLES = 150  # make test; make proof: PROOF_EXAMPLES
PROOF_EXAMPLES = 3_000

BOMB = gzip.compress(b"[" + b'{"type":"T","data":0},' * 2_000_000 + b'{"type":"T","data":0}]')
BATCH = json.dumps([{"type": "T", "data": {"n": 1}}]).encode()
NUMBERS = ["1e999", "-1e999", "9" * 5000, str(2**53), str(2**64), "1.5", "0", "-0",
           "12345678901234567890.5e3"]


@pytest.fixture(scope="module")
def raw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(data=tmp_path_factory.mktemp("raw") / "data").start()
    with server.client() as client:
        client.append("inventory", [{"type": "Seeded", "data": {"n": n}} for n in range(5)])
    yield server
    assert server.process is not None and server.process.poll() is None, "Herald crashed"
    assert server.stop() == 0
    assert "Traceback" not in server.log, server.log


def bodies() -> st.SearchStrategy[tuple[bytes, list[tuple[str, str]]]]:
    """(body, headers it comes with)."""
    plain = st.sampled_from([b"", BATCH, b"[", b"\xff\xfe", b"[]", b"null"]) | st.builds(
        lambda n, where: (
            '[{"type": "T", "data": ' + (where % n) + "}]").encode(),
        st.sampled_from(NUMBERS), st.sampled_from(["%s", '{"a": [%s]}', '{"s": "%s"}']))
    encoded = st.tuples(plain, st.sampled_from(["gzip", "deflate", "br", "identity",
                                                "gzip, identity", "GZIP", "x-gzip"])).map(
        lambda pair: (_encode(*pair), [("Content-Encoding", pair[1])]))
    special = st.sampled_from([
        (BOMB, [("Content-Encoding", "gzip")]),
        (b"\x1f\x8b\x08\x00garbage", [("Content-Encoding", "gzip")]),
        (BATCH, [("Content-Encoding", "gzip"), ("Content-Encoding", "identity")]),
        (gzip.compress(BATCH), []),  # compressed, and not saying so
    ])
    return plain.map(lambda b: (b, [])) | encoded | special


def _encode(body: bytes, encoding: str) -> bytes:
    first = encoding.split(",")[0].strip().lower()
    if first in ("gzip", "x-gzip"):
        return gzip.compress(body)
    if first == "deflate":
        return zlib.compress(body)
    return body


queries = st.lists(st.tuples(
    st.sampled_from(["from", "limit", "follow", "heartbeat", "expected_head", "x", "%66rom"]),
    st.sampled_from(["0", "3", "+3", "1_0", "١", "", "head", "9" * 30, "true", "1e3", "nan",
                     "-1", " 1", "0x10"])), max_size=4)
paths = st.sampled_from(["/v1/streams/inventory/events", "/v1/streams/new-one/events",
                         "/v1/streams", "/v1/streams/inventory", "/v1/health",
                         "/v1/openapi.json", "/v1/whoami", "/v1/gatherers", "/",
                         "/v1/streams/_herald.gather.skips/events", "/v1/streams/a%0Ab/events",
                         "//v1/streams", "/v1/streams/inventory/events/"])


@st.composite
def requests(draw: st.DrawFn, token: str) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "POST", "PUT", "OPTIONS", "HEAD", "DELETE"]))
    path = draw(paths)
    query = "&".join(f"{k}={v}" for k, v in draw(queries))
    body, headers = draw(bodies()) if method in ("POST", "PUT") else (b"", [])
    auth = draw(st.sampled_from([[f"Bearer {token}"], ["Bearer wrong"], [],
                                 [f"Bearer {token}", f"Bearer {token}"]]))
    headers = headers + [("Authorization", value) for value in auth]
    headers += draw(st.lists(st.sampled_from([
        ("Accept", "application/vnd.herald.records"), ("Accept", "text/event-stream"),
        ("Last-Event-ID", "+3"), ("Last-Event-ID", "٣"), ("Last-Event-ID", "3"),
        ("Content-Type", "application/json"), ("X-Forwarded-For", "1.2.3.4\r\n")]),
        max_size=2).map(lambda hs: [(k, v.replace("\r\n", "")) for k, v in hs]))
    # A followed stream never ends: send() reads the status line only, then hangs up.
    target = path + ("?" + query if query else "")
    lines = [f"{method} {target} HTTP/1.1", "Host: herald", "Connection: close",
             f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def send(server: ServerProcess, request: bytes) -> int:
    context = ssl.create_default_context(cafile=server.ca)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        try:
            tls.sendall(request)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # refused before the whole body was read: the answer is still there
        answer = b""
        while b"\r\n" not in answer:
            try:
                chunk = tls.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1."), (request[:300], answer[:300])
    return int(answer.split(b" ", 2)[1])


def fuzz(server: ServerProcess, examples: int) -> None:
    statuses: dict[int, int] = {}

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(request=requests(server.token))
    def run(request: bytes) -> None:
        status = send(server, request)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, request[:500]

    run()
    print("statuses:", dict(sorted(statuses.items())))
    # The run reaches both sides: what is accepted and what is refused.
    assert any(s < 300 for s in statuses) and any(s >= 400 for s in statuses), statuses


def test_raw_requests_never_get_a_5xx(raw_server: ServerProcess) -> None:
    fuzz(raw_server, EXAMPLES)


def test_a_gzip_bomb_costs_no_memory(raw_server: ServerProcess) -> None:
    """Dozens of bombs at once (each ~100 KB on the wire, 44 MB inflated): refused
    unread, the server's memory stays where it was."""
    from concurrent.futures import ThreadPoolExecutor

    def rss_kb() -> int:
        assert raw_server.process is not None
        status = Path(f"/proc/{raw_server.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines()
                        if line.startswith("VmHWM:")).split()[1])

    before = rss_kb()
    request = ("POST /v1/streams/bombed/events HTTP/1.1\r\nHost: herald\r\n"
               f"Authorization: Bearer {raw_server.token}\r\nContent-Encoding: gzip\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(BOMB)}\r\n"
               "Connection: close\r\n\r\n").encode() + BOMB
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda _: send(raw_server, request), range(48)))
    assert set(statuses) == {415}, statuses
    assert rss_kb() - before < 100_000, "peak RSS grew by more than 100 MB"


def test_after_the_raw_fuzzing_the_data_is_clean(raw_server: ServerProcess,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert raw_server.process is not None and raw_server.process.poll() is None
    assert_check_clean(raw_server.data, capsys)


@pytest.mark.proof
@pytest.mark.skipif(not os.environ.get("HERALD_PROOF"),
                    reason="the long raw fuzzing runs with `make proof` (HERALD_PROOF=1)")
def test_raw_requests_never_get_a_5xx_at_length(raw_server: ServerProcess) -> None:
    fuzz(raw_server, PROOF_EXAMPLES)
