"""The benchmark reports' arithmetic, on made-up figures."""

from __future__ import annotations

import pytest

from herald.bench.peers import Results, render_report
from herald.bench.soak import Sample, analyse


def samples(rss: list[float], fds: list[int], warmup: int = 5) -> list[Sample]:
    return [Sample(float(t), "warm-up" if t < warmup else "steady", r, f, 10, 50.0,
                   1000 * t, 1000, 500)
            for t, (r, f) in enumerate(zip(rss, fds, strict=True))]


def test_flat_memory_after_a_warm_up_is_no_growth() -> None:
    rss = [50, 80, 100, 110, 120] + [120 + (i % 3) * 0.5 for i in range(600)]
    verdict = analyse(samples(rss, [20] * 605))
    assert verdict.ok
    assert verdict.rss_after_warmup == pytest.approx(120, abs=1)
    assert "no growth" in verdict.text and "grows" not in verdict.text


def test_a_step_to_a_high_water_mark_is_no_growth() -> None:
    """Memory that steps up once (buffers that were full at the same moment) and
    stays: bounded, although a line fitted through it slopes up."""
    rss = [100.0] * 5 + [140.0] * 100 + [165.0] * 500
    verdict = analyse(samples(rss, [20] * 605))
    assert verdict.ok, verdict.text
    assert verdict.rss_slope_mib_per_min > 1
    assert verdict.rss_growth_mib == 0


def test_a_slow_leak_is_growth() -> None:
    rss = [100.0] * 5 + [100 + i * 0.05 for i in range(600)]  # 3 MiB a minute
    verdict = analyse(samples(rss, [20] * 605))
    assert not verdict.ok
    assert verdict.rss_slope_mib_per_min == pytest.approx(3.0, rel=0.01)
    assert verdict.rss_growth_mib == pytest.approx(15.0, rel=0.01)  # 5 minutes apart
    assert "**grows**" in verdict.text


def test_leaking_file_descriptors_is_growth() -> None:
    fds = [20] * 5 + [20 + i // 60 for i in range(600)]  # one more every minute
    verdict = analyse(samples([100.0] * 605, fds))
    assert not verdict.ok
    assert verdict.fds_max == 29


def test_too_short_a_soak_cannot_be_judged() -> None:
    with pytest.raises(ValueError, match="not enough samples"):
        analyse(samples([100.0] * 8, [20] * 8))


def test_peers_report_medians_ratios_and_ranges() -> None:
    results = Results()
    for rate, nats_rate in ((400.0, 100.0), (500.0, 200.0), (600.0, 150.0)):
        results.add("herald", "W1", {"rate": rate})
        results.add("nats", "W1", {"rate": nats_rate})
    for p99 in (2.0, 3.0, 4.0):
        results.add("herald", "W4", {"p50_ms": 1.0, "p99_ms": p99, "max_ms": 9.0})
        results.add("nats", "W4", {"p50_ms": 0.5, "p99_ms": p99 * 2, "max_ms": 9.0})
    results.skipped["redis"] = "not reachable"
    report = render_report(results, ["herald", "nats", "redis"], 1000, 3, 10.0, "cmd")
    assert "| W1 append, events/s | **500** | **150** | not run |" in report
    assert "| W4 latency, ms: p50 / **p99** / max | 1.00 / **3.00** / 9.0 | " \
           "0.50 / **6.00** / 9.0 | not run |" in report
    assert "| W1 append | 3.33× | — |" in report
    assert "| W4 latency (p99) | 0.50× | — |" in report
    assert "| W1 append | 400–600 | 100–200 | — |" in report
    assert "| W4 latency (p99) | 2.00–4.00 | 4.00–8.00 | — |" in report
    assert "*Not run: not reachable.*" in report


def test_peers_report_states_herald_against_the_physical_limits() -> None:
    results = Results()
    for system, w1, w2 in (("herald", 500.0, 900.0), ("file", 1000.0, 3000.0),
                           ("tls", 2000.0, 1800.0)):
        results.add(system, "W1", {"rate": w1})
        results.add(system, "W2", {"rate": w2})
    report = render_report(results, ["herald", "file", "tls"], 1000, 1, 10.0, "cmd")
    assert ("Herald against the physical limits: W1 append at 50% of the raw file + "
            "fdatasync and 25% of the loopback TLS; W2 catch-up read at 30% of the raw "
            "file + fdatasync and 50% of the loopback TLS.") in report


def test_peers_report_shows_the_servers_cpu_where_it_was_measured() -> None:
    results = Results()
    results.add("herald", "W1", {"rate": 500.0, "server_cpu": 97.4})
    results.add("herald", "W2", {"rate": 900.0})  # too short to say
    results.add("nats", "W1", {"rate": 40.0, "server_cpu": 28.0})
    results.add("nats", "W2", {"rate": 140.0, "server_cpu": 31.0})
    results.add("file", "W1", {"rate": 1000.0})
    report = render_report(results, ["herald", "nats", "file"], 1000, 1, 10.0, "cmd")
    assert "| server CPU during W1 / W2, % of one core | 97 / — | 28 / 31 | — |" in report


def test_tree_cpu_counts_this_process() -> None:
    import os

    from herald.bench.peers import _tree_cpu

    before = _tree_cpu(os.getpid())
    sum(i * i for i in range(300_000))
    assert _tree_cpu(os.getpid()) >= before > 0
