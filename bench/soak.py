"""The soak: a real ``herald serve`` under a steady load for minutes, watched.

One producer appends at a fixed rate (by default half of W1, measured first on a
fresh server), batch after batch round the soak's streams, while live subscribers
(``--subscribers``, spread over a few client processes) each follow one stream from
position 0 and check that every event arrives once and in order.

Two shapes: by default every subscriber has a stream of its own (``--streams``: one
per subscriber), so the server delivers every event once — the rate the issue asks for
is reachable; with ``--fan-out`` all subscribers follow one stream, so the server
delivers every event ``--subscribers`` times over TLS, which on a small machine bounds
the rate the producer can keep. Every second the server's resident memory (``VmRSS`` in
``/proc/PID/status``), open file descriptors (``/proc/PID/fd``), threads and CPU time
are sampled into a CSV; a plot goes to ``docs/soak.png`` and the verdict — computed
from the samples after the warm-up — to BENCH.md's ``## Soak`` section.

Run from a checkout (not part of the installed package), with the venv's Python and
the ``bench`` extra (matplotlib): ``.venv/bin/python bench/soak.py`` (see ``--help``;
``make soak`` runs both shapes); not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from herald.bench import herald_server, machine_description, write_section
from herald.bench.workloads import BATCH, W1_IN_FLIGHT, make_event, run_in_process
from herald.client import AsyncClient

__all__ = ["main", "analyse", "Sample", "Verdict"]

STREAM = "soak"  # the streams are soak-0, soak-1, …
# How long subscribers get, after the producer stops, to reach the last event.
DEFAULT_DRAIN_SECONDS = 60.0
# Growth after the warm-up that still counts as "no growth": allocator and page
# noise, not a leak (a leak at the soak's rates grows by far more in minutes).
RSS_TOLERANCE_MIB = 8.0
RSS_TOLERANCE_FRACTION = 0.05
FD_TOLERANCE = 2


def stream_name(k: int) -> str:
    return f"{STREAM}-{k}"


# --- the client processes ------------------------------------------------------------


def _producer(url: str, token: str, ca: str, rate: float, batch: int, seconds: float,
              heads: Any) -> dict[str, float]:
    """Append ``batch`` events every ``batch / rate`` s for ``seconds``, the streams in
    turn, at most ``W1_IN_FLIGHT`` appends in flight: when the server is slower than
    the rate, the producer falls behind (and says so) rather than piling up requests.
    ``heads[k]`` is stream k's acknowledged head."""
    async def run() -> dict[str, float]:
        body = msgspec.json.encode([make_event(i) for i in range(batch)])
        window = asyncio.Semaphore(W1_IN_FLIGHT)
        acknowledged = 0
        tasks: set[asyncio.Task[None]] = set()
        async with AsyncClient(url, token=token, ca=ca) as client:

            async def append(k: int) -> None:
                nonlocal acknowledged
                try:
                    await client.append(stream_name(k), body)
                    acknowledged += batch
                    heads[k] += batch
                finally:
                    window.release()

            start = time.perf_counter()
            sent = 0
            worst_lag = 0.0
            while True:
                now = time.perf_counter()
                if now - start >= seconds:
                    break
                due = start + sent / rate
                if due > now:
                    await asyncio.sleep(min(due - now, seconds - (now - start)))
                    continue
                worst_lag = max(worst_lag, now - due)
                await window.acquire()
                task = asyncio.create_task(append(sent // batch % len(heads)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += batch
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - start
        return {"events": float(acknowledged), "seconds": elapsed,
                "rate": acknowledged / elapsed, "worst_lag_s": worst_lag}

    return asyncio.run(run())


def _subscribers(url: str, token: str, ca: str, indices: list[int], counts: Any,
                 heads: Any, done: Any, deadline: Any, ready: Any, body: bytes,
                 decode: bool) -> list[dict[str, Any]]:
    """Live subscriptions from position 0, subscriber i on stream ``i % len(heads)``.
    Each checks that every record starts where the last one ended (no gap, no
    duplicate, in order) and holds exactly the events the producer sent.
    ``counts[i]`` is subscriber i's next position; once ``done`` is set, ``heads`` are
    the streams' final heads.

    By default a subscriber reads the compact form (``codec.MEDIA_TYPE``) and checks
    records as bytes — the server does the same work for it as for any subscriber,
    and the client processes, which share this machine's cores with the server, stay
    light. With ``decode`` it is ``herald.AsyncClient.subscribe`` and every event is
    decoded to a ``herald.Event``."""

    def finished(i: int) -> bool:
        return bool(done.value) and counts[i] >= heads[i % len(heads)]

    async def follow_records(i: int, connected: asyncio.Event) -> dict[str, Any]:
        import aiohttp

        from herald import codec
        from herald.client import client_context

        expected = 0
        decoder = codec.RecordDecoder(verify=False)  # the bytes are compared instead
        tail = b'"e":' + body + b"}"
        connector = aiohttp.TCPConnector(ssl=client_context(Path(ca)))
        async with aiohttp.ClientSession(connector=connector, read_bufsize=1 << 20,
                                         timeout=aiohttp.ClientTimeout(total=None)) as http, \
                http.get(f"{url}/v1/streams/{stream_name(i % len(heads))}/events", params={
                    "from": "0", "follow": "true"}, headers={
                    "Accept": codec.MEDIA_TYPE, "Authorization": f"Bearer {token}"}) as answer:
            if answer.status != 200:
                return {"index": i, "received": 0, "problem": f"HTTP {answer.status}"}
            while True:
                chunk = await answer.content.readany()
                if not chunk:
                    return {"index": i, "received": expected,
                            "problem": "the server ended the subscription"}
                for record in decoder.feed(chunk):
                    if record.count == 0:  # a heartbeat
                        continue
                    if record.base != expected:
                        return {"index": i, "received": expected, "problem":
                                f"expected position {expected}, got {record.base}"}
                    if not record.raw.endswith(tail):
                        return {"index": i, "received": expected, "problem":
                                f"events {record.base}… are not the ones appended"}
                    expected = record.end
                counts[i] = expected
                connected.set()
                if finished(i):
                    return {"index": i, "received": expected, "problem": ""}

    async def follow_events(i: int, connected: asyncio.Event) -> dict[str, Any]:
        expected = 0
        async with AsyncClient(url, token=token, ca=ca) as client, \
                client.subscribe(stream_name(i % len(heads)), 0) as subscription:
            async for events in subscription.batches():
                first, last = events[0], events[-1]
                if first.position != expected or last.position != expected + len(events) - 1:
                    return {"index": i, "received": expected, "problem":
                            f"expected position {expected}, got {first.position}…"}
                if first.data["order_id"] != f"ord-{first.position % BATCH:012d}":
                    return {"index": i, "received": expected, "problem":
                            f"event {first.position} is not the one appended"}
                expected += len(events)
                counts[i] = expected
                connected.set()
                if finished(i):
                    break
        return {"index": i, "received": expected, "problem": ""}

    async def run() -> list[dict[str, Any]]:
        follow = follow_events if decode else follow_records
        connected = {i: asyncio.Event() for i in indices}
        tasks = {i: asyncio.create_task(follow(i, connected[i])) for i in indices}
        waiting: asyncio.Future[Any] = asyncio.gather(*(e.wait() for e in connected.values()))
        futures: list[asyncio.Future[Any]] = [waiting, *tasks.values()]
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
        ready.put(len(indices))
        # A subscriber at the head waits for the next event: stop those at the final
        # head, and everyone at the deadline.
        while not all(t.done() for t in tasks.values()):
            await asyncio.sleep(0.25)
            for i, task in tasks.items():
                if not task.done() and (finished(i) or (
                        deadline.value and time.time() > deadline.value)):
                    task.cancel()
        waiting.cancel()
        results = []
        for i, task in tasks.items():
            if task.cancelled():
                results.append({"index": i, "received": counts[i], "problem": ""})
            elif task.exception() is not None:
                results.append({"index": i, "received": counts[i],
                                "problem": repr(task.exception())})
            else:
                results.append(task.result())
        return results

    return asyncio.run(run())


def _child(queue: Any, func: Any, args: tuple[Any, ...]) -> None:
    try:
        queue.put(("ok", func(*args)))
    except BaseException as exc:
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


# --- sampling the server -------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    phase: str  # warm-up, steady, drain
    rss_mib: float
    fds: int
    threads: int
    cpu_percent: float
    head: int  # events acknowledged, all streams
    max_lag: int  # events the furthest-behind subscriber is behind its stream's head
    median_lag: int


def _read_proc(pid: int) -> tuple[float, int, int, float]:
    """RSS in MiB, open fds, threads, CPU seconds (user + system) of ``pid``."""
    rss_kib = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    # /proc/PID/stat: fields 14 and 15 (utime, stime) after the ")" of the name.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss_kib / 1024, fds, threads, cpu


# --- the verdict ---------------------------------------------------------------------


@dataclass
class Verdict:
    ok: bool
    rss_after_warmup: float
    rss_end: float
    rss_max: float
    rss_slope_mib_per_min: float  # fitted over the whole steady phase, for information
    rss_growth_mib: float  # the second half's peak above the first half's
    fds_after_warmup: int
    fds_end: int
    fds_min: int
    fds_max: int
    fds_growth: int  # the second half's peak above the first half's
    text: str


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys,
                                                                        strict=True)) / var


def analyse(samples: list[Sample]) -> Verdict:
    """No growth after warm-up: split the samples after the warm-up into two halves;
    the second half's peak RSS may not exceed the first half's by more than
    ``max(RSS_TOLERANCE_MIB, RSS_TOLERANCE_FRACTION × RSS)``, nor its peak of open
    fds the first half's by more than ``FD_TOLERANCE``.

    Peaks, not a fitted line: memory that steps up to a high-water mark (buffers of
    subscribers that happened to be behind at the same moment) and stays there is
    bounded, and a line through the step would call it growth; a leak keeps raising
    the peak, half after half."""
    steady = [s for s in samples if s.phase == "steady"]
    if len(steady) < 4:
        raise ValueError("not enough samples after the warm-up to judge")
    half = len(steady) // 2
    first, second = steady[:half], steady[half:]
    rss = [s.rss_mib for s in steady]
    fds = [s.fds for s in steady]
    rss_growth = max(s.rss_mib for s in second) - max(s.rss_mib for s in first)
    fd_growth = max(s.fds for s in second) - max(s.fds for s in first)
    slope = _slope([s.seconds / 60 for s in steady], rss)
    allowed = max(RSS_TOLERANCE_MIB, RSS_TOLERANCE_FRACTION * rss[0])
    rss_ok = rss_growth <= allowed
    fds_ok = fd_growth <= FD_TOLERANCE
    minutes = (second[0].seconds - first[0].seconds) / 60
    text = (
        f"RSS {rss[0]:.1f} MiB after the warm-up, {rss[-1]:.1f} MiB at the end, peak "
        f"{max(rss):.1f}; the second half's peak is {rss_growth:+.1f} MiB above the "
        f"first half's ({minutes:.1f} min earlier; allowed {allowed:.1f}; fitted slope "
        f"over the whole {slope:+.2f} MiB/min) — {'no growth' if rss_ok else '**grows**'}. "
        f"Open fds {fds[0]} after the warm-up, {fds[-1]} at the end (range "
        f"{min(fds)}–{max(fds)}; second half's peak {fd_growth:+d}) — "
        f"{'no growth' if fds_ok else '**grows**'}."
    )
    return Verdict(rss_ok and fds_ok, rss[0], rss[-1], max(rss), slope, rss_growth,
                   fds[0], fds[-1], min(fds), max(fds), fd_growth, text)


# --- the run -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/soak.py",
        description="Soak a real herald serve: a producer at a fixed rate, live "
                    "subscribers, RSS and open fds sampled every second.")
    parser.add_argument("--minutes", type=float, default=10.0, help="producing time (10)")
    parser.add_argument("--rate", type=float, default=None,
                        help="events/s (default: half of W1, measured first)")
    parser.add_argument("--subscribers", type=int, default=100, help="live subscribers (100)")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--streams", type=int, default=None,
                       help="streams the producer appends to in turn; subscriber i "
                            "follows stream i mod STREAMS (default: one per subscriber)")
    shape.add_argument("--fan-out", action="store_true",
                       help="one stream that every subscriber follows: the server "
                            "delivers every event SUBSCRIBERS times")
    # Two: the client processes share this machine's cores with the server, and four
    # of them, busy, leave the server a third of a core (CFS shares by thread).
    parser.add_argument("--processes", type=int, default=2,
                        help="client processes the subscribers are spread over (2)")
    parser.add_argument("--decode", action="store_true",
                        help="subscribers use herald.AsyncClient and decode every event "
                             "(default: they check the compact form's records as bytes)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"events per append ({BATCH})")
    parser.add_argument("--w1-events", type=int, default=1_000_000,
                        help="events for the W1 that sets the default rate (1,000,000)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of warm-up left out of the verdict "
                             "(default: a fifth of the run, at most 120)")
    parser.add_argument("--drain", type=float, default=DEFAULT_DRAIN_SECONDS,
                        help="seconds subscribers get to reach the last event after "
                             f"the producer stops ({DEFAULT_DRAIN_SECONDS:.0f})")
    parser.add_argument("--output", default="BENCH.md", help="report file (BENCH.md)")
    parser.add_argument("--csv", default=None,
                        help="samples (docs/soak.csv; with --fan-out docs/soak-fan-out.csv)")
    parser.add_argument("--plot", default=None,
                        help="plot (docs/soak.png; with --fan-out docs/soak-fan-out.png)")
    return parser


FAN_OUT_SECTION = "Soak: one stream, every subscriber on it"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = ("python bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv)
               ).rstrip()
    streams = 1 if args.fan_out else (args.streams or args.subscribers)
    if not 1 <= streams <= args.subscribers:
        raise SystemExit("--streams must be between 1 and --subscribers")
    name = "soak-fan-out" if args.fan_out else "soak"
    args.csv = args.csv or f"docs/{name}.csv"
    args.plot = args.plot or f"docs/{name}.png"
    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(120.0, seconds / 5)
    w1_rate = None
    rate = args.rate
    if rate is None:
        with herald_server() as server:
            w1 = run_in_process("W1", server.url, server.token, server.ca, "bench",
                                args.w1_events)
        w1_rate = w1["rate"]
        rate = w1_rate / 2
        print(f"W1 {w1_rate:,.0f} events/s: soaking at half, {rate:,.0f} events/s", flush=True)

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    ready = ctx.Queue()
    heads = ctx.Array("q", [args.batch] * streams, lock=False)  # the first batches
    done = ctx.Value("b", 0, lock=False)
    deadline = ctx.Value("d", 0.0, lock=False)
    counts = ctx.Array("q", args.subscribers, lock=False)
    samples: list[Sample] = []
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with herald_server() as server, open(args.csv, "w", newline="") as csv_file:
        pid = server.process.pid
        conn = (server.url, server.token, server.ca)
        # One batch on every stream before anyone subscribes: a subscriber that has
        # it is connected.
        body = msgspec.json.encode([make_event(i) for i in range(args.batch)])
        asyncio.run(_append_first(*conn, body, streams))
        groups = [list(range(args.subscribers))[p::args.processes]
                  for p in range(args.processes)]
        groups = [g for g in groups if g]
        subscribers = [ctx.Process(target=_child, args=(
            queue, _subscribers, (*conn, g, counts, heads, done, deadline, ready, body,
                                  args.decode)))
            for g in groups]
        for p in subscribers:
            p.start()
        connected = 0
        while connected < args.subscribers:
            try:
                connected += ready.get(timeout=120)
            except Exception:
                failure = queue.get(timeout=1) if not queue.empty() else "no answer"
                raise RuntimeError(f"subscribers did not connect: {failure}") from None
        print(f"{args.subscribers} subscribers connected; producing {rate:,.0f} events/s "
              f"for {args.minutes:g} min", flush=True)
        producer = ctx.Process(target=_child, args=(
            queue, _producer, (*conn, rate, args.batch, seconds, heads)))
        writer = csv.writer(csv_file)
        writer.writerow(["seconds", "phase", "rss_mib", "fds", "threads", "cpu_percent",
                         "acknowledged", "max_lag", "median_lag"])
        start = time.perf_counter()
        producer.start()
        _, _, _, cpu_before = _read_proc(pid)
        last_cpu, last_t = cpu_before, start
        next_sample = start + 1
        results: list[tuple[str, Any]] = []
        producer_result: dict[str, float] | None = None
        phase = "warm-up"
        while True:
            time.sleep(max(0.0, next_sample - time.perf_counter()))
            next_sample += 1
            now = time.perf_counter()
            rss, fds, threads, cpu = _read_proc(pid)
            lags = sorted(max(0, heads[i % streams] - counts[i])
                          for i in range(args.subscribers))
            elapsed = now - start
            if phase == "warm-up" and elapsed >= warmup:
                phase = "steady"
            if phase != "drain" and not producer.is_alive():
                phase = "drain"
                done.value = 1
                deadline.value = time.time() + args.drain
            sample = Sample(round(elapsed, 1), phase, round(rss, 2), fds, threads,
                            round(100 * (cpu - last_cpu) / (now - last_t), 1),
                            sum(heads) - streams * args.batch, lags[-1],
                            lags[len(lags) // 2])
            last_cpu, last_t = cpu, now
            samples.append(sample)
            writer.writerow([sample.seconds, sample.phase, sample.rss_mib, sample.fds,
                             sample.threads, sample.cpu_percent, sample.head,
                             sample.max_lag, sample.median_lag])
            csv_file.flush()
            if len(samples) % 10 == 0:
                print(f"{elapsed:6.0f} s {phase:8} RSS {rss:7.1f} MiB  fds {fds:4}  "
                      f"acknowledged {sample.head:>12,}  furthest behind "
                      f"{sample.max_lag:>10,}", flush=True)
            if phase == "drain" and all(not p.is_alive() for p in subscribers):
                break
        while not queue.empty() or len(results) < len(subscribers) + 1:
            results.append(queue.get(timeout=60))
        producer.join()
        for p in subscribers:
            p.join()
    errors = [v for s, v in results if s != "ok"]
    if errors:
        raise RuntimeError(f"soak client failed: {errors[0]}")
    subscriber_results: list[dict[str, Any]] = []
    for _, value in results:
        if isinstance(value, dict):
            producer_result = value
        else:
            subscriber_results += value
    assert producer_result is not None
    finals = {r["index"]: heads[r["index"] % streams] for r in subscriber_results}
    verdict = analyse(samples)
    plot(samples, Path(args.plot), warmup)
    report = render(args, command, streams, rate, w1_rate, warmup, producer_result,
                    finals, subscriber_results, samples, verdict)
    section = FAN_OUT_SECTION if args.fan_out else "Soak"
    write_section(Path(args.output), section, report)
    print(report)
    print(f"wrote {args.csv}, {args.plot} and the {section!r} section of {args.output}")
    return 0


async def _append_first(url: str, token: str, ca: str, body: bytes, streams: int) -> None:
    async with AsyncClient(url, token=token, ca=ca) as client:
        for k in range(streams):
            await client.append(stream_name(k), body)


def plot(samples: list[Sample], path: Path, warmup: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.seconds / 60 for s in samples]
    figure, (ax_rss, ax_fds, ax_head, ax_lag) = plt.subplots(4, 1, figsize=(9, 10),
                                                             sharex=True)
    ax_rss.plot(t, [s.rss_mib for s in samples], color="tab:blue")
    ax_rss.set_ylabel("server RSS (MiB)")
    ax_rss.set_ylim(0, 1.15 * max(s.rss_mib for s in samples))
    ax_fds.plot(t, [s.fds for s in samples], color="tab:orange")
    ax_fds.set_ylabel("open fds")
    ax_fds.set_ylim(0, 1.15 * max(s.fds for s in samples) + 1)
    ax_head.plot(t, [s.head / 1e6 for s in samples], color="black")
    ax_head.set_ylabel("acknowledged\n(millions of events)")
    ax_lag.plot(t, [s.max_lag for s in samples], label="furthest behind", color="tab:red")
    ax_lag.plot(t, [s.median_lag for s in samples], label="median", color="tab:green",
                linestyle="--")
    ax_lag.set_ylabel("subscribers behind\ntheir head (events)")
    ax_lag.set_ylim(0, 1.15 * max(max(s.max_lag for s in samples), 1))
    ax_lag.set_xlabel("minutes")
    ax_lag.legend(loc="upper left")
    drain = next((s.seconds / 60 for s in samples if s.phase == "drain"), None)
    for ax in (ax_rss, ax_fds, ax_head, ax_lag):
        ax.axvspan(0, warmup / 60, color="grey", alpha=0.15)
        if drain is not None:
            ax.axvspan(drain, t[-1], color="tab:blue", alpha=0.08)
        ax.grid(alpha=0.3)
    ax_rss.set_title("Herald soak (grey: warm-up, left out of the verdict; "
                     "blue: producer stopped, subscribers finishing)", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def render(args: argparse.Namespace, command: str, streams: int, rate: float,
           w1_rate: float | None, warmup: float, producer: dict[str, float],
           finals: dict[int, int], subscribers: list[dict[str, Any]],
           samples: list[Sample], verdict: Verdict) -> str:
    complete = [s for s in subscribers
                if s["received"] == finals[s["index"]] and not s["problem"]]
    problems = [s for s in subscribers if s["problem"]]
    behind = sorted(finals[s["index"]] - s["received"] for s in subscribers)
    steady = [s for s in samples if s.phase == "steady"]
    cpu = statistics.median(s.cpu_percent for s in steady) if steady else 0.0
    lag = statistics.median(s.max_lag for s in steady) if steady else 0
    fan_out = args.subscribers / streams  # deliveries per event appended
    origin = (f"half of W1 measured just before on a fresh server ({w1_rate:,.0f} "
              "events/s)" if w1_rate else "given with `--rate`")
    where = "to one stream" if streams == 1 else f"to {streams} streams in turn"
    following = ("all following that stream" if streams == 1 else
                 "each following a stream of its own" if fan_out == 1 else
                 f"{fan_out:g} on each stream on average")
    shape = (f"{args.subscribers} live subscribers {following} from position 0, so the "
             "server sends every event " + ("once" if fan_out == 1 else f"{fan_out:g} times"))
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_description()}.",
        f"Command: `{command}`.",
        "",
        f"A real `herald serve` (files engine, TLS) for {args.minutes:g} min: one producer "
        f"appending batches of {args.batch:,} {where} at {rate:,.0f} events/s ({origin}, "
        f"at most {W1_IN_FLIGHT} appends in flight); {shape}. The subscribers are spread "
        f"over {args.processes} client processes and "
        + ("decode every event with `herald.AsyncClient`" if args.decode else
           "check the compact form's records: positions in order, the bytes the "
           "producer sent") + ". The "
        "server's RSS (`/proc/PID/status` VmRSS) and open file descriptors "
        "(`/proc/PID/fd`) were sampled every second "
        f"([{args.csv}]({args.csv}), plotted below); the first {warmup:.0f} s are "
        "the warm-up, left out of the verdict.",
        "",
        f"![RSS, open fds, events acknowledged and subscribers' lag during the soak]"
        f"({args.plot})",
        "",
        "| | |",
        "|---|---|",
        f"| **verdict** | **{'no growth after warm-up' if verdict.ok else 'GROWTH'}**: "
        f"{verdict.text} |",
        f"| producer | {int(producer['events']):,} events acknowledged in "
        f"{producer['seconds']:.0f} s = **{producer['rate']:,.0f} events/s** (target "
        f"{rate:,.0f}, {100 * producer['rate'] / rate:.0f} %; furthest behind schedule "
        f"{producer['worst_lag_s']:.2f} s) |",
        f"| subscribers | {len(complete)} of {len(subscribers)} received every event of "
        f"their stream in order with no gap or duplicate; {len(problems)} saw a problem"
        + (f" (first: {problems[0]['problem']})" if problems else "")
        + f"; at the end the furthest behind was {behind[-1]:,} events short. After "
        f"the warm-up the furthest-behind subscriber trailed its head by a median of "
        f"{lag:,.0f} events |",
        f"| server CPU | median {cpu:.0f} % of one core after the warm-up |",
    ]
    if producer["rate"] < 0.95 * rate:
        lines += ["", f"The producer reached {100 * producer['rate'] / rate:.0f} % of the "
                      f"target rate: the server sends every event {fan_out:g} times over "
                      "TLS, and the server and the client processes share this machine's "
                      f"cores; the appends waited (at most {W1_IN_FLIGHT} in flight) "
                      "rather than piling up."]
    if len(complete) < len(subscribers) and not problems:
        lines += ["", f"Subscribers that did not reach the last event were behind when the "
                      f"{args.drain:.0f} s drain ended: the fan-out ({fan_out:g} × "
                      f"{rate:,.0f} events/s) is more than this machine delivers; every "
                      "batch they did receive was checked in order."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
