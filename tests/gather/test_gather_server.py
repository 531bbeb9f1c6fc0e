"""Gatherers inside a real ``herald serve``: configured in TOML, seen and operated over
the HTTPS API and the CLI (run in-process)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import herald
from herald.cli import main
from herald.gather.status import GatherState

from ..conftest import ServerProcess
from .sqldb import SqlDb, sqlite_db


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def wait_for(condition: Callable[[], bool], timeout: float = 30.0,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def module_db(tmp_path: Path) -> SqlDb:
    db = sqlite_db(tmp_path)
    db.create_events()
    return db


def serve(server_factory: type[ServerProcess], tmp_path: Path, db: SqlDb) -> ServerProcess:
    config = write_config(tmp_path / "herald.toml", f"""
[[gather]]
name = "inventory-db"
stream = "inventory"
source = "sqlite"
dsn = "{db.dsn}"
table = "events"
position = "id"
columns = {{ id = "event_id", type = "type", data = "data", meta = "meta" }}
""")
    return server_factory(args=["--config", str(config)]).start()


def cli(server: ServerProcess, *args: str) -> list[str]:
    return [*args, "--url", server.url, "--token", server.token, "--ca", server.ca]


def test_gatherers_are_started_and_reported(server_factory: type[ServerProcess],
                                            tmp_path: Path, module_db: SqlDb,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    module_db.insert([("ItemAdded", json.dumps({"sku": f"A{n}"}), None, None)
                      for n in range(5)])
    server = serve(server_factory, tmp_path, module_db)
    assert any("gathering:" in line and "inventory" in line for line in server.output)
    with server.client() as client:
        wait_for(lambda: client.stream("inventory").head == 5 if client.streams() else False)
        wait_for(lambda: client.gatherer("inventory-db").lag_events == 0)
        (status,) = client.gatherers()
        assert status.name == "inventory-db" and status.stream == "inventory"
        assert status.state is GatherState.LIVE
        assert (status.source_position, status.source_max, status.stream_head) == (5, 5, 5)
        assert [e.data["sku"] for e in client.read("inventory").events] == [
            f"A{n}" for n in range(5)]

    assert main(cli(server, "gather", "status", "--json")) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert shown["name"] == "inventory-db" and shown["state"] == "live"
    assert main(cli(server, "gather", "status")) == 0
    table = capsys.readouterr().out
    assert "inventory-db" in table and "live" in table
    assert main(cli(server, "gather", "status", "--watch", "--until-caught-up")) == 0


def test_a_bad_row_is_skipped_from_the_cli(server_factory: type[ServerProcess],
                                           tmp_path: Path, module_db: SqlDb,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    module_db.insert([("ItemAdded", "{}", None, None), ("ItemAdded", "{oops", None, None),
                      ("ItemAdded", "{}", None, None)])
    server = serve(server_factory, tmp_path, module_db)
    with server.client() as client:
        wait_for(lambda: client.gatherer("inventory-db").state is GatherState.STOPPED_BAD_ROW)
        status = client.gatherer("inventory-db")
        assert status.last_error is not None and status.last_error.position == 2
        with pytest.raises(herald.ClientError) as wrong:
            client.gather_skip("inventory-db", 3)
        assert wrong.value.status == 409 and wrong.value.code == "not_stopped_at_position"

        assert main(cli(server, "gather", "skip", "inventory-db", "2")) == 0
        assert "skipped" in capsys.readouterr().out
        wait_for(lambda: client.stream("inventory").head == 2)
        status = client.gatherer("inventory-db")
        assert [(s.position, s.by) for s in status.skips] == [(2, "admin")]
        assert [e.meta["source_position"] for e in client.read("inventory").events] == ["1", "3"]
        # Recorded in a stream anyone (allowed) can audit.
        (record,) = client.read("_herald.gather.skips").events
        assert record.data["position"] == 2 and record.data["by"] == "admin"

    assert main(cli(server, "gather", "skip", "nobody", "1")) == 2
    assert "no gatherer is named nobody" in capsys.readouterr().err


def test_the_gatherer_api_needs_credentials(server_factory: type[ServerProcess],
                                            tmp_path: Path, module_db: SqlDb) -> None:
    server = serve(server_factory, tmp_path, module_db)
    with herald.Client(server.url, ca=server.ca) as anonymous, pytest.raises(herald.Unauthorized):
        anonymous.gatherers()
    with server.client() as client, pytest.raises(herald.NotFound):
        client.gatherer("nobody")


def test_a_bad_gather_config_stops_herald_with_a_message(
        server_factory: type[ServerProcess], tmp_path: Path) -> None:
    config = write_config(tmp_path / "herald.toml", """
[[gather]]
name = "x"
stream = "x"
source = "postgres"
table = "events"
""")
    with pytest.raises(RuntimeError, match=r"\[\[gather\]\] x dsn: required"):
        server_factory(args=["--config", str(config)]).start()


def test_shutdown_is_prompt_with_a_gatherer_waiting(server_factory: type[ServerProcess],
                                                    tmp_path: Path, module_db: SqlDb) -> None:
    server = serve(server_factory, tmp_path, module_db)
    time.sleep(0.5)
    start = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - start < 10
