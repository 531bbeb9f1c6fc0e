"""The benchmark reports' arithmetic, on made-up figures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.compare import (
    Samples,
    Side,
    bench_arguments,
    help_options,
    parse_progress,
    read_json,
    render_section,
)
from bench.peers import Results, render_report
from bench.soak import Sample, analyse
from herald.bench import Measure, write_json


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

    from bench.peers import _tree_cpu

    before = _tree_cpu(os.getpid())
    sum(i * i for i in range(300_000))
    assert _tree_cpu(os.getpid()) >= before > 0


# --- bench/compare.py ------------------------------------------------------------------

# What `herald bench --runs 1 --workloads W1,W2,W4 --engine files,postgres` printed at the
# commit before --json (9c37953), the postgres bound included: the before side of a
# comparison is read from these lines.
OLD_PROGRESS = """\
engine files
run 1/1 W1 append: 508,341 events/s
run 1/1 W2 read: 1,006,083 events/s
run 1/1 W2 read, every event's data decoded: 555,014 events/s
run 1/1 W4 latency: p50 2.53 ms, p99 3.77 ms, max 9.57 ms
wrote 'files engine: W1–W4' to /tmp/x/before 1-3.md
engine postgres
run 1/1 W1 append: 351,940 events/s
run 1/1 W2 read: 882,417 events/s
run 1/1 W2 read, every event's data decoded: 544,339 events/s
run 1/1 W4 latency: p50 3.00 ms, p99 4.42 ms, max 8.72 ms
wrote 'postgres engine: W1–W4' to /tmp/x/before 1-3.md
bound batch, copy: 1,044,048 events/s appended
bound batch, read: 1,552,999 events/s, 20.9 MB on disk
"""


def test_compare_reads_an_older_herald_bench_s_progress_lines() -> None:
    runs = parse_progress(OLD_PROGRESS)
    assert set(runs) == {"files", "postgres"}
    assert runs["files"] == {
        "W1": [{"rate": 508341.0}], "W2": [{"rate": 1006083.0}], "W2d": [{"rate": 555014.0}],
        "W4": [{"p50_ms": 2.53, "p99_ms": 3.77, "max_ms": 9.57}]}
    assert runs["postgres"]["W4"] == [{"p50_ms": 3.0, "p99_ms": 4.42, "max_ms": 8.72}]
    assert parse_progress("herald serve exited\n") == {}


def test_compare_reads_what_herald_bench_json_writes(tmp_path: Path) -> None:
    w1, w4, w3 = Measure("W1"), Measure("W4"), Measure("W3")
    w1.runs += [{"events": 1000.0, "seconds": 0.5, "rate": 2000.0},
                {"events": 1000.0, "seconds": 0.25, "rate": 4000.0},
                {"events": 1000.0, "seconds": 1.0, "rate": 1000.0}]
    w4.runs.append({"events": 10.0, "p50_ms": 1.5, "p99_ms": 2.5, "max_ms": 3.0})
    path = tmp_path / "bench.json"
    write_json(path, {"files": {"W1": w1, "W4": w4, "W3": w3}}, 1000, 3, "herald bench")
    document = json.loads(path.read_text())
    assert document["engines"]["files"]["W1"]["median"] == {
        "events": 1000.0, "seconds": 0.5, "rate": 2000.0}
    assert "W3" not in document["engines"]["files"]  # not run: left out
    assert read_json(path) == {"files": {"W1": w1.runs, "W4": w4.runs}}
    document["format"] = 2
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="unknown herald bench --json format"):
        read_json(path)


def test_compare_passes_each_side_the_options_its_herald_bench_has() -> None:
    old_help = ("usage: herald bench [-h] [--quick] [--runs RUNS] [--engine ENGINE]\n"
                "  --dsn DSN   postgres: the database\n  --skip-bound  postgres: skip\n"
                "  --peers  run the workloads against (NATS, --systems)")
    old = Side("before", Path("/tmp"), "", help_options(old_help))
    assert {"--runs", "--engine", "--dsn", "--skip-bound", "--peers", "--systems"} \
        <= old.options
    assert "--json" not in old.options
    assert bench_arguments(old, ["files", "postgres"], ["W1", "W2", "W4"], 1000, "pg://x") == [
        "--runs", "1", "--events", "1000", "--workloads", "W1,W2,W4",
        "--engine", "files,postgres", "--dsn", "pg://x", "--skip-bound"]
    new = Side("after", Path("/tmp"), "", {"--runs", "--engine", "--dsn", "--json"})
    assert bench_arguments(new, ["files"], ["W1"], 1000, "pg://x") == [
        "--runs", "1", "--events", "1000", "--workloads", "W1", "--engine", "files"]
    ancient = Side("before", Path("/tmp"), "", {"--runs"})
    assert "--engine" not in bench_arguments(ancient, ["files"], ["W1"], 1000, "pg://x")
    with pytest.raises(SystemExit, match="no --engine"):
        bench_arguments(ancient, ["postgres"], ["W1"], 1000, "pg://x")


def test_compare_section_medians_ranges_and_ratios() -> None:
    samples = Samples()
    for before, after in ((400.0, 600.0), (500.0, 450.0), (450.0, 500.0)):
        samples.add("before", {"files": {"W1": [{"rate": before}],
                                         "W4": [{"p50_ms": 2.0, "p99_ms": 4.0}]}}, {"W1", "W4"})
        samples.add("after", {"files": {"W1": [{"rate": after}],
                                        "W4": [{"p50_ms": 1.0, "p99_ms": 3.0}]}}, {"W1", "W4"})
    # W1's line is printed when only W2 is asked for; only what was asked is compared.
    samples.add("before", {"postgres": {"W1": [{"rate": 1.0}], "W2": [{"rate": 900.0}],
                                        "W2d": [{"rate": 300.0}]}}, {"W2"})
    samples.add("after", {"postgres": {"W2": [{"rate": 1800.0}]}}, {"W2"})
    section = render_section(
        samples, ["files", "postgres"], machine="a machine", command="python bench/compare.py",
        bench_command="herald bench --runs 1", before_command="herald bench --runs 1 --skip-bound",
        before="`abc1234` (subject)", after="the working tree", rounds=3,
        when=datetime(2026, 1, 2, 3, 4, tzinfo=UTC))
    assert section.startswith("Measured 2026-01-02 03:04 UTC on a machine.\n")
    assert "The after side ran `herald bench --runs 1`, the before side " \
           "`herald bench --runs 1 --skip-bound`," in section
    assert "| W1 append, events/s | files | **450** (400–500) | **500** (450–600) | 1.11× |" \
        in section
    assert "| W4 latency p99, ms | files | **4.00** (4.00–4.00) | **3.00** (3.00–3.00) | " \
           "0.75× |" in section
    assert "| W2 catch-up read, events/s | postgres | **900** | **1,800** | 2.00× |" in section
    assert "| W2 catch-up read, data used, events/s | postgres | **300** | — | — |" in section
    assert "| W1 append, events/s | postgres |" not in section
    assert "| W2 catch-up read, events/s | files |" not in section


# --- bench/instructions.py -------------------------------------------------------------


def test_instructions_section_states_both_processes_and_the_ratio(tmp_path: Path) -> None:
    from bench.instructions import SECTION, render, write_section

    before = {"W1": (10_000.0, 4_000.0), "W2": (4_000.0, 9_000.0),
              "W2d": (4_000.0, 17_000.0), "W4": (900_000.0, 700_000.0)}
    after = {"W1": (10_500.0, 4_000.0), "W2": (4_000.0, 9_000.0),
             "W2d": (4_000.0, 17_000.0), "W4": (1_000_000.0, 700_000.0)}
    body = render(before, after, commit="9c37953", head="abc1234",
                  command="python bench/instructions.py --commit 9c37953", batches=40,
                  appends=300)
    assert "| W1 append, per event | server | 10,000 | 10,500 | 0.95× |" in body
    assert "| W4 append of 10 events, per append | server | 900,000 | 1,000,000 | 0.90× |" in body
    assert "| W2 read, data used, per event | client | 17,000 | 17,000 | 1.00× |" in body
    bench = tmp_path / "BENCH.md"
    bench.write_text("# Bench\n\n## Other\n\nkept\n")
    write_section(bench, body)
    write_section(bench, body)  # rewritten in place, not appended twice
    text = bench.read_text()
    assert text.count(f"## {SECTION}") == 1 and "## Other\n\nkept" in text
