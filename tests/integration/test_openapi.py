"""The OpenAPI description (``herald/server/openapi.py``) stays true to the server.

What this proves:

* every route aiohttp registers is described, with its method, and nothing else is
  (HEAD answers for every GET, as the description says);
* every error code the server can raise — found by reading the source: every
  construction of a Herald error with its ``code`` (or its class's default), and the
  codes of aiohttp's own refusals — is listed in the description under its class's
  HTTP status, and every listed code is one the server raises;
* the error table in docs/api.md lists exactly the same codes under the same statuses;
* every example in the description validates against its schema, and schemathesis
  loads the description (an OpenAPI 3.1 document it can test);
* a real server serves it at ``/v1/openapi.json`` without credentials.
"""

from __future__ import annotations

import ast
import json
import re
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import schemathesis

from herald import errors
from herald.engines.files import FilesConfig, FilesEngine
from herald.hub import Hub
from herald.server.app import _HTTP_CODES, create_app
from herald.server.auth import Authenticator
from herald.server.openapi import ERROR_CODES, openapi_document

from ..conftest import ROOT, ServerProcess

# Modules whose errors reach HTTP answers. (The CLI, the client and certs.py have
# errors of their own, never sent by the server.)
SERVER_MODULES = ["herald/server", "herald/hub", "herald/engines", "herald/codec.py",
                  "herald/placement.py",
                  "herald/gather/manager.py",
                  "herald/model.py"]
# Raised while Herald starts, before it listens: they end the process, never an answer.
STARTUP_ONLY = {"invalid_config", "listen_failed"}
# Raised by ``Event.data`` (model.py), which only a Python caller reads: the server
# sends ``data`` as the raw bytes it stored and never decodes it.
CALLER_ONLY = {"protocol_error"}
# Raised as a bare HeraldError whose answer's status the raiser sets (listeners.py's
# handle_error); a bare HeraldError is otherwise a 500.
STATUS_SET_BY_RAISER = {"headers_too_large": 431}


def test_every_route_is_described_and_nothing_else(tmp_path: Path) -> None:
    app = create_app(Hub(FilesEngine(FilesConfig(tmp_path))), Authenticator("token"))
    routes = {(route.method, route.resource.canonical) for route in app.router.routes()
              if route.resource is not None}
    gets = {path for method, path in routes if method == "GET"}
    assert {path for method, path in routes if method == "HEAD"} == gets
    described = {(method.upper(), path)
                 for path, item in openapi_document()["paths"].items()
                 for method in item if method != "parameters"}
    assert {r for r in routes if r[0] != "HEAD"} == described


def error_classes() -> dict[str, type[errors.HeraldError]]:
    return {name: cls for name, cls in vars(errors).items()
            if isinstance(cls, type) and issubclass(cls, errors.HeraldError)}


def raised_codes() -> Iterator[tuple[int, str, str]]:
    """(status, code, where) of every Herald error the server modules construct."""
    classes = error_classes()
    files: list[Path] = []
    for module in SERVER_MODULES:
        path = ROOT / module
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else "")
            if name == "CertificateProblem" and isinstance(node.args[0], ast.Constant):
                # a refused client certificate: auth.refuse_certificate answers 403
                yield 403, str(node.args[0].value), f"{file.relative_to(ROOT)}:{node.lineno}"
            cls = classes.get(name)
            if cls is None:
                continue
            code = next((k.value for k in node.keywords if k.arg == "code"), None)
            where = f"{file.relative_to(ROOT)}:{node.lineno}"
            if code is None:
                yield cls.status, cls.default_code, where
            elif isinstance(code, ast.Constant):
                value = str(code.value)
                yield STATUS_SET_BY_RAISER.get(value, cls.status), value, where
            # a code in a variable: aiohttp's refusals, from _HTTP_CODES (below)
    for status, code in _HTTP_CODES.items():
        yield status, code, "herald/server/app.py: _HTTP_CODES"


def test_every_error_code_the_server_raises_is_listed_and_no_other() -> None:
    listed = {(status, code) for status, codes in ERROR_CODES.items() for code in codes}
    raised: dict[tuple[int, str], str] = {}
    for status, code, where in raised_codes():
        if code in STARTUP_ONLY or code in CALLER_ONLY:
            continue
        raised.setdefault((status, code), where)
    missing = {key: where for key, where in raised.items() if key not in listed}
    assert not missing, f"raised but not in the description: {missing}"
    assert listed <= set(raised), f"described but never raised: {listed - set(raised)}"
    # Per operation, each status lists only codes of that status.
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if status.startswith("2"):
                    continue
                schema = response["content"]["application/json"]["schema"]
                codes = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
                assert {(int(status), c) for c in codes} <= listed, (path, method, status)


def api_md_codes() -> set[tuple[int, str]]:
    table = (ROOT / "docs" / "api.md").read_text().split("### Errors", 1)[1]
    found: set[tuple[int, str]] = set()
    for status, codes in re.findall(r"^\| (\d{3}) \| (.+?) \|", table, re.M):
        found |= {(int(status), code) for code in re.findall(r"`([a-z_]+)`", codes)}
    return found


def test_api_md_lists_the_same_codes() -> None:
    listed = {(status, code) for status, codes in ERROR_CODES.items() for code in codes}
    assert api_md_codes() == listed


def examples(node: Any, schema: Any = None) -> Iterator[tuple[Any, Any]]:
    """(example, schema) everywhere the description has one."""
    if isinstance(node, dict):
        if "example" in node:
            yield node["example"], node.get("schema", {k: v for k, v in node.items()
                                                       if k != "example"})
        for key, value in node.items():
            if key != "example":
                yield from examples(value)
    elif isinstance(node, list):
        for value in node:
            yield from examples(value)


def test_every_example_validates_against_its_schema() -> None:
    document = openapi_document()
    found = list(examples(document))
    assert len(found) >= 8
    for example, schema in found:
        # "#/components/…" references resolve against the root: give it the components.
        rooted = {**schema, "components": document["components"]}
        jsonschema.Draft202012Validator(
            rooted, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        ).validate(example)


def test_schemathesis_loads_every_operation() -> None:
    schema = schemathesis.openapi.from_dict(openapi_document())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(
        len([m for m in item if m != "parameters"])
        for item in openapi_document()["paths"].values())


def test_a_server_serves_it_without_credentials(server: ServerProcess) -> None:
    context = ssl.create_default_context(cafile=server.ca)
    with urllib.request.urlopen(f"{server.url}/v1/openapi.json", context=context,
                                timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert json.loads(response.read()) == json.loads(json.dumps(openapi_document()))
