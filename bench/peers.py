"""W1–W4 against Herald and its peers, side by side; writes BENCH.md's Peers section.

Run from a checkout (not part of the installed package), with the venv's Python and
the ``bench`` extra (``pip install -e '.[bench]'``; ``make bench-peers`` does both):

    .venv/bin/python bench/peers.py                       # every system, 3 runs
    .venv/bin/python bench/peers.py --systems herald,file --quick

Systems (columns), each driven by its own documented fast path, each workload in its
own client process like Herald's:

``herald``    a real ``herald serve`` (files engine) over TLS — the workloads of
              ``workloads.py``, unchanged.
``nats``      NATS JetStream, file storage, through nats-py: ``publish_async`` with
              acks, an ordered push consumer to read and follow.
``redis``     Redis Streams through redis-py (hiredis): pipelined ``XADD``, ``XRANGE``
              in pages to read, ``XREAD BLOCK`` to follow.
``postgres``  a PostgreSQL event table through psycopg 3: ``COPY`` to append, keyset
              pages to read, ``LISTEN``/``NOTIFY`` plus a keyset read to follow.
``file``      the physical limit of durable appends: framed batches written to a
              file by one Python thread, one ``fdatasync`` per batch.
``tls``       the physical limit of the wire: Python ``ssl`` over 127.0.0.1 with
              Herald's own certificates and server context.

Fairness: the same events (``make_event``), the same batch size (``BATCH``), the
same number of events, the same in-flight window for producers where the peer has
one (``W1_IN_FLIGHT`` batches), and the same objects for readers: every reader turns
what it receives into ``herald.Event`` objects with msgspec, ``data`` decoded lazily
(row "W2"), then also decodes every event's ``data`` (row "W2, data used"), as
Herald's client does. What each system promises when it acknowledges is stated in
the report (``DURABILITY``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from herald.bench import herald_server, machine_description, write_section
from herald.bench.workloads import (
    BATCH,
    PAYLOAD_BYTES,
    W1_IN_FLIGHT,
    W4_BATCH,
    W4_RATE,
    W4_SECONDS,
    in_process,
    in_processes,
    make_event,
    run_in_process,
    run_parallel,
    w4_batch,
)
from herald.model import Event

__all__ = ["run_peers", "main", "build_parser", "SYSTEMS", "Settings"]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/herald_peers"

SYSTEMS = ("herald", "nats", "redis", "postgres", "file", "tls")
TITLES = {
    "herald": "Herald (files)",
    "nats": "NATS JetStream",
    "redis": "Redis Streams",
    "postgres": "PostgreSQL table",
    "file": "raw file + fdatasync",
    "tls": "loopback TLS",
}

# What an acknowledgement means, per column. Shown under the table.
DURABILITY = {
    "herald": "durable: an append is acknowledged after `fdatasync` (group commit).",
    "nats": "**not fsynced per ack**: JetStream file storage acknowledges once the "
            "message is written to the store's block file (the OS page cache) and fsyncs "
            "on a background timer. Since nats-server 2.10 that timer is `sync_interval` "
            "(2 minutes by default) and `sync_interval: always` fsyncs every write; the "
            "server here is 2.9.10, which predates the option, and either way it is a "
            "server-wide setting, not a stream's — the shared server was not reconfigured. "
            "A power cut can lose acknowledged messages.",
    "redis": "**not durable at all**: the Redis here runs without persistence "
             "(`--save \"\" --appendonly no`); an in-memory upper bound, not a durable peer. "
             "(Configured with `appendonly yes` and `appendfsync always`, Redis would "
             "fsync its log before answering.)",
    "postgres": "durable: `synchronous_commit = on` (the default), each batch is one "
                "`COPY` in one transaction, acknowledged after the WAL is flushed.",
    "file": "durable: one `fdatasync` per batch, one thread, nothing else — the floor "
            "any durable append pays.",
    "tls": "no storage: the bytes only cross the loopback, encrypted (TLS with Herald's "
           "certificates and server context).",
}

# How each producer keeps batches in flight (W1), and how readers read (W2/W3).
METHOD = {
    "herald": f"W1: {W1_IN_FLIGHT} appends of {BATCH:,} events in flight over HTTPS. "
              "W2/W3: one subscription (`follow=False`), whole records decoded by msgspec.",
    "nats": f"W1: one message per event, `js.publish_async`, at most {W1_IN_FLIGHT} batches "
            f"of {BATCH:,} unacknowledged ({W1_IN_FLIGHT * BATCH:,} messages, "
            "`publish_async_max_pending`). W2/W3: an ordered push consumer (flow control, "
            "no acks), messages handled in its callback — in nats-py several times faster "
            "than a pull consumer's `fetch` of 1,000 or 10,000 (measured here while "
            "choosing). W4: the same consumer with `deliver_policy=new`.",
    "redis": f"W1: one entry per event, a pipeline (no MULTI) of {BATCH:,} `XADD` per batch, "
             f"{W1_IN_FLIGHT} pipelines in flight. W2/W3: `XRANGE` pages of 10,000 "
             "entries. W4: `XREAD BLOCK` from the last id seen.",
    "postgres": f"W1: one row per event (`type text`, `data jsonb`, `bigint` identity key), "
                f"one `COPY … FROM STDIN` transaction per batch, {W1_IN_FLIGHT} connections "
                "in flight. W2/W3: keyset pages `WHERE id > $1 ORDER BY id LIMIT 10000`. "
                "W4: one producer connection (so ids commit in order and the keyset read "
                "cannot skip one), `NOTIFY` in the batch's transaction, the subscriber "
                "`LISTEN`s and reads the new rows.",
    "file": "W1: one batch at a time: an 8-byte frame header and the batch's JSON, "
            "`writev`, `fdatasync`. W2/W3: 1 MiB reads, frames decoded by msgspec into "
            "events. W4: the write and `fdatasync` of a 10-event batch (no subscriber).",
    "tls": "W1: one connection, 1 MiB writes to a Python `ssl` server; W2: the server "
           "writes to the client; W3: four connections at once; events/s = bytes/s ÷ the "
           "bytes of one event in Herald's batch JSON. W4: a 10-event message echoed by "
           "the server (two TLS hops, as producer → hub → subscriber).",
}

PAGE = 10_000  # entries/rows per read request for Redis and PostgreSQL readers
MIN_CPU_SECONDS = 1.0  # the shortest workload whose server CPU use is reported
FRAME = struct.Struct("<II")  # raw file frame header: body length, CRC-32 of the body


@dataclass(frozen=True)
class Settings:
    """Where the peers are, and a tag that keeps concurrent runs apart."""

    nats_url: str = DEFAULT_NATS_URL
    redis_url: str = DEFAULT_REDIS_URL
    postgres_dsn: str = DEFAULT_POSTGRES_DSN
    tag: str = field(default_factory=lambda: f"{os.getpid()}_{int(time.time() * 1000) % 10**9}")


# --- what every client does the same way ---------------------------------------------

_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)
_batch_decoder = msgspec.json.Decoder(list[Event])


def _template() -> list[dict[str, Any]]:
    return [make_event(i) for i in range(BATCH)]


def bytes_per_event() -> float:
    """The JSON bytes of one event as Herald's producers send (and readers get) them."""
    return len(_encoder.encode(_template())) / BATCH


def _rate(events: int, seconds: float) -> dict[str, float]:
    return {"events": float(events), "seconds": seconds, "rate": events / seconds}


class _Reader:
    """Counts what a reader delivers, as ``Event`` objects, checking the total."""

    def __init__(self, events: int, decode_data: bool) -> None:
        self.expected = events
        self.decode_data = decode_data
        self.received = 0
        self.done = asyncio.Event()

    def payloads(self, payloads: list[bytes] | list[str]) -> None:
        """One event per payload (NATS, Redis): the payload is the event's JSON."""
        position = self.received
        for payload in payloads:
            event = _event_decoder.decode(payload)
            event.position = position
            position += 1
            if self.decode_data:
                event.data  # noqa: B018 - decoding is the point
        self._count(len(payloads))

    def events(self, events: list[Event]) -> None:
        position = self.received
        for event in events:
            event.position = position
            position += 1
            if self.decode_data:
                event.data  # noqa: B018 - decoding is the point
        self._count(len(events))

    def _count(self, n: int) -> None:
        self.received += n
        if self.received >= self.expected:
            self.done.set()

    def result(self, seconds: float) -> dict[str, float]:
        if self.received != self.expected:
            raise RuntimeError(f"read {self.received} events, expected {self.expected}")
        return _rate(self.received, seconds)


class _Latency:
    """W4's clock: ``W4_BATCH`` events every ``W4_BATCH / W4_RATE`` s, each event's
    latency from just before its batch is handed to the client library to the moment
    the subscriber has it as an ``Event`` with its ``data`` decoded (``n``)."""

    def __init__(self, seconds: float) -> None:
        self.total = int(W4_RATE * seconds)
        self.sent_at = [0.0] * self.total
        self.latencies: list[float] = []
        self.done = asyncio.Event()

    def received(self, events: list[Event]) -> None:
        now = time.perf_counter()
        sent_at = self.sent_at
        for event in events:
            self.latencies.append(now - sent_at[event.data["n"]])
        if len(self.latencies) >= self.total:
            self.done.set()

    async def produce(self, send: Callable[[list[dict[str, Any]]], Awaitable[Any]]) -> None:
        """Call ``send(batch)`` on the clock, without waiting for the previous one (the
        rate is the producer's, as for independent requests), then for all of them."""
        in_flight: set[asyncio.Task[Any]] = set()
        start = time.perf_counter()
        n = 0
        while n < self.total:
            delay = start + n / W4_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            batch = w4_batch(n)
            for i in range(n, n + W4_BATCH):
                self.sent_at[i] = now
            n += W4_BATCH
            task = asyncio.ensure_future(send(batch))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)

    async def wait(self, timeout: float = 30.0) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"W4 received {len(self.latencies)} of {self.total} events "
                               f"in {timeout:.0f} s") from None

    def result(self) -> dict[str, float]:
        return _percentiles(self.latencies)


def _percentiles(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds, the way Herald's W4 computes them."""
    latencies = sorted(latencies)
    count = len(latencies)
    return {
        "events": float(count),
        "p50_ms": latencies[count // 2] * 1000,
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000,
        "max_ms": latencies[-1] * 1000,
    }


# --- NATS JetStream ------------------------------------------------------------------


def _nats_names(tag: str) -> tuple[str, str]:
    return f"HERALD_PEERS_{tag}", f"herald-peers.{tag}"


async def _nats_reset(url: str, tag: str) -> None:
    import nats
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    name, subject = _nats_names(tag)
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            await js.delete_stream(name)
        except NotFoundError:
            pass
        await js.add_stream(StreamConfig(name=name, subjects=[subject],
                                         storage=StorageType.FILE, num_replicas=1))
    finally:
        await nc.close()


async def _nats_delete(url: str, tag: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    try:
        try:
            await nc.jetstream().delete_stream(_nats_names(tag)[0])
        except NotFoundError:
            pass
    finally:
        await nc.close()


async def nats_w1(url: str, tag: str, events: int) -> dict[str, float]:
    import nats

    name, subject = _nats_names(tag)
    template = _template()
    batches = events // BATCH
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(publish_async_max_pending=W1_IN_FLIGHT * BATCH)
        await js.publish(subject, b"{}")  # warm up (the ack inbox), then start empty
        await js.purge_stream(name)
        window: list[list[asyncio.Future[Any]]] = []
        start = time.perf_counter()
        for _ in range(batches):
            payloads = [_encoder.encode(e) for e in template]
            window.append([await js.publish_async(subject, p) for p in payloads])
            if len(window) > W1_IN_FLIGHT:
                for ack in await asyncio.gather(*window.pop(0)):
                    if ack.stream != name:
                        raise RuntimeError(f"acknowledged by {ack.stream}")
        for futures in window:
            await asyncio.gather(*futures)
        elapsed = time.perf_counter() - start
        info = await js.stream_info(name)
        if info.state.messages != batches * BATCH:
            raise RuntimeError(f"stream holds {info.state.messages} messages")
    finally:
        await nc.close()
    return _rate(batches * BATCH, elapsed)


async def nats_w2(url: str, tag: str, events: int, decode_data: bool = False) -> dict[str, float]:
    import nats
    from nats.js.api import DeliverPolicy

    _, subject = _nats_names(tag)
    reader = _Reader(events, decode_data)
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()

        async def on_message(msg: Any) -> None:
            reader.payloads([msg.data])

        start = time.perf_counter()
        sub = await js.subscribe(subject, cb=on_message, ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL)
        await asyncio.wait_for(reader.done.wait(), 600)
        elapsed = time.perf_counter() - start
        await sub.unsubscribe()
    finally:
        await nc.close()
    return reader.result(elapsed)


async def nats_w4(url: str, tag: str, seconds: float = W4_SECONDS) -> dict[str, float]:
    import nats
    from nats.js.api import DeliverPolicy

    _, subject = _nats_names(tag)
    clock = _Latency(seconds)
    producer = await nats.connect(url)
    consumer = await nats.connect(url)
    try:
        js = producer.jetstream()
        await js.purge_stream(_nats_names(tag)[0])

        async def on_message(msg: Any) -> None:
            clock.received([_event_decoder.decode(msg.data)])

        sub = await consumer.jetstream().subscribe(
            subject, cb=on_message, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
        await asyncio.sleep(0.5)

        async def send(batch: list[dict[str, Any]]) -> None:
            futures = [await js.publish_async(subject, _encoder.encode(e)) for e in batch]
            await asyncio.gather(*futures)

        await clock.produce(send)
        await clock.wait()
        await sub.unsubscribe()
    finally:
        await producer.close()
        await consumer.close()
    return clock.result()


# --- Redis Streams -------------------------------------------------------------------


def _redis_key(tag: str) -> str:
    return f"herald-peers:{tag}"


async def _redis_delete(url: str, tag: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    try:
        await client.delete(_redis_key(tag))
    finally:
        await client.aclose()


async def redis_w1(url: str, tag: str, events: int) -> dict[str, float]:
    import redis.asyncio as redis

    key = _redis_key(tag)
    template = _template()
    batches = events // BATCH
    client = redis.Redis.from_url(url, max_connections=W1_IN_FLIGHT)
    try:
        await client.delete(key)
        next_batch = 0
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal next_batch
            while next_batch < batches:
                next_batch += 1
                pipe = client.pipeline(transaction=False)
                for event in template:
                    pipe.xadd(key, {"e": _encoder.encode(event)})
                await pipe.execute()

        await asyncio.gather(*(worker() for _ in range(W1_IN_FLIGHT)))
        elapsed = time.perf_counter() - start
        length = await client.xlen(key)
        if length != batches * BATCH:
            raise RuntimeError(f"stream holds {length} entries")
    finally:
        await client.aclose()
    return _rate(batches * BATCH, elapsed)


async def redis_w2(url: str, tag: str, events: int, decode_data: bool = False) -> dict[str, float]:
    import redis.asyncio as redis

    key = _redis_key(tag)
    reader = _Reader(events, decode_data)
    client: Any = redis.Redis.from_url(url)  # redis-py's answers are loosely typed
    try:
        start = time.perf_counter()
        low: bytes | str = "-"
        while True:
            entries = await client.xrange(key, min=low, count=PAGE)
            if not entries:
                break
            reader.payloads([fields[b"e"] for _, fields in entries])
            low = b"(" + entries[-1][0]
        elapsed = time.perf_counter() - start
    finally:
        await client.aclose()
    return reader.result(elapsed)


async def redis_w4(url: str, tag: str, seconds: float = W4_SECONDS) -> dict[str, float]:
    import redis.asyncio as redis

    key = _redis_key(tag) + ":w4"
    clock = _Latency(seconds)
    producer: Any = redis.Redis.from_url(url)
    consumer: Any = redis.Redis.from_url(url)
    try:
        await producer.delete(key)

        async def subscribe() -> None:
            last: bytes | str = "0-0"
            while not clock.done.is_set():
                answer = await consumer.xread({key: last}, count=PAGE, block=0)
                for _, entries in answer:
                    clock.received([_event_decoder.decode(f[b"e"]) for _, f in entries])
                    last = entries[-1][0]

        task = asyncio.create_task(subscribe())
        await asyncio.sleep(0.5)

        async def send(batch: list[dict[str, Any]]) -> None:
            pipe = producer.pipeline(transaction=False)
            for event in batch:
                pipe.xadd(key, {"e": _encoder.encode(event)})
            await pipe.execute()

        await clock.produce(send)
        await clock.wait()
        await task
        await producer.delete(key)
    finally:
        await producer.aclose()
        await consumer.aclose()
    return clock.result()


# --- PostgreSQL ----------------------------------------------------------------------


def _pg_table(tag: str) -> str:
    return f"herald_peers_{tag}"


def _pg_create_database(dsn: str) -> None:
    """Create the DSN's database if it does not exist (connecting to ``postgres``)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    name = params.get("dbname") or "postgres"
    try:
        psycopg.connect(dsn).close()
        return
    except psycopg.OperationalError:
        pass
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _pg_reset(dsn: str, tag: str) -> None:
    import psycopg

    _pg_create_database(dsn)
    table = _pg_table(tag)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY "
                     "PRIMARY KEY, type text NOT NULL, data jsonb NOT NULL)")


def _pg_delete(dsn: str, tag: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {_pg_table(tag)}")
        conn.execute(f"DROP TABLE IF EXISTS {_pg_table(tag)}_w4")


async def _pg_copy(conn: Any, table: str, batch: list[dict[str, Any]]) -> None:
    async with conn.cursor() as cursor, cursor.copy(
            f"COPY {table} (type, data) FROM STDIN") as copy:
        for event in batch:
            await copy.write_row((event["type"], _encoder.encode(event["data"]).decode()))


async def postgres_w1(dsn: str, tag: str, events: int) -> dict[str, float]:
    import psycopg

    table = _pg_table(tag)
    template = _template()
    batches = events // BATCH
    connections = [await psycopg.AsyncConnection.connect(dsn) for _ in range(W1_IN_FLIGHT)]
    try:
        next_batch = 0
        start = time.perf_counter()

        async def worker(conn: Any) -> None:
            nonlocal next_batch
            while next_batch < batches:
                next_batch += 1
                async with conn.transaction():
                    await _pg_copy(conn, table, template)

        await asyncio.gather(*(worker(c) for c in connections))
        elapsed = time.perf_counter() - start
        row = await (await connections[0].execute(f"SELECT count(*) FROM {table}")).fetchone()
        count = row[0] if row else 0
        if count != batches * BATCH:
            raise RuntimeError(f"table holds {count} rows")
    finally:
        for conn in connections:
            await conn.close()
    return _rate(batches * BATCH, elapsed)


def _pg_events(rows: list[tuple[int, str, str]]) -> list[Event]:
    return [Event(type=t, raw=msgspec.Raw(d)) for _, t, d in rows]


async def postgres_w2(dsn: str, tag: str, events: int,
                      decode_data: bool = False) -> dict[str, float]:
    import psycopg

    table = _pg_table(tag)
    reader = _Reader(events, decode_data)
    query = f"SELECT id, type, data::text FROM {table} WHERE id > %s ORDER BY id LIMIT {PAGE}"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        last = 0
        while True:
            rows = await (await conn.execute(query, (last,))).fetchall()
            if not rows:
                break
            reader.events(_pg_events(rows))
            last = rows[-1][0]
        elapsed = time.perf_counter() - start
    return reader.result(elapsed)


async def postgres_w4(dsn: str, tag: str, seconds: float = W4_SECONDS) -> dict[str, float]:
    import psycopg

    table = _pg_table(tag) + "_w4"
    channel = f"herald_peers_{tag}"
    clock = _Latency(seconds)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as setup:
        await setup.execute(f"DROP TABLE IF EXISTS {table}")
        await setup.execute(f"CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY "
                            "PRIMARY KEY, type text NOT NULL, data jsonb NOT NULL)")
    producer = await psycopg.AsyncConnection.connect(dsn)
    listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    reader = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    query = f"SELECT id, type, data::text FROM {table} WHERE id > %s ORDER BY id LIMIT {PAGE}"
    try:
        await listener.execute(f"LISTEN {channel}")
        notified = asyncio.Event()

        async def listen() -> None:
            async for _ in listener.notifies():
                notified.set()

        async def read() -> None:
            last = 0
            while not clock.done.is_set():
                await notified.wait()
                notified.clear()
                while True:
                    rows = await (await reader.execute(query, (last,))).fetchall()
                    if not rows:
                        break
                    clock.received(_pg_events(rows))
                    last = rows[-1][0]

        listening = asyncio.create_task(listen())
        reading = asyncio.create_task(read())
        await asyncio.sleep(0.5)

        one_at_a_time = asyncio.Lock()

        async def send(batch: list[dict[str, Any]]) -> None:
            # One connection, one transaction at a time: ids commit in order.
            async with one_at_a_time, producer.transaction():
                await _pg_copy(producer, table, batch)
                await producer.execute(f"NOTIFY {channel}")

        await clock.produce(send)
        await clock.wait()
        await reading
        listening.cancel()
    finally:
        for conn in (producer, listener, reader):
            await conn.close()
    return clock.result()


# --- the raw file: the floor of a durable append ---------------------------------------


def file_w1(path: str, events: int) -> dict[str, float]:
    template = _template()
    batches = events // BATCH
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(batches):
            body = _encoder.encode(template)
            os.writev(fd, [FRAME.pack(len(body), zlib.crc32(body)), body])
            os.fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return _rate(batches * BATCH, elapsed)


def file_w2(path: str, events: int, decode_data: bool = False) -> dict[str, float]:
    received = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        pending = b""
        while True:
            chunk = f.read(1024 * 1024)
            if not chunk:
                break
            data = pending + chunk if pending else chunk
            offset = 0
            while len(data) - offset >= FRAME.size:
                length, _ = FRAME.unpack_from(data, offset)
                end = offset + FRAME.size + length
                if end > len(data):
                    break
                batch = _batch_decoder.decode(memoryview(data)[offset + FRAME.size:end])
                for event in batch:
                    event.position = received
                    received += 1
                    if decode_data:
                        event.data  # noqa: B018 - decoding is the point
                offset = end
            pending = data[offset:]
    elapsed = time.perf_counter() - start
    if received != events:
        raise RuntimeError(f"read {received} events, expected {events}")
    return _rate(received, elapsed)


def file_w4(path: str, seconds: float = W4_SECONDS) -> dict[str, float]:
    total = int(W4_RATE * seconds)
    latencies: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        n = 0
        while n < total:
            delay = start + n / W4_RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            batch = w4_batch(n)
            n += W4_BATCH
            body = _encoder.encode(batch)
            os.writev(fd, [FRAME.pack(len(body), zlib.crc32(body)), body])
            os.fdatasync(fd)
            latencies.extend([time.perf_counter() - sent] * W4_BATCH)
    finally:
        os.close(fd)
    return _percentiles(latencies)


# --- loopback TLS: the floor of the wire -----------------------------------------------

_COMMAND = struct.Struct("<cQ")  # b"W"/b"R"/b"E", byte count
_CHUNK = 1024 * 1024


def _recv_exactly(sock: ssl.SSLSocket, n: int, buffer: bytearray) -> None:
    view = memoryview(buffer)
    while n > 0:
        got = sock.recv_into(view, min(n, len(buffer)))
        if not got:
            raise ConnectionError("connection closed early")
        n -= got


def _tls_serve_one(conn: ssl.SSLSocket) -> None:
    buffer = bytearray(_CHUNK)
    with conn:
        head = bytearray(_COMMAND.size)
        _recv_exactly_into(conn, head)
        command, count = _COMMAND.unpack(head)
        if command == b"W":  # the client writes count bytes; answer when all are in
            _recv_exactly(conn, count, buffer)
            conn.sendall(b"k")
        elif command == b"R":  # write count bytes to the client
            chunk = bytes(_CHUNK)
            while count > 0:
                conn.sendall(chunk[:min(count, _CHUNK)])
                count -= min(count, _CHUNK)
        elif command == b"E":  # echo length-prefixed messages until a zero length
            size = bytearray(4)
            while True:
                _recv_exactly_into(conn, size)
                (length,) = struct.unpack("<I", size)
                if length == 0:
                    return
                message = bytearray(length)
                _recv_exactly_into(conn, message)
                conn.sendall(bytes(size) + message)


def _recv_exactly_into(sock: ssl.SSLSocket, target: bytearray) -> None:
    view = memoryview(target)
    while view:
        got = sock.recv_into(view)
        if not got:
            raise ConnectionError("connection closed early")
        view = view[got:]


def tls_server(tls_dir: str, ready: Any, stop: Any) -> None:
    """A TLS server with Herald's server context; one thread per connection."""
    from herald.server.tls import server_context

    context = server_context(Path(tls_dir) / "server.pem", Path(tls_dir) / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    ready.put(listener.getsockname()[1])
    while not stop.is_set():
        try:
            raw, _ = listener.accept()
        except TimeoutError:
            continue
        raw.settimeout(None)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def serve(raw: socket.socket = raw) -> None:
            try:
                _tls_serve_one(context.wrap_socket(raw, server_side=True))
            except (OSError, ssl.SSLError):
                pass

        threading.Thread(target=serve, daemon=True).start()
    listener.close()


def _tls_connect(port: int, ca: str) -> ssl.SSLSocket:
    from herald.client import client_context

    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client_context(Path(ca)).wrap_socket(raw, server_hostname="127.0.0.1")


def tls_write(port: int, ca: str, events: int) -> dict[str, float]:
    """W1's wire: the client sends ``events`` events' worth of bytes."""
    count = int(events * bytes_per_event())
    chunk = bytes(_CHUNK)
    with _tls_connect(port, ca) as sock:
        start = time.perf_counter()
        sock.sendall(_COMMAND.pack(b"W", count))
        left = count
        while left > 0:
            sock.sendall(chunk[:min(left, _CHUNK)])
            left -= min(left, _CHUNK)
        if sock.recv(1) != b"k":
            raise ConnectionError("no answer")
        elapsed = time.perf_counter() - start
    return {**_rate(events, elapsed), "bytes_per_s": count / elapsed}


def tls_read(port: int, ca: str, events: int, decode_data: bool = False) -> dict[str, float]:
    """W2's wire: the server sends ``events`` events' worth of bytes."""
    count = int(events * bytes_per_event())
    buffer = bytearray(_CHUNK)
    with _tls_connect(port, ca) as sock:
        start = time.perf_counter()
        sock.sendall(_COMMAND.pack(b"R", count))
        _recv_exactly(sock, count, buffer)
        elapsed = time.perf_counter() - start
    return {**_rate(events, elapsed), "bytes_per_s": count / elapsed}


def tls_w4(port: int, ca: str, seconds: float = W4_SECONDS) -> dict[str, float]:
    total = int(W4_RATE * seconds)
    latencies: list[float] = []
    with _tls_connect(port, ca) as sock:
        sock.sendall(_COMMAND.pack(b"E", 0))
        start = time.perf_counter()
        n = 0
        while n < total:
            delay = start + n / W4_RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            batch = w4_batch(n)
            n += W4_BATCH
            body = _encoder.encode(batch)
            sock.sendall(struct.pack("<I", len(body)) + body)
            echo = bytearray(4 + len(body))
            _recv_exactly_into(sock, echo)
            for received in _batch_decoder.decode(memoryview(echo)[4:]):
                received.data  # noqa: B018 - decoded, as the other subscribers do
            latencies.extend([time.perf_counter() - sent] * W4_BATCH)
        sock.sendall(struct.pack("<I", 0))
    return _percentiles(latencies)


# --- whose CPU: the server's, while a workload runs ------------------------------------


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and of its children: its own, its reaped children's
    (``cutime``/``cstime``: PostgreSQL's backends, once they exit) and its live
    children's. The difference of two readings counts each child's work once."""
    def stat(p: int | str) -> list[str]:
        return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()

    ticks = os.sysconf("SC_CLK_TCK")
    fields = stat(pid)
    total = sum(int(f) for f in fields[11:15])
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                child = stat(entry)
            except OSError:
                continue
            if child[1] == str(pid):
                total += int(child[11]) + int(child[12])
    return total / ticks


def _pid_by_name(name: str) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    return int(entry)
            except OSError:
                continue
    return None


def _is_local(url: str) -> bool:
    from urllib.parse import urlsplit

    return (urlsplit(url).hostname or "127.0.0.1") in ("127.0.0.1", "localhost", "::1")


def _service_pid(system: str, settings: Settings) -> int | None:
    """The server process of a peer running on this machine (None if it is not)."""
    try:
        if system == "nats" and _is_local(settings.nats_url):
            return _pid_by_name("nats-server")
        if system == "redis" and _is_local(settings.redis_url):
            return _pid_by_name("redis-server")
        if system == "postgres" and _is_local(settings.postgres_dsn):
            import psycopg

            with psycopg.connect(settings.postgres_dsn) as conn:
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
            backend = row[0] if row else 0
            # The backend's parent is the postmaster, whose children do the work.
            return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, ImportError):
        return None
    except Exception as exc:  # a driver's error: no CPU figure, the rest still runs
        print(f"cannot find the {system} server's process: {exc}", file=sys.stderr)
        return None
    return None


def _with_server_cpu(pid: int | None, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``run()``'s result, with the server's CPU use during it (% of one core)."""
    if pid is None:
        return run()
    try:
        before = _tree_cpu(pid)
    except OSError:
        return run()
    result = run()
    time.sleep(0.2)  # let PostgreSQL reap the workload's backends
    # Below a second, connecting and the clock's ticks (10 ms) weigh too much.
    if result["seconds"] >= MIN_CPU_SECONDS:
        try:
            result["server_cpu"] = 100 * (_tree_cpu(pid) - before) / result["seconds"]
        except OSError:
            pass
    return result


# --- one system, one run ---------------------------------------------------------------

ReadFunc = Callable[..., Any]


@dataclass
class Results:
    """Per system, per row (W1, W2, W2d, W3, W4): one result dict per run."""

    runs: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, system: str, row: str, result: dict[str, float]) -> None:
        self.runs.setdefault(system, {}).setdefault(row, []).append(result)

    def values(self, system: str, row: str, key: str) -> list[float]:
        return [r[key] for r in self.runs.get(system, {}).get(row, []) if key in r]

    def median(self, system: str, row: str, key: str) -> float | None:
        values = self.values(system, row, key)
        return statistics.median(values) if values else None


def _w3(copies: int, func: ReadFunc, *args: Any) -> dict[str, float]:
    parts = in_processes(copies, func, *args)
    total = sum(p["events"] for p in parts)
    return {"rate": total / max(p["seconds"] for p in parts),
            "per_reader": statistics.median(p["rate"] for p in parts)}


def _run_system(system: str, settings: Settings, events: int, workloads: set[str],
                w4_seconds: float, results: Results, say: Callable[[str], None]) -> None:
    def record(row: str, result: dict[str, float]) -> None:
        results.add(system, row, result)
        if row == "W4":
            say(f"  {TITLES[system]} W4: p50 {result['p50_ms']:.2f} ms, p99 "
                f"{result['p99_ms']:.2f} ms, max {result['max_ms']:.2f} ms")
        else:
            say(f"  {TITLES[system]} {row}: {result['rate']:,.0f} events/s")

    pid = _service_pid(system, settings)

    def timed(func: Callable[..., Any], *args: Any) -> dict[str, float]:
        return _with_server_cpu(pid, lambda: in_process(func, *args))

    def reads(func: ReadFunc, *args: Any) -> None:
        if "W2" in workloads:
            record("W2", timed(func, *args, events))
            record("W2d", in_process(func, *args, events, True))
        if "W3" in workloads:
            record("W3", _w3(4, func, *args, events))

    writes = bool(workloads & {"W1", "W2", "W3"})
    if system == "herald":
        with herald_server() as server:
            conn = (server.url, server.token, server.ca)
            pid = server.process.pid
            if writes:
                record("W1", _with_server_cpu(pid, lambda: run_in_process(
                    "W1", *conn, "bench", events)))
            if "W2" in workloads:
                record("W2", _with_server_cpu(pid, lambda: run_in_process(
                    "W2", *conn, "bench", events)))
                record("W2d", run_in_process("W2", *conn, "bench", events, True))
            if "W3" in workloads:
                parts = run_parallel("W2", 4, *conn, "bench", events)
                total = sum(p["events"] for p in parts)
                record("W3", {"rate": total / max(p["seconds"] for p in parts),
                              "per_reader": statistics.median(p["rate"] for p in parts)})
            if "W4" in workloads:
                record("W4", run_in_process("W4", *conn, "latency", w4_seconds))
    elif system == "nats":
        url, tag = settings.nats_url, settings.tag
        asyncio.run(_nats_reset(url, tag))
        try:
            if writes:
                record("W1", timed(nats_w1, url, tag, events))
            reads(nats_w2, url, tag)
            if "W4" in workloads:
                record("W4", in_process(nats_w4, url, tag, w4_seconds))
        finally:
            asyncio.run(_nats_delete(url, tag))
    elif system == "redis":
        url, tag = settings.redis_url, settings.tag
        try:
            if writes:
                record("W1", timed(redis_w1, url, tag, events))
            reads(redis_w2, url, tag)
            if "W4" in workloads:
                record("W4", in_process(redis_w4, url, tag, w4_seconds))
        finally:
            asyncio.run(_redis_delete(url, tag))
    elif system == "postgres":
        dsn, tag = settings.postgres_dsn, settings.tag
        _pg_reset(dsn, tag)
        try:
            if writes:
                record("W1", timed(postgres_w1, dsn, tag, events))
            reads(postgres_w2, dsn, tag)
            if "W4" in workloads:
                record("W4", in_process(postgres_w4, dsn, tag, w4_seconds))
        finally:
            _pg_delete(dsn, tag)
    elif system == "file":
        directory = tempfile.mkdtemp(prefix="herald-peers-file-")
        try:
            path = os.path.join(directory, "events.log")
            if writes:
                record("W1", in_process(file_w1, path, events))
            reads(file_w2, path)
            if "W4" in workloads:
                record("W4", in_process(file_w4, os.path.join(directory, "w4.log"),
                                        w4_seconds))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    elif system == "tls":
        _run_tls(events, workloads, w4_seconds, record)
    else:
        raise ValueError(f"unknown system {system!r}")


def _run_tls(events: int, workloads: set[str], w4_seconds: float,
             record: Callable[[str, dict[str, float]], None]) -> None:
    from herald.certs import ensure_server_tls

    directory = tempfile.mkdtemp(prefix="herald-peers-tls-")
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=tls_server, args=(directory, ready, stop))
    try:
        ensure_server_tls(Path(directory))
        ca = str(Path(directory) / "ca.pem")
        server.start()
        port = ready.get(timeout=60)
        if workloads & {"W1", "W2", "W3"}:
            record("W1", _with_server_cpu(server.pid, lambda: in_process(
                tls_write, port, ca, events)))
        if "W2" in workloads:
            record("W2", _with_server_cpu(server.pid, lambda: in_process(
                tls_read, port, ca, events)))
        if "W3" in workloads:
            record("W3", _w3(4, tls_read, port, ca, events))
        if "W4" in workloads:
            record("W4", in_process(tls_w4, port, ca, w4_seconds))
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.kill()
            server.join()
        shutil.rmtree(directory, ignore_errors=True)


def unavailable(system: str, settings: Settings) -> str | None:
    """Why a system cannot run here (its service is not reachable), or None."""
    from urllib.parse import urlsplit

    if system in ("nats", "redis", "postgres"):
        url = {"nats": settings.nats_url, "redis": settings.redis_url,
               "postgres": settings.postgres_dsn}[system]
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or {"nats": 4222, "redis": 6379, "postgres": 5432}[system]
        try:
            with socket.create_connection((host, port), timeout=2):
                return None
        except OSError as exc:
            return f"not reachable at {host}:{port} ({exc.strerror or exc})"
    return None


# --- the run and the report ------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/peers.py",
        description="W1–W4 against Herald and its peers (NATS JetStream, Redis Streams, "
                    "a PostgreSQL table, a raw fdatasync'd file, loopback TLS), side by "
                    "side; writes BENCH.md's Peers section. The services are expected at "
                    "their default local addresses; one that is not reachable is "
                    "reported as not run.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one run; with the default --output, the report "
                             "is printed and BENCH.md is kept")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload (median taken)")
    parser.add_argument("--events", type=int, default=1_000_000, help="events for W1-W3")
    parser.add_argument("--output", default="BENCH.md", help="report file (BENCH.md)")
    parser.add_argument("--workloads", default="W1,W2,W3,W4", help="comma-separated list")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated list of systems (" + ",".join(SYSTEMS) + ")")
    parser.add_argument("--nats-url", default=DEFAULT_NATS_URL, help="NATS server")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis server")
    parser.add_argument("--postgres-dsn", default=DEFAULT_POSTGRES_DSN,
                        help="PostgreSQL database (created if missing)")
    parser.add_argument("--w4-seconds", type=float, default=None,
                        help=f"W4's duration (default {W4_SECONDS:.0f} s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command = ("python bench/peers.py "
                    + " ".join(sys.argv[1:] if argv is None else argv)).rstrip()
    return run_peers(args)


def run_peers(args: argparse.Namespace) -> int:
    """Every selected system, ``--runs`` times, interleaved (run 1 of every system,
    then run 2…) so that a noisy minute hits them all."""
    workloads = {w.strip().upper() for w in args.workloads.split(",")}
    events = 20_000 if args.quick else args.events
    runs = 1 if args.quick else max(1, args.runs)
    w4_seconds = getattr(args, "w4_seconds", None) or W4_SECONDS
    systems = [s.strip().lower() for s in args.systems.split(",")]
    for system in systems:
        if system not in SYSTEMS:
            raise SystemExit(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    settings = Settings(nats_url=args.nats_url, redis_url=args.redis_url,
                        postgres_dsn=args.postgres_dsn)
    results = Results()
    for system in systems:
        reason = unavailable(system, settings)
        if reason:
            results.skipped[system] = reason
            print(f"{TITLES[system]}: skipped, {reason}", file=sys.stderr, flush=True)
    active = [s for s in systems if s not in results.skipped]
    for run in range(runs):
        for system in active:
            print(f"run {run + 1}/{runs}: {TITLES[system]}", flush=True)
            _run_system(system, settings, events, workloads, w4_seconds, results,
                        lambda line: print(line, flush=True))
    command = getattr(args, "command", None) or "python bench/peers.py"
    report = render_report(results, systems, events, runs, w4_seconds, command)
    if args.quick and args.output == "BENCH.md":  # a smoke test: print, keep BENCH.md
        print(report)
        return 0
    write_section(Path(args.output), "Peers", report)
    print(f"wrote the Peers section of {args.output}")
    return 0


def _cell(results: Results, system: str, row: str) -> str:
    if system in results.skipped:
        return "not run"
    if row == "W4":
        values = [results.median(system, row, k) for k in ("p50_ms", "p99_ms", "max_ms")]
        if values[0] is None:
            return "—"
        p50, p99, mx = values
        return f"{p50:.2f} / **{p99:.2f}** / {mx:.1f}"
    value = results.median(system, row, "rate")
    if value is None:
        return "—"
    if row == "W3":
        per = results.median(system, row, "per_reader")
        return f"**{value:,.0f}** ({per:,.0f} each)"
    return f"**{value:,.0f}**"


def _cpu_cell(results: Results, system: str) -> str:
    w1, w2 = (results.median(system, row, "server_cpu") for row in ("W1", "W2"))
    if w1 is None and w2 is None:
        return "—"
    return " / ".join("—" if v is None else f"{v:.0f}" for v in (w1, w2))


def _range(results: Results, system: str, row: str) -> str:
    key = "p99_ms" if row == "W4" else "rate"
    values = results.values(system, row, key)
    if not values:
        return "—"
    if row == "W4":
        return f"{min(values):.2f}–{max(values):.2f}"
    return f"{min(values):,.0f}–{max(values):,.0f}"


def _ratio(results: Results, system: str, row: str) -> str:
    if system in results.skipped:
        return "—"
    key = "p99_ms" if row == "W4" else "rate"
    herald, peer = results.median("herald", row, key), results.median(system, row, key)
    if herald is None or peer is None or peer == 0:
        return "—"
    return f"{herald / peer:.2f}×"


def _limits(results: Results) -> list[str]:
    """Herald as a share of the physical limits (the raw file, loopback TLS)."""
    said = []
    for row, label in (("W1", "W1 append"), ("W2", "W2 catch-up read")):
        herald = results.median("herald", row, "rate")
        parts = []
        for system in ("file", "tls"):
            limit = results.median(system, row, "rate")
            if herald is not None and limit and system not in results.skipped:
                parts.append(f"{herald / limit:.0%} of the {TITLES[system]}")
        if parts:
            said.append(f"{label} at " + " and ".join(parts))
    return said


ROWS = (  # key, row label, short label
    ("W1", "W1 append, events/s", "W1 append"),
    ("W2", "W2 catch-up read, events/s (events delivered)", "W2 catch-up read"),
    ("W2d", "W2 catch-up read, data used, events/s", "W2 data used"),
    ("W3", "W3 four readers, events/s in total", "W3 four readers"),
    ("W4", "W4 latency, ms: p50 / **p99** / max", "W4 latency (p99)"),
)


def render_report(results: Results, systems: list[str], events: int, runs: int,
                  w4_seconds: float, command: str) -> str:
    columns = list(systems)
    peers = [s for s in columns if s != "herald"]
    bpe = bytes_per_event()
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_description()}.",
        f"Command: `{command}`. {runs} run{'s' if runs > 1 else ''} of each workload per "
        "system, interleaved (run 1 of every system, then run 2…); the median is shown. "
        f"{events:,} events of ~{PAYLOAD_BYTES} bytes of JSON ({bpe:.0f} bytes as encoded) "
        f"in batches of {BATCH:,} for W1–W3; W4 sends {W4_BATCH} events every "
        f"{1000 * W4_BATCH / W4_RATE:.0f} ms ({W4_RATE:,} events/s) for {w4_seconds:.0f} s. "
        "Every system runs on this machine, each workload in its own client process.",
        "",
        "| workload | " + " | ".join(TITLES[s] for s in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row, label, _ in ROWS:
        if not any(results.values(s, row, "p99_ms" if row == "W4" else "rate")
                   for s in columns):
            continue
        lines.append(f"| {label} | " + " | ".join(_cell(results, s, row) for s in columns)
                     + " |")
    cpu_cells = [_cpu_cell(results, s) for s in columns]
    if any(c != "—" for c in cpu_cells):
        lines.append("| server CPU during W1 / W2, % of one core | " + " | ".join(cpu_cells)
                     + " |")
    if "herald" in columns and peers:
        lines += [
            "",
            "Herald's ratio to each (throughput: Herald ÷ peer, above 1 = Herald is faster; "
            "W4: Herald's p99 ÷ the peer's, below 1 = Herald is quicker):",
            "",
            "| workload | " + " | ".join(TITLES[s] for s in peers) + " |",
            "|---|" + "---|" * len(peers),
        ]
        for row, _, short in ROWS:
            if not results.values("herald", row, "p99_ms" if row == "W4" else "rate"):
                continue
            lines.append(f"| {short} | "
                         + " | ".join(_ratio(results, s, row) for s in peers) + " |")
        limits = _limits(results)
        if limits:
            lines += ["", "Herald against the physical limits: " + "; ".join(limits) + "."]
    if runs > 1:
        lines += ["", "Range of all runs:", "",
                  "| workload | " + " | ".join(TITLES[s] for s in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for row, _, short in ROWS:
            if any(results.values(s, row, "p99_ms" if row == "W4" else "rate")
                   for s in columns):
                lines.append(f"| {short} | "
                             + " | ".join(_range(results, s, row) for s in columns) + " |")
    lines += ["", "What each column promises, and how it was driven:", ""]
    for s in columns:
        note = f"- **{TITLES[s]}** — {DURABILITY[s]} {METHOD[s]}"
        if s in results.skipped:
            note += f" *Not run: {results.skipped[s]}.*"
        lines.append(note)
    lines += [
        "",
        "Reading the table: every reader delivers `herald.Event` objects decoded by "
        "msgspec with `data` left encoded until used (the W2 row), as Herald's client "
        "does; the \"data used\" row also decodes every event's `data`. Herald and the raw "
        "file decode a whole batch per call; NATS and Redis carry one event per message "
        "and decode one per call; PostgreSQL hands over rows (`data::text`). The loopback "
        "TLS column moves bytes only — no decoding, so it has no \"data used\" row — and "
        "its W2/W3 are the server writing to the clients. The raw file's W4 is only the "
        "append's own write and `fdatasync`, nothing delivered.",
        "",
        "The server CPU row is the server process's CPU time while W1 and W2 ran (when "
        "they took a second or more; with "
        "its child processes: PostgreSQL's backends — and whatever else used that shared "
        "PostgreSQL meanwhile), in % of one core. Every client here is a Python library, "
        "as Herald's is; a server far below 100 % while its client is busy is being fed "
        "as fast as a Python client can: one message per event is what that client pays "
        "for, not the server.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
