"""The hub: what a stream is, whatever the engine — appends, reads, subscriptions.

Rules of this package:

1. The hub is the only caller of an engine (``herald.engines``): the HTTP edge, the
   gatherers and every later feature reach streams through ``Hub``. Enforced by the
   import-linter contract in pyproject.toml.
2. The rules of an append are ``herald.placement``'s; the hub runs them in each
   stream's critical section (``appends``) and lets the engine's conditional write
   guard it.
3. No HTTP here: rendering (JSON pages, SSE) is the server's; the hub hands out
   records, pages and events (``codec.events_of``).
4. State is kept per stream only while it is used (a slot while appending, waiters
   while someone waits, a bounded tail cache): following streams that do not exist
   costs nothing once the follower is gone.
5. Streams named ``_herald.…`` (``INTERNAL_PREFIX``) are Herald's own: an append
   reaches one only with ``internal=True``, which only Herald's own records (the
   gatherers' skip log) pass. Not the HTTP edge, whatever the caller's permissions.
"""

from .core import HEARTBEAT_SECONDS, INTERNAL_PREFIX, Hub, ReadPage, Start, Subscription

__all__ = ["HEARTBEAT_SECONDS", "INTERNAL_PREFIX", "Hub", "ReadPage", "Start", "Subscription"]
