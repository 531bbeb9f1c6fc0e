"""Log forging: no value from outside can end a log line or drive a terminal.

Three nets, from fine to coarse (the rules are herald/logsafe.py's):

* ``logsafe`` itself, as properties (hypothesis): printable out, bounded, and
  printable text unchanged;
* a sweep of every log call in ``herald/``: each ``%s`` argument goes through
  ``logsafe``, and no message is built with an f-string or ``+`` — so a new log
  call that formats a client's value raw fails here, whoever writes it;
* hostile requests (user names, paths, query values, headers, certificate subjects
  with newlines and ESC) through the real application in process, with every log
  record checked; and ``LogFormatter``, the sink's backstop, on forged messages
  and tracebacks.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import datetime
import logging
import re
import sys
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import example, given
from hypothesis import strategies as st

from herald.config import PrincipalConfig, UserConfig
from herald.engines.memory import MemoryEngine
from herald.hub import Hub
from herald.logsafe import LOG_VALUE_MAX_CHARS, LogFormatter, logsafe
from herald.passwords import hash_password
from herald.server import handlers as handlers_module
from herald.server.app import create_app
from herald.server.auth import Authenticator, token_sha256
from herald.server.throttle import TOKEN_FAILURE_BURST
from herald.server.tls import CertificateProblem, ClientCertificate, PyOpenSSLObject

HERALD = Path(__file__).resolve().parents[2] / "herald"
# Characters that end a line or steer a terminal, in any log viewer we know of.
FORGING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = "ops\nINFO herald.auth: dashboard login ok for user admin\r\x1b[2J\x1b]0;pwned\x07\u2028"

# --- logsafe ----------------------------------------------------------------------------


@given(st.text(), st.integers(min_value=0, max_value=400))
@example("ops\n\r\x1b[31m\x85\u2028\u202e\udc80\U000e0001", 300)
def test_logsafe_output_is_printable_and_bounded(text: str, limit: int) -> None:
    safe = logsafe(text, limit)
    assert safe.isprintable()
    assert not FORGING.search(safe)
    assert len(safe) <= limit + len(f"...[{len(text)} more]")
    assert logsafe(safe, None) == safe  # escaping twice changes nothing


@given(st.text(st.characters(exclude_categories=("C", "Z")) | st.just(" ")))
def test_printable_text_is_left_as_it_is(text: str) -> None:
    assert logsafe(text[:LOG_VALUE_MAX_CHARS]) == text[:LOG_VALUE_MAX_CHARS]


@given(st.text(max_size=LOG_VALUE_MAX_CHARS // 10))
def test_short_values_are_escaped_not_cut(text: str) -> None:
    """Every character survives, printable or as its escape: nothing is dropped."""
    safe = logsafe(text)
    assert "more]" not in safe or "more]" in text
    if "\\" not in text:  # a literal backslash is kept, so the decoding is ambiguous
        undone = safe.encode("latin-1", "backslashreplace").decode("unicode_escape")
        assert undone == text


def test_logsafe_examples() -> None:
    assert logsafe("ops") == "ops"
    assert logsafe("CN=inventory,O=Acme") == "CN=inventory,O=Acme"
    assert logsafe("a\nb\rc\td\x1b[0m\x7f\x9b") == "a\\nb\\rc\\td\\x1b[0m\\x7f\\x9b"
    assert logsafe("x\u2028y\u202ez") == "x\\u2028y\\u202ez"
    assert logsafe(ValueError("bad\nline")) == "bad\\nline"
    assert logsafe(42) == "42"
    assert logsafe("é ü 中文 🙂") == "é ü 中文 🙂"
    assert logsafe("x" * 1000, 10) == "xxxxxxxxxx...[990 more]"
    assert logsafe("\n" * 10, 5) == "\\n\\n...[8 more]"


# --- every log call in herald/ ----------------------------------------------------------

_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
# %s and %r format any object as text; %d, %i, %f, %g… only numbers (anything else
# makes logging print a formatting error instead of the value).
_CONVERSION = re.compile(r"%(?:\(\w+\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?([a-zA-Z%])")


def _log_calls(tree: ast.AST) -> list[ast.Call]:
    calls = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LEVELS and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"log", "logger", "logging", "_log", "LOG"}):
            calls.append(node)
    return calls


def _is_logsafe(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "logsafe")


def _is_ours(node: ast.expr) -> bool:
    """Text only Herald's code chooses: a literal, a module constant (``SKIP_STREAM``),
    an error's stable ``code``, an exception's class name."""
    return (isinstance(node, ast.Constant)
            or (isinstance(node, ast.Name) and node.id.isupper())
            or (isinstance(node, ast.Attribute) and node.attr == "code")
            or (isinstance(node, ast.Attribute) and node.attr == "__name__"
                and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                and node.value.func.id == "type"))


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for call in _log_calls(tree):
        where = f"{path.relative_to(HERALD.parent)}:{call.lineno}"
        if not call.args or not (isinstance(call.args[0], ast.Constant)
                                 and isinstance(call.args[0].value, str)):
            found.append(f"{where}: the message is not a literal (f-string, +, %?): "
                         "pass values as arguments, through logsafe")
            continue
        conversions = [c for c in _CONVERSION.findall(call.args[0].value) if c != "%"]
        values = call.args[1:]
        if len(conversions) != len(values):
            found.append(f"{where}: {len(conversions)} conversions, {len(values)} values")
            continue
        for conversion, value in zip(conversions, values, strict=True):
            if conversion in "sra" and not (_is_logsafe(value) or _is_ours(value)):
                found.append(f"{where}: %{conversion} of {ast.unparse(value)} without "
                             "logsafe()")
    return found


def test_every_log_call_escapes_its_text_values() -> None:
    files = sorted(HERALD.rglob("*.py"))
    calls = sum(len(_log_calls(ast.parse(f.read_text()))) for f in files)
    assert calls >= 30, "the sweep found too few log calls: is it still looking?"
    problems = [p for f in files for p in _problems(f)]
    assert not problems, "\n".join(problems)


def test_the_sweep_catches_raw_values(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('log.warning("login failed for %s (%d)", user, n)\n'
                   'log.info(f"user {user}")\n'
                   'log.error("from %s: %s", logsafe(address), exc.message)\n'
                   'log.debug("ok %s %d", logsafe(user), count)\n')
    global HERALD
    saved, HERALD = HERALD, tmp_path
    try:
        problems = _problems(bad)
    finally:
        HERALD = saved
    assert len(problems) == 3, problems
    assert "%s of user without logsafe" in problems[0]
    assert "not a literal" in problems[1]
    assert "exc.message" in problems[2]


# --- LogFormatter, the sink's backstop ---------------------------------------------------


def _record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("herald.test", logging.WARNING, __file__, 1, message, args,
                             exc_info)


def test_formatter_keeps_each_record_on_one_line() -> None:
    formatter = LogFormatter("%(levelname)s %(name)s: %(message)s")
    line = formatter.format(_record("login failed for %s", HOSTILE))
    assert "\n" not in line and not FORGING.search(line)
    assert line.startswith("WARNING herald.test: login failed for ops\\nINFO herald.auth")


def test_formatter_escapes_exception_messages_in_tracebacks() -> None:
    def fail() -> None:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            error = ValueError(f"stream {HOSTILE}")
            error.add_note(f"note {HOSTILE}")
            raise error from inner

    try:
        fail()
    except ValueError as exc:
        text = LogFormatter().format(_record("request failed", exc=exc))
    lines = text.split("\n")
    assert lines[0] == "request failed"
    assert "Traceback (most recent call last):" in lines
    assert "The above exception was the direct cause of the following exception:" in lines
    # the forged line is not a line of its own; the real frames still are
    assert not any(line.startswith("INFO herald.auth") for line in lines)
    assert any(line.startswith("ValueError: stream ops\\nINFO herald.auth") for line in lines)
    assert any(line.startswith("note ops\\nINFO") for line in lines)
    assert any('raise error from inner' in line for line in lines)
    assert not any(FORGING.search(line) for line in lines)


# --- hostile values through the real application ----------------------------------------

TOKEN = "log-escaping-admin-token"


def _certificate(common_name: str, problem: CertificateProblem | None) -> ClientCertificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return ClientCertificate(name, name, now, now, problem)


@pytest.fixture
async def api() -> AsyncIterator[TestClient[Any, Any]]:
    users = [UserConfig("ops", hash_password("pw", log_n=4))]
    principals = [PrincipalConfig("bot", token_sha256=token_sha256("bot-token"),
                                  publish=("*",), subscribe=("*",))]
    async with Hub(MemoryEngine()) as hub:
        app = create_app(hub, Authenticator(TOKEN, principals, users))
        async with TestClient(TestServer(app)) as client:
            yield client


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _assert_clean(caplog: pytest.LogCaptureFixture, at_least: int) -> None:
    records = [r for r in caplog.records if r.name.startswith("herald")]
    assert len(records) >= at_least, [r.getMessage() for r in records]
    for record in records:
        message = record.getMessage()
        assert not FORGING.search(message), f"{record.name}: {message!r}"


async def test_hostile_requests_log_escaped_lines(api: TestClient[Any, Any],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for user in (HOSTILE, "\x1b[31mred\x1b[0m", "a\u202eb", "nul\x00byte", "x" * 5000):
        response = await api.get("/", headers={"Authorization": _basic(user, "wrong")})
        assert response.status in (401, 429)
    quoted = "%0A%0D%1B%5B2J%E2%80%A8"  # \n \r ESC [ 2 J U+2028, in a URL
    paths = [f"/v1/streams/a{quoted}b", f"/v1/streams/s/events?from={quoted}",
             f"/v1/nowhere{quoted}", f"/v1/gatherers/g{quoted}", f"/{quoted}"]
    # Raw requests: aiohttp's client (rightly) refuses to send control characters in
    # headers; a hostile client just sends them.
    for path in paths:
        for auth in (f"Bearer {TOKEN}", "Bearer wrong\x1b[2J", "Bearer bot-token",
                     _basic(HOSTILE, "pw")):
            await _raw(api, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                            f"Authorization: {auth}\r\nLast-Event-ID: 1\x1b[2J\r\n"
                            f"Accept: text/event-stream\r\nUser-Agent: {HOSTILE}\r\n\r\n")
    for _ in range(TOKEN_FAILURE_BURST + 2):  # wrong tokens until the address is locked
        await api.get("/v1/whoami", headers={"Authorization": "Bearer wrong"})
    _assert_clean(caplog, at_least=6)
    messages = [r.getMessage() for r in caplog.records]
    assert any("dashboard login failed for user ops\\nINFO herald.auth" in m for m in messages)
    assert any("too many wrong Bearer tokens" in m for m in messages)
    assert max(map(len, messages)) < 2 * LOG_VALUE_MAX_CHARS  # the 5,000 x were cut


async def _raw(api: TestClient[Any, Any], request: str) -> bytes:
    reader, writer = await asyncio.open_connection(api.host, api.port)
    writer.write(request.encode("utf-8", "surrogateescape"))
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def test_exceptions_that_quote_a_client_log_escaped(
        caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected error (a bug) whose text quotes the request: the record's message
    is escaped by the call site, its traceback by the sink's LogFormatter."""
    caplog.set_level(logging.DEBUG)

    async def broken(name: str) -> None:
        raise RuntimeError(f"no stream {name}")

    async with Hub(MemoryEngine()) as hub:
        hub.stream = broken  # type: ignore[method-assign, assignment]
        async with TestClient(TestServer(create_app(hub, Authenticator(TOKEN)))) as client:
            response = await client.get("/v1/streams/a%0AWARNING%20forged%1B[2J",
                                        headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status == 500
    _assert_clean(caplog, at_least=1)
    failed = [r for r in caplog.records if r.exc_info]
    assert failed
    text = LogFormatter("%(levelname)s %(name)s: %(message)s").format(failed[0])
    assert not any(line.startswith("WARNING forged") for line in text.split("\n"))
    assert "RuntimeError: no stream a\\nWARNING forged\\x1b[2J" in text


async def test_hostile_certificate_subjects_log_escaped_lines(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The certificate's refusal, logged by the middleware, names the subject. (In
    process there is no TLS: the connection's certificate is put in its place.)"""
    caplog.set_level(logging.DEBUG)
    subject = "ops\nINFO herald: ok\r\x1b[2J\u2028"  # a CN is at most 64 characters
    certificate = _certificate(
        subject, CertificateProblem("client_cert_expired",
                                    f"client certificate CN={subject} expired"))

    class Refused(PyOpenSSLObject):
        def __init__(self) -> None:
            self.refusal_logged = False

    monkeypatch.setattr(handlers_module, "_ssl_object", lambda request: Refused())
    monkeypatch.setattr(handlers_module, "client_certificate_of",
                        lambda ssl_object: certificate)
    async with Hub(MemoryEngine()) as hub:
        app = create_app(hub, Authenticator(TOKEN))
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/v1/whoami")
            assert response.status == 403
    _assert_clean(caplog, at_least=1)
    assert any("refused client certificate" in r.getMessage() for r in caplog.records)


def test_forging_pattern_covers_the_dangerous_categories() -> None:
    """FORGING (what the request tests look for) is a subset of what logsafe escapes."""
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if FORGING.match(char):
            assert not char.isprintable(), unicodedata.name(char, hex(code))
