"""The ``herald`` command: a thin layer over the public API.

    herald serve   [--config FILE] [--data DIR] [--listen HOST:PORT]
    herald publish STREAM [FILE] [--batch N] [--expected-head N]   JSON lines in
    herald tail    STREAM [--from N] [--follow]                    JSON lines out
    herald streams [--json]
    herald gather status [--json] [--watch [--until-caught-up]]
    herald gather skip NAME POSITION                                skip a bad source row
    herald check   --data DIR [--repair]
    herald bench   [--quick] [--output BENCH.md] [--engine files,postgres] [--dsn DSN] [--json F]
    herald certs   ca | server NAME [--san NAME…] | client MODULE   PEM files; keys 0600
    herald users   hash                    a [[user]] password_hash (password on stdin)
    herald tokens  new | hash              a Bearer token and its token_sha256

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

from .client import Client
from .config import DEFAULT_DATA_DIR, DEFAULT_LISTEN, load_config
from .errors import HeraldError
from .version import __version__

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
    from .logsafe import LogFormatter
    from .node import Node

    overrides: dict[str, Any] = {}
    if args.data:
        overrides["data"] = str(Path(args.data).absolute())
    if args.listen:
        overrides.setdefault("server", {})["listen"] = args.listen
    config = load_config(Path(args.config) if args.config else None, overrides)
    # Each record one line of printable text, whoever logs it (herald.logsafe).
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    asyncio.run(Node(config).run())
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


# The --watch display refreshes this often: fast enough to see a backfill move, slow
# enough to cost the server nothing.
WATCH_INTERVAL_SECONDS = 1.0


def _gather_rows(statuses: list[Any]) -> Any:
    from rich.table import Table

    table = Table("gatherer", "stream", "state", "position", "source max", "head", "lag",
                  "lag s")
    table.columns[0].no_wrap = table.columns[2].no_wrap = True
    for g in statuses:
        table.add_row(g.name, g.stream, g.state.value, _num(g.source_position),
                      _num(g.source_max), _num(g.stream_head), _num(g.lag_events),
                      f"{g.lag_seconds:.1f}")
    return table


def _gather_errors(statuses: list[Any]) -> list[str]:
    """The last error of each gatherer that has one, for people."""
    return [f"{g.name}: last error ({g.last_error.at:%H:%M:%S}): {g.last_error.message} "
            f"[{g.last_error.code}]" for g in statuses if g.last_error is not None]


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def cmd_gather_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    with _connect(args) as client:
        if not args.watch:
            statuses = client.gatherers()
            if args.json:
                sys.stdout.buffer.write(_encoder.encode(statuses) + b"\n")
                return 0
            console = Console()
            console.print(_gather_rows(statuses))
            for line in _gather_errors(statuses):
                console.print(line, markup=False, highlight=False)
            return 0
        return _watch_gatherers(client, args.until_caught_up)


def _watch_gatherers(client: Client, until_caught_up: bool) -> int:
    """Progress bars (events in the stream against events in the source), live."""
    import time

    from rich.console import Group
    from rich.live import Live
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[state]}"), TimeRemainingColumn())
    tasks: dict[str, Any] = {}
    with Live(console=_stderr_console(), refresh_per_second=4) as live:
        while True:
            statuses = client.gatherers()
            for g in statuses:
                total = g.stream_head + (g.lag_events or 0)
                if g.name not in tasks:
                    tasks[g.name] = progress.add_task(f"{g.name} → {g.stream}", total=total,
                                                      state=g.state.value)
                progress.update(tasks[g.name], completed=g.stream_head, total=total,
                                state=g.state.value)
            parts: list[Any] = [progress]
            parts += [f"[red]{g.name}: {g.last_error.message}[/red]" for g in statuses
                      if g.last_error is not None
                      and g.state.value in ("retrying", "stopped-bad-row")]
            live.update(Group(*parts))
            if until_caught_up and all(g.state.value == "live" and not g.lag_events
                                       for g in statuses):
                return 0
            time.sleep(WATCH_INTERVAL_SECONDS)


def cmd_gather_skip(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        skip = client.gather_skip(args.name, args.position)
    print(f"gatherer {args.name}: the row at position {skip.position} is skipped "
          f"(recorded: {skip.by}, {skip.at:%Y-%m-%d %H:%M:%S} UTC)")
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


def _write_pair(pair: Any, out: Path, stem: str, force: bool) -> tuple[Path, Path]:
    cert_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
    existing = [str(p) for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        raise HeraldError(f"{' and '.join(existing)} already exist; use --force to replace",
                          code="file_exists")
    pair.write(cert_path, key_path)
    return cert_path, key_path


def _load_issuer(args: argparse.Namespace) -> Any:
    from .certs import load_ca

    data = Path(args.data or os.environ.get("HERALD_DATA") or DEFAULT_DATA_DIR)
    ca = Path(args.ca) if args.ca else data / "tls" / "ca.pem"
    ca_key = Path(args.ca_key) if args.ca_key else ca.with_suffix(".key")
    try:
        return load_ca(ca, ca_key)
    except FileNotFoundError as exc:
        raise HeraldError(f"cannot read the CA: {exc.filename} does not exist (make one "
                          "with `herald certs ca`, or pass --ca and --ca-key)",
                          code="no_ca") from exc
    except ValueError as exc:
        raise HeraldError(f"cannot read the CA ({ca}, {ca_key}): {exc}", code="no_ca") from exc


def _check_cert_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}", name):
        raise HeraldError(f"{name!r}: a name is letters, digits and . _ @ - (at most 128)",
                          code="invalid_name")


def _valid_until(pair: Any) -> str:
    return str(pair.cert.not_valid_after_utc.strftime("%Y-%m-%d"))


def cmd_certs_ca(args: argparse.Namespace) -> int:
    from .certs import create_ca

    pair = create_ca(args.name, days=args.days)
    cert, key = _write_pair(pair, Path(args.out), "ca", args.force)
    print(f"wrote {cert} (CA \"{args.name}\", valid until {_valid_until(pair)}) and {key} "
          "(mode 0600: keep it secret)")
    print(f'to accept client certificates it signs: [tls] client_ca = "{cert}"')
    return 0


def cmd_certs_server(args: argparse.Namespace) -> int:
    from .certs import create_server_cert

    names = [args.name, *(args.san or [])]
    for name in names:
        if not name or any(c.isspace() or c in "/\\" for c in name):
            raise HeraldError(f"{name!r} is not a host name or address", code="invalid_name")
    pair = create_server_cert(_load_issuer(args), names, days=args.days)
    cert, key = _write_pair(pair, Path(args.out), args.name, args.force)
    print(f"wrote {cert} (server certificate: serverAuth; names {', '.join(names)}; valid "
          f"until {_valid_until(pair)}) and {key} (mode 0600)")
    return 0


def cmd_certs_client(args: argparse.Namespace) -> int:
    from .certs import create_client_cert

    _check_cert_name(args.module)
    pair = create_client_cert(_load_issuer(args), args.module, days=args.days)
    cert, key = _write_pair(pair, Path(args.out), args.module, args.force)
    print(f"wrote {cert} (client certificate: clientAuth; CN={args.module}; valid until "
          f"{_valid_until(pair)}) and {key} (mode 0600)")
    print(f'its principal: [[principal]] name = "{args.module}", subject = "CN={args.module}"')
    return 0


def _secret_line(prompt: str) -> str:
    """One line from stdin (not echoed when stdin is a terminal); no newline kept."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def cmd_users_hash(args: argparse.Namespace) -> int:
    from .passwords import hash_password

    password = _secret_line("password: ").removesuffix("\r")
    if not password:
        raise HeraldError("no password on stdin (one line)", code="empty_password")
    print(hash_password(password))
    return 0


def cmd_tokens_new(args: argparse.Namespace) -> int:
    import secrets

    from .server.auth import ADMIN_TOKEN_BYTES, token_sha256

    token = secrets.token_urlsafe(ADMIN_TOKEN_BYTES)
    print(token)
    print(f'token_sha256 = "{token_sha256(token)}"')
    return 0


def cmd_tokens_hash(args: argparse.Namespace) -> int:
    from .server.auth import token_problem, token_sha256

    token = _secret_line("token: ").strip()
    if not token:
        raise HeraldError("no token on stdin (one line)", code="empty_token")
    problem = token_problem(token)
    if problem is not None:
        raise HeraldError(f"the token {problem}", code="weak_token")
    print(f'token_sha256 = "{token_sha256(token)}"')
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.peers:
        raise HeraldError("the peers benchmark is not part of the package: from a checkout "
                          "of Herald's repository, run `make bench-peers` (or "
                          "`.venv/bin/python bench/peers.py --help`)", code="moved")
    from .bench import run_bench

    return run_bench(args)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


# --- the parser ---------------------------------------------------------------------

# The ranges of the numeric flags: positions are 64-bit; one batch holds at most
# 65,536 events (the ids of a batch's prefix); a certificate valid for more than a
# century is a mistake (and past year 9999, an error in the date arithmetic).
MAX_POSITION = 2**63 - 1
MAX_PUBLISH_BATCH = 65_536
MAX_CERT_DAYS = 36_500


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``, else a usage error that
    names the flag (argparse adds it)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, got {value}")
        return value
    return parse


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
    publish.add_argument("--batch", type=_int_in(1, MAX_PUBLISH_BATCH), default=1000,
                         help="events per batch (1000)")
    publish.add_argument("--expected-head", type=_int_in(0, MAX_POSITION), default=None,
                         help="fail unless the stream's head is this (then chain)")
    _client_options(publish)
    publish.set_defaults(func=cmd_publish)

    tail = commands.add_parser("tail", help="print a stream's events as JSON lines")
    tail.add_argument("stream")
    tail.add_argument("--from", dest="from_", type=_int_in(0, MAX_POSITION), default=0,
                      help="first position (0)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep waiting for events")
    _client_options(tail)
    tail.set_defaults(func=cmd_tail)

    streams = commands.add_parser("streams", help="list streams")
    streams.add_argument("--json", action="store_true", help="print JSON")
    _client_options(streams)
    streams.set_defaults(func=cmd_streams)

    gather = commands.add_parser("gather", help="gatherers: status, skip a bad row")
    gather_commands = gather.add_subparsers(dest="gather_command", required=True,
                                            metavar="COMMAND")
    status = gather_commands.add_parser("status", help="every gatherer's state and lag")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--watch", action="store_true",
                        help="show backfill progress bars until interrupted")
    status.add_argument("--until-caught-up", action="store_true",
                        help="with --watch: stop once every gatherer is live with no lag")
    _client_options(status)
    status.set_defaults(func=cmd_gather_status)
    skip = gather_commands.add_parser(
        "skip", help="leave out the source row a gatherer is stopped at (recorded)")
    skip.add_argument("name", help="the gatherer")
    skip.add_argument("position", type=int, help="the source position it is stopped at")
    _client_options(skip)
    skip.set_defaults(func=cmd_gather_skip)

    check = commands.add_parser("check", help="verify a data directory's records and indexes")
    check.add_argument("--data", help=f"data directory (default {DEFAULT_DATA_DIR})")
    check.add_argument("--repair", action="store_true", help="cut a torn tail, rewrite indexes")
    check.set_defaults(func=cmd_check)

    bench = commands.add_parser("bench", help="run the benchmark workloads, write BENCH.md")
    bench.add_argument("--quick", action="store_true", help="small sizes, one run (smoke test)")
    bench.add_argument("--runs", type=int, default=3, help="runs per workload (median taken)")
    bench.add_argument("--events", type=int, default=1_000_000, help="events for W1-W3")
    bench.add_argument("--output", default="BENCH.md", help="report file (BENCH.md)")
    bench.add_argument("--workloads", default="W1,W2,W3,W4",
                       help="comma-separated list; G1 (gather backfill) and G2 (gather "
                            "latency) need PostgreSQL and MariaDB")
    bench.add_argument("--pg-admin", help="G1/G2: a PostgreSQL DSN allowed to create "
                                          "databases (postgresql://postgres@127.0.0.1:5432/postgres)")
    bench.add_argument("--mysql", help="G2: a MariaDB/MySQL URL allowed to create databases "
                                       "(mysql://root@127.0.0.1:3306)")
    bench.add_argument("--engine", default="files",
                       help="comma-separated engines to measure: files, postgres (files)")
    bench.add_argument("--dsn", default=None,
                       help="postgres: the database to use; a schema per run is made and "
                            "dropped (env HERALD_STORAGE_DSN; default "
                            "postgresql://postgres@127.0.0.1:5432/herald_bench)")
    bench.add_argument("--json", metavar="PATH", default=None,
                       help="also write every run's figures and their medians, by engine "
                            "and workload, to this JSON file")
    # The comparisons with other systems moved out of the package, to the repository's
    # bench/ directory; say where rather than "unrecognized arguments".
    bench.add_argument("--peers", action="store_true", help=argparse.SUPPRESS)
    bench.add_argument("--skip-bound", action="store_true", help=argparse.SUPPRESS)
    bench.set_defaults(func=cmd_bench)

    certs = commands.add_parser("certs", help="make a CA, server and client certificates")
    kinds = certs.add_subparsers(dest="kind", required=True, metavar="KIND")

    from .certs import CA_DAYS, LEAF_DAYS

    def cert_options(sub: argparse.ArgumentParser, issued: bool) -> None:
        days = LEAF_DAYS if issued else CA_DAYS
        sub.add_argument("--out", default=".", help="directory to write to (.)")
        sub.add_argument("--days", type=_int_in(1, MAX_CERT_DAYS), default=days,
                         help=f"validity in days ({days})")
        sub.add_argument("--force", action="store_true", help="replace existing files")
        if issued:
            sub.add_argument("--ca", help="the CA certificate that signs "
                                          f"(default {DEFAULT_DATA_DIR}/tls/ca.pem)")
            sub.add_argument("--ca-key", help="its private key (default: --ca with .key)")
            sub.add_argument("--data", default=None, help="data directory for the default CA")

    ca = kinds.add_parser("ca", help="a CA: ca.pem and ca.key")
    ca.add_argument("--name", default="Herald modules CA", help="the CA's common name")
    cert_options(ca, issued=False)
    ca.set_defaults(func=cmd_certs_ca)
    server_cert = kinds.add_parser("server", help="a server certificate: NAME.pem, NAME.key")
    server_cert.add_argument("name", help="the main host name or address (also a SAN)")
    server_cert.add_argument("--san", action="append", metavar="NAME",
                             help="another host name or IP address clients use (repeat)")
    cert_options(server_cert, issued=True)
    server_cert.set_defaults(func=cmd_certs_server)
    client_cert = kinds.add_parser("client", help="a client certificate: MODULE.pem, .key")
    client_cert.add_argument("module", help="the module: the certificate's CN")
    cert_options(client_cert, issued=True)
    client_cert.set_defaults(func=cmd_certs_client)

    users = commands.add_parser("users", help="dashboard users")
    user_commands = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    user_commands.add_parser(
        "hash", help="print a [[user]] password_hash; reads the password as one line "
                     "from stdin").set_defaults(func=cmd_users_hash)

    tokens = commands.add_parser("tokens", help="Bearer tokens for [[principal]]s")
    token_commands = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    token_commands.add_parser("new", help="print a new token and its token_sha256 line"
                              ).set_defaults(func=cmd_tokens_new)
    token_commands.add_parser("hash", help="print the token_sha256 of a token read from "
                              "stdin").set_defaults(func=cmd_tokens_hash)
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
