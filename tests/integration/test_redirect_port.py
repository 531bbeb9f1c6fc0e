"""The plain-HTTP port answers every request line with the 308, or a clear 400, and
closes every connection it says it closes.

Raw bytes over sockets, against the real redirect listener (``listen_redirect``:
Herald's own connection handler, aiohttp's C parser), in process. The request lines
are the ones that used to get something else — a plain 404 for ``OPTIONS *``,
``CONNECT`` or a path with an encoded newline, ``////host`` for ``//host``, the Host
header's name for an absolute-form target — and the rest of what a scanner, a proxy
or an old client sends. For each: the status, the Location, and that the server
closed the connection after exactly one answer (a pipelined second request is never
answered). Then a hypothesis property of ``location``, the pure part: a URL on the
HTTPS port whose every character may stand in a header, or ``bad_request``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.config import ServerConfig
from herald.errors import ClientError
from herald.server.listeners import MAX_REQUEST_LINE_BYTES, Listener
from herald.server.redirect import listen_redirect, location

HTTPS_PORT = 8443
FALLBACK = "127.0.0.1"
# Generous for a loaded machine: an answer normally takes a millisecond.
TIMEOUT = 5.0


@pytest.fixture
async def redirect() -> AsyncIterator[Listener]:
    listener = await listen_redirect(ServerConfig(http_redirect="127.0.0.1:0"), HTTPS_PORT,
                                     FALLBACK)
    assert listener is not None
    yield listener
    await listener.close()


class Answer:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split(" ")[1])
        self.headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        assert values is None or len(values) == 1, values
        return values[0] if values else None


async def send(listener: Listener, request: bytes) -> Answer:
    """Send ``request``, then read until the server closes: a server that keeps the
    connection open fails the test by timing out here."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    answers = re.findall(rb"(?:^|\r\n)HTTP/\d\.\d \d{3} ", raw)
    assert len(answers) == 1, raw  # one answer, then closed
    return Answer(raw)


def get(target: str | bytes, *headers: str, method: str = "GET",
        version: str = "HTTP/1.1") -> bytes:
    target = target.encode() if isinstance(target, str) else target
    lines = [method.encode() + b" " + target + b" " + version.encode(),
             *(h.encode() for h in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


HOST = "Host: herald.example"
TO = f"https://herald.example:{HTTPS_PORT}"
LONG = "/" + "a" * (MAX_REQUEST_LINE_BYTES - 100)

# (request, status, Location): every one of them closes its connection.
CASES: dict[str, tuple[bytes, int, str | None]] = {
    "origin form": (get("/v1/health", HOST), 308, f"{TO}/v1/health"),
    "query kept": (get("/v1/streams/s/events?from=5&follow=false", HOST), 308,
                   f"{TO}/v1/streams/s/events?from=5&follow=false"),
    "HEAD": (get("/x", HOST, method="HEAD"), 308, f"{TO}/x"),
    "POST": (get("/v1/streams/s/events", HOST, "Content-Length: 2", method="POST") + b"[]",
             308, f"{TO}/v1/streams/s/events"),
    "DELETE": (get("/x", HOST, method="DELETE"), 308, f"{TO}/x"),
    "PROPFIND": (get("/x", HOST, method="PROPFIND"), 308, f"{TO}/x"),
    "OPTIONS on a path": (get("/x", HOST, method="OPTIONS"), 308, f"{TO}/x"),
    "a double slash is a path, not a host": (get("//evil.example/x", HOST), 308,
                                             f"{TO}//evil.example/x"),
    "double slashes inside": (get("/a//b///c", HOST), 308, f"{TO}/a//b///c"),
    "an encoded newline": (get("/a%0d%0aSet-Cookie:%20x=1", HOST), 308,
                           f"{TO}/a%0d%0aSet-Cookie:%20x=1"),
    "dot segments kept as sent": (get("/a/../b/%2e%2e/c", HOST), 308,
                                  f"{TO}/a/../b/%2e%2e/c"),
    "a lone percent": (get("/a%zz?b=%", HOST), 308, f"{TO}/a%25zz?b=%25"),
    "URL-unsafe characters encoded": (get('/a"<>`{}|^', HOST), 308,
                                      f"{TO}/a%22%3C%3E%60%7B%7D%7C%5E"),
    "a fragment dropped": (get("/a#frag", HOST), 308, f"{TO}/a"),
    "a very long path": (get(LONG, HOST), 308, f"{TO}{LONG}"),
    "absolute form names the host": (get("http://other.example:80/x?y=1", HOST), 308,
                                     f"https://other.example:{HTTPS_PORT}/x?y=1"),
    "absolute form, no path": (get("HTTP://other.example", HOST), 308,
                               f"https://other.example:{HTTPS_PORT}/"),
    "absolute form with credentials": (get("http://user:pw@other.example/x", HOST), 308,
                                       f"https://{FALLBACK}:{HTTPS_PORT}/x"),
    "a Host with junk": (get("/x", "Host: a b<script>"), 308,
                         f"https://{FALLBACK}:{HTTPS_PORT}/x"),
    "an empty Host": (get("/x", "Host: "), 308, f"https://{FALLBACK}:{HTTPS_PORT}/x"),
    "HTTP/1.0 without Host": (get("/x", version="HTTP/1.0"), 308,
                              f"https://{FALLBACK}:{HTTPS_PORT}/x"),
    "keep-alive asked for": (get("/x", HOST, "Connection: keep-alive"), 308, f"{TO}/x"),
    "HTTP/1.0 keep-alive": (get("/x", HOST, "Connection: keep-alive", version="HTTP/1.0"),
                            308, f"{TO}/x"),
    "a body never sent": (get("/x", HOST, "Content-Length: 1000000000", method="POST"),
                          308, f"{TO}/x"),
    "a chunked body never finished": (get("/x", HOST, "Transfer-Encoding: chunked",
                                          method="PUT") + b"ffff\r\nabc", 308, f"{TO}/x"),
    # nothing to redirect to: 400, not a guess
    "OPTIONS *": (get("*", HOST, method="OPTIONS"), 400, None),
    "CONNECT": (get("herald.example:443", "Host: herald.example:443", method="CONNECT"),
                400, None),
    "HTTP/0.9": (b"GET /x\r\n\r\n", 400, None),
    # not HTTP, refused by the parser
    "HTTP/1.1 without Host": (get("/x"), 400, None),
    "two Hosts": (get("/x", HOST, "Host: evil.example"), 400, None),
    "an unknown method": (get("/x", HOST, method="FOO"), 400, None),
    "a relative target": (get("x", HOST), 400, None),
    "another scheme": (get("ftp://other.example/x", HOST), 400, None),
    "a byte that is not ASCII": (get(b"/\xff", HOST), 400, None),
    "HTTP/2's preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, None),
    "not HTTP at all": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40, 400,
                        None),
    "a request line over the limit": (get("/" + "a" * MAX_REQUEST_LINE_BYTES, HOST), 431,
                                      None),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_every_request_line_gets_the_308_or_a_clear_refusal_and_is_closed(
        redirect: Listener, case: str) -> None:
    request, status, target = CASES[case]
    answer = await send(redirect, request)
    assert answer.status == status, answer.raw[:300]
    assert answer.header("Location") == target
    if status == 308:
        assert answer.body == b""
        assert answer.header("Content-Length") in ("0", None)
        assert answer.header("Connection") == "close"  # and it did close: see send()
        assert answer.header("Server") == "Herald"
        assert answer.header("Strict-Transport-Security") is None  # never over plain HTTP
    else:
        assert b'"code":"' in answer.body, answer.raw
        # says so, if it says anything: HTTP/1.0 answers close without saying
        assert answer.header("Connection") in ("close", None)


async def test_a_pipelined_second_request_is_never_answered(redirect: Listener) -> None:
    answer = await send(redirect, get("/first", HOST) + get("/second", HOST))
    assert answer.header("Location") == f"{TO}/first"
    assert b"/second" not in answer.raw


async def test_port_443_is_left_out_of_the_location() -> None:
    listener = await listen_redirect(ServerConfig(http_redirect="127.0.0.1:0"), 443, FALLBACK)
    assert listener is not None
    try:
        answer = await send(listener, get("/x?y", HOST))
    finally:
        await listener.close()
    assert answer.header("Location") == "https://herald.example/x?y"


# What may stand in a Location after the authority, by RFC 3986 (and "%" escapes).
_URI = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_ORIGIN = re.compile(r"https://(?P<host>[^/:]+|\[[^\]]+\])(?::(?P<port>[0-9]+))?"
                     r"(?P<rest>/.*)", re.DOTALL)


@given(target=st.one_of(st.text(), st.text().map(lambda t: "/" + t),
                        st.text().map(lambda t: "http://" + t)),
       host=st.one_of(st.none(), st.text(max_size=40),
                      st.sampled_from(["herald.example", "[::1]:8080", "10.0.0.1", "x.y:99"])))
def test_location_is_always_a_safe_url_on_the_https_port_or_bad_request(
        target: str, host: str | None) -> None:
    try:
        url = location(target, host, HTTPS_PORT, FALLBACK)
    except ClientError as exc:
        assert exc.code == "bad_request"
        assert not target.startswith("/") and not target.lower().startswith("http://")
        return
    match = _ORIGIN.fullmatch(url)
    assert match is not None, url
    assert match["port"] == str(HTTPS_PORT)
    assert _URI.fullmatch(match["rest"]), url
    assert all("!" <= c <= "~" for c in url), url  # nothing a header could be split on
    if target.startswith("/") and "#" not in target and _URI.fullmatch(target):
        assert match["rest"] == target  # a clean path is kept byte for byte
