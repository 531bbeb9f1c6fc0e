"""The plain-HTTP port (``[server] http_redirect``): a 308 to HTTPS, and nothing else.

A second aiohttp application with no route at all: one middleware answers every
request aiohttp could parse, before routing could answer 404 (``OPTIONS *``, a path
with a newline in it once decoded) or 405. It shares no handler with the API, so it
cannot serve data by mistake. Rules:

1. Every answer closes its connection, and says so (``force_close``): the body of
   the request is never read, so what follows it on the connection is not known to
   be a request. A ``Connection: close`` header alone does not make aiohttp close.
2. The Location is built from the request target *as sent* (``location``, pure):
   nothing is decoded, normalised or echoed that was not a valid URI character.
3. A request with no path to keep (``OPTIONS *``, ``CONNECT host:port``, HTTP/0.9)
   or with two Host headers gets 400 ``bad_request``, not a guess.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import msgspec
from aiohttp import web

from ..config import ServerConfig, parse_listen
from ..errors import ClientError
from .app import server_header
from .listeners import Listener, listen

__all__ = ["create_redirect_app", "listen_redirect", "location"]

# A Host we are willing to put into a Location: a DNS name, an IPv4 address or a
# bracketed IPv6 address, with an optional port (ASCII digits: \d would take any
# script's). Anything else gets the listener's own address instead of being echoed.
_HOST = re.compile(r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|"
                   r"\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
# The absolute form of a request target (RFC 9112 §3.2.2), as a proxy would send it.
_ABSOLUTE = re.compile(r"(?i)https?://(?P<authority>[^/?#]*)(?P<rest>.*)", re.DOTALL)
# What stays as it is in a Location's path and query: what RFC 3986 allows there
# (unreserved, sub-delims, ":", "@", "/", "?") and "%" starting an escape the client
# already made. Every other byte is percent-encoded, a lone "%" too, so no space,
# quote or control character reaches a header.
_URI_SAFE = "/?:@!$&'()*+,;=-._~%"
_LONE_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_json = msgspec.json.Encoder()
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def location(target: str, host: str | None, https_port: int, fallback_host: str) -> str:
    """The HTTPS URL a request for ``target`` (the request target as sent) is sent to.

    The path and query are kept, byte for byte (a ``//`` too: after the authority
    it is a path, not another host); a fragment, which a client should not send, is
    dropped. The host is the absolute form's authority (RFC 9112 §3.2.2: it
    overrides Host), else the Host header, else ``fallback_host`` when neither is a
    plain host name or address (``_HOST``). ClientError ``bad_request`` for a target
    without a path: the asterisk form and the authority form (``CONNECT``).
    """
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute is not None:
        host, rest = absolute["authority"], absolute["rest"]
        path = rest if rest.startswith("/") else "/" + rest
    elif target.startswith("/"):
        path = target
    else:
        raise ClientError("the request target names no path to redirect to (the asterisk "
                          "form of OPTIONS *, the authority form of CONNECT); ask the HTTPS "
                          "port", code="bad_request")
    raw = _LONE_PERCENT.sub(b"%25", path.partition("#")[0].encode("utf-8", "surrogateescape"))
    path = quote(raw, safe=_URI_SAFE)
    match = _HOST.fullmatch(host or "")
    name = match["host"] if match else fallback_host
    port = "" if https_port == 443 else f":{https_port}"
    return f"https://{name}{port}{path}"


def create_redirect_app(https_port: int, fallback_host: str) -> web.Application:
    """Answers every request with 308 to the same path on HTTPS; never serves data.

    308 (RFC 9110 §15.4.9) keeps the method and body, so a POST is repeated over
    HTTPS instead of turning into a GET; the body of the answer is empty. A request
    with nothing to redirect (rule 3) gets 400 ``bad_request`` in JSON, as aiohttp's
    own refusals do (listeners).
    """

    @web.middleware
    async def redirect(request: web.Request, handler: _Handler) -> web.Response:
        try:
            if request.version < (1, 0):
                raise ClientError("HTTP/0.9 is not served", code="bad_request")
            hosts = request.headers.getall("Host", ())
            if len(hosts) > 1:
                raise ClientError("the Host header is given more than once",
                                  code="bad_request", header="Host")
            response = web.Response(status=308, headers={"Location": location(
                request.raw_path, hosts[0] if hosts else None, https_port, fallback_host)})
        except ClientError as exc:
            response = web.Response(body=_json.encode(exc.to_wire()), status=exc.status,
                                    content_type="application/json")
        # Rule 1. force_close is what closes; the header says so to HTTP/1.0 clients too
        # (aiohttp adds it by itself only to HTTP/1.1 answers).
        response.force_close()
        response.headers["Connection"] = "close"
        return response

    # No routes: the middleware answers before the router's 404 or 405 would.
    app = web.Application(middlewares=[redirect])
    app.on_response_prepare.append(server_header)
    return app


async def listen_redirect(server: ServerConfig, https_port: int,
                          fallback_host: str) -> Listener | None:
    """The redirect listener on ``[server] http_redirect``; None when it is not set.

    ``fallback_host`` goes into a Location when the request's Host header is missing or
    unusable (see ``_HOST``).
    """
    if server.http_redirect is None:
        return None
    return await listen(
        create_redirect_app(https_port, fallback_host), server,
        parse_listen(server.http_redirect, "[server] http_redirect"),
        # Never read a body it will not use: close instead of draining it.
        lingering_time=0)
