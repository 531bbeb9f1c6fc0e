"""The HTTPS edge: API, subscriptions, the dashboard's first page, the redirect port.

Rules of this package:

1. It reaches streams through the hub only, never an engine (the import-linter
   contract in pyproject.toml); the node (``herald.node``) builds the hub and hands
   it in.
2. ``handlers`` is what requests mean, ``listeners`` how connections are accepted,
   ``redirect`` the plain-HTTP port, ``app`` the wiring of the three with the
   middlewares; the wire forms of reads (JSON pages, SSE) are ``render``'s alone.
3. No handler looks anything up in the application: what a route needs, its
   ``Handlers`` object holds.
"""

from .app import create_app

__all__ = ["create_app"]
