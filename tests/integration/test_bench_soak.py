"""bench/soak.py for a few seconds, so that it does not rot (the real soak runs for
minutes, by hand: it is not part of ``make test``)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bench.soak import main


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "section"), [
    ([], "## Soak\n"),  # a stream per subscriber
    (["--decode"], "## Soak\n"),
    (["--fan-out"], "## Soak: one stream, every subscriber on it\n"),
])
def test_a_short_soak_writes_samples_plot_and_verdict(tmp_path: Path, shape: list[str],
                                                      section: str) -> None:
    output, samples, plot = tmp_path / "BENCH.md", tmp_path / "soak.csv", tmp_path / "soak.png"
    assert main(["--minutes", "0.15", "--rate", "2000", "--subscribers", "3",
                 "--processes", "2", "--warmup", "2", "--drain", "20",
                 "--output", str(output), "--csv", str(samples), "--plot", str(plot),
                 *shape]) == 0
    with samples.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 6
    assert {row["phase"] for row in rows} >= {"warm-up", "steady"}
    assert all(float(row["rss_mib"]) > 10 and int(row["fds"]) > 3 for row in rows)
    assert plot.read_bytes().startswith(b"\x89PNG")
    report = output.read_text().split(section, 1)[1]
    assert "| **verdict** |" in report
    assert "3 of 3 received every event of their stream" in report
    assert "0 saw a problem" in report
    assert ("3 live subscribers all following that stream" in report) == ("--fan-out" in shape)
