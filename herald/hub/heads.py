"""Waiting for a stream's head to move: one waiter list for every engine.

``HeadWatch.wait(stream, position, timeout)`` returns once the stream's durable head
is beyond ``position`` (or the timeout passed). It learns of new heads from

* the hub itself, after every write it made durable (``advance``);
* a shared engine's notifications (``SharedEngine.watch``: another node appended);
* for a shared engine, a fallback poll of the heads of the streams waited on
  (``POLL_SECONDS``), since a notification is a hint that can be lost;
* an engine's ``alarm`` (notifications may have been lost): every waiter asks the
  storage now, so a node cut off from its database fails its subscribers over
  instead of keeping them waiting.

State is kept only for streams someone is waiting on: following a stream that does
not exist costs nothing once the follower is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from ..engines.base import Engine, SharedEngine
from ..errors import HeraldError
from ..logsafe import logsafe

__all__ = ["POLL_SECONDS", "HeadWatch", "Watcher"]

log = logging.getLogger("herald.hub")

# How often the heads of waited-on streams are polled on a shared engine: the most a
# lost notification delays a subscriber.
POLL_SECONDS = 1.0


class _Waiters:
    __slots__ = ("alarms", "changed", "count", "head")

    def __init__(self) -> None:
        self.head = 0  # the highest durable head seen while someone waited
        self.changed: asyncio.Future[None] | None = None
        self.count = 0
        self.alarms = 0

    def wake(self) -> None:
        if self.changed is not None and not self.changed.done():
            self.changed.set_result(None)
        self.changed = None


class HeadWatch:
    """The head-listener of the hub (engines.base.HeadListener)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._waiting: dict[str, _Waiters] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if isinstance(self.engine, SharedEngine):
            self._poller = asyncio.create_task(self._poll_loop(), name="herald-hub-poll")

    async def close(self) -> None:
        self._closing = True
        for waiters in self._waiting.values():
            waiters.wake()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    # HeadListener

    def advance(self, stream: str, head: int) -> None:
        """``stream``'s durable head is at least ``head``: wake its waiters."""
        waiters = self._waiting.get(stream)
        if waiters is not None and head > waiters.head:
            waiters.head = head
            waiters.wake()

    def alarm(self) -> None:
        """Notifications may have been lost: every waiter asks the storage now."""
        for waiters in self._waiting.values():
            waiters.alarms += 1
            waiters.wake()

    # waiting

    @contextlib.contextmanager
    def watching(self, stream: str) -> Iterator[Watcher]:
        """Watch ``stream`` from now on: a head that moves after this, even while
        the caller is still reading, is seen by ``Watcher.wait``. A subscription
        watches its stream for as long as it lives, so that waiting costs no
        question to the storage."""
        waiters = self._waiting.get(stream)
        if waiters is None:
            waiters = self._waiting[stream] = _Waiters()
        waiters.count += 1
        try:
            yield Watcher(self, stream, waiters)
        finally:
            waiters.count -= 1
            if waiters.count == 0 and self._waiting.get(stream) is waiters:
                del self._waiting[stream]

    async def wait(self, stream: str, position: int, timeout: float) -> int:
        """The durable head once it is beyond ``position``, or after ``timeout``."""
        with self.watching(stream) as watcher:
            # Asked after the watch began: a head that moves meanwhile is not missed.
            self.advance(stream, await self.engine.head(stream))
            return await watcher.wait(position, timeout)

    # the fallback poll (shared engines)

    async def _poll_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(POLL_SECONDS)
            names = list(self._waiting)
            if not names:
                continue
            try:
                heads = await self.engine.heads(names)
            except HeraldError as exc:
                log.debug("polling heads failed: %s", logsafe(exc.message))
                self.alarm()
                continue
            for name, head in heads.items():
                self.advance(name, head)


class Watcher:
    """One watch of a stream (HeadWatch.watching)."""

    def __init__(self, watch: HeadWatch, stream: str, waiters: _Waiters) -> None:
        self._watch = watch
        self.stream = stream
        self._waiters = waiters
        self._alarms = waiters.alarms

    async def wait(self, position: int, timeout: float) -> int:
        """Until a head beyond ``position`` is seen, or ``timeout``; the head seen.

        The caller knows the head was at most ``position`` when the watch began or
        since (it read up to there): only a move after that can end the wait."""
        waiters = self._waiters
        watch = self._watch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if waiters.alarms != self._alarms:
                # The node may have lost its storage (an alarm, perhaps while the
                # caller was still reading): ask it. If it cannot be reached this
                # raises StorageUnavailable, and the subscriber moves to a node that
                # can serve it.
                self._alarms = waiters.alarms
                watch.advance(self.stream, await watch.engine.head(self.stream))
            if waiters.head > position or watch._closing:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if waiters.changed is None:
                waiters.changed = loop.create_future()
            # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the future completes (CPython gh-86296).
            # wait() never cancels the shared future.
            await asyncio.wait((waiters.changed,), timeout=remaining)
        return waiters.head
