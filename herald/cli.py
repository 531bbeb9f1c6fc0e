"""The ``herald`` command: a thin layer over the public API.

    herald serve   [--config FILE] [--data DIR] [--listen HOST:PORT]
    herald publish STREAM [FILE] [--batch N] [--expected-head N]   JSON lines in
    herald tail    STREAM [--from N] [--follow]                    JSON lines out
    herald streams [--json]
    herald check   --data DIR [--repair]
    herald bench   [--quick] [--output BENCH.md] [--engine files,postgres] [--dsn DSN]

Client commands find the server like this, first match wins: ``--url``/``--token``/
``--token-file``/``--ca`` flags; ``HERALD_URL``, ``HERALD_TOKEN``, ``HERALD_CA``;
then the local data directory (``--data``, default ``herald-data``): its admin token
and CA at ``https://127.0.0.1:8443``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import msgspec

from . import __version__
from .client import Client
from .config import DEFAULT_DATA_DIR, DEFAULT_LISTEN, load_config
from .errors import HeraldError

__all__ = ["main"]

_encoder = msgspec.json.Encoder()


def _client_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--url", help="Herald's URL, or several nodes' URLs separated by "
                                     "commas (env HERALD_URL)")
    group.add_argument("--token", help="API token (env HERALD_TOKEN)")
    group.add_argument("--token-file", help="file holding the API token")
    group.add_argument("--ca", help="CA certificate to verify the server (env HERALD_CA)")
    group.add_argument("--cert", help="client certificate (mutual TLS)")
    group.add_argument("--key", help="client certificate's private key")
    group.add_argument("--data", default=None,
                       help=f"local data directory for defaults (default {DEFAULT_DATA_DIR})")


def _connect(args: argparse.Namespace) -> Client:
    data = Path(args.data or os.environ.get("HERALD_DATA") or DEFAULT_DATA_DIR)
    # Several nodes: "https://a:8443,https://b:8443"; the client fails over.
    url = (args.url or os.environ.get("HERALD_URL") or f"https://{DEFAULT_LISTEN}").split(",")
    token = args.token or os.environ.get("HERALD_TOKEN")
    token_file = args.token_file
    if token is None and token_file is None and (data / "admin-token").exists():
        token_file = data / "admin-token"
    ca = args.ca or os.environ.get("HERALD_CA")
    if ca is None and (data / "tls" / "ca.pem").exists():
        ca = data / "tls" / "ca.pem"
    return Client(url, token=token, token_file=token_file, ca=ca, cert=args.cert, key=args.key)


# --- commands -----------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import run_server

    overrides: dict[str, Any] = {}
    if args.data:
        overrides["data"] = str(Path(args.data).absolute())
    if args.listen:
        overrides.setdefault("server", {})["listen"] = args.listen
    config = load_config(Path(args.config) if args.config else None, overrides)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run_server(config))
    return 0


def _read_lines(source: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            event = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            raise HeraldError(f"line {number}: not valid JSON ({exc})",
                              code="invalid_json") from exc
        if not isinstance(event, dict):
            raise HeraldError(f"line {number}: expected a JSON object (an event)",
                              code="invalid_event")
        yield number, event


def cmd_publish(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn

    path = Path(args.file) if args.file and args.file != "-" else None
    source: IO[str] = open(path, encoding="utf-8") if path else sys.stdin  # noqa: SIM115
    total = path.stat().st_size if path else None
    published = 0
    expected = args.expected_head
    with _connect(args) as client, source, Progress(
        TextColumn("publishing"), BarColumn(), TextColumn("{task.fields[events]} events"),
        TransferSpeedColumn(), disable=total is None or not sys.stderr.isatty(),
        console=_stderr_console(),
    ) as progress:
        task = progress.add_task("publish", total=total, events=0)
        batch: list[dict[str, Any]] = []
        read_bytes = 0

        def flush() -> None:
            nonlocal published, expected, batch
            if not batch:
                return
            result = client.append(args.stream, batch, expected_head=expected)
            published += result.appended
            if expected is not None:
                expected = result.head
            batch = []
            progress.update(task, completed=read_bytes, events=published)

        for _number, event in _read_lines(source):
            batch.append(event)
            read_bytes += len(_encoder.encode(event)) + 1
            if len(batch) >= args.batch:
                flush()
        flush()
    print(f"published {published} events to {args.stream}", file=sys.stderr)
    return 0


class _EventLine(msgspec.Struct):
    position: int
    id: str
    type: str
    data: msgspec.Raw
    meta: dict[str, str]
    time: datetime


def cmd_tail(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with _connect(args) as client, client.subscribe(args.stream, args.from_,
                                                    follow=args.follow) as subscription:
        for batch in subscription.batches():
            out.write(b"".join(
                _encoder.encode(_EventLine(e.position, e.id, e.type, e.raw, e.meta, e.time))
                + b"\n" for e in batch))
            out.flush()
    return 0


def cmd_streams(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        streams = client.streams()
    if args.json:
        sys.stdout.buffer.write(_encoder.encode(streams) + b"\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("stream", "head", "bytes")
    for info in streams:
        table.add_row(info.name, str(info.head), f"{info.bytes:,}")
    Console().print(table)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from .engines.files import check_data_dir

    data = Path(args.data or DEFAULT_DATA_DIR)
    with Progress(TextColumn("checking"), BarColumn(), DownloadColumn(),
                  console=_stderr_console(), transient=True) as progress:
        task = progress.add_task("check", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = check_data_dir(data, repair=args.repair, progress=report)
    for line in result.repaired:
        print(f"repaired: {line}")
    for damage in result.damage:
        print(f"DAMAGED: {damage.describe()}")
    for problem in result.index_problems:
        print(f"INDEX: {problem}")
    print(f"checked {result.streams} streams, {result.segments} segments, {result.records} "
          f"records, {result.events} events, {result.bytes:,} bytes: "
          f"{'clean' if result.clean else 'DAMAGED'}")
    return 0 if result.clean else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


# --- the parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herald", description="Herald, the event hub.")
    parser.add_argument("--version", action="version", version=f"herald {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the hub")
    serve.add_argument("--config", help="TOML config file")
    serve.add_argument("--data", help=f"data directory (default {DEFAULT_DATA_DIR})")
    serve.add_argument("--listen", help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    serve.set_defaults(func=cmd_serve)

    publish = commands.add_parser("publish", help="append JSON-lines events to a stream")
    publish.add_argument("stream")
    publish.add_argument("file", nargs="?", help="JSON lines file (default: stdin)")
    publish.add_argument("--batch", type=int, default=1000, help="events per batch (1000)")
    publish.add_argument("--expected-head", type=int, default=None,
                         help="fail unless the stream's head is this (then chain)")
    _client_options(publish)
    publish.set_defaults(func=cmd_publish)

    tail = commands.add_parser("tail", help="print a stream's events as JSON lines")
    tail.add_argument("stream")
    tail.add_argument("--from", dest="from_", type=int, default=0, help="first position (0)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep waiting for events")
    _client_options(tail)
    tail.set_defaults(func=cmd_tail)

    streams = commands.add_parser("streams", help="list streams")
    streams.add_argument("--json", action="store_true", help="print JSON")
    _client_options(streams)
    streams.set_defaults(func=cmd_streams)

    check = commands.add_parser("check", help="verify a data directory's records and indexes")
    check.add_argument("--data", help=f"data directory (default {DEFAULT_DATA_DIR})")
    check.add_argument("--repair", action="store_true", help="cut a torn tail, rewrite indexes")
    check.set_defaults(func=cmd_check)

    bench = commands.add_parser("bench", help="run the benchmark workloads, write BENCH.md")
    bench.add_argument("--quick", action="store_true", help="small sizes, one run (smoke test)")
    bench.add_argument("--runs", type=int, default=3, help="runs per workload (median taken)")
    bench.add_argument("--events", type=int, default=1_000_000, help="events for W1-W3")
    bench.add_argument("--output", default="BENCH.md", help="report file (BENCH.md)")
    bench.add_argument("--workloads", default="W1,W2,W3,W4", help="comma-separated list")
    bench.add_argument("--engine", default="files",
                       help="comma-separated engines to measure: files, postgres (files)")
    bench.add_argument("--dsn", default=None,
                       help="postgres: the database to use; a schema per run is made and "
                            "dropped (env HERALD_STORAGE_DSN; default "
                            "postgresql://postgres@127.0.0.1:5432/herald_bench)")
    bench.add_argument("--skip-bound", action="store_true",
                       help="postgres: skip the raw-PostgreSQL bound and the table design")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except HeraldError as exc:
        print(f"herald: error: {exc.message} [{exc.code}]", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
