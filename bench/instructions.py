"""Before and after in instructions: what W1, W2 and W4 cost the CPU, counted, not timed.

``bench/compare.py`` times the workloads; on a shared two-core machine the same code
ranges ±25 % between runs, more than a 5 % bar. This script counts instead:
valgrind's callgrind tool counts the instructions a process executes, the same
count for the same work whatever else the machine is doing. Each side (a commit,
checked out with ``git worktree``, and the working tree) runs

* ``herald serve`` on the files engine under callgrind, and
* a client process (that side's ``herald.client``) under callgrind, doing one
  workload: W1 (batches of 1,000 events of 250 bytes, 4 in flight), W2 (read them
  back, compact form), W2d (the same, every event's ``data`` decoded), W4 (appends
  of 10 events, one at a time);

and the same pair again doing nothing but connecting and one small append (the
baseline: start-up, imports, TLS set-up). The difference, divided by the events
(or the appends for W4), is what one event (one append) costs the server and the
client. Data directories are made before the count (certificates, token), so key
generation is not counted. fsync's wait is not an instruction: W4's latency is
mostly the disk's, and these figures say what Herald adds to it.

    .venv/bin/python bench/instructions.py --commit 9c37953
    .venv/bin/python bench/instructions.py --commit 9c37953 --batches 40 --output /tmp/i.md

Each count is one run (callgrind's counts repeat to within a fraction of a percent;
the script says the spread of the baseline if asked to repeat it, ``--repeat``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTION = "Redesign: before vs after, in instructions"
PYTHON = sys.executable

# The client's work, as a program run under callgrind with that side's tree first on
# sys.path. Only public client calls that both old and new trees have.
CLIENT = textwrap.dedent('''
    import asyncio, sys, msgspec
    from herald.client import AsyncClient

    def event(i):
        return {"type": "OrderPlaced", "data": {
            "order_id": f"ord-{i:012d}", "customer": f"cust-{i % 10007:08d}",
            "sku": f"SKU-{i % 997:06d}", "quantity": i % 7 + 1, "price": 19.99,
            "currency": "EUR", "note": "x" * 89}}

    async def main(url, token, ca, workload, units):
        async with AsyncClient(url, token=token, ca=ca) as client:
            await client.append("warm", [event(0)])
            if workload == "W1":
                body = msgspec.json.encode([event(i) for i in range(1000)])
                gate = asyncio.Semaphore(4)
                async def one():
                    async with gate:
                        await client.append("s", body)
                await asyncio.gather(*(one() for _ in range(units)))
            elif workload in ("W2", "W2d"):
                async with client.subscribe("s", 0, follow=False) as sub:
                    async for batch in sub.batches():
                        if workload == "W2d":
                            for e in batch:
                                e.data
            elif workload == "W4":
                for n in range(units):
                    await client.append("w4", [event(n * 10 + k) for k in range(10)])

    asyncio.run(main(*sys.argv[1:5], int(sys.argv[5])))
''')


def _count(output: str) -> int:
    match = re.search(r"Collected : (\d+)", output)
    if match is None:
        raise RuntimeError("callgrind printed no count:\n" + output[-2000:])
    return int(match.group(1))


def _callgrind(*command: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command]


@dataclass
class Side:
    name: str
    tree: Path

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(self.tree))

    @contextmanager
    def server(self, data: Path, counted: bool) -> Iterator[tuple[str, list[str]]]:
        """``herald serve`` on ``data``; yields its URL and, after it stops, the
        list gets its output (callgrind's count among it)."""
        command = [PYTHON, "-m", "herald.cli", "serve", "--data", str(data),
                   "--listen", "127.0.0.1:0"]
        process = subprocess.Popen(_callgrind(*command) if counted else command,
                                   cwd=self.tree, env=self.env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        seen: list[str] = []
        url = None
        for line in process.stdout:
            seen.append(line)
            if match := re.search(r"listening on (https://\S+)", line):
                url = match.group(1)
                break
        if url is None:
            process.wait()
            raise RuntimeError(f"{self.name}: herald serve did not start:\n" + "".join(seen))
        output: list[str] = []
        try:
            yield url, output
        finally:
            process.send_signal(signal.SIGTERM)
            output.append(process.stdout.read())
            process.wait()
            process.stdout.close()

    def run(self, workload: str, units: int, data: Path, url: str) -> int:
        token = (data / "admin-token").read_text().strip()
        result = subprocess.run(
            _callgrind(PYTHON, "-c", CLIENT, url, token, str(data / "tls" / "ca.pem"),
                       workload, str(units)),
            cwd=self.tree, env=self.env(), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{self.name} {workload}: client failed:\n{result.stderr[-3000:]}")
        return _count(result.stderr)


def measure(side: Side, workload: str, units: int, filled: Path | None) -> tuple[int, int]:
    """(server, client) instructions for ``workload`` with ``units``, on a copy of the
    data directory ``filled`` (for reads) or a fresh one."""
    base = Path(tempfile.mkdtemp(prefix="herald-instructions-"))
    data = base / "data"
    try:
        if filled is not None:
            shutil.copytree(filled, data)
        else:
            with side.server(data, counted=False):
                pass  # certificates and token, outside the count
        with side.server(data, counted=True) as (url, output):
            client = side.run(workload, units, data, url)
        return _count("".join(output)), client
    finally:
        shutil.rmtree(base, ignore_errors=True)


def fill(side: Side, batches: int) -> Path:
    """A data directory holding stream ``s``: ``batches`` W1 batches (not counted)."""
    data = Path(tempfile.mkdtemp(prefix="herald-instructions-fill-")) / "data"
    with side.server(data, counted=False) as (url, _):
        token = (data / "admin-token").read_text().strip()
        subprocess.run([PYTHON, "-c", CLIENT, url, token, str(data / "tls" / "ca.pem"),
                        "W1", str(batches)], cwd=side.tree, env=side.env(), check=True)
    return data


def per_unit(side: Side, batches: int, appends: int) -> dict[str, tuple[float, float]]:
    """Server and client instructions per event (W1, W2, W2d) and per append (W4)."""
    out: dict[str, tuple[float, float]] = {}
    base_server, base_client = measure(side, "none", 0, None)
    server, client = measure(side, "W1", batches, None)
    events = batches * 1000
    out["W1"] = ((server - base_server) / events, (client - base_client) / events)
    filled = fill(side, batches)
    try:
        read_base = measure(side, "none", 0, filled)
        for workload in ("W2", "W2d"):
            server, client = measure(side, workload, 0, filled)
            out[workload] = ((server - read_base[0]) / events, (client - read_base[1]) / events)
    finally:
        shutil.rmtree(filled.parent, ignore_errors=True)
    server, client = measure(side, "W4", appends, None)
    out["W4"] = ((server - base_server) / appends, (client - base_client) / appends)
    return out


LABELS = {
    "W1": "W1 append, per event",
    "W2": "W2 catch-up read, per event",
    "W2d": "W2 read, data used, per event",
    "W4": "W4 append of 10 events, per append",
}


def render(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], *,
           commit: str, head: str, command: str, batches: int, appends: int) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with valgrind's callgrind "
        f"({_valgrind_version()}), Python {sys.version.split()[0]}. Command: `{command}`. "
        f"Before: `{commit}`; after: the working tree (HEAD `{head}`). W1: {batches} "
        f"batches of 1,000 events; W2 and W2d read those {batches * 1000:,} events back; "
        f"W4: {appends} appends of 10 events. Files engine, TLS, the Python client. "
        "Instructions counted, each minus a baseline run that only connects and "
        "appends one event; fewer is cheaper. Ratio: before ÷ after (as a throughput "
        "ratio: above 1, the after side does the same work with fewer instructions).",
        "",
        "| workload | process | before | after | before ÷ after |",
        "|---|---|---|---|---|",
    ]
    for workload, label in LABELS.items():
        for index, process in enumerate(("server", "client")):
            b, a = before[workload][index], after[workload][index]
            ratio = f"{b / a:.2f}×" if a > 0 else "—"
            lines.append(f"| {label} | {process} | {b:,.0f} | {a:,.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def _valgrind_version() -> str:
    return subprocess.run(["valgrind", "--version"], capture_output=True, text=True,
                          check=False).stdout.strip() or "valgrind"


@contextmanager
def worktree(commit: str) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="herald-before-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(directory), commit],
                   cwd=REPO, check=True, capture_output=True)
    try:
        yield directory
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(directory)], cwd=REPO,
                       check=False, capture_output=True)


def write_section(path: Path, body: str) -> None:
    text = path.read_text()
    heading = f"## {SECTION}\n"
    section = f"{heading}\n{body}\n"
    if heading in text:
        start = text.index(heading)
        rest = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[rest + 1:] if rest >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="HEAD", help="the before side (default HEAD)")
    parser.add_argument("--batches", type=int, default=40, help="W1 batches of 1,000 events")
    parser.add_argument("--appends", type=int, default=300, help="W4 appends")
    parser.add_argument("--output", type=Path, default=REPO / "BENCH.md",
                        help="the file whose section to write (default BENCH.md)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/instructions.py needs valgrind (Debian: apt-get install valgrind)")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                          capture_output=True, check=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", args.commit], cwd=REPO, text=True,
                            capture_output=True, check=True).stdout.strip()
    with worktree(commit) as tree:
        before = per_unit(Side("before", tree), args.batches, args.appends)
        print("before", before, flush=True)
    after = per_unit(Side("after", REPO), args.batches, args.appends)
    print("after", after, flush=True)
    command = "python bench/instructions.py " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])
    body = render(before, after, commit=commit, head=head, command=command.strip(),
                  batches=args.batches, appends=args.appends)
    if args.output.exists():
        write_section(args.output, body)
    else:
        args.output.write_text(f"## {SECTION}\n\n{body}")
    print(body)
    print(f"wrote '{SECTION}' to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
