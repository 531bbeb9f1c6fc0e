"""How the nodes hear of each other's new heads: a NOTIFY after the commits, off
the append path, and one LISTEN connection per node (the package docstring, "Other
nodes hear of new heads"). A notification is a hint, never the data.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import psycopg

from ...errors import HeraldError
from ...logsafe import logsafe
from .connections import _Connections, _first_line

if TYPE_CHECKING:
    from ..base import HeadListener

log = logging.getLogger("herald.postgres")

# NOTIFY payloads are limited to 8000 bytes; heads of several streams share one
# payload ("head stream" lines) up to this size.
NOTIFY_PAYLOAD_BYTES = 7000
# The LISTEN connection reconnects after a failure, backing off to this.
LISTEN_RECONNECT_MAX_SECONDS = 5.0


class _Notifications(_Connections):
    """The NOTIFY announcer and the LISTEN loop of a PostgresEngine (one of its base
    classes); both run as tasks of the open engine."""

    _listener: HeadListener | None
    _listening: bool
    _unannounced: dict[str, int]
    _announcing: asyncio.Event

    def _published(self, stream: str, head: int) -> None:
        """After COMMIT: the other nodes hear of the new head soon."""
        self._unannounced[stream] = max(head, self._unannounced.get(stream, 0))
        self._announcing.set()

    async def _announce_loop(self) -> None:
        """Tell the other nodes about new heads, off the append path: appends are
        answered without waiting for it, and heads that move while one NOTIFY is
        sent go out together in the next."""
        while not self._closing:
            await self._announcing.wait()
            self._announcing.clear()
            await self._announce()

    async def _announce(self) -> None:
        """Best effort: the appends are committed and answered whatever happens
        here; a lost notification costs a subscriber at most the hub's poll interval"""
        heads, self._unannounced = self._unannounced, {}
        if not heads:
            return
        payloads: list[str] = []
        lines: list[str] = []
        size = 0
        for name, head in heads.items():
            line = f"{head} {name}"
            if lines and size + len(line) + 1 > NOTIFY_PAYLOAD_BYTES:
                payloads.append("\n".join(lines))
                lines, size = [], 0
            lines.append(line)
            size += len(line) + 1
        payloads.append("\n".join(lines))
        try:
            async with self._connection("notifying the other nodes") as conn:
                for payload in payloads:
                    await conn.execute("SELECT pg_notify(%s, %s)", (self.config.channel, payload))
        except HeraldError as exc:
            log.warning("NOTIFY of new heads failed (%s); other nodes will poll",
                        logsafe(exc.message))

    async def _listen_loop(self) -> None:
        """One LISTEN connection per node: notifications move the local heads."""
        delay = 0.1
        while not self._closing:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo(),
                                                             autocommit=True)
                async with conn:
                    await conn.execute(f'LISTEN "{self.config.channel}"')
                    self._listening = True
                    delay = 0.1
                    # Appends committed while this node was not listening were not
                    # heard: every waiter asks the heads now.
                    self._alarm()
                    async for notify in conn.notifies():
                        self._on_notify(notify.payload)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, HeraldError, OSError) as exc:
                if not self._closing:
                    log.warning("LISTEN connection to PostgreSQL lost (%s); reconnecting in "
                                "%.1f s", logsafe(_first_line(exc)), delay)
                    if self._listening:
                        self._alarm()
            finally:
                self._listening = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_RECONNECT_MAX_SECONDS)

    def _on_notify(self, payload: str) -> None:
        if self._listener is None:
            return
        for line in payload.split("\n"):
            head, _, name = line.partition(" ")
            if name and head.isdigit():
                self._listener.advance(name, int(head))

    def _alarm(self) -> None:
        """The database may be out of reach, or notifications were lost: every
        waiter asks it now. If it cannot reach the database, its subscriber's
        connection breaks and the client moves to a node that can serve it."""
        if self._listener is not None:
            self._listener.alarm()
