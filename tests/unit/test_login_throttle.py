"""Login and token throttling under concurrency (issue 12), in process, no server.

The class of bug: a throttle looked at *before* an expensive check and counted
*after* it lets every request that arrives during the check through. So these tests
send attempts together, not one after another, and count the password hashes that
actually ran (``verify_password`` is wrapped; the hash is real):

* a locked user, and a user about to be locked: at most FREE_LOGIN_FAILURES + 1
  hashes however many attempts arrive at once, never more than
  LOGIN_CHECKS_IN_FLIGHT at once per user or address;
* a hypothesis property over arbitrary mixes of users, unknown names and addresses
  sent together: no key gets more hashes than its lock allows, and no more hashes
  run at once than PASSWORD_CHECKS_AT_ONCE;
* many names from many addresses in one event-loop turn: never more than
  PASSWORD_CHECKS_AT_ONCE + PASSWORD_CHECKS_WAITING admitted (places are taken as
  the logins arrive, not when their tasks first run);
* a flood of random user names from one address does not stand between a real
  user on another address and the login;
* wrong Bearer tokens lock their address (and its /64), not others;
* and the pieces: ``LoginBackoff.begin``/``end``, eviction that keeps lock-outs,
  ``CheckGate``'s lanes and cancellation, ``address_key``.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald.config import PrincipalConfig, UserConfig
from herald.errors import HeraldError, RateLimited, Unauthorized
from herald.passwords import hash_password, parse_hash, verify_password
from herald.server import auth as auth_module
from herald.server.auth import (
    PASSWORD_CHECKS_AT_ONCE,
    PASSWORD_CHECKS_WAITING,
    Authenticator,
    token_sha256,
)
from herald.server.throttle import (
    FREE_LOGIN_FAILURES,
    LOGIN_CHECKS_IN_FLIGHT,
    TOKEN_FAILURE_BURST,
    CheckGate,
    LoginBackoff,
    RateLimiter,
    address_key,
)

CHEAP = 4  # scrypt log2(N): a real hash, well under a millisecond
PASSWORD = "the right one"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hashes:
    """The password hashes that ran: how many, with which passwords, how many at once."""

    def __init__(self) -> None:
        self.passwords: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, password: str, stored: Any) -> bool:
        with self._lock:
            self.passwords.append(password)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(0.002)  # long enough that attempts sent together overlap
            return verify_password(password, stored)
        finally:
            with self._lock:
                self.running -= 1

    @property
    def count(self) -> int:
        return len(self.passwords)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hashes]:
    counter = Hashes()
    monkeypatch.setattr(auth_module, "verify_password", counter)
    yield counter


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def authenticator(clock: Clock | None = None, log_n: int = CHEAP) -> Authenticator:
    clock = clock or Clock()
    users = [UserConfig("ops", hash_password(PASSWORD, log_n=log_n)),
             UserConfig("dev", hash_password(PASSWORD, log_n=log_n))]
    principals = [PrincipalConfig("bot", token_sha256=token_sha256("bot-token-" + "b" * 32),
                                  publish=("*",))]
    return Authenticator("admin-token-" + "a" * 32, principals, users,
                         backoff=LoginBackoff(clock=clock),
                         token_failures=RateLimiter(1.0, TOKEN_FAILURE_BURST, clock=clock))


async def outcome(auth: Authenticator, user: str, password: str, address: str) -> str:
    try:
        await auth.login(basic(user, password), address)
        return "ok"
    except HeraldError as exc:
        return exc.code


# --- the pieces -------------------------------------------------------------------------


def test_begin_counts_before_the_check_and_a_success_takes_it_back() -> None:
    clock = Clock()
    backoff = LoginBackoff(free_failures=2, in_flight=2, clock=clock)
    assert backoff.begin("u") == 1 and backoff.begin("u") == 2
    assert backoff.busy("u") and backoff.failures("u") == 2
    backoff.end("u", ok=False)
    assert not backoff.busy("u") and backoff.failures("u") == 2
    assert backoff.begin("u") == 3 and backoff.retry_after("u") == 1.0  # locked as it began
    backoff.end("u", ok=True)  # the right password: count and lock taken back...
    assert backoff.retry_after("u") == 0.0
    assert backoff.failures("u") == 1  # ...but for the check still under way
    backoff.end("u", ok=False)
    assert backoff.failures("u") == 1
    backoff.success("u")
    assert backoff.failures("u") == 0 and backoff.tracked == 0


def test_eviction_keeps_lock_outs_and_checks_under_way() -> None:
    clock = Clock()
    backoff = LoginBackoff(free_failures=0, clock=clock, max_keys=50)
    backoff.failure("locked")  # free_failures=0: locked at once
    backoff.begin("busy")
    for i in range(10_000):  # a flood of new names, each failing once... and locked
        backoff.failure(f"flood-{i}")
        assert backoff.tracked <= 50
        clock.now += 0.01  # their short locks run out while the flood goes on
    assert backoff.retry_after("locked") > 0 or backoff.failures("locked") == 0
    assert backoff.busy("busy") is False and backoff.failures("busy") == 1
    # with longer locks, the flood cannot push the victim out
    backoff = LoginBackoff(free_failures=1, maximum=60, initial=60, clock=clock, max_keys=50)
    backoff.failure("victim")
    backoff.failure("victim")
    for i in range(10_000):
        backoff.failure(f"flood-{i}")
    assert backoff.retry_after("victim") == 60.0
    assert backoff.tracked <= 50


def test_rate_limiter_wait_takes_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    assert limiter.wait("k") == 0.0
    assert limiter.take("k") == 0.0 and limiter.take("k") == 0.0
    assert limiter.wait("k") == pytest.approx(1.0) and limiter.wait("k") == pytest.approx(1.0)
    clock.now += 0.5
    assert limiter.wait("k") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.wait("k") == 0.0


@pytest.mark.parametrize(("address", "key"), [
    ("10.1.2.3", "10.1.2.3"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::ffff:10.1.2.3", "10.1.2.3"),
    ("fe80::1%eth0", "fe80::/64"),
    ("unknown", "unknown"),
])
def test_address_key(address: str, key: str) -> None:
    assert address_key(address) == key


async def test_check_gate_lanes_and_cancellation() -> None:
    gate = CheckGate(at_once=1, waiting=3)
    order: list[str] = []

    async def run(name: str, first: bool) -> None:
        await gate.acquire(first)
        try:
            order.append(name)
            await asyncio.sleep(0.01)
        finally:
            gate.release()

    holder = asyncio.ensure_future(run("holder", False))
    await asyncio.sleep(0)
    late = [asyncio.ensure_future(run(f"rest-{i}", False)) for i in range(2)]
    await asyncio.sleep(0)
    cancelled = asyncio.ensure_future(run("cancelled", True))
    await asyncio.sleep(0)
    assert gate.full()
    cancelled.cancel()
    await asyncio.sleep(0)
    assert not gate.full()
    clean = asyncio.ensure_future(run("first", True))
    await asyncio.gather(holder, *late, clean, cancelled, return_exceptions=True)
    assert order == ["holder", "first", "rest-0", "rest-1"]
    assert not gate.full() and gate.waiting == 0
    await gate.acquire(False)  # every slot came back
    gate.release()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 9), st.booleans()), min_size=1, max_size=40),
       st.integers(1, 3))
def test_check_gate_never_runs_more_than_it_may(plan: list[tuple[int, bool]],
                                                at_once: int) -> None:
    """Any mix of callers, some cancelled while they wait or as they get a slot."""
    async def main() -> None:
        gate = CheckGate(at_once=at_once, waiting=len(plan))
        running = most = 0

        async def run(i: int, first: bool) -> None:
            nonlocal running, most
            await gate.acquire(first)
            running += 1
            most = max(most, running)
            try:
                await asyncio.sleep(0.001 * (i % 3))
            finally:
                running -= 1
                gate.release()

        tasks = [asyncio.ensure_future(run(i, first)) for i, first in plan]
        for step, (i, _) in enumerate(plan):
            if i == 0:
                await asyncio.sleep(0)
                tasks[step].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert most <= at_once
        assert gate.waiting == 0
        for _ in range(at_once):  # all slots are free again
            await asyncio.wait_for(gate.acquire(False), 1)

    asyncio.run(main())


# --- logins sent together -----------------------------------------------------------------


async def test_a_locked_user_gets_no_hash_at_all(hashes: Hashes) -> None:
    auth = authenticator()
    for i in range(FREE_LOGIN_FAILURES + 1):
        assert await outcome(auth, "ops", f"guess-{i}", f"10.0.0.{i}") == "invalid_login"
    assert hashes.count == FREE_LOGIN_FAILURES + 1
    results = await asyncio.gather(*(outcome(auth, "ops", f"again-{i}", f"10.1.0.{i}")
                                     for i in range(50)))
    assert set(results) == {"login_backoff"}
    assert hashes.count == FREE_LOGIN_FAILURES + 1  # not one more
    # even the right password waits for the lock to end
    assert await outcome(auth, "ops", PASSWORD, "10.2.0.1") == "login_backoff"


@pytest.mark.parametrize("addresses", ["one", "many"])
async def test_wrong_passwords_sent_together_are_counted_before_they_run(
        hashes: Hashes, addresses: str) -> None:
    """The bug of issue 12: dozens of wrong passwords at once were all checked."""
    auth = authenticator()
    results = await asyncio.gather(*(
        outcome(auth, "ops", f"guess-{i}", "10.0.0.1" if addresses == "one" else f"10.0.{i}.1")
        for i in range(60)))
    counts = Counter(results)
    assert counts["invalid_login"] == hashes.count
    assert hashes.count <= LOGIN_CHECKS_IN_FLIGHT  # the rest refused at once, unhashed
    assert counts["login_backoff"] == 60 - hashes.count
    assert hashes.most_at_once <= PASSWORD_CHECKS_AT_ONCE
    # more waves, and then one at a time: hashed until the lock, and never after
    for wave in range(5):
        await asyncio.gather(*(outcome(auth, "ops", f"w{wave}-{i}", f"10.8.{i}.{wave}")
                               for i in range(20)))
    for i in range(10):
        await outcome(auth, "ops", f"later-{i}", f"10.9.0.{i}")
    assert hashes.count == FREE_LOGIN_FAILURES + 1
    assert await outcome(auth, "ops", PASSWORD, "10.9.1.1") == "login_backoff"


async def test_checks_under_way_per_user_and_address_are_capped(hashes: Hashes) -> None:
    auth = authenticator()
    # three at once for one user, from three addresses: the third is refused unhashed
    results = await asyncio.gather(*(outcome(auth, "dev", f"g{i}", f"10.0.0.{i}")
                                     for i in range(LOGIN_CHECKS_IN_FLIGHT + 1)))
    assert results.count("login_backoff") == 1 and hashes.count == LOGIN_CHECKS_IN_FLIGHT
    # three at once from one address, for three users (two unknown): the same
    results = await asyncio.gather(*(outcome(auth, name, "x", "10.5.0.1")
                                     for name in ("ops", "ghost", "nobody")))
    assert results.count("login_backoff") == 1


async def test_checks_waiting_in_all_are_bounded(hashes: Hashes) -> None:
    """Many names from many addresses, all at once (one event-loop turn): the places
    are taken as the logins arrive, so the bound holds even before any check runs."""
    auth = authenticator()
    results = Counter(await asyncio.gather(*(outcome(auth, f"name-{i}", "x", f"10.3.{i}.1")
                                             for i in range(80))))
    admitted = PASSWORD_CHECKS_AT_ONCE + PASSWORD_CHECKS_WAITING
    assert results == Counter({"invalid_login": admitted, "login_backoff": 80 - admitted})
    assert hashes.count == admitted and hashes.most_at_once <= PASSWORD_CHECKS_AT_ONCE


async def test_the_same_login_sent_together_is_hashed_once(hashes: Hashes) -> None:
    """A browser sends the page's and the icon's requests with the same credentials."""
    auth = authenticator()
    results = await asyncio.gather(*(outcome(auth, "ops", PASSWORD, f"10.0.0.{i}")
                                     for i in range(6)))
    assert results == ["ok"] * 6 and hashes.count == 1
    assert await outcome(auth, "ops", PASSWORD, "10.0.0.9") == "ok"  # remembered
    assert hashes.count == 1


address_names = st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2",
                                 "10.0.0.3"])
user_names = st.sampled_from(["ops", "dev", "ghost", "x" * 300, "nobody"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.tuples(user_names, address_names), min_size=1, max_size=25),
                min_size=1, max_size=4))
def test_no_key_gets_more_hashes_than_its_lock_allows(waves: list[list[tuple[str, str]]]) -> None:
    """Whatever arrives together: with wrong passwords only and a clock that stands
    still, no user name and no address (IPv6: no /64) is hashed more than
    FREE_LOGIN_FAILURES + 1 times, and never more than PASSWORD_CHECKS_AT_ONCE
    hashes run at once."""
    async def main() -> None:
        counter = Hashes()
        original = vars(auth_module)["verify_password"]
        setattr(auth_module, "verify_password", counter)  # noqa: B010 (a fixture cannot: @given)
        try:
            auth = authenticator()
            for n, wave in enumerate(waves):
                # the password says whose attempt it was, for the counting below
                results = await asyncio.gather(*(
                    outcome(auth, user, f"{user}|{address_key(address)}|{n}-{i}", address)
                    for i, (user, address) in enumerate(wave)))
                assert set(results) <= {"invalid_login", "login_backoff"}
        finally:
            setattr(auth_module, "verify_password", original)  # noqa: B010
        per_user = Counter(p.split("|")[0] for p in counter.passwords)
        per_address = Counter(p.split("|")[1] for p in counter.passwords)
        assert max(per_user.values(), default=0) <= FREE_LOGIN_FAILURES + 1, per_user
        assert max(per_address.values(), default=0) <= FREE_LOGIN_FAILURES + 1, per_address
        assert counter.most_at_once <= PASSWORD_CHECKS_AT_ONCE

    asyncio.run(main())


async def test_a_flood_of_random_names_does_not_delay_a_real_user(hashes: Hashes) -> None:
    """100 logins for random names sent together from one address; meanwhile a real
    user logs in from another. Hashes cost what production's do (scrypt ln=14)."""
    auth = authenticator(log_n=14)
    flood = [asyncio.ensure_future(outcome(auth, f"user-{i}", "guess", "203.0.113.9"))
             for i in range(100)]
    await asyncio.sleep(0)  # the flood is in first
    started = time.perf_counter()
    assert await outcome(auth, "ops", PASSWORD, "198.51.100.7") == "ok"
    waited = time.perf_counter() - started
    results = Counter(await asyncio.gather(*flood))
    one_hash = _one_hash_seconds(14)
    print(f"\nreal user waited {waited * 1000:.0f} ms (one hash: {one_hash * 1000:.0f} ms); "
          f"flood: {dict(results)}; hashes run: {hashes.count}")
    # at most the flood's hash already running, then its own
    assert waited < 3 * one_hash + 0.5
    assert results["invalid_login"] <= LOGIN_CHECKS_IN_FLIGHT
    assert hashes.count <= LOGIN_CHECKS_IN_FLIGHT + 1


def _one_hash_seconds(log_n: int) -> float:
    stored = parse_hash(hash_password("x", log_n=log_n))
    started = time.perf_counter()
    verify_password("y", stored)
    return time.perf_counter() - started


async def test_unknown_names_cost_what_known_ones_do(hashes: Hashes) -> None:
    """The decoy has the users' scrypt parameters, and both take the same path."""
    auth = authenticator(log_n=6)
    stored = parse_hash(hash_password("x", log_n=6))
    assert (auth._decoy.log_n, auth._decoy.r, auth._decoy.p) == (stored.log_n, stored.r,
                                                                 stored.p)
    assert len(auth._decoy.digest) == len(stored.digest)
    for name in ("ops", "ghost"):
        assert await outcome(auth, name, "wrong", "10.0.0.1" if name == "ops"
                             else "10.0.0.2") == "invalid_login"
    assert hashes.count == 2


async def test_a_client_that_hangs_up_keeps_its_hash_counted(hashes: Hashes) -> None:
    auth = authenticator(log_n=10)
    task = asyncio.ensure_future(auth.login(basic("ops", "wrong"), "10.0.0.1"))
    await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert auth.backoff.failures(("user", "ops")) == 1  # counted before it ran
    for _ in range(200):  # the hash goes on; its place comes back when it is done
        if not auth._checking:
            break
        await asyncio.sleep(0.01)
    assert not auth._checking and not auth.backoff.busy(("user", "ops"))
    assert await outcome(auth, "ops", PASSWORD, "10.0.0.1") == "ok"


# --- Bearer tokens -----------------------------------------------------------------------


def test_wrong_tokens_lock_their_address_only(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    auth = authenticator(clock)
    compared = 0
    compare = auth._compare_token

    def counting(token: str) -> Any:
        nonlocal compared
        compared += 1
        return compare(token)

    monkeypatch.setattr(auth, "_compare_token", counting)
    good = "Bearer bot-token-" + "b" * 32
    for _ in range(TOKEN_FAILURE_BURST):
        with pytest.raises(Unauthorized):
            auth.authenticate("Bearer wrong", address="10.0.0.1")
    for token in ("Bearer wrong", good, "Bearer admin-token-" + "a" * 32):
        with pytest.raises(RateLimited) as limited:
            auth.authenticate(token, address="10.0.0.1")
        assert limited.value.code == "login_backoff"
        assert 0 < float(limited.value.details["retry_after"]) <= 1.0
    assert compared == TOKEN_FAILURE_BURST  # the locked address's tokens: not compared
    assert auth.authenticate(good, address="10.0.0.2").name == "bot"  # another address
    clock.now += 1.0  # one more guess a second
    with pytest.raises(Unauthorized):
        auth.authenticate("Bearer wrong", address="10.0.0.1")
    with pytest.raises(RateLimited):
        auth.authenticate(good, address="10.0.0.1")
    clock.now += 1.0
    assert auth.authenticate(good, address="10.0.0.1").name == "bot"


def test_wrong_tokens_count_per_ipv6_64() -> None:
    auth = authenticator()
    for i in range(TOKEN_FAILURE_BURST):
        with pytest.raises(Unauthorized):
            auth.authenticate("Bearer wrong", address=f"2001:db8:0:1::{i + 1:x}")
    with pytest.raises(RateLimited):
        auth.authenticate("Bearer wrong", address="2001:db8:0:1:ffff::1")
    with pytest.raises(Unauthorized):
        auth.authenticate("Bearer wrong", address="2001:db8:0:2::1")  # another /64


def test_certificates_and_missing_credentials_are_not_token_guesses() -> None:
    auth = authenticator()
    for _ in range(TOKEN_FAILURE_BURST * 2):
        with pytest.raises(Unauthorized) as refused:
            auth.authenticate(None, address="10.0.0.1")
        assert refused.value.code == "unauthorized"
    with pytest.raises(Unauthorized) as refused:
        auth.authenticate("Bearer wrong", address="10.0.0.1")
    assert refused.value.code == "invalid_token"
