"""Logins and tokens sent together, against a real ``herald serve`` (issue 12).

Clients come from several loopback addresses (127.0.0.x: Linux routes all of
127/8 to lo), so the per-address throttles see different clients, and each request
is its own thread and connection, so they really arrive together. The users'
hashes cost what production's do (``herald users hash``: scrypt ln=14), and the
server's log says how many password checks ran: one "dashboard login failed" line
each. What is measured is printed (``-s``) and bounded by assertions:

* 100 logins for random user names sent together from one address, while a real
  user logs in from another: the real user's wait;
* dozens of wrong passwords sent together for one user, wave after wave: the
  checks that ran (never more than the lock-outs allow), and none once locked;
* wrong Bearer tokens from one address: 429 once over the limit, for every token
  from there; a good token from another address still works;
* and the log: a hostile user name is one escaped line, not two.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import re
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from herald.passwords import hash_password
from herald.server.auth import token_sha256
from herald.server.throttle import (
    FREE_LOGIN_FAILURES,
    LOGIN_CHECKS_IN_FLIGHT,
    TOKEN_FAILURE_BURST,
)

from ..conftest import ServerProcess

PASSWORD = "correct horse battery staple"
TOKEN = "reader-token-" + "r" * 40
PRODUCTION_LOG_N = 14  # herald users hash's default


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("logins")
    hashed = hash_password(PASSWORD, log_n=PRODUCTION_LOG_N)
    users = "".join(f'[[user]]\nname = "{name}"\npassword_hash = "{hashed}"\n\n'
                    for name in ("ops", "dev", "lead"))
    config = root / "herald.toml"
    config.write_text(f'{users}[[principal]]\nname = "reader"\n'
                      f'token_sha256 = "{token_sha256(TOKEN)}"\nsubscribe = ["*"]\n')
    process = ServerProcess(data=root / "data", args=["--config", str(config)]).start()
    yield process
    assert process.stop() == 0
    assert "Traceback" not in process.log, process.log


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=110) as executor:
        yield executor


@dataclass
class Answer:
    status: int
    code: str  # the error's code, "ok" for 200
    retry_after: int | None
    seconds: float


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def get(server: ServerProcess, source: str, path: str, authorization: str) -> Answer:
    """One request on its own connection, from the loopback address ``source``."""
    context = ssl.create_default_context(cafile=server.ca)
    connection = http.client.HTTPSConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]),
                                             timeout=120, context=context,
                                             source_address=(source, 0))
    started = time.perf_counter()
    try:
        connection.request("GET", path, headers={"Authorization": authorization})
        response = connection.getresponse()
        body = response.read()
        seconds = time.perf_counter() - started
    finally:
        connection.close()
    code = "ok" if response.status == 200 else json.loads(body)["error"]["code"]
    retry = response.getheader("Retry-After")
    if response.status == 429:
        assert retry is not None and int(retry) >= 1
    return Answer(response.status, code, int(retry) if retry else None, seconds)


def together(pool: ThreadPoolExecutor, server: ServerProcess,
             requests: list[tuple[str, str, str]]) -> list[Future[Answer]]:
    return [pool.submit(get, server, *request) for request in requests]


def codes(futures: list[Future[Answer]]) -> Counter[str]:
    return Counter(f.result().code for f in futures)


def checks(server: ServerProcess, user: str | None = None) -> int:
    """The password checks that failed, by the server's log (one line each)."""
    settle(server)
    users = re.findall(r"dashboard login failed for user (\S+) from", server.log)
    return len(users) if user is None else users.count(user)


def settle(server: ServerProcess) -> None:
    """Wait until the log's last lines have been read from the process."""
    seen = -1
    while seen != len(server.output):
        seen = len(server.output)
        time.sleep(0.3)


def test_a_flood_of_random_names_does_not_hold_up_a_real_user(
        server: ServerProcess, pool: ThreadPoolExecutor) -> None:
    alone = get(server, "127.0.0.2", "/", basic("lead", PASSWORD))
    assert alone.code == "ok"
    flood = together(pool, server, [("127.0.0.3", "/", basic(f"random-{i}", "guess"))
                                    for i in range(100)])
    time.sleep(0.2)  # the flood's requests are in
    real = get(server, "127.0.0.2", "/", basic("ops", PASSWORD))
    assert real.code == "ok"
    results = codes(flood)
    ran = checks(server)
    print(f"\nreal user alone: {alone.seconds * 1000:.0f} ms; while 100 logins for random "
          f"names from another address are sent together: {real.seconds * 1000:.0f} ms; "
          f"their answers: {dict(results)}; password checks for them: {ran}")
    assert set(results) <= {"invalid_login", "login_backoff"}
    assert ran <= LOGIN_CHECKS_IN_FLIGHT
    # the flood's check under way at most, then its own (and TLS, on a loaded machine)
    assert real.seconds < 3 * alone.seconds + 1.0


def test_wrong_passwords_sent_together_are_checked_a_bounded_number_of_times(
        server: ServerProcess, pool: ThreadPoolExecutor) -> None:
    def wave(n: int) -> Counter[str]:
        return codes(together(pool, server, [(f"127.0.{n + 10}.{i + 1}", "/",
                                              basic("dev", f"guess-{n}-{i}"))
                                             for i in range(30)]))

    before = checks(server, "dev")
    started = time.monotonic()
    first = wave(0)
    after_first = checks(server, "dev") - before
    print(f"\n30 wrong passwords for one user sent together, from 30 addresses: "
          f"{dict(first)}; checks run: {after_first}")
    assert after_first <= LOGIN_CHECKS_IN_FLIGHT
    waves = [wave(n) for n in range(1, 8)]
    total = checks(server, "dev") - before
    elapsed = time.monotonic() - started
    print(f"then 7 more waves of 30 in {elapsed:.1f} s: {[dict(w) for w in waves]}; "
          f"checks run in all: {total}")
    # five free failures, then one check per lock-out, and the lock-outs double from
    # 1 s: however many arrive, at most this many are ever checked
    assert total <= FREE_LOGIN_FAILURES + 1 + math.ceil(math.log2(elapsed + 1))

    # Wait out the lock-outs (one more failure each) until one lasts 3 s or more...
    for _ in range(6):
        answer = get(server, "127.0.9.1", "/", basic("dev", "g"))
        if answer.status == 429:
            assert answer.retry_after is not None
            if answer.retry_after >= 3:
                break
            time.sleep(answer.retry_after)
    else:
        raise AssertionError("the lock-out never grew")
    # ...then send dozens together for the locked user: not one is checked
    checked = checks(server, "dev")
    assert wave(9) == Counter({"login_backoff": 30})
    assert checks(server, "dev") == checked


def test_wrong_tokens_lock_their_address_not_others(server: ServerProcess,
                                                    pool: ThreadPoolExecutor) -> None:
    good = f"Bearer {TOKEN}"
    guesses = codes(together(pool, server, [("127.0.0.5", "/v1/whoami", f"Bearer guess-{i}")
                                            for i in range(TOKEN_FAILURE_BURST * 3)]))
    print(f"\n{TOKEN_FAILURE_BURST * 3} wrong tokens sent together from one address: "
          f"{dict(guesses)}")
    assert TOKEN_FAILURE_BURST <= guesses["invalid_token"] <= TOKEN_FAILURE_BURST + 3
    assert guesses["login_backoff"] == TOKEN_FAILURE_BURST * 3 - guesses["invalid_token"]
    assert get(server, "127.0.0.5", "/v1/whoami", good).code == "login_backoff"  # locked
    assert get(server, "127.0.0.6", "/v1/whoami", good).code == "ok"  # another address
    settle(server)
    assert server.log.count("too many wrong Bearer tokens from 127.0.0.5") == 1


def test_a_hostile_user_name_is_one_escaped_log_line(server: ServerProcess) -> None:
    # (no colon: Basic credentials end the user name at the first one)
    forged = "mallory\nINFO herald.auth - dashboard login ok for user admin\x1b[2J"
    assert get(server, "127.0.0.7", "/", basic(forged, "x")).code == "invalid_login"
    settle(server)
    lines = server.log.splitlines()
    assert not any(line.startswith("INFO herald.auth - dashboard login ok") for line in lines)
    assert any("user mallory\\nINFO herald.auth - dashboard login ok for user admin\\x1b[2J "
               "from 127.0.0.7" in line for line in lines)
    assert "\x1b" not in server.log
