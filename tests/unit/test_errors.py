"""Error codes: each owned by one class, all documented, rebuilt from the wire by code.

What this proves:

* every code is registered by exactly one class (a second owner raises when the class
  is defined), each class's ``default_code`` is the first code it owns, and every code
  the source raises (``code="…"``, a refused client certificate's, aiohttp's refusals)
  is registered;
* docs/api.md's error tables list every registered code exactly once, with its class
  and a status that class can answer with, and list no other code;
* ``error_from_wire`` rebuilds every registered code as its class, whatever the
  status; a code nobody owns gets a generic class by status and keeps the status — a
  409 is never an ExpectedHeadMismatch unless its code says so, and the ``head`` of
  one rebuilt from the wire never raises;
* the client's own mapping (``herald.client._error``) goes through it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

import herald
from herald import client, config, errors
from herald.errors import (
    ClientError,
    Conflict,
    ExpectedHeadMismatch,
    HeraldError,
    ServerError,
    error_from_wire,
    registered_codes,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = {int: 7, str: "x"}


def all_error_classes() -> list[type[HeraldError]]:
    found: list[type[HeraldError]] = []
    todo: list[type[HeraldError]] = [HeraldError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return [cls for cls in found if cls.__module__ == "herald.errors"]


def details_for(cls: type[HeraldError]) -> dict[str, Any]:
    return {name: SAMPLE[kind] for name, kind in cls.required_details.items()}


# --- the registry --------------------------------------------------------------------


def test_each_code_has_one_owner_and_each_class_its_default() -> None:
    owners = registered_codes()
    seen: dict[str, type[HeraldError]] = {}
    for cls in all_error_classes():
        for code in cls.__dict__.get("codes", ()):
            assert code not in seen, (code, seen.get(code), cls)
            seen[code] = cls
        if cls is HeraldError:
            assert cls.codes == ()
            continue
        assert cls.codes, f"{cls.__name__} owns no code"
        assert cls.default_code == cls.codes[0]
        assert owners[cls.default_code] is cls
    assert seen == dict(owners)
    # The root owns nothing: a bare HeraldError is answered as ServerError's code.
    assert owners[HeraldError.default_code] is ServerError


def test_config_and_storage_errors_live_in_errors() -> None:
    assert config.ConfigError is errors.ConfigError is herald.ConfigError
    assert "ConfigError" in config.__all__
    error = config.ConfigError("[server] listen: bad")
    assert (error.status, error.code) == (400, "invalid_config")
    for cls, status, code in [(errors.StorageError, 500, "storage_error"),
                              (errors.CorruptRecord, 500, "corrupt_record"),
                              (errors.StorageFull, 507, "storage_full"),
                              (errors.StorageUnavailable, 503, "storage_unavailable")]:
        assert issubclass(cls, errors.StorageError) and issubclass(cls, ServerError)
        assert (cls.status, cls.default_code) == (status, code)


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def raised_codes() -> dict[str, str]:
    """code → where, for every error code written in herald/'s source."""
    found: dict[str, str] = {}
    for file in sorted((ROOT / "herald").rglob("*.py")):
        where = str(file.relative_to(ROOT))
        for node in ast.walk(ast.parse(file.read_text(), filename=where)):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                        found.setdefault(str(keyword.value.value), f"{where}:{node.lineno}")
                if (_call_name(node) == "CertificateProblem" and node.args
                        and isinstance(node.args[0], ast.Constant)):
                    found.setdefault(str(node.args[0].value), f"{where}:{node.lineno}")
            elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                  and any(isinstance(t, ast.Name) and t.id == "_HTTP_CODES"
                          for t in node.targets)):
                for value in node.value.values:
                    if isinstance(value, ast.Constant):
                        found.setdefault(str(value.value), f"{where}:{node.lineno}")
    return found


def test_every_code_in_the_source_is_registered() -> None:
    owners = registered_codes()
    missing = {code: where for code, where in raised_codes().items() if code not in owners}
    assert not missing, f"raised but owned by no class (add it to one's codes): {missing}"


# --- docs/api.md -----------------------------------------------------------------------

HTTP_ROW = re.compile(r"^\| (\d{3}) \| (.+?) \| `(\w+)` \| (.+?) \|$", re.M)
OTHER_ROW = re.compile(r"^\| `([a-z_]+)` \| `(\w+)` \| (\d{3}|—) \| (.+?) \|$", re.M)


def errors_section() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    return text.split("### Errors", 1)[1].split("\n## ", 1)[0]


def documented() -> list[tuple[str, str, int | None, bool]]:
    """(code, class, status, in an HTTP answer) for every row of the error tables."""
    section = errors_section()
    rows: list[tuple[str, str, int | None, bool]] = []
    for status, codes, cls, _when in HTTP_ROW.findall(section):
        listed = re.findall(r"`([a-z_]+)`", codes)
        assert listed, codes
        rows += [(code, cls, int(status), True) for code in listed]
    for code, cls, status, _when in OTHER_ROW.findall(section):
        rows.append((code, cls, None if status == "—" else int(status), False))
    table_lines = [line for line in section.splitlines()
                   if line.startswith("| ") and not line.startswith(("| status", "| code"))]
    assert len(table_lines) == len(HTTP_ROW.findall(section)) + len(
        OTHER_ROW.findall(section)), "a table row neither pattern reads"
    return rows


def test_api_md_documents_every_registered_code_once() -> None:
    rows = documented()
    codes = [code for code, *_ in rows]
    assert len(codes) == len(set(codes)), "a code documented twice: " + ", ".join(
        sorted({c for c in codes if codes.count(c) > 1}))
    owners = registered_codes()
    assert set(codes) - set(owners) == set(), "documented but owned by no class"
    assert set(owners) - set(codes) == set(), "registered but not in docs/api.md"


def test_api_md_names_each_code_s_class_and_a_status_it_can_have() -> None:
    owners = registered_codes()
    for code, cls_name, status, http in documented():
        owner = owners[code]
        assert cls_name == owner.__name__, (code, cls_name, owner.__name__)
        if not http:  # the class's own status; none for the client's transport errors
            assert status == (owner.status or None), (code, status, owner.status)
        elif owner is ClientError:  # the generic classes answer any status of their family
            assert status is not None and 400 <= status < 500, (code, status)
        elif owner is ServerError:
            assert status is not None and 500 <= status < 600, (code, status)
        else:
            assert status == owner.status, (code, status, owner.status)


# --- from the wire ---------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(registered_codes()))
def test_every_registered_code_comes_back_as_its_class(code: str) -> None:
    owner = registered_codes()[code]
    details = details_for(owner)
    sent = owner(f"a {code}", code=code, **details)
    back = error_from_wire(owner.status, sent.to_wire())
    assert type(back) is owner
    assert (back.code, back.message, back.details) == (code, f"a {code}", details)
    assert back.status == owner.status
    # The code alone picks the class: the status does not.
    assert type(error_from_wire(418, sent.to_wire())) is owner
    assert type(error_from_wire(502, sent.to_wire())) is owner


@pytest.mark.parametrize("status", [409, 400, 404, 418, 500, 502, 503, 504, 507])
def test_an_unknown_code_gets_a_generic_class_and_keeps_its_status(status: int) -> None:
    error = error_from_wire(status, {"error": {"code": "from_a_newer_server",
                                               "message": "hello", "head": 4}})
    assert error.code == "from_a_newer_server" and error.message == "hello"
    assert error.status == status
    assert error.details == {"head": 4}
    assert errors._BY_STATUS.get(status, ClientError if status < 500 else ServerError) \
        is type(error)
    assert not isinstance(error, ExpectedHeadMismatch)


def test_an_unknown_409_is_a_conflict_never_a_head_mismatch() -> None:
    for document in [{"error": {"code": "lease_taken", "message": "someone else"}},
                     {"error": {"message": "no code at all"}},
                     {"error": "not an object"},
                     None, [], "<html>409</html>"]:
        error = error_from_wire(409, document)
        assert type(error) is Conflict, document
        assert not hasattr(error, "head")
        assert error.status == 409


@pytest.mark.parametrize("head", [None, "2", 2.5, True, [2]])
def test_a_head_mismatch_without_an_integer_head_is_a_plain_conflict(head: Any) -> None:
    body: dict[str, Any] = {"code": "expected_head_mismatch", "message": "stale"}
    if head is not None:
        body["head"] = head
    error = error_from_wire(409, {"error": body})
    assert type(error) is Conflict
    assert error.code == "expected_head_mismatch"


def test_every_head_mismatch_from_the_wire_has_a_head() -> None:
    error = error_from_wire(409, {"error": {"code": "expected_head_mismatch",
                                            "message": "stale", "head": 2, "expected": 1}})
    assert isinstance(error, ExpectedHeadMismatch)
    assert error.head == 2 and error.details["expected"] == 1


def test_the_fallback_classes_need_no_details() -> None:
    for cls in [*errors._BY_STATUS.values(), ClientError, ServerError]:
        assert not cls.required_details, cls
        assert not issubclass(cls, ExpectedHeadMismatch)
        assert cls.status == 500 or 400 <= cls.status < 500


def test_the_client_maps_answers_through_error_from_wire() -> None:
    stale = client._error(409, b'{"error":{"code":"expected_head_mismatch","message":"m",'
                               b'"head":5,"expected":3}}')
    assert isinstance(stale, ExpectedHeadMismatch) and stale.head == 5
    other = client._error(409, b'{"error":{"code":"some_new_conflict","message":"m"}}')
    assert type(other) is Conflict
    busy = client._error(503, b'{"error":{"code":"storage_unavailable","message":"m"}}')
    assert isinstance(busy, errors.StorageUnavailable) and client._unavailable(busy)
    # A proxy's own answers: not JSON, a status the client fails over on.
    for status in (502, 503, 504):
        proxy = client._error(status, b"<html>Bad Gateway</html>")
        assert type(proxy) is ServerError and proxy.code == f"http_{status}"
        assert proxy.status == status and client._unavailable(proxy)
    broken = client._error(500, b'{"error":{"code":"internal_error","message":"bug"}}')
    assert type(broken) is ServerError and not client._unavailable(broken)


# --- registering -----------------------------------------------------------------------


def test_a_second_owner_of_a_code_is_refused_and_registers_nothing() -> None:
    before = dict(registered_codes())
    with pytest.raises(TypeError, match="'expected_head_mismatch' is already owned by "
                                        "ExpectedHeadMismatch"):
        class Stale(ClientError):
            codes = ("expected_head_mismatch",)
    with pytest.raises(TypeError, match="'conflict' is already owned by Conflict"):
        class Mixed(ClientError):
            codes = ("a_code_nobody_owns", "conflict")
    assert dict(registered_codes()) == before
    assert "a_code_nobody_owns" not in registered_codes()


def test_a_class_declares_its_codes_well_or_is_refused() -> None:
    before = dict(registered_codes())
    with pytest.raises(TypeError, match="twice"):
        class Twice(ClientError):
            codes = ("some_new_code", "some_new_code")
    with pytest.raises(TypeError, match="not an error code"):
        class Shouting(ClientError):
            codes = ("Not-A-Code",)
    with pytest.raises(TypeError, match="non-empty tuple"):
        class Empty(ClientError):
            codes = ()
    with pytest.raises(TypeError, match="default_code is codes"):
        class Defaulted(ClientError):
            default_code = "another_new_code"
    assert dict(registered_codes()) == before


def test_a_subclass_without_codes_owns_none_and_keeps_its_parent_s_default() -> None:
    before = dict(registered_codes())

    class Quiet(Conflict):
        pass

    assert Quiet.codes == () and Quiet.default_code == "conflict"
    assert Quiet("m").code == "conflict"
    assert dict(registered_codes()) == before
