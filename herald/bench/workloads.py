"""The benchmark workloads, each run in its own process against a real server.

W1  append: one producer, batches of 1,000, N events, durable acks
W2  catch-up read of all of them by one reader (events decoded to Python objects)
W3  four readers at once (four processes), aggregate events/s
W4  append-to-receive latency at 2,000 events/s for 10 s: p50 / p99 / max

Every event is ~250 bytes of JSON (``make_event``).
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from ..client import AsyncClient

PAYLOAD_BYTES = 250
BATCH = 1000
W1_IN_FLIGHT = 4  # batches a producer keeps in flight (like Kafka's max.in.flight)
W4_RATE = 2000  # events per second
W4_BATCH = 10  # events per append in W4: one append every 5 ms
W4_SECONDS = 10.0


def make_event(i: int) -> dict[str, Any]:
    """An event of about 250 bytes of JSON."""
    return {
        "type": "OrderPlaced",
        "data": {
            "order_id": f"ord-{i:012d}",
            "customer": f"cust-{i % 10007:08d}",
            "sku": f"SKU-{i % 997:06d}",
            "quantity": i % 7 + 1,
            "price": 19.99,
            "currency": "EUR",
            "note": "x" * 89,  # brings the event to 250 bytes of JSON
        },
    }


def w4_batch(first: int) -> list[dict[str, Any]]:
    """W4's batch of events ``first`` … ``first + W4_BATCH - 1``, each carrying its
    number in ``data.n`` so that the receiver can look up when it was sent."""
    batch = []
    for n in range(first, first + W4_BATCH):
        event = make_event(n)
        event["data"]["n"] = n
        batch.append(event)
    return batch


def _client(url: str, token: str, ca: str) -> AsyncClient:
    return AsyncClient(url, token=token, ca=ca)


async def _w1(url: str, token: str, ca: str, stream: str, events: int) -> dict[str, float]:
    """One producer; ``W1_IN_FLIGHT`` batches in flight; each batch encoded in the loop."""
    import msgspec

    encoder = msgspec.json.Encoder()
    template = [make_event(i) for i in range(BATCH)]
    batches = events // BATCH
    async with _client(url, token, ca) as client:
        await client.append(stream + "-warmup", [make_event(0)])
        next_batch = 0
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal next_batch
            while next_batch < batches:
                next_batch += 1
                await client.append(stream, encoder.encode(template))

        await asyncio.gather(*(worker() for _ in range(W1_IN_FLIGHT)))
        elapsed = time.perf_counter() - start
    return {"events": float(batches * BATCH), "seconds": elapsed,
            "rate": batches * BATCH / elapsed}


async def _w2(url: str, token: str, ca: str, stream: str, events: int,
              decode_data: bool = False) -> dict[str, float]:
    """One reader from position 0 to the head. Events arrive as ``herald.Event``
    objects; their ``data`` is decoded on first access, so ``decode_data`` makes the
    reader touch every event's data (the cost of a reader that uses every payload)."""
    received = 0
    async with _client(url, token, ca) as client:
        start = time.perf_counter()
        async with client.subscribe(stream, 0, follow=False) as subscription:
            async for batch in subscription.batches():
                received += len(batch)
                if decode_data:
                    for event in batch:
                        event.data  # noqa: B018 - decoding is the point
        elapsed = time.perf_counter() - start
    if received != events:
        raise RuntimeError(f"W2 received {received} events, expected {events}")
    return {"events": float(received), "seconds": elapsed, "rate": received / elapsed}


async def _w4(url: str, token: str, ca: str, stream: str,
              seconds: float = W4_SECONDS) -> dict[str, float]:
    """Producer and subscriber in one process, so one clock measures both ends.

    The producer sends ``W4_BATCH`` events every ``W4_BATCH / W4_RATE`` seconds,
    without waiting for the previous append (independent requests at a fixed
    rate); each event's latency runs from just before its append is sent to the
    moment the subscriber has it as a ``herald.Event``."""
    import msgspec

    encoder = msgspec.json.Encoder()
    latencies: list[float] = []
    total = int(W4_RATE * seconds)
    async with _client(url, token, ca) as producer, _client(url, token, ca) as consumer:
        head = (await producer.append(stream, [make_event(0)])).head
        sent_at: dict[int, float] = {}
        done = asyncio.Event()

        async def subscribe() -> None:
            async with consumer.subscribe(stream, head) as subscription:
                async for batch in subscription.batches():
                    now = time.perf_counter()
                    for event in batch:
                        latencies.append(now - sent_at[event.data["n"]])
                    if len(latencies) >= total:
                        done.set()
                        return

        task = asyncio.create_task(subscribe())
        await asyncio.sleep(0.5)
        start = time.perf_counter()
        n = 0
        in_flight: set[asyncio.Task[Any]] = set()
        while n < total:
            target = start + (n / W4_RATE)
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            batch = w4_batch(n)
            for i in range(n, n + W4_BATCH):
                sent_at[i] = now
            n += W4_BATCH
            # Appends are not awaited one by one: the rate is the producer's, as it
            # would be for independent requests.
            t = asyncio.create_task(producer.append(stream, encoder.encode(batch)))
            in_flight.add(t)
            t.add_done_callback(in_flight.discard)
        await asyncio.wait_for(done.wait(), 30)
        await asyncio.gather(*in_flight)
        task.cancel()
    latencies.sort()
    count = len(latencies)
    return {
        "events": float(count),
        "p50_ms": latencies[count // 2] * 1000,
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000,
        "max_ms": latencies[-1] * 1000,
    }


_WORKLOADS: dict[str, Callable[..., Any]] = {"W1": _w1, "W2": _w2, "W4": _w4}


def _call(func: Callable[..., Any], args: tuple[Any, ...]) -> dict[str, float]:
    result = func(*args)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return dict(result)


def _child(queue: Any, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        queue.put(("ok", _call(func, args)))
    except BaseException as exc:  # report, don't hang the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def in_processes(copies: int, func: Callable[..., Any], *args: Any) -> list[dict[str, float]]:
    """Run ``func(*args)`` (sync or async) in ``copies`` fresh processes at once, each
    with its own interpreter and event loop."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    processes = [ctx.Process(target=_child, args=(queue, func, args)) for _ in range(copies)]
    for p in processes:
        p.start()
    results = [queue.get() for _ in processes]
    for p in processes:
        p.join()
    errors = [v for s, v in results if s != "ok"]
    if errors:
        raise RuntimeError(f"{getattr(func, '__name__', func)} failed: {errors[0]}")
    return [v for _, v in results]


def in_process(func: Callable[..., Any], *args: Any) -> dict[str, float]:
    return in_processes(1, func, *args)[0]


def run_in_process(name: str, *args: Any) -> dict[str, float]:
    """Run a workload (W1, W2, W4) in a fresh process."""
    return in_process(_WORKLOADS[name], *args)


def run_parallel(name: str, copies: int, *args: Any) -> list[dict[str, float]]:
    """``copies`` processes running the same workload at once."""
    return in_processes(copies, _WORKLOADS[name], *args)
