"""Limits a hostile or broken client meets: slow headers, slow bodies, huge headers,
too many requests, password guessing — against a real server with small limits."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import ServerProcess
from .conftest import INVENTORY_TOKEN, READER_TOKEN, Pki, client_context, start_secure_server

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
RATE = 2.0
BURST = 3


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    server = start_secure_server(
        tmp_path_factory.mktemp("limited") / "data", pki,
        f"header_timeout = {HEADER_TIMEOUT}\nbody_timeout = {BODY_TIMEOUT}\n"
        f"rate_limit = {RATE}\nrate_burst = {BURST}\n")
    yield server
    server.stop()


def tls_socket(server: ServerProcess) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return client_context(server).wrap_socket(raw, server_hostname="localhost")


def test_slow_headers_are_cut_off(limited: ServerProcess) -> None:
    """slowloris: headers sent a byte at a time never finish; the server hangs up."""
    conn = tls_socket(limited)
    request = b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100
    started = time.monotonic()
    closed_after = None
    try:
        for byte in request:
            conn.sendall(bytes([byte]))
            time.sleep(0.1)
            if time.monotonic() - started > HEADER_TIMEOUT + 5:
                break
        else:
            pytest.fail("the server kept reading the drip")
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        closed_after = time.monotonic() - started
    if closed_after is None:
        conn.settimeout(5)
        assert conn.recv(1) == b""  # closed: EOF, no answer
        closed_after = time.monotonic() - started
    conn.close()
    assert closed_after < HEADER_TIMEOUT + 5


def test_slow_body_gets_408(limited: ServerProcess) -> None:
    conn = tls_socket(limited)
    conn.sendall(b"POST /v1/streams/inventory/events HTTP/1.1\r\nHost: localhost\r\n"
                 b"Authorization: Bearer " + INVENTORY_TOKEN.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{")
    conn.settimeout(10)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        answer += chunk
    conn.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_oversized_header_is_refused(limited: ServerProcess) -> None:
    connection = http.client.HTTPSConnection("127.0.0.1", limited.port, timeout=10,
                                             context=client_context(limited))
    connection.request("GET", "/v1/streams", headers={"X-Big": "b" * 10_000})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 431
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert b"bbbb" not in body  # nothing echoed


def test_malformed_request_gets_a_code(limited: ServerProcess) -> None:
    conn = tls_socket(limited)
    conn.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n")
    answer = b""
    while chunk := conn.recv(4096):
        answer += chunk
    conn.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", answer
    assert b"Server: Herald\r\n" in head
    assert json.loads(body)["error"]["code"] == "bad_request"
    assert "Traceback" not in limited.log


def test_rate_limit_per_principal(limited: ServerProcess) -> None:
    def get(token: str) -> http.client.HTTPResponse:
        connection = http.client.HTTPSConnection("127.0.0.1", limited.port, timeout=10,
                                                 context=client_context(limited))
        connection.request("GET", "/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    statuses = [get(READER_TOKEN).status for _ in range(BURST + 2)]
    assert statuses[:BURST] == [200] * BURST
    assert 429 in statuses[BURST:]
    limited_response = next(r for r in (get(READER_TOKEN) for _ in range(3)) if r.status == 429)
    assert int(limited_response.getheader("Retry-After", "0")) >= 1
    # another principal has its own bucket; the admin token is not limited
    assert get(INVENTORY_TOKEN).status == 200
    assert all(get(limited.token).status == 200 for _ in range(BURST + 2))


def test_password_guessing_backs_off(limited: ServerProcess) -> None:
    def login(password: str) -> tuple[int, dict[str, object], http.client.HTTPResponse]:
        connection = http.client.HTTPSConnection("127.0.0.1", limited.port, timeout=30,
                                                 context=client_context(limited))
        credentials = base64.b64encode(f"ops:{password}".encode()).decode()
        connection.request("GET", "/", headers={"Authorization": f"Basic {credentials}"})
        response = connection.getresponse()
        body = response.read()
        connection.close()
        document = json.loads(body) if response.status != 200 else {}
        return response.status, document, response

    for attempt in range(5):  # FREE_LOGIN_FAILURES
        status, document, _ = login(f"guess-{attempt}")
        assert (status, document["error"]["code"]) == (401, "invalid_login")  # type: ignore[index]
    status, _, _ = login("guess-5")  # the sixth failure earns a lock-out
    assert status == 401
    status, document, response = login("guess-6")
    assert status == 429
    assert document["error"]["code"] == "login_backoff"  # type: ignore[index]
    assert int(response.getheader("Retry-After", "0")) >= 1
    # and passwords are never logged
    assert "guess-" not in limited.log
    assert "dashboard login failed for user ops from 127.0.0.1" in limited.log


def test_require_client_cert(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> None:
    server = start_secure_server(tmp_path_factory.mktemp("strict") / "data", pki,
                                 tls_extra="require_client_cert = true")
    try:
        def status(path: str, cert: str | None, token: str | None = None) -> tuple[int, str]:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", server.port, timeout=10,
                context=client_context(server, pki, cert))
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            connection.close()
            code = json.loads(body)["error"]["code"] if response.status >= 400 else ""
            return response.status, code

        assert status("/v1/health", None) == (200, "")
        assert status("/v1/whoami", None, server.token) == (401, "client_cert_required")
        assert status("/", None) == (401, "client_cert_required")
        assert status("/v1/whoami", "inventory") == (200, "")
        assert status("/v1/whoami", "inventory", server.token) == (200, "")
        assert status("/v1/whoami", "billing", server.token) == (403, "client_cert_expired")
        assert "client certificates: required" in server.log
    finally:
        server.stop()


@pytest.mark.parametrize(("content", "message"), [
    (None, "[tls] client_ca: "),
    ("not a certificate\n", "cannot load the TLS files"),
])
def test_bad_client_ca_stops_herald_with_a_message(tmp_path: Path, content: str | None,
                                                   message: str) -> None:
    ca = tmp_path / "modules-ca.pem"
    if content is not None:
        ca.write_text(content)
    (tmp_path / "herald.toml").write_text(f'[tls]\nclient_ca = "{ca}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "herald.cli", "serve", "--config", str(tmp_path / "herald.toml"),
         "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
