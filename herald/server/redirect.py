"""The plain-HTTP port (``[server] http_redirect``): a 308 to HTTPS, and nothing else.

A second aiohttp application with one catch-all route. It shares no handler with
the API, so it cannot serve data by mistake.
"""

from __future__ import annotations

import re

from aiohttp import web

from ..config import ServerConfig, parse_listen
from .app import server_header
from .listeners import Listener, listen

__all__ = ["create_redirect_app", "listen_redirect"]

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
    app.on_response_prepare.append(server_header)
    app.router.add_route("*", "/{tail:.*}", redirect)
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
