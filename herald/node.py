"""The composition root: one Herald node, built from its config.

``herald serve`` is ``Node(config).run()``. Rules of this module:

1. It is the only place, besides the hub, that reaches ``herald.engines``: it creates
   the configured engine and hands it to the hub; everything else gets the hub.
2. It builds, it does not decide: what a request means is the server's, what a
   stream is the hub's, what a source row becomes the gatherers'.
3. Start-up is ordered so that a mistake stops the node before it listens: the TLS
   files and the admin token first, then the engine, then the gatherers (a wrong
   setting fails here), and only then the listeners. Shutdown is the reverse:
   gatherers (they append), listeners, and the hub (it closes the engine) last —
   and a start that fails half-way closes what it had opened.
4. Secrets are checked before anything uses them (herald.secretfiles): Herald's own
   (the admin token, ``tls/*.key``) are refused unless private; what is the
   operator's (the data directory's mode, the ``[tls] key``, a config file with
   secrets in it) is a warning when other users can read it — logged, and in the
   banner, which says each file's real mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from .certs import ensure_server_tls, key_strength_problem
from .config import Config, parse_listen
from .engines import create_engine
from .errors import ConfigError
from .gather.manager import GatherManager
from .hub import Hub
from .logsafe import logsafe
from .secretfiles import (
    exposure,
    mode_text,
    operator_file_warning,
    private_dir,
    read_private,
    write_error,
)
from .server.app import create_app
from .server.auth import Authenticator, ensure_admin_token
from .server.listeners import Listener, listen, show_host, tls_context
from .server.redirect import listen_redirect
from .version import __version__

__all__ = ["Node"]

log = logging.getLogger("herald.server")


class Node:
    """One Herald process: the hub over the configured engine, its gatherers, and the
    HTTPS API (with the plain-HTTP redirect port when configured).

    ``start`` builds and listens, ``stop`` ends it all (also ``async with``); ``run``
    does both around a wait for SIGINT/SIGTERM.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hub: Hub | None = None
        self.gatherers: GatherManager | None = None
        self.https: Listener | None = None
        self.redirect: Listener | None = None
        # What this start created on disk ("tls", "token"), for the banner.
        self.created: list[str] = []
        # What this start found worth a warning (files other users can read): logged,
        # and shown in the banner.
        self.warnings: list[str] = []
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        """The API's URL, with the port actually bound (``listen`` may ask for 0)."""
        if self.https is None:
            raise RuntimeError("the node is not started")
        return self.https.url

    async def start(self) -> str:
        """Build the node and listen; the API's URL."""
        try:
            return await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> str:
        config, stack = self.config, self._stack
        try:
            private_dir(config.data)
        except OSError as exc:  # a full disk, a read-only or foreign directory
            raise write_error(exc, config.data) from exc
        if config.tls.cert is None:
            if await asyncio.to_thread(ensure_server_tls, config.tls_dir):
                self.created.append("tls")
            cert, key = config.tls_dir / "server.pem", config.tls_dir / "server.key"
        else:
            cert, key = config.tls.cert, config.tls.key or config.tls.cert
            _check_operator_key(key)
        token, token_created = ensure_admin_token(config.admin_token_path)
        if token_created:
            self.created.append("token")
        self.warnings = file_warnings(config)
        for warning in self.warnings:
            log.warning("%s", logsafe(warning))
        ssl_context = tls_context(config.tls, cert, key)
        auth = Authenticator(token, config.principals, config.users,
                             require_client_cert=config.tls.require_client_cert)

        hub = self.hub = Hub(create_engine(config), config.limits)
        await hub.open()
        stack.push_async_callback(hub.close)
        # Built before anything listens: a gatherer with a wrong setting stops Herald here.
        gatherers = self.gatherers = GatherManager(hub, config.gather)

        host, port = parse_listen(config.server.listen)
        app = create_app(hub, auth, config.server, gatherers)
        self.https = await listen(app, config.server, (host, port), ssl_context=ssl_context,
                                  handler_cancellation=True)
        stack.push_async_callback(self.https.close)
        fallback = host if host not in ("0.0.0.0", "::") else "localhost"
        self.redirect = await listen_redirect(config.server, self.https.port,
                                              show_host(fallback))
        if self.redirect is not None:
            stack.push_async_callback(self.redirect.close)
        # Gatherers append to the hub: they stop first.
        await gatherers.start()
        stack.push_async_callback(gatherers.stop)
        return self.https.url

    async def stop(self) -> None:
        """Gatherers, then the listeners, then the hub; what was started, once."""
        await self._stack.aclose()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def run(self, *, ready: Callable[[str], None] | None = None,
                  stop: asyncio.Event | None = None) -> None:
        """Run until SIGINT/SIGTERM (or ``stop`` is set); print the banner once listening,
        then call ``ready`` with the API's URL."""
        stop = stop or asyncio.Event()
        async with self:
            print(self.banner(), flush=True)
            if ready is not None:
                ready(self.url)
            loop = asyncio.get_running_loop()
            signals = []
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop.set)
                    signals.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass
            try:
                await stop.wait()
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)
                log.info("shutting down")

    def banner(self) -> str:
        """What ``herald serve`` prints once it listens: where everything is, and how to
        try it."""
        config, hub, gatherers = self.config, self.hub, self.gatherers
        assert hub is not None and gatherers is not None
        url = self.url
        token = _display(config.admin_token_path)
        # An engine that keeps its data elsewhere (postgres) says where, without secrets.
        where = hub.location or f"data in {_display(config.data)}"
        lines = [f"Herald {__version__}: {hub.engine_name} engine, {where}"]
        if config.tls.cert is None:
            ca = _display(config.tls_dir / "ca.pem")
            lines += [
                f"  CA certificate:     {ca}" + ("  (created)" if "tls" in self.created else ""),
                f"  server certificate: {_display(config.tls_dir / 'server.pem')}",
            ]
        else:
            # Herald does not know which CA signed a certificate it was given.
            ca = "YOUR-CA.pem"
            lines.append(f"  server certificate: {_display(config.tls.cert)}")
        lines.append(f"  admin token:        {token} (mode {_mode(config.admin_token_path)})"
                     + ("  (created)" if "token" in self.created else ""))
        if config.tls.client_ca is not None:
            need = "required" if config.tls.require_client_cert else "accepted"
            lines.append(f"  client certificates: {need}, issued by "
                         f"{_display(config.tls.client_ca)}")
        lines.append(f"  principals: {len(config.principals)}, dashboard users: "
                     f"{len(config.users)}")
        lines += [f"  gathering:          {g.source.describe()} → stream {g.stream} ({g.name})"
                  for g in gatherers.gatherers.values()]
        lines += [f"  WARNING: {warning}" for warning in self.warnings]
        if self.redirect is not None:
            lines.append(f"Plain HTTP on {self.redirect.url} only redirects to HTTPS")
        lines += [
            f"Herald is listening on {url}",
            "",
            "Try it:",
            f'  curl --cacert {ca} -H "Authorization: Bearer $(cat {token})" {url}/v1/streams',
            f"  {_python()} -c \"import herald; print(herald.Client('{url}', "
            f"token_file='{token}', ca='{ca}').streams())\"",
            "",
        ]
        return "\n".join(lines)


def file_warnings(config: Config) -> list[str]:
    """What other local users may read that they should not, found at start: the data
    directory (Herald makes it 0700; one made wider by hand or by an older Herald lets
    them read every stream), the operator's ``[tls] key``, and a config file that holds
    secrets. Warnings, not refusals: these files are the operator's (Herald's own
    secrets are refused instead, when they are read)."""
    warnings = []
    try:
        mode = os.stat(config.data).st_mode
    except OSError:
        mode = 0
    who = exposure(mode & 0o077)
    if who is not None:
        warnings.append(f"data directory {config.data} has mode {mode_text(mode)}: {who} "
                        f"can look into it, and may read its streams; `chmod 700 "
                        f"{config.data}`")
    if config.tls.cert is not None:
        key = config.tls.key or config.tls.cert
        warning = operator_file_warning(key, "[tls] key")
        if warning is not None:
            warnings.append(warning)
    if config.file is not None and config.file_secrets:
        try:
            mode = os.stat(config.file).st_mode
        except OSError:
            mode = 0
        if mode & 0o004:
            warnings.append(f"config file {config.file} has mode {mode_text(mode)}: every "
                            f"local user can read the secrets in it "
                            f"({', '.join(config.file_secrets)}); `chmod 600 {config.file}` "
                            "(or 640 for a group that must read it)")
    return warnings


def _check_operator_key(key: Path) -> None:
    """A ConfigError if the ``[tls] key`` is a directory, not UTF-8… or too weak to
    serve with (herald.certs.key_strength_problem). A missing or unreadable one is left
    to the TLS context, which names every file it was given."""
    try:
        pem = read_private(key, "[tls] key", ours=False)
    except FileNotFoundError:
        return
    problem = key_strength_problem(pem)
    if problem is not None:
        raise ConfigError(f"[tls] key {key}: {problem}")


def _mode(path: Path) -> str:
    """A file's mode as the banner shows it: what it is, not what it should be."""
    try:
        return mode_text(os.stat(path).st_mode)
    except OSError:
        return "missing"


def _display(path: Path) -> str:
    """A path as short as it can be and still work from the current directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path.resolve())


def _python() -> str:
    """The interpreter Herald runs in: the one that surely has ``herald`` installed."""
    try:
        return str(Path(sys.executable).relative_to(Path.cwd()))
    except ValueError:
        return sys.executable
