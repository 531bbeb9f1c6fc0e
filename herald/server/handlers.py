"""The API's request handlers: parse the request, call the hub, render the answer.

``Handlers`` holds what the routes need — the hub, the authenticator, the rate
limiter, the gatherers — and ``app.create_app`` registers its bound methods, so no
handler looks anything up in the application. Rules:

1. A handler checks its query parameters (unknown ones are refused) and the
   caller's permission before it touches the hub.
2. Every stream is reached through the hub; the answers' bytes come from
   ``render`` (JSON pages, SSE) or are the stored records themselves (the compact
   form). No SSE wire detail is written here.
3. A streaming answer that breaks after it began cannot change its status; it is
   marked (``STREAMING``) so the error middleware cuts the connection instead.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from .. import codec
from ..errors import Forbidden, InvalidRequest, RateLimited, RequestTimeout, TooLarge
from ..gather.manager import GatherManager
from ..hub import HEARTBEAT_SECONDS, Hub, Start
from ..model import validate_position
from ..version import __version__
from .auth import Authenticator, Principal
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
# nothing the documentation does not; tools fetch it before they have a token).
_PUBLIC_PATHS = frozenset({"/v1/health", "/v1/openapi.json"})
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
    """Refuse query parameters the route does not take. Ignoring them would turn a
    misspelt ``expected_head`` into an unconditional append (found by the fuzzer)."""
    for name in request.query:
        if name not in known:
            raise InvalidRequest(f"unknown query parameter {name!r}"
                                 + (f"; this route takes {', '.join(known)}" if known else ""),
                                 code="invalid_parameter", parameter=name)


def _start(request: web.Request) -> Start:
    value = request.query.get("from", "0")
    if value in ("head", "end"):
        return "head"
    return validate_position(value, "from")


def _follow(request: web.Request) -> bool:
    value = request.query.get("follow", "true").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidRequest("follow must be true or false", code="invalid_parameter",
                             parameter="follow")
    return value in ("true", "1")


def _heartbeat(request: web.Request) -> float:
    value = request.query.get("heartbeat")
    if value is None:
        return HEARTBEAT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if not MIN_HEARTBEAT_SECONDS <= seconds <= MAX_HEARTBEAT_SECONDS:
        raise InvalidRequest(f"heartbeat must be {MIN_HEARTBEAT_SECONDS:g} to "
                             f"{MAX_HEARTBEAT_SECONDS:g} seconds", code="invalid_parameter",
                             parameter="heartbeat")
    return seconds


class _SkipRequest(msgspec.Struct, forbid_unknown_fields=True):
    position: int


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
        header), ask the authenticator, and apply the per-principal rate limit."""
        if request.path in _PUBLIC_PATHS:
            return await handler(request)
        ssl_object = _ssl_object(request)
        certificate = client_certificate_of(ssl_object)
        if (certificate is not None and certificate.problem is not None
                and isinstance(ssl_object, PyOpenSSLObject) and not ssl_object.refusal_logged):
            # One line per connection, in words, naming the certificate: the lesson of
            # people losing days to "unsupported certificate purpose".
            ssl_object.refusal_logged = True
            log.warning("refused client certificate from %s: %s [%s]", request.remote,
                        certificate.problem.message, certificate.problem.code)
        authorization = request.headers.get("Authorization")
        if is_dashboard(request.path):
            user = await self.auth.login(authorization, request.remote or "unknown",
                                         certificate)
            request[USER] = user
            key = f"user:{user}"
        else:
            principal = self.auth.authenticate(authorization, certificate)
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
        accept = request.headers.get("Accept", "")
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
        try:
            body = msgspec.json.decode(await request.read(), type=_SkipRequest)
        except msgspec.MsgspecError as exc:
            raise InvalidRequest(f'expected {{"position": N}}: {exc}',
                                 code="invalid_json") from exc
        name = request.match_info["name"]
        skip = await self.gatherers.skip(name, body.position, principal.name)
        log.warning("gatherer %s: %s skipped the row at position %d", name, principal.name,
                    body.position)
        return _json_response({"skip": skip, "gatherer": self.gatherers.get(name).status()})
