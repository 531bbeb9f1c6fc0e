"""Fuzzing the HTTP API from its own OpenAPI description, with schemathesis.

For every operation of ``/v1/openapi.json``, schemathesis generates requests that the
description allows (positive) and requests it does not (negative: wrong types,
missing fields, out-of-range numbers, unknown properties…), sends them to a real
``herald serve`` with the admin token, and checks every answer: no 5xx, a status the
description lists for the operation, a content type and body (including the error
``code``, which each operation lists per status) that conform to it, its required
headers, that what the description forbids is refused and what it allows is not
refused with a 4xx, and that a request without credentials is refused. The server
must still be running, have logged no traceback, and ``herald check`` must find its
data directory clean.

``make test`` runs a bounded number of examples per operation and mode
(derandomized: the same ones every run); ``make proof`` many more.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from herald.server.openapi import openapi_document

from ..conftest import ServerProcess
from .faults import assert_check_clean

# What refusing a request the description forbids may answer: schemathesis's list,
# and 413, which is how Herald refuses a batch over its limits (RFC 9110 §15.5.14).
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",
            "429", "5xx"]
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}})
SCHEMA = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE


def has_input(label: str) -> bool:
    """Whether the operation takes anything a negative case could get wrong."""
    method, path = label.split(" ", 1)
    item = openapi_document()["paths"][path]
    operation = item[method.lower()]
    return bool(item.get("parameters") or operation.get("parameters")
                or operation.get("requestBody"))


CASES = [pytest.param(label, mode, id=f"{label}-{mode.value}")
         for label in OPERATIONS for mode in (POSITIVE, NEGATIVE)
         if mode is POSITIVE or has_input(label)]
EXAMPLES = 25  # per operation and mode in `make test`
PROOF_EXAMPLES = 400


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(data=tmp_path_factory.mktemp("fuzz") / "data").start()
    with server.client() as client:  # something to read, and a head to conflict with
        client.append("inventory", [{"type": "Seeded", "data": {"n": n}} for n in range(5)])
    yield server
    assert server.process is not None and server.process.poll() is None, "Herald crashed"
    assert server.stop() == 0
    assert "Traceback" not in server.log, server.log


def fuzz(server: ServerProcess, label: str, mode: schemathesis.GenerationMode,
         examples: int) -> None:
    operation = OPERATIONS[label]

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        excluded = []
        repeated = mode is POSITIVE and repeats_an_id(case.body)
        if repeated:
            # The one rule of a batch JSON Schema cannot state: ids are unique within
            # it. Such a batch is valid to the schema and refused by Herald.
            excluded.append(schemathesis.checks.positive_data_acceptance)
        headers = {"Authorization": f"Bearer {server.token}"}
        response = case.call(base_url=server.url, verify=server.ca, timeout=30,
                             headers=headers)
        for _ in range(5):
            # The checks send wrong tokens on purpose (ignored_auth), and wrong tokens
            # are throttled per address (429 login_backoff, even for a right token,
            # until the lock-out passes): wait it out, then ask again.
            if response.status_code != 429 or b"login_backoff" not in response.content:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
            response = case.call(base_url=server.url, verify=server.ca, timeout=30,
                                 headers=headers)
        case.validate_response(response, excluded_checks=excluded, headers=headers,
                               transport_kwargs={"verify": server.ca, "timeout": 30})
        if repeated and response.status_code != 401:
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] in ("duplicate_id", "invalid_stream_name")

    run()


def repeats_an_id(body: object) -> bool:
    if not isinstance(body, list):
        return False
    ids = [e["id"] for e in body if isinstance(e, dict) and isinstance(e.get("id"), str)]
    return len(ids) != len(set(ids))


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_the_api_answers_as_described(fuzzed: ServerProcess, label: str,
                                      mode: schemathesis.GenerationMode) -> None:
    fuzz(fuzzed, label, mode, EXAMPLES)


def test_after_the_fuzzing_the_data_is_clean(fuzzed: ServerProcess,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzzed.process is not None and fuzzed.process.poll() is None
    assert_check_clean(fuzzed.data, capsys)


@pytest.mark.proof
@pytest.mark.skipif(not os.environ.get("HERALD_PROOF"),
                    reason="the long fuzzing runs with `make proof` (HERALD_PROOF=1)")
@pytest.mark.parametrize(("label", "mode"), CASES)
def test_the_api_answers_as_described_at_length(
    fuzzed: ServerProcess, label: str, mode: schemathesis.GenerationMode, tmp_path: Path
) -> None:
    fuzz(fuzzed, label, mode, PROOF_EXAMPLES)
