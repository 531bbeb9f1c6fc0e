"""Clients no one here wrote: curl and openssl s_client, and our own Python client,
against the mutual-TLS server; and the plain-HTTP port that only redirects."""

from __future__ import annotations

import json
import subprocess

import pytest

import herald

from ..conftest import ServerProcess, require_tool
from .conftest import Pki, redirect_url


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("curl"), "-sS", *args], capture_output=True,
                          text=True, timeout=30)


def test_curl_with_a_good_client_certificate(secure_server: ServerProcess, pki: Pki) -> None:
    cert, key = pki.pair("inventory")
    base = ["--cacert", secure_server.ca, "--cert", cert, "--key", key]
    appended = curl(*base, "-H", "Content-Type: application/json",
                    "--data-binary", '[{"type": "ItemAdded", "data": {"sku": "C3"}}]',
                    f"{secure_server.url}/v1/streams/inventory/events")
    assert appended.returncode == 0, appended.stderr
    assert json.loads(appended.stdout)["appended"] == 1
    read = curl(*base, f"{secure_server.url}/v1/streams/inventory/events")
    assert any(e["data"] == {"sku": "C3"} for e in json.loads(read.stdout)["events"])


@pytest.mark.parametrize(("cert", "code"), [
    ("sales", "client_cert_not_for_client_auth"),
    ("billing", "client_cert_expired"),
    ("outsider", "client_cert_unknown_ca"),
])
def test_curl_is_told_why_its_certificate_is_refused(secure_server: ServerProcess, pki: Pki,
                                                     cert: str, code: str) -> None:
    pem, key = pki.pair(cert)
    result = curl("--cacert", secure_server.ca, "--cert", pem, "--key", key,
                  "-w", "\n%{http_code}", f"{secure_server.url}/v1/streams")
    assert result.returncode == 0, result.stderr  # the handshake was accepted
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "403"
    assert json.loads(body)["error"]["code"] == code


def s_client(server: ServerProcess, pki: Pki, cert: str, request: bytes,
             *extra: str) -> str:
    pem, key = pki.pair(cert)
    result = subprocess.run(
        [require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{server.port}",
         "-CAfile", server.ca, "-cert", pem, "-key", key, "-quiet", *extra],
        input=request, capture_output=True, timeout=30)
    return result.stdout.decode(errors="replace")


REQUEST = (b"GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")


def test_openssl_s_client(secure_server: ServerProcess, pki: Pki) -> None:
    good = s_client(secure_server, pki, "inventory", REQUEST)
    assert good.startswith("HTTP/1.1 200"), good
    assert '"name":"inventory"' in good
    refused = s_client(secure_server, pki, "sales", REQUEST)
    assert refused.startswith("HTTP/1.1 403"), refused
    assert '"code":"client_cert_not_for_client_auth"' in refused
    # TLS 1.2 too, with the ciphers it allows
    tls12 = s_client(secure_server, pki, "inventory", REQUEST, "-tls1_2")
    assert tls12.startswith("HTTP/1.1 200"), tls12


def test_old_tls_and_weak_ciphers_are_refused(secure_server: ServerProcess, pki: Pki) -> None:
    for extra in (["-tls1_1"], ["-tls1_2", "-cipher", "AES128-SHA"]):
        answer = s_client(secure_server, pki, "inventory", REQUEST, *extra)
        assert "HTTP/1.1" not in answer, extra


def test_session_resumption_cannot_skip_the_certificate(secure_server: ServerProcess,
                                                        pki: Pki, tmp_path: object) -> None:
    """A resumed session would skip the verify callback: resumption is off."""
    session = f"{tmp_path}/session.pem"
    first = s_client(secure_server, pki, "sales", REQUEST, "-sess_out", session)
    assert first.startswith("HTTP/1.1 403")
    result = subprocess.run(
        [require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{secure_server.port}",
         "-CAfile", secure_server.ca, "-sess_in", session, "-ign_eof"],
        input=REQUEST, capture_output=True, timeout=30)
    output = result.stdout.decode(errors="replace")
    assert "Reused," not in output
    assert "HTTP/1.1 401" in output


def test_python_client_with_a_client_certificate(secure_server: ServerProcess,
                                                 pki: Pki) -> None:
    cert, key = pki.pair("inventory")
    with herald.Client(secure_server.url, ca=secure_server.ca, cert=cert, key=key) as client:
        result = client.append("inventory", [{"type": "FromPython", "data": {}}])
        events = client.read("inventory", result.first, 1).events
        assert events[0].type == "FromPython"
    cert, key = pki.pair("billing")
    with herald.Client(secure_server.url, ca=secure_server.ca, cert=cert, key=key) as client, \
            pytest.raises(herald.Forbidden) as refused:
        client.streams()
    assert refused.value.code == "client_cert_expired"


# --- the plain-HTTP port -------------------------------------------------------------


def test_http_port_only_redirects(secure_server: ServerProcess) -> None:
    http = redirect_url(secure_server)
    for args in ([], ["-X", "POST", "--data-binary", '[{"type": "X", "data": 1}]'],
                 ["-H", f"Authorization: Bearer {secure_server.token}"]):
        result = curl("-i", *args, f"{http}/v1/streams/inventory/events?from=0")
        assert result.returncode == 0, result.stderr
        head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
        assert head.startswith("HTTP/1.1 308"), head
        assert (f"Location: https://127.0.0.1:{secure_server.port}"
                "/v1/streams/inventory/events?from=0") in head
        assert body == ""
        assert "Strict-Transport-Security" not in head
    # health, the dashboard: nothing is served, everything redirects
    for path in ("/v1/health", "/"):
        result = curl("-i", f"{http}{path}")
        assert result.stdout.startswith("HTTP/1.1 308")
        assert result.stdout.replace("\r\n", "\n").partition("\n\n")[2] == ""


def test_redirect_keeps_the_host_name_but_not_junk(secure_server: ServerProcess) -> None:
    http = redirect_url(secure_server)
    named = curl("-i", "-H", "Host: herald.example:8080", f"{http}/x")
    assert f"Location: https://herald.example:{secure_server.port}/x" in named.stdout
    junk = curl("-i", "-H", "Host: evil.example/@x", f"{http}/x")
    assert f"Location: https://127.0.0.1:{secure_server.port}/x" in junk.stdout
