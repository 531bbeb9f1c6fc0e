"""The HTTPS API (aiohttp). Thin: parse the request, call the hub, render the answer.

Routes::

    GET  /                                   the dashboard (HTTP Basic login, a [[user]])
    GET  /v1/health                          up, and the storage answers; no credentials
    GET  /v1/openapi.json                    this API as OpenAPI 3.1, no credentials needed
    GET  /v1/whoami                          the calling principal and its permissions
    GET  /v1/admin/principals                admin: every principal and user (no secrets)
    GET  /v1/streams                         [{name, head, bytes}] the caller may read
    GET  /v1/streams/{stream}                {name, head, bytes}; 404 if empty
    POST /v1/streams/{stream}/events         append a batch (JSON array of events)
    GET  /v1/streams/{stream}/events         read; by Accept:
           application/json (default)        {"events": […], "next": N, "head": H}
           text/event-stream                 Server-Sent Events, catch up then follow
           application/vnd.herald.records    compact: raw records, catch up then follow
    GET  /v1/gatherers                       every gatherer's status (admin)
    GET  /v1/gatherers/{name}                one gatherer's status (admin)
    POST /v1/gatherers/{name}/skip           {"position": N}: skip the bad row a
                                             gatherer is stopped at (admin; recorded)

Every error is ``{"error": {"code", "message", …}}`` with the status the error
class names (see herald.errors); no stack trace ever reaches a client.

Who may do what is herald.server.auth's business; the middlewares here find the
credentials (the connection's client certificate, the Authorization header), ask
it, and apply the per-principal rate limit. With ``[server] http_redirect`` a
second, plain-HTTP listener answers every request with a 308 to HTTPS and serves
nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import signal
import socket
import ssl
import sys
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from OpenSSL import SSL

from .. import codec
from ..version import __version__
from ..certs import ensure_server_tls
from ..config import Config, ServerConfig, parse_listen
from ..engines import create_engine
from ..errors import (
    Forbidden,
    HeraldError,
    InvalidRequest,
    RateLimited,
    RequestTimeout,
    ServerError,
    TooLarge,
    Unauthorized,
)
from ..gather.manager import GatherManager
from ..hub import HEARTBEAT_SECONDS, Hub, Start
from ..model import validate_position
from .auth import Authenticator, Principal, ensure_admin_token
from .dashboard import DASHBOARD_HEADERS, render_home
from .openapi import openapi_document
from .render import SSE_PREAMBLE, render_json_page, render_sse, sse_heartbeat
from .throttle import RateLimiter
from .tls import MutualTLSContext, PyOpenSSLObject, client_certificate_of, server_context

__all__ = ["create_app", "create_redirect_app", "run_server", "HUB", "AUTH", "SETTINGS",
           "GATHER"]

log = logging.getLogger("herald.server")


@dataclass(frozen=True)
class Settings:
    """What the request handlers need from ``[server]``."""

    body_timeout: float
    rate_limiter: RateLimiter


HUB = web.AppKey("hub", Hub)
AUTH = web.AppKey("auth", Authenticator)
SETTINGS = web.AppKey("settings", Settings)
# The tasks serving streaming reads (SSE, compact), so that shutdown can end them.
LIVE = web.AppKey("live", weakref.WeakSet[asyncio.Task[Any]])
GATHER = web.AppKey("gather", GatherManager)
PRINCIPAL = "herald.principal"
USER = "herald.user"
# The streaming answer a request has begun, if any (see _broken).
STREAMING = "herald.streaming"

_json = msgspec.json.Encoder()
# No credentials: liveness for load balancers, and the API's description (it says
# nothing the documentation does not; tools fetch it before they have a token).
_PUBLIC_PATHS = frozenset({"/v1/health", "/v1/openapi.json"})
# The dashboard's paths log in with HTTP Basic; everything else is the API.
_DASHBOARD_PATHS = frozenset({"/", "/favicon.ico"})
_DASHBOARD_PREFIX = "/dashboard/"
# HSTS: browsers remember to use HTTPS only (RFC 6797). Sent on HTTPS answers only:
# the redirect port never sends it (browsers ignore it over plain HTTP anyway).
_HSTS = "max-age=31536000"

# The request line and each header field are limited to aiohttp's defaults: URLs
# here are short (a stream name is at most 128 characters) and the longest honest
# header is a token. Longer ones are refused before any handler runs.
MAX_REQUEST_LINE_BYTES = 8190
MAX_HEADER_FIELD_BYTES = 8190
# Headers per request: clients and proxies send about a dozen.
MAX_HEADERS = 64
# A TLS handshake that has not finished after this long is dropped (asyncio's
# default is 60 s): a client that opens connections and stalls cannot pile them up.
TLS_HANDSHAKE_TIMEOUT_SECONDS = 10.0


def _json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(value), status=status,
                        content_type="application/json")


def _is_dashboard(path: str) -> bool:
    return path in _DASHBOARD_PATHS or path.startswith(_DASHBOARD_PREFIX)


def _error_response(error: HeraldError, path: str = "") -> web.Response:
    response = web.Response(body=_json.encode(error.to_wire()), status=error.status,
                            content_type="application/json")
    if isinstance(error, Unauthorized):
        # RFC 9110 §11.6.1: a 401 names the scheme to use; Basic makes browsers ask.
        response.headers["WWW-Authenticate"] = (
            'Basic realm="Herald dashboard", charset="UTF-8"' if _is_dashboard(path)
            else 'Bearer realm="Herald"')
    if isinstance(error, RateLimited) and "retry_after" in error.details:
        seconds = max(1, math.ceil(float(error.details["retry_after"])))
        error.details["retry_after"] = seconds
        response.body = _json.encode(error.to_wire())
        response.headers["Retry-After"] = str(seconds)
    return response


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "batch_too_large",
    431: "headers_too_large",
}


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except HeraldError as exc:
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc.message)
        if STREAMING in request:
            return _broken(request)
        return _error_response(exc, request.path)
    except web.HTTPRedirection:
        raise
    except web.HTTPException as exc:
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        message = exc.reason
        if exc.status == 413:
            message = f"request body too large: {exc.text}"
        error = HeraldError(message, code=code)
        response = web.Response(body=_json.encode(error.to_wire()), status=exc.status,
                                content_type="application/json")
        for name in ("Allow",):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        if STREAMING in request:
            return _broken(request)
        return _error_response(ServerError("internal error; see the server log"))


def _broken(request: web.Request) -> web.StreamResponse:
    """An error after a streaming answer began, when its status can no longer say so.
    Appending an error answer to the stream would look like more data (or hang the
    client); a clean end would look like the end of the stream. So the connection is
    broken: the client resumes from its position, where the error then comes first and
    gets its status (see _primed)."""
    if request.transport is not None:
        request.transport.abort()
    response: web.StreamResponse = request[STREAMING]
    return response


def _ssl_object(request: web.Request) -> object:
    transport = request.transport
    return transport.get_extra_info("ssl_object") if transport is not None else None


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path in _PUBLIC_PATHS:
        return await handler(request)
    auth = request.app[AUTH]
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
    if _is_dashboard(request.path):
        user = await auth.login(authorization, request.remote or "unknown", certificate)
        request[USER] = user
        key = f"user:{user}"
    else:
        principal = auth.authenticate(authorization, certificate)
        request[PRINCIPAL] = principal
        key = "" if principal.admin else f"principal:{principal.name}"
    if key:
        wait = request.app[SETTINGS].rate_limiter.take(key)
        if wait > 0:
            limiter = request.app[SETTINGS].rate_limiter
            raise RateLimited(f"more than {limiter.rate:g} requests per second; slow down",
                              code="rate_limited", retry_after=wait)
    return await handler(request)


def _principal(request: web.Request) -> Principal:
    principal: Principal = request[PRINCIPAL]
    return principal


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Strict-Transport-Security"] = _HSTS
    response.headers["X-Content-Type-Options"] = "nosniff"
    await _server_header(request, response)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Not aiohttp's "Python/3.11 aiohttp/3.x": versions help only those who look
    # for known holes.
    response.headers["Server"] = "Herald"


# --- handlers ---------------------------------------------------------------------


def _parameters(request: web.Request, *known: str) -> None:
    """Refuse query parameters the route does not take. Ignoring them would turn a
    misspelt ``expected_head`` into an unconditional append (found by the fuzzer)."""
    for name in request.query:
        if name not in known:
            raise InvalidRequest(f"unknown query parameter {name!r}"
                                 + (f"; this route takes {', '.join(known)}" if known else ""),
                                 code="invalid_parameter", parameter=name)


async def health(request: web.Request) -> web.Response:
    _parameters(request)
    hub = request.app[HUB]
    await hub.ping()  # 503 storage_unavailable when the storage cannot serve
    return _json_response({"status": "ok", "version": __version__, "engine": hub.engine_name})


async def openapi(request: web.Request) -> web.Response:
    _parameters(request)
    return web.Response(body=_OPENAPI_JSON, content_type="application/json")


_OPENAPI_JSON = _json.encode(openapi_document())


async def list_streams(request: web.Request) -> web.Response:
    _parameters(request)
    principal = _principal(request)
    streams = await request.app[HUB].streams()
    return _json_response({"streams": [s for s in streams if principal.may_subscribe(s.name)]})


async def whoami(request: web.Request) -> web.Response:
    _parameters(request)
    principal = _principal(request)
    return _json_response({
        "name": principal.name, "via": principal.via, "admin": principal.admin,
        "configured": principal.configured,
        "publish": list(principal.publish), "subscribe": list(principal.subscribe),
    })


async def admin_principals(request: web.Request) -> web.Response:
    _parameters(request)
    _principal(request).require_admin()
    auth = request.app[AUTH]
    return _json_response({
        "principals": [
            {"name": p.name, "subject": p.subject, "token": p.token_sha256 is not None,
             "publish": list(p.publish), "subscribe": list(p.subscribe), "admin": p.admin}
            for p in auth.principals],
        "users": [u.name for u in auth.users],
        "require_client_cert": auth.require_client_cert,
    })


async def dashboard_home(request: web.Request) -> web.Response:
    if request.path != "/":
        raise web.HTTPNotFound()
    streams = await request.app[HUB].streams()
    return web.Response(body=render_home(request[USER], streams), content_type="text/html",
                        charset="utf-8", headers=DASHBOARD_HEADERS)


async def get_stream(request: web.Request) -> web.Response:
    _parameters(request)
    stream = request.match_info["stream"]
    _principal(request).require_subscribe(stream)
    return _json_response(await request.app[HUB].stream(stream))


async def append_events(request: web.Request) -> web.Response:
    _parameters(request, "expected_head")
    stream = request.match_info["stream"]
    _principal(request).require_publish(stream)
    expected_head = request.query.get("expected_head")
    # An empty value is refused, not read as "no condition": a producer that meant to
    # send one must not get an unconditional append.
    expected = (validate_position(expected_head, "expected_head")
                if expected_head is not None else None)
    hub = request.app[HUB]
    if request.content_length is not None and request.content_length > hub.limits.max_batch_bytes:
        raise TooLarge(
            f"batch is {request.content_length} bytes; the limit is {hub.limits.max_batch_bytes}",
            code="batch_too_large", limit=hub.limits.max_batch_bytes)
    try:
        async with asyncio.timeout(request.app[SETTINGS].body_timeout):
            body = await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {request.app[SETTINGS].body_timeout:g} s",
            code="request_timeout") from None
    result = await hub.append_body(stream, body, expected)
    return _json_response(result)


def _start(request: web.Request) -> Start:
    value = request.query.get("from", "0")
    if value in ("head", "end"):
        return "head"
    return validate_position(value, "from")


async def read_events(request: web.Request) -> web.StreamResponse:
    _parameters(request, "from", "limit", "follow", "heartbeat")
    stream = request.match_info["stream"]
    _principal(request).require_subscribe(stream)
    hub = request.app[HUB]
    accept = request.headers.get("Accept", "")
    # Every parameter is checked whatever the form that uses it: a wrong one is
    # refused, not ignored.
    follow, heartbeat = _follow(request), _heartbeat(request)
    limit = validate_position(request.query.get("limit", "1000"), "limit")
    if limit == 0 or limit > hub.limits.max_read_events:
        # Checked whatever the form (the hub checks it again for pages).
        raise InvalidRequest(f"limit must be 1 to {hub.limits.max_read_events}",
                             code="invalid_parameter", parameter="limit")
    start = _start(request)
    if "text/event-stream" in accept:
        last_id = request.headers.get("Last-Event-ID")
        if last_id:
            start = validate_position(last_id, "Last-Event-ID") + 1
        return await _sse(request, hub, stream, start, follow, heartbeat)
    if codec.MEDIA_TYPE in accept:
        return await _compact(request, hub, stream, start, follow, heartbeat)
    page = await hub.read(stream, start, limit)
    return web.Response(body=render_json_page(page), content_type="application/json")


def _follow(request: web.Request) -> bool:
    value = request.query.get("follow", "true").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidRequest("follow must be true or false", code="invalid_parameter",
                             parameter="follow")
    return value in ("true", "1")


async def _stream_response(request: web.Request, content_type: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": content_type,
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: do not buffer a live stream
    })
    await response.prepare(request)
    request[STREAMING] = response
    task = asyncio.current_task()
    if task is not None:
        request.app[LIVE].add(task)
    return response


async def _end_live_streams(app: web.Application) -> None:
    """On shutdown, cut the streaming reads: one that follows never ends by itself, and
    aiohttp would wait its whole shutdown timeout (60 s) for it. A cut connection is
    what a subscriber already survives: it resumes from its position elsewhere."""
    live = app[LIVE]
    for task in list(live):
        task.cancel()


async def _sse(request: web.Request, hub: Hub, stream: str, start: Start, follow: bool,
               heartbeat: float) -> web.StreamResponse:
    # Entering the subscription reads its first records: an error there (a damaged
    # record at the start position) gets its own status, before the answer begins.
    async with hub.subscribe(stream, start, follow=follow, heartbeat=heartbeat) as sub:
        response = await _stream_response(request, "text/event-stream")
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


async def _compact(request: web.Request, hub: Hub, stream: str, start: Start, follow: bool,
                   heartbeat: float) -> web.StreamResponse:
    async with hub.subscribe(stream, start, follow=follow, heartbeat=heartbeat) as sub:
        response = await _stream_response(request, codec.MEDIA_TYPE)
        async for records in sub:
            if records:
                # The stored bytes go out as they are: no per-event work on the server.
                await response.write(b"".join(r.raw for r in records))
            else:
                await response.write(hub.heartbeat(sub.position))
        await response.write_eof()
        return response


def _heartbeat(request: web.Request) -> float:
    value = request.query.get("heartbeat")
    if value is None:
        return HEARTBEAT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if not 0.05 <= seconds <= 300:
        raise InvalidRequest("heartbeat must be 0.05 to 300 seconds", code="invalid_parameter",
                             parameter="heartbeat")
    return seconds


# --- gatherers ----------------------------------------------------------------------


def _require_admin(request: web.Request) -> Principal:
    principal = _principal(request)
    if not principal.admin:
        raise Forbidden(f"{principal.name} may not manage gatherers", code="forbidden",
                        permission="admin")
    return principal


class _SkipRequest(msgspec.Struct, forbid_unknown_fields=True):
    position: int


async def list_gatherers(request: web.Request) -> web.Response:
    _parameters(request)
    _require_admin(request)
    return _json_response({"gatherers": request.app[GATHER].statuses()})


async def get_gatherer(request: web.Request) -> web.Response:
    _parameters(request)
    _require_admin(request)
    return _json_response(request.app[GATHER].get(request.match_info["name"]).status())


async def skip_row(request: web.Request) -> web.Response:
    _parameters(request)
    principal = _require_admin(request)
    try:
        body = msgspec.json.decode(await request.read(), type=_SkipRequest)
    except msgspec.MsgspecError as exc:
        raise InvalidRequest(f'expected {{"position": N}}: {exc}', code="invalid_json") from exc
    manager = request.app[GATHER]
    name = request.match_info["name"]
    skip = await manager.skip(name, body.position, principal.name)
    log.warning("gatherer %s: %s skipped the row at position %d", name, principal.name,
                body.position)
    return _json_response({"skip": skip, "gatherer": manager.get(name).status()})


# --- assembly ---------------------------------------------------------------------


def create_app(hub: Hub, auth: Authenticator,
               server: ServerConfig | None = None,
               gatherers: GatherManager | None = None) -> web.Application:
    server = server or ServerConfig()
    # The body limit is enforced by the hub with a named error; aiohttp's own limit
    # sits a little above it as a backstop.
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware],
        client_max_size=hub.limits.max_batch_bytes + 1024,
    )
    app[HUB] = hub
    app[AUTH] = auth
    app[SETTINGS] = Settings(body_timeout=server.body_timeout,
                             rate_limiter=RateLimiter(server.rate_limit, server.rate_burst))
    app[LIVE] = weakref.WeakSet()
    app[GATHER] = gatherers or GatherManager(hub, ())
    app.on_response_prepare.append(_on_prepare)
    app.on_shutdown.append(_end_live_streams)
    app.router.add_get("/", dashboard_home)
    app.router.add_get("/favicon.ico", dashboard_home)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/v1/whoami", whoami)
    app.router.add_get("/v1/admin/principals", admin_principals)
    app.router.add_get("/v1/streams", list_streams)
    app.router.add_get("/v1/streams/{stream}", get_stream)
    app.router.add_post("/v1/streams/{stream}/events", append_events)
    app.router.add_get("/v1/streams/{stream}/events", read_events)
    app.router.add_get("/v1/gatherers", list_gatherers)
    app.router.add_get("/v1/gatherers/{name}", get_gatherer)
    app.router.add_post("/v1/gatherers/{name}/skip", skip_row)
    return app


def _display(path: Path) -> str:
    """A path as short as it can be and still work from the current directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path.resolve())


def _python() -> str:
    """The interpreter Herald runs in: the one that surely has ``herald`` installed."""
    try:
        return str(Path(sys.executable).relative_to(Path.cwd()))
    except ValueError:
        return sys.executable


def _banner(config: Config, url: str, created: list[str], hub: Hub,
            redirect_url: str | None, gatherers: GatherManager) -> str:
    token = _display(config.admin_token_path)
    # An engine that keeps its data elsewhere (postgres) says where, without secrets.
    where = hub.location or f"data in {_display(config.data)}"
    lines = [f"Herald {__version__}: {hub.engine_name} engine, {where}"]
    if config.tls.cert is None:
        ca = _display(config.tls_dir / "ca.pem")
        lines += [
            f"  CA certificate:     {ca}" + ("  (created)" if "tls" in created else ""),
            f"  server certificate: {_display(config.tls_dir / 'server.pem')}",
        ]
    else:
        # Herald does not know which CA signed a certificate it was given.
        ca = "YOUR-CA.pem"
        lines.append(f"  server certificate: {_display(config.tls.cert)}")
    lines.append(f"  admin token:        {token} (mode 0600)"
                 + ("  (created)" if "token" in created else ""))
    if config.tls.client_ca is not None:
        need = "required" if config.tls.require_client_cert else "accepted"
        lines.append(f"  client certificates: {need}, issued by "
                     f"{_display(config.tls.client_ca)}")
    lines.append(f"  principals: {len(config.principals)}, dashboard users: "
                 f"{len(config.users)}")
    lines += [f"  gathering:          {g.source.describe()} → stream {g.stream} ({g.name})"
              for g in gatherers.gatherers.values()]
    if redirect_url is not None:
        lines.append(f"Plain HTTP on {redirect_url} only redirects to HTTPS")
    lines += [
        f"Herald is listening on {url}",
        "",
        "Try it:",
        f'  curl --cacert {ca} -H "Authorization: Bearer $(cat {token})" {url}/v1/streams',
        f"  {_python()} -c \"import herald; print(herald.Client('{url}', "
        f"token_file='{token}', ca='{ca}').streams())\"",
        "",
    ]
    return "\n".join(lines)


# --- the plain-HTTP port: redirects only --------------------------------------------

# A Host header we are willing to put into a Location: a DNS name, an IPv4 address
# or a bracketed IPv6 address, with an optional port. Anything else gets the
# listener's own address instead of being echoed back.
_HOST = re.compile(r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|"
                   r"\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")


def create_redirect_app(https_port: int, fallback_host: str) -> web.Application:
    """Answers every request with 308 to the same path on HTTPS; never serves data.

    308 (RFC 9110 §15.4.9) keeps the method and body, so a POST is repeated over
    HTTPS instead of turning into a GET; the body of the answer is empty.
    """

    async def redirect(request: web.Request) -> web.Response:
        match = _HOST.fullmatch(request.headers.get("Host", ""))
        host = match["host"] if match else fallback_host
        port = "" if https_port == 443 else f":{https_port}"
        target = f"https://{host}{port}{request.rel_url}"
        return web.Response(status=308, headers={"Location": target, "Connection": "close"})

    app = web.Application()
    app.on_response_prepare.append(_server_header)
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app


# --- running ------------------------------------------------------------------------


class _RequestHandler(RequestHandler):
    """aiohttp's connection handler, answering requests it cannot parse our way.

    aiohttp answers a malformed request (a header over the limit, a bad request
    line) itself, before any middleware: plain text that echoes the first bytes of
    the offending line, and an ERROR log line with a traceback — for every scanner
    on the internet. Here: JSON with a stable code, nothing echoed, one INFO line.
    """

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already sent; the connection is broken")
        error: HeraldError
        if isinstance(exc, LineTooLong):
            status = 431  # RFC 6585: Request Header Fields Too Large
            error = HeraldError(f"a request line or header is longer than "
                                f"{MAX_HEADER_FIELD_BYTES} bytes", code="headers_too_large")
        elif status >= 500:
            log.error("request from %s failed", request.remote, exc_info=exc)
            error = ServerError("internal error; see the server log")
        else:
            error = InvalidRequest("malformed HTTP request", code="bad_request")
        if status < 500:
            log.info("malformed request from %s: %s", request.remote, type(exc).__name__)
        response = web.Response(body=_json.encode(error.to_wire()), status=status,
                                content_type="application/json", headers={"Server": "Herald"})
        response.force_close()
        return response


class _Site(web.SockSite):
    """aiohttp's SockSite with our connection handler and a TLS handshake timeout
    (aiohttp passes none to asyncio, whose default is 60 s)."""

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        options = server._kwargs  # the handler options given to the runner

        def protocol() -> RequestHandler:
            return _RequestHandler(server, loop=loop, **options)

        tls: dict[str, Any] = {}
        if self._ssl_context is not None:
            tls = {"ssl": self._ssl_context,
                   "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT_SECONDS}
        self._server = await loop.create_server(protocol, sock=self._sock,
                                                backlog=self._backlog, **tls)


def _tls_context(config: Config, cert: Path, key: Path) -> Any:
    """The listener's TLS context; a clear error if a file is missing or wrong."""
    client_ca = config.tls.client_ca
    try:
        if client_ca is None:
            return server_context(cert, key)
        if not client_ca.is_file():
            raise HeraldError(f"[tls] client_ca: {client_ca} does not exist",
                              code="invalid_config")
        return MutualTLSContext(cert, key, client_ca)
    except (OSError, ssl.SSLError, SSL.Error) as exc:
        files = f"{cert}, {key}" + (f", {client_ca}" if client_ca else "")
        raise HeraldError(f"cannot load the TLS files ({files}): {exc}",
                          code="invalid_config") from exc


def _runner(app: web.Application, server: ServerConfig, **kwargs: Any) -> web.AppRunner:
    return web.AppRunner(
        app, access_log=None,
        # The header timeout: aiohttp closes a connection that has not sent a whole
        # request's headers within keepalive_timeout of connecting (or of its last
        # answer), which is what stops a client sending headers byte by byte.
        keepalive_timeout=server.header_timeout,
        max_line_size=MAX_REQUEST_LINE_BYTES, max_field_size=MAX_HEADER_FIELD_BYTES,
        max_headers=MAX_HEADERS, **kwargs)


async def run_server(
    config: Config, *, ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run Herald until SIGINT/SIGTERM (or ``stop`` is set)."""
    created: list[str] = []
    config.data.mkdir(parents=True, exist_ok=True)
    if config.tls.cert is None:
        if await asyncio.to_thread(ensure_server_tls, config.tls_dir):
            created.append("tls")
        cert, key = config.tls_dir / "server.pem", config.tls_dir / "server.key"
    else:
        cert, key = config.tls.cert, config.tls.key or config.tls.cert
    token, token_created = ensure_admin_token(config.admin_token_path)
    if token_created:
        created.append("token")
    ssl_context = _tls_context(config, cert, key)
    auth = Authenticator(token, config.principals, config.users,
                         require_client_cert=config.tls.require_client_cert)

    hub = Hub(create_engine(config), config.limits)
    await hub.open()
    try:
        # Built before anything listens: a gatherer with a wrong setting stops Herald here.
        gatherers = GatherManager(hub, config.gather)
    except BaseException:
        await hub.close()
        raise
    app = create_app(hub, auth, config.server, gatherers)
    runners = [_runner(app, config.server, handler_cancellation=True)]
    await runners[0].setup()
    host, port = parse_listen(config.server.listen)
    sock = _listen_socket(host, port)
    site = _Site(runners[0], sock, ssl_context=ssl_context)
    await site.start()
    await gatherers.start()
    bound = sock.getsockname()
    url = f"https://{_show_host(bound[0])}:{bound[1]}"

    redirect_url = None
    if config.server.http_redirect is not None:
        fallback = host if host not in ("0.0.0.0", "::") else "localhost"
        redirect_runner = _runner(
            create_redirect_app(bound[1], _show_host(fallback)), config.server,
            # Never read a body it will not use: close instead of draining it.
            lingering_time=0)
        runners.append(redirect_runner)
        await redirect_runner.setup()
        plain = _listen_socket(*parse_listen(config.server.http_redirect,
                                             "[server] http_redirect"))
        await _Site(redirect_runner, plain).start()
        plain_bound = plain.getsockname()
        redirect_url = f"http://{_show_host(plain_bound[0])}:{plain_bound[1]}"

    print(_banner(config, url, created, hub, redirect_url, gatherers), flush=True)
    if ready is not None:
        ready(url)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        # Gatherers first: they append to the engine, which closes last.
        await gatherers.stop()
        for runner in reversed(runners):
            await runner.cleanup()
        await hub.close()


def _show_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HeraldError(f"cannot listen on {host}:{port}: {exc.strerror}",
                          code="listen_failed") from exc
    sock.listen(1024)
    sock.setblocking(False)
    if hasattr(os, "set_inheritable"):
        os.set_inheritable(sock.fileno(), False)
    return sock
