"""The tail cache: recent records per stream, bounded per stream and in total."""

from __future__ import annotations

from herald.codec import Record
from herald.hub.tail import TailCache


def record(base: int, count: int = 10, size: int = 100) -> Record:
    return Record(base, count, 0, b"x" * size)


def run(base: int, n: int, **kw: int) -> list[Record]:
    return [record(base + 10 * i, **kw) for i in range(n)]


def test_reads_from_the_record_holding_the_position() -> None:
    cache = TailCache()
    cache.extend("s", run(0, 5))
    got = cache.get("s", 25, 1 << 20)
    assert got is not None and [r.base for r in got] == [20, 30, 40]
    assert cache.get("s", 50, 1 << 20) is None  # at the head: not cached
    assert cache.get("other", 0, 1 << 20) is None
    got = cache.get("s", 0, 250)  # max_bytes: whole records, the first always
    assert got is not None and [r.base for r in got] == [0, 10]


def test_a_stream_keeps_its_newest_records_up_to_its_bound() -> None:
    cache = TailCache(stream_bytes=300, total_bytes=10_000)
    cache.extend("s", run(0, 10))
    got = cache.get("s", 70, 1 << 20)
    assert got is not None and [r.base for r in got] == [70, 80, 90]
    assert cache.get("s", 60, 1 << 20) is None  # dropped: older than the newest 300 bytes
    assert cache.bytes == 300


def test_the_run_stays_contiguous() -> None:
    cache = TailCache()
    cache.extend("s", run(0, 3))
    cache.extend("s", run(10, 3))  # overlaps: only the new one is kept
    got = cache.get("s", 0, 1 << 20)
    assert got is not None and [r.base for r in got] == [0, 10, 20, 30]
    cache.extend("s", run(100, 1))  # a gap: a new run starts
    assert cache.get("s", 30, 1 << 20) is None
    assert cache.bytes == 100
    cache.extend("s", run(0, 2))  # older than the run: ignored
    got = cache.get("s", 100, 1 << 20)
    assert got is not None and [r.base for r in got] == [100]


def test_all_streams_together_stay_within_the_total_least_recent_first() -> None:
    cache = TailCache(stream_bytes=1000, total_bytes=2500)
    for name in ("a", "b", "c"):
        cache.extend(name, run(0, 10))  # 1,000 bytes each
    assert cache.bytes <= 2500
    assert cache.get("a", 0, 1 << 20) is None  # written least recently: dropped
    assert cache.get("b", 0, 1 << 20) is not None
    assert cache.get("c", 0, 1 << 20) is not None
    cache.extend("b", run(100, 1))
    cache.extend("d", run(0, 10))
    assert cache.get("c", 0, 1 << 20) is None  # now c was the least recent
    assert cache.get("b", 100, 1 << 20) is not None
    cache.drop("b")
    assert cache.bytes == 1000
