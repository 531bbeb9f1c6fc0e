"""Before and after: a commit's ``herald bench`` against the working tree's, in one run.

The commit (``--commit``, default HEAD) is checked out with ``git worktree`` into a
temporary directory. Nothing is installed: both sides run with this Python (the
venv's, so the same dependencies), each with ``PYTHONPATH`` at its own tree and its
tree as the working directory, which puts that tree's ``herald`` first on
``sys.path`` — for the bench process, the ``herald serve`` it starts and the workload
processes it spawns (checked before the first round: each side must import
``herald`` from its own tree). Then, ``--rounds`` times, before and after in turn::

    herald bench --runs 1 --events N --workloads W1,W2,W4 --engine files,postgres

so that drift on the machine (a noisy neighbour, a warm cache) falls on both sides.
The medians of the rounds, with their range, and the ratio after ÷ before go to
BENCH.md's "Redesign: before vs after" section.

Capturing the figures: a side whose ``herald bench`` has ``--json PATH`` writes every
run's figures to a file, which is read back. An older commit has no ``--json``; its
``herald bench`` prints one progress line per run and workload
(``run 1/1 W1 append: 508,341 events/s``, ``… W4 latency: p50 2.53 ms, p99 3.77 ms,
max 9.57 ms``), the same lines since W1–W4 were first measured, and those are parsed.
Both sides are measured the same way either way: only the reading of the figures
differs. (Importing the old commit's bench modules and calling them would tie this
script to private functions whose names and signatures change between commits.)
An older commit's ``herald bench`` also measures the PostgreSQL bound after the
postgres engine unless told ``--skip-bound``; this script says so where the flag exists.

    .venv/bin/python bench/compare.py                     # HEAD against the working tree
    .venv/bin/python bench/compare.py --commit main~3 --rounds 5
    .venv/bin/python bench/compare.py --engines files --events 100000 --output /tmp/b.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_progress", "read_json", "Samples", "render_section", "SECTION"]

REPO = Path(__file__).resolve().parent.parent
SECTION = "Redesign: before vs after"
WORKLOADS = ("W1", "W2", "W4")
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/herald_bench"

# The figures compared: (workload, figure, label, higher is better). ``W2d`` is W2
# with every event's data decoded, which ``herald bench`` measures along with W2.
FIGURES = (
    ("W1", "rate", "W1 append, events/s", True),
    ("W2", "rate", "W2 catch-up read, events/s", True),
    ("W2d", "rate", "W2 catch-up read, data used, events/s", True),
    ("W4", "p50_ms", "W4 latency p50, ms", False),
    ("W4", "p99_ms", "W4 latency p99, ms", False),
)

# One ``herald bench`` run's figures: engine → workload → one dict per run.
Runs = dict[str, dict[str, list[dict[str, float]]]]

_NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"
_PROGRESS = (  # workload, pattern, the figures its groups are
    ("W1", re.compile(rf"^run \d+/\d+ W1 append: {_NUMBER} events/s$"), ("rate",)),
    ("W2", re.compile(rf"^run \d+/\d+ W2 read: {_NUMBER} events/s$"), ("rate",)),
    ("W2d", re.compile(rf"^run \d+/\d+ W2 read, every event's data decoded: {_NUMBER} "
                       r"events/s$"), ("rate",)),
    ("W4", re.compile(rf"^run \d+/\d+ W4 latency: p50 {_NUMBER} ms, p99 {_NUMBER} ms, "
                      rf"max {_NUMBER} ms$"), ("p50_ms", "p99_ms", "max_ms")),
)
_ENGINE = re.compile(r"^engine (\S+)$")
_ASKED = {"W2d": "W2"}  # the workload that measures it


def parse_progress(output: str) -> Runs:
    """The figures in ``herald bench``'s progress lines (any commit's), by engine.

    Other lines — the server's, the PostgreSQL bound's progress, "wrote …" — are
    ignored. The W1 line is printed even when only W2 was asked for (W1 fills the
    stream W2 reads); it is kept, and the caller takes the workloads it asked for."""
    runs: Runs = {}
    engine: str | None = None
    for line in output.splitlines():
        line = line.strip()
        if match := _ENGINE.match(line):
            engine = match.group(1)
            runs.setdefault(engine, {})
            continue
        for workload, pattern, keys in _PROGRESS:
            if (match := pattern.match(line)) and engine is not None:
                values = [float(g.replace(",", "")) for g in match.groups()]
                runs[engine].setdefault(workload, []).append(dict(zip(keys, values,
                                                                      strict=True)))
                break
    return runs


def read_json(path: Path) -> Runs:
    """The figures of a ``herald bench --json`` file."""
    document = json.loads(path.read_text())
    if document.get("format") != 1:
        raise ValueError(f"{path}: unknown herald bench --json format "
                         f"{document.get('format')!r}")
    return {engine: {workload: [dict(run) for run in entry["runs"]]
                     for workload, entry in workloads.items()}
            for engine, workloads in document["engines"].items()}


@dataclass
class Samples:
    """Every round's figures: side → engine → (workload, figure) → values."""

    values: dict[str, dict[str, dict[tuple[str, str], list[float]]]] = field(
        default_factory=dict)

    def add(self, side: str, runs: Runs, workloads: set[str]) -> None:
        for engine, by_workload in runs.items():
            for workload, figures in by_workload.items():
                if _ASKED.get(workload, workload) not in workloads:
                    continue
                for figure in figures:
                    for key, value in figure.items():
                        (self.values.setdefault(side, {}).setdefault(engine, {})
                         .setdefault((workload, key), []).append(value))

    def get(self, side: str, engine: str, workload: str, key: str) -> list[float]:
        return self.values.get(side, {}).get(engine, {}).get((workload, key), [])


def _format(value: float, rate: bool) -> str:
    return f"{value:,.0f}" if rate else f"{value:.2f}"


def _cell(values: list[float], rate: bool) -> str:
    if not values:
        return "—"
    median = _format(statistics.median(values), rate)
    if len(values) == 1:
        return f"**{median}**"
    return f"**{median}** ({_format(min(values), rate)}–{_format(max(values), rate)})"


def _ratio(before: list[float], after: list[float]) -> str:
    if not before or not after or statistics.median(before) == 0:
        return "—"
    return f"{statistics.median(after) / statistics.median(before):.2f}×"


def render_section(samples: Samples, engines: list[str], *, machine: str, command: str,
                   bench_command: str, before: str, after: str, rounds: int,
                   before_command: str | None = None, notes: list[str] | None = None,
                   when: datetime | None = None) -> str:
    """BENCH.md's "Redesign: before vs after" section. ``before_command``: the before
    side's ``herald bench`` command, when it is not ``bench_command``."""
    when = when or datetime.now(UTC)
    ran = (f"Each side ran `{bench_command}`" if before_command in (None, bench_command)
           else f"The after side ran `{bench_command}`, the before side `{before_command}`,")
    lines = [
        f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine}.",
        *[f"{note}." for note in notes or []],
        f"Command: `{command}`. Before: {before}, checked out with `git worktree`; after: "
        f"{after}. {ran} with this venv's Python and "
        f"`PYTHONPATH` at its own tree, before and after alternately, {rounds} "
        f"round{'s' if rounds != 1 else ''}; the median of the rounds is shown, with "
        "their range. Ratio: after ÷ before — for throughput above 1 is faster, for "
        "latency below 1 is quicker.",
        "",
        "| workload | engine | before | after | after ÷ before |",
        "|---|---|---|---|---|",
    ]
    for workload, key, label, _ in FIGURES:
        rate = key == "rate"
        for engine in engines:
            b = samples.get("before", engine, workload, key)
            a = samples.get("after", engine, workload, key)
            if not a and not b:
                continue
            lines.append(f"| {label} | {engine} | {_cell(b, rate)} | {_cell(a, rate)} | "
                         f"{_ratio(b, a)} |")
    return "\n".join(lines) + "\n"


# --- the two sides ---------------------------------------------------------------------


@dataclass
class Side:
    name: str  # "before" or "after"
    tree: Path
    description: str
    options: set[str] = field(default_factory=set)  # the flags its herald bench has

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.tree)
        env.pop("PYTHONSAFEPATH", None)  # would leave the working directory off sys.path
        return env

    def run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=self.tree, env=self.env(),
                              text=True, capture_output=True, **kwargs)


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, text=True,
                          capture_output=True).stdout.strip()


def help_options(help_text: str) -> set[str]:
    """The long options a ``--help`` text lists."""
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))


def prepare(side: Side) -> None:
    """Check that the side imports ``herald`` from its own tree; learn its options."""
    found = side.run("-c", "import herald; print(herald.__file__)")
    if found.returncode != 0:
        raise SystemExit(f"{side.name}: `import herald` failed in {side.tree}:\n"
                         f"{found.stderr.strip()}")
    location = Path(found.stdout.strip()).resolve()
    if not location.is_relative_to(side.tree.resolve()):
        raise SystemExit(f"{side.name}: herald was imported from {location}, not from "
                         f"{side.tree}")
    shown = side.run("-m", "herald.cli", "bench", "--help")
    if shown.returncode != 0:
        raise SystemExit(f"{side.name}: `herald bench --help` failed:\n{shown.stderr}")
    side.options = help_options(shown.stdout)


def bench_arguments(side: Side, engines: list[str], workloads: list[str], events: int,
                    dsn: str) -> list[str]:
    arguments = ["--runs", "1", "--events", str(events), "--workloads", ",".join(workloads)]
    if "--engine" in side.options:
        arguments += ["--engine", ",".join(engines)]
    elif engines != ["files"]:  # before the postgres engine: files only, no flag
        raise SystemExit(f"{side.name}: its herald bench has no --engine")
    if "postgres" in engines:
        if "--dsn" in side.options:
            arguments += ["--dsn", dsn]
        if "--skip-bound" in side.options:
            arguments.append("--skip-bound")
    return arguments


def run_round(side: Side, arguments: list[str], scratch: Path, label: str) -> Runs:
    """One ``herald bench`` on one side; its figures. Its output is echoed."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", label)  # "before 1/3" → "before-1-3"
    report, figures = scratch / f"{stem}.md", scratch / f"{stem}.json"
    command = ["-m", "herald.cli", "bench", *arguments, "--output", str(report)]
    use_json = "--json" in side.options
    if use_json:
        command += ["--json", str(figures)]
    print(f"[{label}] herald bench {shlex.join(arguments)}", flush=True)
    process = subprocess.Popen([sys.executable, *command], cwd=side.tree, env=side.env(),
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = []
    for line in process.stdout:
        output.append(line)
        print(f"[{label}] {line}", end="", flush=True)
    if process.wait() != 0:
        raise SystemExit(f"[{label}] herald bench failed (exit {process.returncode})")
    return read_json(figures) if use_json else parse_progress("".join(output))


@contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """A detached ``git worktree`` of ``commit`` in a temporary directory."""
    parent = Path(tempfile.mkdtemp(prefix="herald-compare-"))
    tree = parent / "tree"
    _git("worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        yield tree
    finally:
        try:
            _git("worktree", "remove", "--force", str(tree))
        except subprocess.CalledProcessError:
            shutil.rmtree(tree, ignore_errors=True)
            _git("worktree", "prune")
        shutil.rmtree(parent, ignore_errors=True)


def _describe_after() -> str:
    head = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"the working tree (HEAD `{head}`{' and uncommitted changes' if dirty else ''})"


# --- the run -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/compare.py",
        description="A commit's herald bench (W1, W2, W4) against the working tree's, "
                    "alternately in one run; writes BENCH.md's "
                    f"\"{SECTION}\" section.")
    parser.add_argument("--commit", default="HEAD", help="the before side (HEAD)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; each runs before, then after (3)")
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="events for W1 and W2 (1,000,000)")
    parser.add_argument("--engines", default="files,postgres",
                        help="comma-separated engines (files,postgres)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated, of W1, W2, W4 (W1,W2,W4)")
    parser.add_argument("--dsn", default=None,
                        help="postgres: the database (env HERALD_STORAGE_DSN; default "
                             f"{DEFAULT_DSN}); a schema per run is made and dropped")
    parser.add_argument("--output", default="BENCH.md", help="report file (BENCH.md)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write every round's figures, by side, to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    shown = sys.argv[1:] if argv is None else argv
    command = ("python bench/compare.py " + shlex.join(shown)).rstrip()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    if not workloads or set(workloads) - set(WORKLOADS):
        raise SystemExit(f"--workloads: a comma-separated list of {', '.join(WORKLOADS)}")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    dsn = args.dsn or os.environ.get("HERALD_STORAGE_DSN") or DEFAULT_DSN
    try:
        sha = _git("rev-parse", "--verify", f"{args.commit}^{{commit}}")
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"--commit {args.commit}: not a commit ({exc.stderr.strip()})") \
            from exc
    subject = _git("log", "-1", "--format=%s", sha)
    before_text = f"`{sha[:7]}` ({subject})"
    samples = Samples()
    raw: dict[str, list[Runs]] = {"before": [], "after": []}
    with worktree(sha) as tree, tempfile.TemporaryDirectory(prefix="herald-compare-") as tmp:
        sides = [Side("before", tree, before_text), Side("after", REPO, _describe_after())]
        for side in sides:
            prepare(side)
        if _git("status", "--porcelain", "--untracked-files=no") == "" and \
                _git("rev-parse", "HEAD") == sha:
            print("note: the working tree is that commit: both sides are the same code "
                  "(the ratios show the noise)", flush=True)
        arguments = {side.name: bench_arguments(side, engines, workloads, args.events, dsn)
                     for side in sides}
        for number in range(1, args.rounds + 1):
            for side in sides:
                runs = run_round(side, arguments[side.name], Path(tmp),
                                 f"{side.name} {number}/{args.rounds}")
                missing = [e for e in engines if not runs.get(e)]
                if missing:
                    raise SystemExit(f"{side.name}: no figures for {', '.join(missing)}")
                samples.add(side.name, runs, set(workloads))
                raw[side.name].append(runs)

    from herald.bench import machine_description, postgres_description, write_section

    notes = [postgres_description(dsn)] if "postgres" in engines else []
    bench_command = "herald bench " + shlex.join(arguments["after"])
    before_command = "herald bench " + shlex.join(arguments["before"])
    section = render_section(samples, engines, machine=machine_description(),
                             command=command, bench_command=bench_command,
                             before_command=before_command,
                             before=before_text, after=sides[1].description,
                             rounds=args.rounds, notes=notes)
    write_section(Path(args.output), SECTION, section)
    print(f"\n## {SECTION}\n\n{section}\nwrote {SECTION!r} to {args.output}")
    if args.json:
        Path(args.json).write_text(json.dumps({"before": before_text,
                                               "after": sides[1].description,
                                               "rounds": raw}, indent=2) + "\n")
        print(f"wrote every round's figures to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
