"""The API's request handlers: parse the request, call the hub, render the answer.

``Handlers`` holds what the routes need — the hub, the authenticator, the rate
limiter, the gatherers — and ``app.create_app`` registers its bound methods, so no
handler looks anything up in the application. Rules:

1. A handler checks its query parameters (unknown and repeated ones are refused;
   numbers are parsed by ``model.validate_position``/``validate_decimal`` only) and
   the caller's permission before it touches the hub. A header that may appear once
   and appears twice is refused before anything reads it (``authenticate``).
2. Every stream is reached through the hub; the answers' bytes come from
   ``render`` (JSON pages, SSE) or are the stored records themselves (the compact
   form). No SSE wire detail is written here.
3. A streaming answer that breaks after it began cannot change its status; it is
   marked (``STREAMING``) so the error middleware cuts the connection instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from .. import codec
from ..errors import (
    ClientError,
    Forbidden,
    InvalidRequest,
    RateLimited,
    RequestTimeout,
    TooLarge,
    UnsupportedEncoding,
)
from ..gather.manager import GatherManager
from ..hub import HEARTBEAT_SECONDS, Hub, Start
from ..logsafe import logsafe
from ..model import validate_decimal, validate_position
from ..version import __version__
from .auth import Authenticator, Principal, refuse_certificate
from .dashboard import DASHBOARD_HEADERS, render_home
from .openapi import openapi_document
from .render import (
    SSE_MEDIA_TYPE,
    SSE_PREAMBLE,
    render_json_page,
    render_sse,
    sse_heartbeat,
    sse_start,
)
from .throttle import RateLimiter
from .tls import PyOpenSSLObject, client_certificate_of

__all__ = ["Handlers", "STREAMING", "is_dashboard"]

log = logging.getLogger("herald.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _request_key(name: str, kind: type[Any]) -> Any:
    """A key into a request's storage. aiohttp 3.14 added typed keys and warns, once per
    key and process, about plain strings (an error under the tests' warning filter);
    older versions, which pyproject.toml still allows, take only strings."""
    typed = getattr(web, "RequestKey", None)
    return typed(name, kind) if typed is not None else f"herald.{name}"


PRINCIPAL = _request_key("principal", Principal)
USER = _request_key("user", str)
# The streaming answer a request has begun, if any (see app._broken).
STREAMING = _request_key("streaming", web.StreamResponse)

_json = msgspec.json.Encoder()
# No credentials: liveness for load balancers, and the API's description (it says
# nothing the documentation does not; tools fetch it before they have a token). On a
# connection whose client certificate was refused only health answers (the docs'
# promise): whoever holds that certificate learns why at their first request.
_HEALTH_PATH = "/v1/health"
_PUBLIC_PATHS = frozenset({_HEALTH_PATH, "/v1/openapi.json"})
# Headers Herald (or aiohttp, for it) acts on that RFC 9110 allows once per request:
# two Authorization lines would be two callers, two Last-Event-IDs two positions, two
# Content-Lengths two bodies. aiohttp's parser (3.14) refuses a second Host,
# Content-Type, Content-Length or Transfer-Encoding itself, as bad_request too; they
# are listed so the rule does not depend on the version (pyproject allows 3.10). List
# fields (Accept) are joined instead; Herald reads no cookies (the dashboard logs in
# with HTTP Basic).
_SINGLE_HEADERS = ("Authorization", "Host", "Last-Event-ID", "Content-Type",
                   "Content-Length", "Transfer-Encoding")
# The values of ``follow`` (after lower()).
_FOLLOW = {"true": True, "1": True, "false": False, "0": False}
# The dashboard's paths log in with HTTP Basic; everything else is the API.
_DASHBOARD_PATHS = frozenset({"/", "/favicon.ico"})
_DASHBOARD_PREFIX = "/dashboard/"
_OPENAPI_JSON = _json.encode(openapi_document())
# A streaming read's heartbeat may be asked for within these bounds (seconds).
MIN_HEARTBEAT_SECONDS = 0.05
MAX_HEARTBEAT_SECONDS = 300.0


def is_dashboard(path: str) -> bool:
    return path in _DASHBOARD_PATHS or path.startswith(_DASHBOARD_PREFIX)


def _json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(value), status=status,
                        content_type="application/json")


def _ssl_object(request: web.Request) -> object:
    transport = request.transport
    return transport.get_extra_info("ssl_object") if transport is not None else None


def _principal(request: web.Request) -> Principal:
    principal: Principal = request[PRINCIPAL]
    return principal


def _require_admin(request: web.Request) -> Principal:
    principal = _principal(request)
    if not principal.admin:
        raise Forbidden(f"{principal.name} may not manage gatherers", code="forbidden",
                        permission="admin")
    return principal


# --- query parameters ----------------------------------------------------------------


def _parameters(request: web.Request, *known: str) -> None:
    """Refuse query parameters the route does not take, and any given twice. Ignoring
    an unknown one would turn a misspelt ``expected_head`` into an unconditional append
    (found by the fuzzer); a repeated one (``from=5&from=0``) is read as its first by
    aiohttp but as its last by other parsers, a proxy's or a log's."""
    query = request.query
    for name in query:
        if name not in known:
            raise InvalidRequest(f"unknown query parameter {name!r}"
                                 + (f"; this route takes {', '.join(known)}" if known else ""),
                                 code="invalid_parameter", parameter=name)
    if len(query) > 1 and len(set(query)) < len(query):
        name = next(n for n in query if len(query.getall(n)) > 1)
        raise InvalidRequest(f"query parameter {name!r} is given more than once",
                             code="invalid_parameter", parameter=name)


def _refuse_repeated_headers(request: web.Request) -> None:
    """A field that must appear once (RFC 9110 §5.3), appearing twice, is a request
    that is not valid HTTP: 400 ``bad_request``. aiohttp hands out the first; a proxy
    in front may have acted on the last (whose token? which position?)."""
    headers = request.headers
    for name in _SINGLE_HEADERS:
        if len(headers.getall(name, ())) > 1:
            raise ClientError(f"the {name} header is given more than once",
                              code="bad_request", header=name)


def _refuse_encoded_body(request: web.Request) -> None:
    """A body in any ``Content-Encoding`` but identity: 415 ``unsupported_encoding``,
    before a byte of it is read. The listeners never inflate bodies (aiohttp's
    ``auto_decompress`` is off), so this is a clear answer, not the protection: a
    compressed body could only ever be read as the bytes it is."""
    encodings = [part.strip().lower()
                 for value in request.headers.getall("Content-Encoding", ())
                 for part in value.split(",") if part.strip()]
    refused = [e for e in encodings if e != "identity"]
    if refused:
        raise UnsupportedEncoding(
            f"request bodies are accepted as sent only, not in Content-Encoding "
            f"{refused[0][:64]!r}", code="unsupported_encoding", encoding=refused[0][:64])


def _start(request: web.Request) -> Start:
    value = request.query.get("from", "0")
    if value in ("head", "end"):
        return "head"
    return validate_position(value, "from")


def _follow(request: web.Request) -> bool:
    # Case does not matter (``True``); no non-ASCII letter lowers into these words
    # (only the Kelvin sign lowers into ASCII at all: "k").
    value = request.query.get("follow", "true").lower()
    if value not in _FOLLOW:
        raise InvalidRequest("follow must be true or false", code="invalid_parameter",
                             parameter="follow")
    return _FOLLOW[value]


def _heartbeat(request: web.Request) -> float:
    value = request.query.get("heartbeat")
    if value is None:
        return HEARTBEAT_SECONDS
    seconds = validate_decimal(value, "heartbeat")
    if not MIN_HEARTBEAT_SECONDS <= seconds <= MAX_HEARTBEAT_SECONDS:
        raise InvalidRequest(f"heartbeat must be {MIN_HEARTBEAT_SECONDS:g} to "
                             f"{MAX_HEARTBEAT_SECONDS:g} seconds", code="invalid_parameter",
                             parameter="heartbeat")
    return seconds


class _SkipRequest(msgspec.Struct, forbid_unknown_fields=True):
    position: int


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose names are unique: msgspec, like most parsers, keeps the last
    of ``{"position": 1, "position": 2}``; others keep the first (RFC 8259 §4)."""
    value = dict(pairs)
    if len(value) < len(pairs):
        raise ValueError("a name appears twice in one object")
    return value


def _skip_request(body: bytes) -> _SkipRequest:
    try:
        skip = msgspec.json.decode(body, type=_SkipRequest)
        # Then the names, by the standard library (msgspec cannot): the body is now
        # known to be one flat object of integers, so this is cheap and cannot recurse.
        json.loads(body, object_pairs_hook=_unique_keys)
    except (ValueError, msgspec.MsgspecError) as exc:
        raise InvalidRequest(f'expected {{"position": N}}: {exc}',
                             code="invalid_json") from exc
    return skip


class Handlers:
    """The routes of one node's API, and the middleware that says who is calling."""

    def __init__(self, hub: Hub, auth: Authenticator, limiter: RateLimiter,
                 gatherers: GatherManager, *, body_timeout: float) -> None:
        self.hub = hub
        self.auth = auth
        self.limiter = limiter
        self.gatherers = gatherers
        self.body_timeout = body_timeout
        # The tasks serving streaming reads (SSE, compact), so that shutdown can end them.
        self.live: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

    # --- who is calling ---------------------------------------------------------------

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Find the credentials (the connection's client certificate, the Authorization
        header), ask the authenticator, and apply the per-principal rate limit.

        First, on every path, a header that must appear once and appears twice is
        refused. ``/v1/health`` then answers whoever asks, even on a connection whose
        certificate was refused (load balancers); ``/v1/openapi.json`` needs no
        credentials either, but a refused certificate refuses it like the rest."""
        _refuse_repeated_headers(request)
        _refuse_encoded_body(request)
        if request.path == _HEALTH_PATH:
            return await handler(request)
        ssl_object = _ssl_object(request)
        certificate = client_certificate_of(ssl_object)
        if (certificate is not None and certificate.problem is not None
                and isinstance(ssl_object, PyOpenSSLObject) and not ssl_object.refusal_logged):
            # One line per connection, in words, naming the certificate: the lesson of
            # people losing days to "unsupported certificate purpose".
            ssl_object.refusal_logged = True
            log.warning("refused client certificate from %s: %s [%s]",
                        logsafe(request.remote), logsafe(certificate.problem.message),
                        certificate.problem.code)
        if request.path in _PUBLIC_PATHS:
            refuse_certificate(certificate)
            return await handler(request)
        authorization = request.headers.get("Authorization")
        if is_dashboard(request.path):
            user = await self.auth.login(authorization, request.remote or "unknown",
                                         certificate)
            request[USER] = user
            key = f"user:{user}"
        else:
            principal = self.auth.authenticate(authorization, certificate,
                                               request.remote or "unknown")
            request[PRINCIPAL] = principal
            key = "" if principal.admin else f"principal:{principal.name}"
        if key:
            wait = self.limiter.take(key)
            if wait > 0:
                raise RateLimited(
                    f"more than {self.limiter.rate:g} requests per second; slow down",
                    code="rate_limited", retry_after=wait)
        return await handler(request)

    # --- the node and the caller --------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        _parameters(request)
        await self.hub.ping()  # 503 storage_unavailable when the storage cannot serve
        return _json_response({"status": "ok", "version": __version__,
                               "engine": self.hub.engine_name})

    async def openapi(self, request: web.Request) -> web.Response:
        _parameters(request)
        return web.Response(body=_OPENAPI_JSON, content_type="application/json")

    async def whoami(self, request: web.Request) -> web.Response:
        _parameters(request)
        principal = _principal(request)
        return _json_response({
            "name": principal.name, "via": principal.via, "admin": principal.admin,
            "configured": principal.configured,
            "publish": list(principal.publish), "subscribe": list(principal.subscribe),
        })

    async def admin_principals(self, request: web.Request) -> web.Response:
        _parameters(request)
        _principal(request).require_admin()
        return _json_response({
            "principals": [
                {"name": p.name, "subject": p.subject, "token": p.token_sha256 is not None,
                 "publish": list(p.publish), "subscribe": list(p.subscribe), "admin": p.admin}
                for p in self.auth.principals],
            "users": [u.name for u in self.auth.users],
            "require_client_cert": self.auth.require_client_cert,
        })

    async def dashboard_home(self, request: web.Request) -> web.Response:
        if request.path != "/":
            raise web.HTTPNotFound()
        streams = await self.hub.streams()
        return web.Response(body=render_home(request[USER], streams), content_type="text/html",
                            charset="utf-8", headers=DASHBOARD_HEADERS)

    # --- streams ------------------------------------------------------------------------

    async def list_streams(self, request: web.Request) -> web.Response:
        _parameters(request)
        principal = _principal(request)
        streams = await self.hub.streams()
        return _json_response(
            {"streams": [s for s in streams if principal.may_subscribe(s.name)]})

    async def get_stream(self, request: web.Request) -> web.Response:
        _parameters(request)
        stream = request.match_info["stream"]
        _principal(request).require_subscribe(stream)
        return _json_response(await self.hub.stream(stream))

    async def append_events(self, request: web.Request) -> web.Response:
        _parameters(request, "expected_head")
        stream = request.match_info["stream"]
        _principal(request).require_publish(stream)
        expected_head = request.query.get("expected_head")
        # An empty value is refused, not read as "no condition": a producer that meant
        # to send one must not get an unconditional append.
        expected = (validate_position(expected_head, "expected_head")
                    if expected_head is not None else None)
        limit = self.hub.limits.max_batch_bytes
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge(f"batch is {request.content_length} bytes; the limit is {limit}",
                           code="batch_too_large", limit=limit)
        if request.content.is_eof():  # all here already (a small body, usually): no timer
            body = await request.read()
        else:
            try:
                async with asyncio.timeout(self.body_timeout):
                    body = await request.read()
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body did not arrive within {self.body_timeout:g} s",
                    code="request_timeout") from None
        return _json_response(await self.hub.append_body(stream, body, expected))

    async def read_events(self, request: web.Request) -> web.StreamResponse:
        _parameters(request, "from", "limit", "follow", "heartbeat")
        stream = request.match_info["stream"]
        _principal(request).require_subscribe(stream)
        # Accept is a list (RFC 9110 §12.5.1): several lines are one list, not the first.
        accept = ", ".join(request.headers.getall("Accept", ()))
        # Every parameter is checked whatever the form that uses it: a wrong one is
        # refused, not ignored.
        follow, heartbeat = _follow(request), _heartbeat(request)
        given = request.query.get("limit")
        # Checked whatever the form; without one, the default page within the bound.
        limit = self.hub.page_limit(None if given is None
                                    else validate_position(given, "limit"))
        start = _start(request)
        if SSE_MEDIA_TYPE in accept:
            start = sse_start(request.headers.get("Last-Event-ID"), start)
            return await self._sse(request, stream, start, follow, heartbeat)
        if codec.MEDIA_TYPE in accept:
            return await self._compact(request, stream, start, follow, heartbeat)
        page = await self.hub.read(stream, start, limit)
        return web.Response(body=render_json_page(page), content_type="application/json")

    async def _stream_response(self, request: web.Request,
                               content_type: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": content_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: do not buffer a live stream
        })
        await response.prepare(request)
        request[STREAMING] = response
        task = asyncio.current_task()
        if task is not None:
            self.live.add(task)
        return response

    async def _sse(self, request: web.Request, stream: str, start: Start, follow: bool,
                   heartbeat: float) -> web.StreamResponse:
        # Entering the subscription reads its first records: an error there (a damaged
        # record at the start position) gets its own status, before the answer begins.
        async with self.hub.subscribe(stream, start, follow=follow,
                                      heartbeat=heartbeat) as sub:
            response = await self._stream_response(request, SSE_MEDIA_TYPE)
            position = sub.position
            await response.write(SSE_PREAMBLE)
            async for records in sub:
                if records:
                    frames, position = render_sse(records, position)
                    await response.write(frames)
                else:
                    await response.write(sse_heartbeat(position))
            await response.write_eof()
            return response

    async def _compact(self, request: web.Request, stream: str, start: Start, follow: bool,
                       heartbeat: float) -> web.StreamResponse:
        async with self.hub.subscribe(stream, start, follow=follow,
                                      heartbeat=heartbeat) as sub:
            response = await self._stream_response(request, codec.MEDIA_TYPE)
            async for records in sub:
                if records:
                    # The stored bytes go out as they are: no per-event work on the server.
                    await response.write(b"".join(r.raw for r in records))
                else:
                    await response.write(self.hub.heartbeat(sub.position))
            await response.write_eof()
            return response

    async def end_live_streams(self, app: web.Application) -> None:
        """On shutdown, cut the streaming reads: one that follows never ends by itself,
        and aiohttp would wait its whole shutdown timeout (60 s) for it. A cut connection
        is what a subscriber already survives: it resumes from its position elsewhere."""
        for task in list(self.live):
            task.cancel()

    # --- gatherers ------------------------------------------------------------------------

    async def list_gatherers(self, request: web.Request) -> web.Response:
        _parameters(request)
        _require_admin(request)
        return _json_response({"gatherers": self.gatherers.statuses()})

    async def get_gatherer(self, request: web.Request) -> web.Response:
        _parameters(request)
        _require_admin(request)
        return _json_response(self.gatherers.get(request.match_info["name"]).status())

    async def skip_row(self, request: web.Request) -> web.Response:
        _parameters(request)
        principal = _require_admin(request)
        body = _skip_request(await request.read())
        name = request.match_info["name"]
        skip = await self.gatherers.skip(name, body.position, principal.name)
        log.warning("gatherer %s: %s skipped the row at position %d", logsafe(name),
                    logsafe(principal.name), body.position)
        return _json_response({"skip": skip, "gatherer": self.gatherers.get(name).status()})
