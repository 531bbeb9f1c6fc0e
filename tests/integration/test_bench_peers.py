"""``bench/peers.py`` at tiny sizes, against the real services, so it does not
rot. Figures are not checked: performance is measured by the benchmark itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.peers import SYSTEMS, TITLES, build_parser, run_peers

from ..conftest import require_service

SERVICES = {"nats": 4222, "redis": 6379, "postgres": 5432}


def bench(tmp_path: Path, *options: str) -> str:
    output = tmp_path / "BENCH.md"
    output.write_text("# Herald benchmarks\n\n## Other\n\nkept\n")
    args = build_parser().parse_args(["--events", "2000", "--runs", "1", "--w4-seconds", "0.5",
                                      "--output", str(output), *options])
    assert run_peers(args) == 0
    text = output.read_text()
    assert "## Other\n\nkept\n" in text  # the other sections stay
    return text[text.index("## Peers"):]


@pytest.mark.slow
@pytest.mark.parametrize("system", SYSTEMS)
def test_each_system_runs_w1_w2_w4(tmp_path: Path, system: str) -> None:
    if system in SERVICES:
        require_service(system, "127.0.0.1", SERVICES[system])
    section = bench(tmp_path, "--systems", system, "--workloads", "W1,W2,W4")
    table = section[section.index("| workload"):].split("\n\n")[0]
    header, _, *rows = table.splitlines()
    assert header == f"| workload | {TITLES[system]} |"
    labels = [row.split(" | ")[0] for row in rows]
    if system == "tls":  # TLS moves bytes only: there is no data to decode
        assert labels == ["| W1 append, events/s",
                          "| W2 catch-up read, events/s (events delivered)",
                          "| W4 latency, ms: p50 / **p99** / max"]
    else:
        assert labels == ["| W1 append, events/s",
                          "| W2 catch-up read, events/s (events delivered)",
                          "| W2 catch-up read, data used, events/s",
                          "| W4 latency, ms: p50 / **p99** / max"]
    for row in rows:
        assert "—" not in row and "not run" not in row, row
    assert f"**{TITLES[system]}** — " in section


@pytest.mark.slow
def test_four_readers_and_a_missing_service(tmp_path: Path) -> None:
    """W3 (four reader processes) on the raw file; a peer whose service is not there
    is reported as not run, and the rest still runs."""
    section = bench(tmp_path, "--systems", "file,redis", "--workloads", "W3",
                    "--redis-url", "redis://127.0.0.1:1/0")
    assert "| W3 four readers, events/s in total | **" in section
    assert "| not run |" in section
    assert "*Not run: not reachable at 127.0.0.1:1" in section
