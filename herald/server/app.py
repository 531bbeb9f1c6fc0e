"""The HTTPS API's application: routes, middlewares, the headers of every answer.

Routes (the handlers are ``handlers.Handlers``' methods)::

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

Who may do what is herald.server.auth's business; the authenticating middleware
(``Handlers.authenticate``) finds the credentials, asks it, and applies the
per-principal rate limit. Listening (sockets, TLS, aiohttp's connection handler) is
``listeners``'; the plain-HTTP port that only redirects is ``redirect``'.
"""

from __future__ import annotations

import asyncio
import logging
import math

import msgspec
from aiohttp import web

from ..config import ServerConfig
from ..errors import HeraldError, RateLimited, ServerError, Unauthorized
from ..gather.manager import GatherManager
from ..hub import Hub
from ..logsafe import logsafe
from .auth import Authenticator
from .handlers import STREAMING, Handler, Handlers, is_dashboard
from .throttle import RateLimiter

__all__ = ["create_app", "server_header"]

log = logging.getLogger("herald.server")

_json = msgspec.json.Encoder()
# HSTS: browsers remember to use HTTPS only (RFC 6797). Sent on HTTPS answers only:
# the redirect port never sends it (browsers ignore it over plain HTTP anyway).
_HSTS = "max-age=31536000"
# aiohttp's own refusals (no route, wrong method, a body over client_max_size, …),
# by status: the code their JSON answer gets.
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "batch_too_large",
    431: "headers_too_large",
}


def _error_response(error: HeraldError, path: str = "") -> web.Response:
    response = web.Response(body=_json.encode(error.to_wire()), status=error.status,
                            content_type="application/json")
    if isinstance(error, Unauthorized):
        # RFC 9110 §11.6.1: a 401 names the scheme to use; Basic makes browsers ask.
        response.headers["WWW-Authenticate"] = (
            'Basic realm="Herald dashboard", charset="UTF-8"' if is_dashboard(path)
            else 'Bearer realm="Herald"')
    if isinstance(error, RateLimited) and "retry_after" in error.details:
        seconds = max(1, math.ceil(float(error.details["retry_after"])))
        error.details["retry_after"] = seconds
        response.body = _json.encode(error.to_wire())
        response.headers["Retry-After"] = str(seconds)
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HeraldError as exc:
        if exc.status >= 500:
            log.error("%s %s: %s", logsafe(request.method), logsafe(request.path),
                      logsafe(exc.message))
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
        log.exception("%s %s failed", logsafe(request.method), logsafe(request.path))
        if STREAMING in request:
            return _broken(request)
        return _error_response(ServerError("internal error; see the server log"))


def _broken(request: web.Request) -> web.StreamResponse:
    """An error after a streaming answer began, when its status can no longer say so.
    Appending an error answer to the stream would look like more data (or hang the
    client); a clean end would look like the end of the stream. So the connection is
    broken: the client resumes from its position, where the error then comes first and
    gets its status (the hub's subscription reads its first records before the answer
    begins)."""
    if request.transport is not None:
        request.transport.abort()
    response: web.StreamResponse = request[STREAMING]
    return response


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Strict-Transport-Security"] = _HSTS
    response.headers["X-Content-Type-Options"] = "nosniff"
    await server_header(request, response)


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Not aiohttp's "Python/3.11 aiohttp/3.x": versions help only those who look
    # for known holes.
    response.headers["Server"] = "Herald"


def create_app(hub: Hub, auth: Authenticator,
               server: ServerConfig | None = None,
               gatherers: GatherManager | None = None) -> web.Application:
    """The API over ``hub``; a node without gatherers when ``gatherers`` is None."""
    server = server or ServerConfig()
    handlers = Handlers(hub, auth, RateLimiter(server.rate_limit, server.rate_burst),
                        gatherers or GatherManager(hub, ()), body_timeout=server.body_timeout)
    # The body limit is enforced by the hub with a named error; aiohttp's own limit
    # sits a little above it as a backstop.
    app = web.Application(
        middlewares=[errors_middleware, handlers.authenticate],
        client_max_size=hub.limits.max_batch_bytes + 1024,
    )
    app.on_response_prepare.append(_on_prepare)
    app.on_shutdown.append(handlers.end_live_streams)
    route = app.router
    route.add_get("/", handlers.dashboard_home)
    route.add_get("/favicon.ico", handlers.dashboard_home)
    route.add_get("/v1/health", handlers.health)
    route.add_get("/v1/openapi.json", handlers.openapi)
    route.add_get("/v1/whoami", handlers.whoami)
    route.add_get("/v1/admin/principals", handlers.admin_principals)
    route.add_get("/v1/streams", handlers.list_streams)
    route.add_get("/v1/streams/{stream}", handlers.get_stream)
    route.add_post("/v1/streams/{stream}/events", handlers.append_events)
    route.add_get("/v1/streams/{stream}/events", handlers.read_events)
    route.add_get("/v1/gatherers", handlers.list_gatherers)
    route.add_get("/v1/gatherers/{name}", handlers.get_gatherer)
    route.add_post("/v1/gatherers/{name}/skip", handlers.skip_row)
    return app
