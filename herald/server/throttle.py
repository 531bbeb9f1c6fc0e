"""Request rate limits per principal, and back-off after failed logins. No I/O.

Both take a ``clock`` (seconds, monotonic) so tests can drive time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["RateLimiter", "LoginBackoff", "MAX_TRACKED_KEYS"]

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


@dataclass
class _Failures:
    count: int
    last: float
    locked_until: float


class LoginBackoff:
    """Failed logins per key (a user name, a client address) and the lock-outs they earn."""

    def __init__(self, *, free_failures: int = FREE_LOGIN_FAILURES,
                 initial: float = LOGIN_BACKOFF_INITIAL_SECONDS,
                 maximum: float = LOGIN_BACKOFF_MAX_SECONDS,
                 memory: float = LOGIN_FAILURE_MEMORY_SECONDS,
                 clock: Clock = time.monotonic, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.free_failures = free_failures
        self.initial = initial
        self.maximum = maximum
        self.memory = memory
        self._clock = clock
        self._max_keys = max_keys
        self._failures: OrderedDict[Hashable, _Failures] = OrderedDict()

    def _get(self, key: Hashable, now: float) -> _Failures | None:
        entry = self._failures.get(key)
        if entry is not None and now - entry.last > self.memory and now >= entry.locked_until:
            del self._failures[key]
            return None
        return entry

    def retry_after(self, key: Hashable) -> float:
        """Seconds until ``key`` may try again (0.0: now)."""
        now = self._clock()
        entry = self._get(key, now)
        return max(0.0, entry.locked_until - now) if entry is not None else 0.0

    def failure(self, key: Hashable) -> int:
        """Count a failed login; returns the failures in a row so far."""
        now = self._clock()
        entry = self._get(key, now)
        if entry is None:
            entry = _Failures(0, now, now)
            self._failures[key] = entry
            if len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)
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
        self._failures.pop(key, None)
