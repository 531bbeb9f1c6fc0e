"""The HTTPS API (aiohttp). Thin: parse the request, call the hub, render the answer.

Routes::

    GET  /v1/health                          liveness, no credentials needed
    GET  /v1/streams                         [{name, head, bytes}]
    GET  /v1/streams/{stream}                {name, head, bytes}; 404 if empty
    POST /v1/streams/{stream}/events         append a batch (JSON array of events)
    GET  /v1/streams/{stream}/events         read; by Accept:
           application/json (default)        {"events": […], "next": N, "head": H}
           text/event-stream                 Server-Sent Events, catch up then follow
           application/vnd.herald.records    compact: raw records, catch up then follow

Every error is ``{"error": {"code", "message", …}}`` with the status the error
class names (see herald.errors); no stack trace ever reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from .. import __version__, codec
from ..certs import ensure_server_tls
from ..config import Config, parse_listen
from ..engines import create_engine
from ..engines.base import Engine
from ..errors import HeraldError, InvalidRequest, ServerError, TooLarge
from ..hub import HEARTBEAT_SECONDS, Hub, render_json_page, render_sse
from ..model import validate_position
from .auth import Authenticator, Principal, ensure_admin_token
from .tls import server_context

__all__ = ["create_app", "run_server", "HUB", "AUTH"]

log = logging.getLogger("herald.server")

HUB = web.AppKey("hub", Hub)
AUTH = web.AppKey("auth", Authenticator)
PRINCIPAL = "herald.principal"

_json = msgspec.json.Encoder()
_PUBLIC_PATHS = frozenset({"/v1/health"})
# HSTS: browsers remember to use HTTPS only (RFC 6797).
_HSTS = "max-age=31536000"


def _json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(value), status=status,
                        content_type="application/json")


def _error_response(error: HeraldError) -> web.Response:
    return web.Response(body=_json.encode(error.to_wire()), status=error.status,
                        content_type="application/json")


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
        return _error_response(exc)
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
        return _error_response(ServerError("internal error; see the server log"))


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path not in _PUBLIC_PATHS:
        request[PRINCIPAL] = request.app[AUTH].authenticate(request.headers.get("Authorization"))
    return await handler(request)


def _principal(request: web.Request) -> Principal:
    principal: Principal = request[PRINCIPAL]
    return principal


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Strict-Transport-Security"] = _HSTS
    response.headers["X-Content-Type-Options"] = "nosniff"


# --- handlers ---------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return _json_response({"status": "ok", "version": __version__})


async def list_streams(request: web.Request) -> web.Response:
    return _json_response({"streams": await request.app[HUB].streams()})


async def get_stream(request: web.Request) -> web.Response:
    stream = request.match_info["stream"]
    _principal(request).require_subscribe(stream)
    return _json_response(await request.app[HUB].stream(stream))


async def append_events(request: web.Request) -> web.Response:
    stream = request.match_info["stream"]
    _principal(request).require_publish(stream)
    expected_head = request.query.get("expected_head")
    expected = validate_position(expected_head, "expected_head") if expected_head else None
    hub = request.app[HUB]
    if request.content_length is not None and request.content_length > hub.limits.max_batch_bytes:
        raise TooLarge(
            f"batch is {request.content_length} bytes; the limit is {hub.limits.max_batch_bytes}",
            code="batch_too_large", limit=hub.limits.max_batch_bytes)
    body = await request.read()
    result = await hub.append(stream, body, expected)
    return _json_response(result)


def _start(request: web.Request, hub_head: int) -> int:
    value = request.query.get("from", "0")
    if value in ("head", "end"):
        return hub_head
    return validate_position(value, "from")


async def read_events(request: web.Request) -> web.StreamResponse:
    stream = request.match_info["stream"]
    _principal(request).require_subscribe(stream)
    hub = request.app[HUB]
    accept = request.headers.get("Accept", "")
    head = await hub.head(stream)
    if "text/event-stream" in accept:
        last_id = request.headers.get("Last-Event-ID")
        if last_id:
            start = validate_position(last_id, "Last-Event-ID") + 1
        else:
            start = _start(request, head)
        return await _sse(request, hub, stream, start)
    start = _start(request, head)
    if codec.MEDIA_TYPE in accept:
        return await _compact(request, hub, stream, start)
    limit = validate_position(request.query.get("limit", "1000"), "limit")
    if limit == 0 or limit > hub.limits.max_read_events:
        raise InvalidRequest(f"limit must be 1 to {hub.limits.max_read_events}",
                             code="invalid_parameter", parameter="limit")
    page = await hub.read(stream, start, limit)
    body = render_json_page(page.records, start, limit, page.head)
    return web.Response(body=body, content_type="application/json")


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
    return response


async def _sse(request: web.Request, hub: Hub, stream: str, start: int) -> web.StreamResponse:
    follow = _follow(request)
    heartbeat = _heartbeat(request)
    response = await _stream_response(request, "text/event-stream")
    position = start
    # An SSE "retry" tells a browser how soon to reconnect after a drop.
    await response.write(b"retry: 2000\n\n")
    try:
        async for records in hub.follow(stream, start, follow=follow, heartbeat=heartbeat):
            if records:
                frames, position = render_sse(records, position)
                await response.write(frames)
            else:
                await response.write(b": heartbeat %d\n\n" % position)
    except HeraldError as exc:
        return _broken_stream(request, response, exc)
    await response.write_eof()
    return response


async def _compact(request: web.Request, hub: Hub, stream: str, start: int) -> web.StreamResponse:
    follow = _follow(request)
    heartbeat = _heartbeat(request)
    response = await _stream_response(request, codec.MEDIA_TYPE)
    position = start
    try:
        async for records in hub.follow(stream, start, follow=follow, heartbeat=heartbeat):
            if records:
                # The stored bytes go out as they are: no per-event work on the server.
                await response.write(b"".join(r.raw for r in records))
                position = records[-1].end
            else:
                await response.write(hub.heartbeat(position))
    except HeraldError as exc:
        return _broken_stream(request, response, exc)
    await response.write_eof()
    return response


def _broken_stream(
    request: web.Request, response: web.StreamResponse, error: HeraldError
) -> web.StreamResponse:
    """A streaming answer failed after it began (e.g. the storage became
    unreachable). Its status is long sent, and an error document now would land in
    the middle of the stream: break the connection instead. Clients resume from
    their position — on another node, if this one cannot serve."""
    log.warning("%s %s: stream broken off: %s", request.method, request.path, error.message)
    if request.transport is not None:
        request.transport.abort()
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


# --- assembly ---------------------------------------------------------------------


def create_app(hub: Hub, auth: Authenticator) -> web.Application:
    # The body limit is enforced by the hub with a named error; aiohttp's own limit
    # sits a little above it as a backstop.
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware],
        client_max_size=hub.limits.max_batch_bytes + 1024,
    )
    app[HUB] = hub
    app[AUTH] = auth
    app.on_response_prepare.append(_on_prepare)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/streams", list_streams)
    app.router.add_get("/v1/streams/{stream}", get_stream)
    app.router.add_post("/v1/streams/{stream}/events", append_events)
    app.router.add_get("/v1/streams/{stream}/events", read_events)
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


def _banner(config: Config, url: str, created: list[str], engine: Engine) -> str:
    ca = _display(config.tls_dir / "ca.pem")
    token = _display(config.admin_token_path)
    # An engine that keeps its data elsewhere (postgres) says where, without secrets.
    where = getattr(engine, "location", None) or f"data in {_display(config.data)}"
    lines = [
        f"Herald {__version__}: {engine.name} engine, {where}",
        f"  CA certificate:     {ca}" + ("  (created)" if "tls" in created else ""),
        f"  server certificate: {_display(config.tls_dir / 'server.pem')}",
        f"  admin token:        {token} (mode 0600)"
        + ("  (created)" if "token" in created else ""),
        f"Herald is listening on {url}",
        "",
        "Try it:",
        f'  curl --cacert {ca} -H "Authorization: Bearer $(cat {token})" {url}/v1/streams',
        f"  {_python()} -c \"import herald; print(herald.Client('{url}', "
        f"token_file='{token}', ca='{ca}').streams())\"",
        "",
    ]
    return "\n".join(lines)


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
    ssl_context = server_context(cert, key)

    engine = create_engine(config)
    await engine.open()
    hub = Hub(engine, config.limits)
    app = create_app(hub, Authenticator(token))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    host, port = parse_listen(config.server.listen)
    sock = _listen_socket(host, port)
    site = web.SockSite(runner, sock, ssl_context=ssl_context)
    await site.start()
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"https://{shown}:{bound[1]}"
    print(_banner(config, url, created, engine), flush=True)
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
        await runner.cleanup()
        await engine.close()


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
