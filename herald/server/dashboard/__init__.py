"""The dashboard's first page: the streams, for a logged-in user.

Served at ``/`` over HTTPS only, after an HTTP Basic login (a ``[[user]]``). The
page is static HTML: every value is escaped, and there is no script at all, so the
Content-Security-Policy can forbid scripts outright.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from html import escape

from ...model import StreamInfo
from ...version import __version__

__all__ = ["render_home", "DASHBOARD_HEADERS"]

_STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem}"
          "table{border-collapse:collapse}td,th{padding:.3rem .8rem;text-align:left}"
          "td.n{text-align:right;font-variant-numeric:tabular-nums}"
          "tr:nth-child(even){background:#f3f3f3}")
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

# No scripts, no frames, no third-party anything: only the page's own <style>,
# allowed by its hash. Never cached, so a shared browser does not show the page
# after its user has gone.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def render_home(user: str, streams: Sequence[StreamInfo]) -> bytes:
    rows = "".join(
        f"<tr><td>{escape(s.name)}</td><td class=n>{s.head:,}</td>"
        f"<td class=n>{s.bytes:,}</td></tr>"
        for s in streams)
    body = (f"<table><thead><tr><th>stream</th><th>events</th><th>bytes</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>" if streams else "<p>No streams yet.</p>")
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>Herald</title><style>{_STYLE}</style></head><body>"
        f"<h1>Herald</h1><p>Logged in as {escape(user)} · Herald {escape(__version__)}</p>"
        f"<h2>Streams</h2>{body}</body></html>"
    )
    return page.encode()
