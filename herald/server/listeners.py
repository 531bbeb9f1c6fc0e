"""Listening: sockets, the TLS context, aiohttp's runner and site, our connection handler.

Everything here is about connections, never about requests' meaning: the limits a
request line and its headers must keep before any handler runs, the TLS handshake's
timeout, and the JSON answer to a request aiohttp cannot parse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from OpenSSL import SSL

from ..config import ServerConfig, TLSConfig
from ..errors import HeraldError, InvalidRequest, ServerError
from ..logsafe import logsafe
from .tls import MutualTLSContext, server_context

__all__ = ["Listener", "listen", "listen_socket", "show_host", "tls_context",
           "MAX_HEADERS", "MAX_HEADER_FIELD_BYTES", "MAX_REQUEST_LINE_BYTES",
           "TLS_HANDSHAKE_TIMEOUT_SECONDS"]

log = logging.getLogger("herald.server")

_json = msgspec.json.Encoder()

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
# Connections the kernel queues before Herald accepts them.
LISTEN_BACKLOG = 1024


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
            log.error("request from %s failed", logsafe(request.remote), exc_info=exc)
            error = ServerError("internal error; see the server log")
        else:
            error = InvalidRequest("malformed HTTP request", code="bad_request")
        if status < 500:
            log.info("malformed request from %s: %s", logsafe(request.remote), type(exc).__name__)
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


def tls_context(tls: TLSConfig, cert: Path, key: Path) -> Any:
    """The listener's TLS context (the standard library's, or pyOpenSSL's when client
    certificates are judged); a clear error if a file is missing or wrong."""
    client_ca = tls.client_ca
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


def show_host(host: str) -> str:
    """A host as it goes into a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking socket; ``listen_failed`` if the address is taken
    or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HeraldError(f"cannot listen on {host}:{port}: {exc.strerror}",
                          code="listen_failed") from exc
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    if hasattr(os, "set_inheritable"):
        os.set_inheritable(sock.fileno(), False)
    return sock


@dataclass
class Listener:
    """One listening application: its runner (closed by ``close``) and its URL."""

    runner: web.AppRunner
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def close(self) -> None:
        await self.runner.cleanup()


async def listen(app: web.Application, server: ServerConfig, address: tuple[str, int], *,
                 ssl_context: Any = None, **options: Any) -> Listener:
    """Serve ``app`` on ``address`` (HTTPS with ``ssl_context``, else plain HTTP).

    ``options`` go to aiohttp's connection handler (``handler_cancellation``,
    ``lingering_time``, …).
    """
    runner = web.AppRunner(
        app, access_log=None,
        # The header timeout: aiohttp closes a connection that has not sent a whole
        # request's headers within keepalive_timeout of connecting (or of its last
        # answer), which is what stops a client sending headers byte by byte.
        keepalive_timeout=server.header_timeout,
        max_line_size=MAX_REQUEST_LINE_BYTES, max_field_size=MAX_HEADER_FIELD_BYTES,
        max_headers=MAX_HEADERS,
        # Request bodies are never inflated: a few bytes of gzip can become a GiB,
        # inside aiohttp's parser, before any limit sees them. A body with a
        # Content-Encoding is refused (415, handlers._refuse_encoded_body).
        auto_decompress=False, **options)
    await runner.setup()
    try:
        sock = listen_socket(*address)
        await _Site(runner, sock, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = sock.getsockname()[:2]
    scheme = "https" if ssl_context is not None else "http"
    return Listener(runner, f"{scheme}://{show_host(host)}:{port}")
