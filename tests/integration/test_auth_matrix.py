"""Every kind of caller × every kind of operation → the expected status and code.

One real server with mutual TLS, principals and a dashboard user (conftest). The
bad certificates are made with the ``openssl`` command, the good ones with
``herald certs``.
"""

from __future__ import annotations

import base64
import http.client
import json
from dataclasses import dataclass

import pytest

from ..conftest import ServerProcess
from .conftest import ADMIN_PASSWORD, INVENTORY_TOKEN, READER_TOKEN, Pki, client_context


@dataclass(frozen=True)
class Caller:
    cert: str | None = None
    authorization: str | None = None


def bearer(token: str) -> str:
    return f"Bearer {token}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


CALLERS = {
    "admin token": Caller(authorization="ADMIN"),
    "no credentials": Caller(),
    "bad token": Caller(authorization=bearer("not-a-token")),
    "token without permission": Caller(authorization=bearer(READER_TOKEN)),
    "good token": Caller(authorization=bearer(INVENTORY_TOKEN)),
    "good certificate": Caller(cert="inventory"),
    "valid certificate, no principal": Caller(cert="nobody"),
    "certificate without clientAuth": Caller(cert="sales"),
    "expired certificate": Caller(cert="billing"),
    "certificate from another CA": Caller(cert="outsider"),
    "dashboard user": Caller(authorization=basic("ops", ADMIN_PASSWORD)),
}

OPERATIONS = ("append", "read", "follow", "dashboard", "admin")

OK = 200
# (status, code) per operation, in OPERATIONS order; None: any code.
E = tuple[int, str | None]
CERT_NO_EKU: E = (403, "client_cert_not_for_client_auth")
CERT_EXPIRED: E = (403, "client_cert_expired")
CERT_UNKNOWN: E = (403, "client_cert_unknown_ca")
NO_LOGIN: E = (401, "login_required")
FORBIDDEN: E = (403, "forbidden")
EXPECTED: dict[str, tuple[E, E, E, E, E]] = {
    "admin token": ((OK, None), (OK, None), (OK, None), NO_LOGIN, (OK, None)),
    "no credentials": ((401, "unauthorized"),) * 3 + (NO_LOGIN, (401, "unauthorized")),
    "bad token": ((401, "invalid_token"),) * 3 + (NO_LOGIN, (401, "invalid_token")),
    "token without permission": (FORBIDDEN,) * 3 + (NO_LOGIN, FORBIDDEN),
    "good token": ((OK, None),) * 3 + (NO_LOGIN, FORBIDDEN),
    "good certificate": ((OK, None),) * 3 + (NO_LOGIN, FORBIDDEN),
    "valid certificate, no principal": (FORBIDDEN,) * 3 + (NO_LOGIN, FORBIDDEN),
    "certificate without clientAuth": (CERT_NO_EKU,) * 5,
    "expired certificate": (CERT_EXPIRED,) * 5,
    "certificate from another CA": (CERT_UNKNOWN,) * 5,
    "dashboard user": ((401, "unauthorized"),) * 3 + ((OK, None), (401, "unauthorized")),
}

REQUESTS = {
    "append": ("POST", "/v1/streams/inventory/events", b'[{"type": "Probe", "data": 1}]',
               {"Content-Type": "application/json"}),
    "read": ("GET", "/v1/streams/inventory/events", None, {}),
    "follow": ("GET", "/v1/streams/inventory/events?follow=true", None,
               {"Accept": "application/vnd.herald.records"}),
    "dashboard": ("GET", "/", None, {}),
    "admin": ("GET", "/v1/admin/principals", None, {}),
}


def call(server: ServerProcess, pki: Pki, caller: Caller, operation: str,
         ) -> tuple[int, dict[str, object] | None, http.client.HTTPResponse]:
    method, path, body, headers = REQUESTS[operation]
    headers = dict(headers)
    if caller.authorization == "ADMIN":
        headers["Authorization"] = bearer(server.token)
    elif caller.authorization:
        headers["Authorization"] = caller.authorization
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.port, timeout=10, context=client_context(server, pki, caller.cert))
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        # A live follow never ends: only the status line and headers are read.
        document = None
        if operation != "follow" or response.status != OK:
            raw = response.read()
            if response.getheader("Content-Type", "").startswith("application/json"):
                document = json.loads(raw)
        return response.status, document, response
    finally:
        connection.close()


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("who", list(CALLERS))
def test_auth_matrix(secure_server: ServerProcess, pki: Pki, who: str, operation: str) -> None:
    expected_status, expected_code = EXPECTED[who][OPERATIONS.index(operation)]
    status, document, response = call(secure_server, pki, CALLERS[who], operation)
    assert status == expected_status, (who, operation, document)
    if expected_code is not None:
        assert document is not None and document["error"]["code"] == expected_code, document
    if status == 401:
        scheme = "Basic" if operation == "dashboard" else "Bearer"
        assert response.getheader("WWW-Authenticate", "").startswith(scheme)
    if status == 403 and expected_code == "forbidden":
        # 403 names the missing permission
        assert document is not None
        permission = {"append": "publish", "admin": "admin"}.get(operation, "subscribe")
        assert document["error"]["permission"] == permission
        assert permission in document["error"]["message"]
    assert response.getheader("Strict-Transport-Security") == "max-age=31536000"


def test_refused_appends_write_nothing(secure_server: ServerProcess, pki: Pki) -> None:
    with secure_server.client() as admin:
        before = admin.read("inventory", 0, 10_000)
        for who, expected in EXPECTED.items():
            if expected[0][0] != OK:
                status, _doc, _response = call(secure_server, pki, CALLERS[who], "append")
                assert status == expected[0][0]
        after = admin.read("inventory", 0, 10_000)
    assert after.head == before.head
    assert [e.id for e in after.events] == [e.id for e in before.events]


def test_refused_certificates_are_logged_in_words(secure_server: ServerProcess, pki: Pki,
                                                   ) -> None:
    for who in ("certificate without clientAuth", "expired certificate",
                "certificate from another CA"):
        call(secure_server, pki, CALLERS[who], "read")
    log = secure_server.log
    assert ("client certificate CN=sales has no clientAuth extended key usage "
            "(it has: serverAuth)") in log
    assert "client certificate CN=billing expired on 2020-02-01 00:00:00 UTC" in log
    assert ("client certificate CN=outsider was issued by CN=Some other CA, which is not "
            "a CA Herald trusts") in log
    # one line per connection, each with its code
    assert log.count("[client_cert_not_for_client_auth]") >= 1


def test_secrets_are_never_logged(secure_server: ServerProcess, pki: Pki) -> None:
    for who in CALLERS:
        call(secure_server, pki, CALLERS[who], "dashboard")
    log = secure_server.log
    for secret in (INVENTORY_TOKEN, READER_TOKEN, ADMIN_PASSWORD, "not-a-token"):
        assert secret not in log
    assert secure_server.token not in log  # the banner names its file, never the token


def test_streams_list_shows_only_what_the_caller_may_read(secure_server: ServerProcess,
                                                          pki: Pki) -> None:
    with secure_server.client() as admin:
        admin.append("other-things", [{"type": "T", "data": 1}])
        admin.append("secret", [{"type": "T", "data": 1}])
    connection = http.client.HTTPSConnection("127.0.0.1", secure_server.port, timeout=10,
                                             context=client_context(secure_server))
    connection.request("GET", "/v1/streams", headers={"Authorization": bearer(READER_TOKEN)})
    names = [s["name"] for s in json.loads(connection.getresponse().read())["streams"]]
    connection.close()
    assert names == ["other-things"]


def test_whoami_names_the_certificate(secure_server: ServerProcess, pki: Pki) -> None:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", secure_server.port, timeout=10,
        context=client_context(secure_server, pki, "inventory"))
    connection.request("GET", "/v1/whoami")
    document = json.loads(connection.getresponse().read())
    connection.close()
    assert document == {"name": "inventory", "via": "client certificate", "admin": False,
                        "configured": True, "publish": ["inventory"], "subscribe": ["*"]}
