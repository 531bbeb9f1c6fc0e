"""Request rate limits per principal, back-off after failed logins, and the gate
that bounds password checks. No I/O.

``RateLimiter`` and ``LoginBackoff`` take a ``clock`` (seconds, monotonic) so tests
can drive time; ``CheckGate`` is an asyncio primitive and needs a running loop.

The lesson of issue 12 (parallel requests walked through the login lock-out): a
check that costs something (a password hash, ~0.3 s of CPU) must be *paid for
before it runs*. ``LoginBackoff.begin`` counts the attempt as a failure and holds a
place before the check, in the same step as it looks at the lock, so requests that
arrive together cannot all pass a lock that none of them has counted yet; a
success takes its count back (``end``). Everything kept per key is bounded by
MAX_TRACKED_KEYS.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["RateLimiter", "LoginBackoff", "CheckGate", "MAX_TRACKED_KEYS", "address_key",
           "LOGIN_CHECKS_IN_FLIGHT", "TOKEN_FAILURES_PER_SECOND", "TOKEN_FAILURE_BURST"]

# Principals, users and addresses remembered at once. Principals and users are
# configured (few), but certificate subjects and client addresses come from the
# network: the oldest entry is forgotten beyond this, so memory stays bounded.
MAX_TRACKED_KEYS = 10_000

# After this many failed logins in a row (per user, and per client address) each
# further failure locks that user or address out for a while: people mistype a
# password a few times; a guessing program never stops.
FREE_LOGIN_FAILURES = 5
# The first lock-out lasts this long and each further failure doubles it, up to
# the maximum: slow enough to make guessing hopeless (at most one guess a minute
# per user and per address), short enough that a locked-out person just waits.
LOGIN_BACKOFF_INITIAL_SECONDS = 1.0
LOGIN_BACKOFF_MAX_SECONDS = 60.0
# Failures older than this are forgotten; the count starts again.
LOGIN_FAILURE_MEMORY_SECONDS = 15 * 60.0
# Password checks under way at once for one user name, and for one address: a
# browser loading the dashboard sends two requests together (the page, the icon);
# a guessing program sends hundreds, and the rest of those are refused at once,
# unhashed (429 login_backoff), instead of queueing ahead of everyone else's login.
LOGIN_CHECKS_IN_FLIGHT = 2
# Wrong Bearer tokens per client address, as a token bucket of failures: a module
# with a stale token that retries now and then never empties it; a guessing program
# empties it at once and then gets one guess a second (not thousands), and every
# further request of its address that carries a token gets 429 before any
# comparison. Tokens are 128 bits or more: this bounds the work and the noise, the
# guessing was hopeless anyway.
TOKEN_FAILURES_PER_SECOND = 1.0
TOKEN_FAILURE_BURST = 20
# Eviction looks at this many of the oldest keys for one that is neither locked nor
# has a check under way: a flood of new keys must not erase the lock-out of the user
# it is guessing at, nor the places of checks that are running.
_EVICTION_SCAN = 8


@functools.lru_cache(maxsize=4096)  # every bearer request asks: parse each address once
def address_key(address: str) -> str:
    """The key a client address is throttled by: an IPv4 address as it is, an IPv6
    one by its /64 (RFC 6177: one site gets a whole /64 or more, so one host can
    take any of 2^64 addresses), an IPv4-mapped IPv6 address as the IPv4 one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unknown", a Unix socket: one key for all of them
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)

Clock = Callable[[], float]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic,
                 max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def take(self, key: Hashable) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.burst),
                                bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def wait(self, key: Hashable) -> float:
        """The seconds until ``key`` has a token (0.0: now), taking none: for limits
        that only what fails pays (``take``), but that are checked before trying."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = bucket.tokens + (self._clock() - bucket.updated) * self.rate
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate


@dataclass
class _Failures:
    count: int
    last: float
    locked_until: float
    # checks begun and not yet ended; each is already in ``count``
    in_flight: int = 0


class LoginBackoff:
    """Failed logins per key (a user name, a client address) and the lock-outs they
    earn, and the checks under way per key.

    ``begin``/``end`` bracket a check: ``begin`` counts it as a failure in advance;
    ``end(ok=True)`` takes back the count (all but the checks still under way) and
    the lock. ``failure``/``success`` are the same for a check that costs nothing.
    """

    def __init__(self, *, free_failures: int = FREE_LOGIN_FAILURES,
                 initial: float = LOGIN_BACKOFF_INITIAL_SECONDS,
                 maximum: float = LOGIN_BACKOFF_MAX_SECONDS,
                 memory: float = LOGIN_FAILURE_MEMORY_SECONDS,
                 in_flight: int = LOGIN_CHECKS_IN_FLIGHT,
                 clock: Clock = time.monotonic, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.free_failures = free_failures
        self.initial = initial
        self.maximum = maximum
        self.memory = memory
        self.max_in_flight = in_flight
        self._clock = clock
        self._max_keys = max_keys
        self._failures: OrderedDict[Hashable, _Failures] = OrderedDict()

    @property
    def tracked(self) -> int:
        """How many keys are remembered (at most ``max_keys``)."""
        return len(self._failures)

    def _get(self, key: Hashable, now: float) -> _Failures | None:
        entry = self._failures.get(key)
        if (entry is not None and entry.in_flight == 0 and now - entry.last > self.memory
                and now >= entry.locked_until):
            del self._failures[key]
            return None
        return entry

    def _evict(self, now: float) -> None:
        """Forget one of the oldest keys: one neither locked nor busy if there is one
        among them, else one not busy (its lock goes), else the oldest."""
        oldest = list(itertools.islice(self._failures.items(), _EVICTION_SCAN))
        idle = [key for key, entry in oldest if entry.in_flight == 0]
        unlocked = [key for key in idle if now >= self._failures[key].locked_until]
        victim = (unlocked or idle or [oldest[0][0]])[0]
        del self._failures[victim]

    def retry_after(self, key: Hashable) -> float:
        """Seconds until ``key`` may try again (0.0: now)."""
        now = self._clock()
        entry = self._get(key, now)
        return max(0.0, entry.locked_until - now) if entry is not None else 0.0

    def failures(self, key: Hashable) -> int:
        """The failures in a row so far (checks under way included)."""
        entry = self._get(key, self._clock())
        return entry.count if entry is not None else 0

    def busy(self, key: Hashable) -> bool:
        """True if ``key`` has as many checks under way as it may."""
        entry = self._failures.get(key)
        return entry is not None and entry.in_flight >= self.max_in_flight

    def failure(self, key: Hashable) -> int:
        """Count a failed login; returns the failures in a row so far."""
        now = self._clock()
        entry = self._get(key, now)
        if entry is None:
            if self._failures and len(self._failures) >= self._max_keys:
                self._evict(now)  # before the new key goes in: it is never the one evicted
            entry = _Failures(0, now, now)
            self._failures[key] = entry
        else:
            self._failures.move_to_end(key)
        entry.count += 1
        entry.last = now
        beyond = entry.count - self.free_failures
        if beyond > 0:
            doubling = 2.0 ** min(beyond - 1, 32)  # capped: no float overflow
            entry.locked_until = now + min(self.maximum, self.initial * doubling)
        return entry.count

    def success(self, key: Hashable) -> None:
        entry = self._failures.get(key)
        if entry is None or entry.in_flight == 0:
            self._failures.pop(key, None)
        else:  # the checks still under way stay counted until they end
            entry.count = entry.in_flight
            entry.locked_until = self._clock()

    def begin(self, key: Hashable) -> int:
        """A check of ``key`` begins: counted as a failure now, before it runs (the
        caller has looked at ``retry_after`` and ``busy`` in the same step, with no
        await between). Returns the failures in a row so far."""
        count = self.failure(key)
        self._failures[key].in_flight += 1
        return count

    def end(self, key: Hashable, ok: bool) -> None:
        """The check ``begin`` began has ended: ``ok`` takes its count back."""
        entry = self._failures.get(key)
        if entry is None:
            return
        entry.in_flight = max(0, entry.in_flight - 1)
        if ok:
            self.success(key)


class CheckGate:
    """At most ``at_once`` expensive checks run at once; up to ``waiting`` more wait,
    in two lanes: every caller in the ``first`` lane goes before any in the other.

    The login puts a client whose address has no failures to its name in the first
    lane, so a real user coming from a clean address waits for no guess from an
    address that has failed. (The lane depends on the address only, never on the
    user name: it tells a stranger nothing about which names exist.)
    """

    def __init__(self, at_once: int, waiting: int) -> None:
        self._free = at_once
        self.max_waiting = waiting
        self._lanes: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(), deque())

    @property
    def waiting(self) -> int:
        return sum(1 for lane in self._lanes for f in lane if not f.done())

    def full(self) -> bool:
        """True if a new caller would have neither a slot nor a place to wait."""
        return self._free <= 0 and self.waiting >= self.max_waiting

    def reserve(self, first: bool) -> asyncio.Future[None]:
        """A place, taken now (no await: ``full`` counts it at once): a free slot, or
        a place in line. The future is done when the slot is the caller's, who gives
        it back with ``release``; ``leave`` gives up the place whatever its state."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._free > 0 and not self.waiting:
            self._free -= 1
            future.set_result(None)
        else:
            self._lanes[0 if first else 1].append(future)
        return future

    def leave(self, place: asyncio.Future[None]) -> None:
        if place.done() and not place.cancelled():
            self.release()  # the slot was the caller's already: pass it on
            return
        place.cancel()
        for lane in self._lanes:
            if place in lane:
                lane.remove(place)

    async def acquire(self, first: bool) -> None:
        """A slot, when one is free; cancelled while waiting, it holds none."""
        place = self.reserve(first)
        try:
            await place
        except asyncio.CancelledError:
            self.leave(place)
            raise

    def release(self) -> None:
        """Give back a slot: to the first waiter of the first lane that has one."""
        for lane in self._lanes:
            while lane:
                future = lane.popleft()
                if not future.done():
                    future.set_result(None)  # the slot passes straight to it
                    return
        self._free += 1
