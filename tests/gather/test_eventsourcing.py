"""Python ``eventsourcing`` applications, with the real library: SQLite and PostgreSQL
recorders, JSON, encrypted and compressed stores."""

from __future__ import annotations

import asyncio
import base64
import threading
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from herald.config import GatherConfig
from herald.gather.eventsourcing import EventsourcingSource, unwrap
from herald.gather.manager import GatherManager, create_source
from herald.gather.status import GatherState
from herald.hub import Hub

from .conftest import read_all, wait_for_head, wait_until


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


class DogSchool(Application[UUID]):
    def register_dog(self, name: str) -> UUID:
        dog = Dog(name)
        self.save(dog)
        return dog.id

    def add_trick(self, dog_id: UUID, trick: str) -> None:
        dog: Dog = self.repository.get(dog_id)
        dog.add_trick(trick)
        self.save(dog)


def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "dogschool.db")}


def postgres_env(dsn: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": str(params["dbname"]), "POSTGRES_HOST": str(params["host"]),
            "POSTGRES_PORT": str(params.get("port", 5432)),
            "POSTGRES_USER": str(params["user"]), "POSTGRES_PASSWORD": ""}


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return sqlite_env(tmp_path)
    return postgres_env(request.getfixturevalue("pg_dsn"))


def config(env: dict[str, str], **options: Any) -> GatherConfig:
    return GatherConfig(name="dogs", stream="dogschool", source="eventsourcing",
                        options={"application": "DogSchool", "env": env, **options})


async def test_an_application_is_gathered_then_followed(env: dict[str, str],
                                                        engine: Hub) -> None:
    school = DogSchool(env=env)
    fido = school.register_dog("Fido")
    school.add_trick(fido, "roll over")
    manager = GatherManager(engine, [config(env)])
    await manager.start()
    try:
        await wait_for_head(engine, "dogschool", 2)
        milou = school.register_dog("Milou")  # while the gatherer runs
        school.add_trick(milou, "fetch")
        await wait_for_head(engine, "dogschool", 4)
        await wait_until(lambda: manager.statuses()[0].source_max == 4, what="lag 0")
        status = manager.statuses()[0]
    finally:
        await manager.stop()
        school.close()
    events = await read_all(engine, "dogschool")
    assert [e.type for e in events] == ["Dog.Registered", "Dog.TrickAdded"] * 2
    registered, trick = events[0], events[1]
    assert registered.data["name"] == "Fido"
    assert trick.data["trick"] == "roll over"
    # The transcoder's envelopes are gone: a datetime is its ISO string.
    assert datetime.fromisoformat(trick.data["timestamp"]).year >= 2024
    assert "_type_" not in str(registered.data)
    assert registered.meta["topic"] == f"{__name__}:Dog.Registered"
    assert registered.meta["originator_id"] == str(fido)
    assert [e.meta["originator_version"] for e in events] == ["1", "2", "1", "2"]
    assert [e.meta["source_position"] for e in events] == ["1", "2", "3", "4"]
    assert status.state is GatherState.LIVE and status.lag_events == 0
    assert status.description.startswith("eventsourcing DogSchool")


async def test_postgres_applications_wake_the_gatherer(pg_dsn: str) -> None:
    """The PostgreSQL recorder NOTIFYs its table's channel on every insert: the
    gatherer's wait returns as soon as an event is saved."""
    env = postgres_env(pg_dsn)
    school = DogSchool(env=env)
    source = create_source(config(env))
    assert isinstance(source, EventsourcingSource)
    assert source.wakes
    source.open()
    try:
        timer = threading.Timer(0.3, school.register_dog, ("Rex",))
        timer.start()
        assert await asyncio.to_thread(source.wait, 10.0)
        timer.join()
        assert [source.position(r) for r in source.read(None, 10).rows] == [1]
    finally:
        source.close()
        school.close()


def cipher_env(base: dict[str, str]) -> dict[str, str]:
    from eventsourcing.cryptography import AESCipher

    return {**base, "CIPHER_TOPIC": "eventsourcing.cryptography:AESCipher",
            "CIPHER_KEY": AESCipher.create_key(16),
            "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor"}


async def test_an_encrypted_compressed_store(tmp_path: Path, engine: Hub) -> None:
    env = cipher_env(sqlite_env(tmp_path))
    school = DogSchool(env=env)
    school.register_dog("Secret")
    school.close()

    # Without the application's cipher settings Herald cannot read the state: it
    # stops at the first row and says what to do.
    plain = {k: v for k, v in env.items() if not k.startswith(("CIPHER", "COMPRESSOR"))}
    blind = GatherManager(engine, [config(plain)])
    await blind.start()
    try:
        await wait_until(lambda: blind.statuses()[0].state is GatherState.STOPPED_BAD_ROW)
        error = blind.statuses()[0].last_error
    finally:
        await blind.stop()
    assert error is not None and error.position == 1
    assert "CIPHER_TOPIC" in error.message and "base64" in error.message
    assert await engine.head("dogschool") == 0

    # With them, it reads the store as the application does.
    manager = GatherManager(engine, [config(env)])
    await manager.start()
    try:
        await wait_for_head(engine, "dogschool", 1)
    finally:
        await manager.stop()
    (registered,) = await read_all(engine, "dogschool")
    assert registered.data["name"] == "Secret"


async def test_state_as_base64(tmp_path: Path, engine: Hub) -> None:
    env = {**sqlite_env(tmp_path), "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor"}
    school = DogSchool(env=env)
    school.register_dog("Bytes")
    school.close()
    plain = {k: v for k, v in env.items() if k != "COMPRESSOR_TOPIC"}
    manager = GatherManager(engine, [config(plain, state="base64")])
    await manager.start()
    try:
        await wait_for_head(engine, "dogschool", 1)
    finally:
        await manager.stop()
    (registered,) = await read_all(engine, "dogschool")
    state = zlib.decompress(base64.b64decode(registered.data["base64"]))
    assert b'"name":"Bytes"' in state


async def test_a_missing_database_file_is_retried(tmp_path: Path, engine: Hub) -> None:
    env = sqlite_env(tmp_path / "later")
    manager = GatherManager(engine, [config(env)])
    await manager.start()
    try:
        await wait_until(lambda: manager.statuses()[0].state is GatherState.RETRYING)
        assert not (tmp_path / "later").exists(), "Herald must not create the database"
        (tmp_path / "later").mkdir()
        school = DogSchool(env=env)
        school.register_dog("Late")
        school.close()
        await wait_for_head(engine, "dogschool", 1, timeout=60)
    finally:
        await manager.stop()


def test_a_broken_environment_is_a_config_error() -> None:
    from herald.config import ConfigError

    with pytest.raises(ConfigError, match="SQLite database name"):
        create_source(config({"PERSISTENCE_MODULE": "eventsourcing.sqlite"}))


def test_unwrap() -> None:
    assert unwrap({"a": {"_type_": "uuid_hex", "_data_": "ab"},
                   "b": [{"_type_": "decimal_str", "_data_": "1.5"}, 2],
                   "c": {"_type_": "x", "_data_": 1, "more": 2}}) == {
        "a": "ab", "b": ["1.5", 2], "c": {"_type_": "x", "_data_": 1, "more": 2}}
