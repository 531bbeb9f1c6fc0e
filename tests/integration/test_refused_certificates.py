"""On a connection whose client certificate was refused, only ``/v1/health`` answers;
and a certificate without any extended key usage is refused like one without
``clientAuth``.

A real server with mutual TLS (conftest's PKI, plus a leaf the ``openssl`` command
makes with no extendedKeyUsage at all, as a CA's default template does). The docs
(operations.md, "Refusals say why") say every request on a refused connection but
``/v1/health`` gets 403 with the certificate's code, even with a good token: this
holds it for ``/v1/openapi.json`` too, which needs no credentials otherwise.
"""

from __future__ import annotations

import http.client
import json

import pytest

from ..conftest import ServerProcess, require_tool
from .conftest import INVENTORY_TOKEN, Pki, _openssl_leaf, client_context

REFUSED = {
    "plain": "client_cert_not_for_client_auth",   # no extendedKeyUsage at all
    "sales": "client_cert_not_for_client_auth",   # serverAuth only
    "billing": "client_cert_expired",
    "outsider": "client_cert_unknown_ca",
}
PATHS = ["/v1/openapi.json", "/v1/whoami", "/v1/streams", "/"]


@pytest.fixture(scope="module")
def plain(pki: Pki) -> str:
    """A leaf from the trusted CA with basicConstraints only: no extended key usage."""
    _openssl_leaf(require_tool("openssl"), pki, "plain", "ca", "basicConstraints=CA:FALSE\n")
    return "plain"


def get(server: ServerProcess, pki: Pki, cert: str | None, path: str,
        token: str | None = None) -> tuple[int, dict[str, object] | None]:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.port, timeout=10, context=client_context(server, pki, cert))
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        document = (json.loads(raw) if response.getheader("Content-Type", "").startswith(
            "application/json") else None)
        return response.status, document
    finally:
        connection.close()


@pytest.mark.parametrize("cert", list(REFUSED))
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("token", [None, INVENTORY_TOKEN])
def test_a_refused_certificate_refuses_every_path_but_health(
        secure_server: ServerProcess, pki: Pki, plain: str, cert: str, path: str,
        token: str | None) -> None:
    status, document = get(secure_server, pki, cert, path, token)
    assert status == 403, (cert, path, document)
    assert document is not None and document["error"]["code"] == REFUSED[cert]  # type: ignore[index]


@pytest.mark.parametrize("cert", list(REFUSED))
def test_health_answers_on_a_refused_connection(secure_server: ServerProcess, pki: Pki,
                                                plain: str, cert: str) -> None:
    status, document = get(secure_server, pki, cert, "/v1/health")
    assert status == 200 and document is not None and document["status"] == "ok"


@pytest.mark.parametrize("cert", [None, "inventory", "nobody"])
def test_the_description_needs_no_credentials_otherwise(secure_server: ServerProcess,
                                                        pki: Pki, cert: str | None) -> None:
    status, document = get(secure_server, pki, cert, "/v1/openapi.json")
    assert status == 200 and document is not None and document["openapi"] == "3.1.0"


def test_no_extended_key_usage_is_refused_and_logged_in_words(
        secure_server: ServerProcess, pki: Pki, plain: str) -> None:
    status, document = get(secure_server, pki, plain, "/v1/whoami")
    assert status == 403
    assert document is not None
    message = document["error"]["message"]  # type: ignore[index]
    assert message.startswith("client certificate CN=plain has no clientAuth extended key "
                              "usage (it has: none)")
    assert ("client certificate CN=plain has no clientAuth extended key usage (it has: none)"
            in secure_server.log)
