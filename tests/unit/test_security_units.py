"""Passwords, throttles, principals and the security config, without a server."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from herald.config import ConfigError, PrincipalConfig, UserConfig, config_from_dict, load_config
from herald.errors import Forbidden, RateLimited, Unauthorized
from herald.passwords import PasswordHashError, hash_password, parse_hash, verify_password
from herald.server.auth import Authenticator, Principal, token_sha256
from herald.server.throttle import LoginBackoff, RateLimiter
from herald.server.tls import CertificateProblem, ClientCertificate

CHEAP = 10  # scrypt log2(N) for tests


# --- passwords ------------------------------------------------------------------------


def test_password_hash_round_trip() -> None:
    stored = hash_password("s3cret", log_n=CHEAP)
    assert stored.startswith(f"$scrypt$ln={CHEAP},r=8,p=5$")
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret ", stored)
    assert not verify_password("", stored)
    assert hash_password("s3cret", log_n=CHEAP) != stored  # salted


def test_default_parameters_are_owasps() -> None:
    parsed = parse_hash(hash_password("x"))
    assert (parsed.log_n, parsed.r, parsed.p) == (14, 8, 5)
    assert len(parsed.salt) == 16 and len(parsed.digest) == 32


@pytest.mark.parametrize("bad", [
    "", "plain", "$scrypt$ln=14,r=8,p=1$c2FsdA$",  "$argon2id$v=19$m=65536,t=3,p=4$a$b",
    "$scrypt$ln=40,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",  # a minutes-long check
])
def test_bad_hashes_are_refused(bad: str) -> None:
    with pytest.raises(PasswordHashError):
        parse_hash(bad)


# --- throttles ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # each key has its own bucket
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    clock.now += 100
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # capped at burst


def test_token_bucket_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock(), max_keys=10)
    for key in range(100):
        limiter.take(key)
    assert len(limiter._buckets) == 10


def test_login_backoff_doubles_and_resets() -> None:
    clock = Clock()
    backoff = LoginBackoff(free_failures=2, initial=1.0, maximum=8.0, clock=clock)
    assert backoff.failure("u") == 1 and backoff.retry_after("u") == 0.0
    backoff.failure("u")
    assert backoff.retry_after("u") == 0.0
    waits = []
    for _ in range(6):
        backoff.failure("u")
        waits.append(backoff.retry_after("u"))
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    clock.now += 8
    assert backoff.retry_after("u") == 0.0
    backoff.success("u")
    backoff.failure("u")
    assert backoff.retry_after("u") == 0.0


def test_login_failures_are_forgotten() -> None:
    clock = Clock()
    backoff = LoginBackoff(free_failures=1, memory=60.0, clock=clock)
    backoff.failure("u")
    clock.now += 61
    assert backoff.failure("u") == 1


# --- principals and the authenticator -------------------------------------------------


def test_principal_globs_deny_by_default() -> None:
    p = Principal("inventory", publish=("inventory",), subscribe=("sales-*", "inv?ntory"))
    assert p.may_publish("inventory") and not p.may_publish("inventory2")
    assert p.may_subscribe("sales-eu") and p.may_subscribe("inventory")
    assert not p.may_subscribe("sales") and not p.may_subscribe("Sales-eu")
    with pytest.raises(Forbidden) as refused:
        p.require_publish("billing")
    assert refused.value.details["permission"] == "publish"
    assert "may not publish to stream billing" in refused.value.message
    with pytest.raises(Forbidden):
        Principal("nobody").require_subscribe("anything")
    with pytest.raises(Forbidden):
        p.require_admin()
    Principal("admin", admin=True).require_admin()


def _certificate(subject: str, problem: CertificateProblem | None = None) -> ClientCertificate:
    import datetime

    from cryptography import x509

    now = datetime.datetime.now(datetime.UTC)
    return ClientCertificate(x509.Name.from_rfc4514_string(subject),
                             x509.Name.from_rfc4514_string("CN=ca"), now, now, problem)


def _authenticator(**options: object) -> Authenticator:
    principals = [
        PrincipalConfig("inventory", subject="CN=inventory",
                        token_sha256=token_sha256("inv-token"), publish=("inventory",)),
        PrincipalConfig("ops-bot", token_sha256=token_sha256("ops-token"), admin=True),
    ]
    users = [UserConfig("ops", hash_password("pw", log_n=CHEAP))]
    return Authenticator("admin-token", principals, users, **options)  # type: ignore[arg-type]


def test_authenticate_api() -> None:
    auth = _authenticator()
    assert auth.authenticate("Bearer admin-token").admin
    assert auth.authenticate("bearer inv-token").name == "inventory"
    assert auth.authenticate("Bearer ops-token").admin
    assert auth.authenticate(None, _certificate("CN=inventory")).via == "client certificate"
    stranger = auth.authenticate(None, _certificate("CN=stranger"))
    assert not stranger.configured and not stranger.may_subscribe("x")
    # the header decides when both are present
    assert auth.authenticate("Bearer admin-token", _certificate("CN=inventory")).admin
    for header, code in [(None, "unauthorized"), ("Bearer nope", "invalid_token"),
                         ("Basic b3BzOnB3", "unauthorized"), ("Digest x", "unauthorized")]:
        with pytest.raises(Unauthorized) as refused:
            auth.authenticate(header)
        assert refused.value.code == code
    # a refused certificate refuses the request, even with a good token
    bad = _certificate("CN=sales", CertificateProblem("client_cert_expired", "expired"))
    with pytest.raises(Forbidden) as forbidden:
        auth.authenticate("Bearer admin-token", bad)
    assert forbidden.value.code == "client_cert_expired"


def test_require_client_cert() -> None:
    auth = _authenticator(require_client_cert=True)
    with pytest.raises(Unauthorized) as refused:
        auth.authenticate("Bearer admin-token")
    assert refused.value.code == "client_cert_required"
    assert auth.authenticate("Bearer admin-token", _certificate("CN=x")).admin


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_dashboard_login_and_backoff() -> None:
    clock = Clock()
    auth = _authenticator(backoff=LoginBackoff(free_failures=2, clock=clock))
    assert await auth.login(_basic("ops", "pw"), "10.0.0.1") == "ops"
    assert await auth.login(_basic("ops", "pw"), "10.0.0.1") == "ops"  # cached
    for header, code in [(None, "login_required"), ("Bearer admin-token", "login_required"),
                         ("Basic !!!", "invalid_login"), (_basic("ops", "no"), "invalid_login"),
                         (_basic("ghost", "pw"), "invalid_login"),
                         (_basic("ops", "no!"), "invalid_login")]:
        with pytest.raises(Unauthorized) as refused:
            await auth.login(header, "10.0.0.2")
        assert refused.value.code == code
    # 10.0.0.2 failed three times (two free): locked out, even with the right password
    with pytest.raises(RateLimited) as limited:
        await auth.login(_basic("ops", "pw"), "10.0.0.2")
    assert limited.value.code == "login_backoff"
    clock.now += 2
    assert await auth.login(_basic("ops", "pw"), "10.0.0.2") == "ops"


async def test_password_checks_run_one_at_a_time() -> None:
    auth = _authenticator()
    results = await asyncio.gather(*(auth.login(_basic("ops", "pw"), f"10.1.0.{i}")
                                     for i in range(4)))
    assert results == ["ops"] * 4


# --- configuration -------------------------------------------------------------------


def test_security_config_file(tmp_path: Path) -> None:
    (tmp_path / "herald.toml").write_text(f'''
[server]
listen = "127.0.0.1:8443"
http_redirect = "127.0.0.1:8080"
[tls]
client_ca = "modules-ca.pem"
require_client_cert = false
[[principal]]
name = "inventory"
subject = "CN=inventory"
token_sha256 = "{token_sha256('t')}"
publish = ["inventory"]
subscribe = ["*"]
[[user]]
name = "ops"
password_hash = "{hash_password('pw', log_n=CHEAP)}"
''')
    config = load_config(tmp_path / "herald.toml", environ={})
    assert config.server.http_redirect == "127.0.0.1:8080"
    assert config.tls.client_ca == tmp_path / "modules-ca.pem"  # relative to the file
    assert config.principals[0].publish == ("inventory",)
    assert config.users[0].name == "ops"
    env = load_config(tmp_path / "herald.toml", environ={
        "HERALD_TLS_REQUIRE_CLIENT_CERT": "true", "HERALD_SERVER_HTTP_REDIRECT": "[::1]:80"})
    assert env.tls.require_client_cert and env.server.http_redirect == "[::1]:80"


@pytest.mark.parametrize(("raw", "message"), [
    ({"principal": [{"name": "x"}]}, "[[principal]] x: needs subject"),
    ({"principal": [{"subject": "CN=x"}]}, "missing name"),
    ({"principal": [{"name": "admin", "subject": "CN=a"}]}, "admin token's principal"),
    ({"principal": [{"name": "a", "subject": "CN=a", "publish": ["a b"]}]},
     "[[principal]] a publish"),
    ({"principal": [{"name": "a", "subject": "CN=a"}, {"name": "a", "subject": "CN=b"}]},
     "used twice"),
    ({"principal": [{"name": "a", "subject": "CN=s"}, {"name": "b", "subject": "CN=s"}]},
     "also a's"),
    ({"principal": [{"name": "a", "subject": "not a subject"}]}, "[[principal]] a subject"),
    ({"principal": [{"name": "a", "token_sha256": "abc"}]}, "token_sha256"),
    ({"principal": [{"name": "a", "subject": "CN=a", "publsh": []}]},
     "[[principal]] a publsh: unknown key"),
    ({"user": [{"name": "ops", "password_hash": "secret"}]}, "[[user]] ops password_hash"),
    ({"tls": {"require_client_cert": True}}, "needs [tls] client_ca"),
    ({"server": {"http_redirect": "8080"}}, "[server] http_redirect"),
    ({"server": {"rate_limit": 0}}, "[server] rate_limit"),
])
def test_security_config_errors_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw)
    assert message in error.value.message
