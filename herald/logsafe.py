"""Values from outside, made safe to write into a log line. No I/O.

A log record is one line. A value someone else chose — a user name, a certificate
subject, a path, a header, a source's row, a driver's error text that quotes one —
must not be able to end that line and forge the next ("…\\nINFO herald.auth: login
ok"), nor drive the terminal that shows it (``ESC [ 2 J``). Rules:

1. Every ``%s`` argument of a log call in ``herald/`` goes through ``logsafe``;
   numbers go through ``%d`` or ``%.1f`` and need nothing. No f-strings or ``+`` in
   a log call's message. tests/unit/test_log_escaping.py checks every log call.
2. ``logsafe`` escapes as ``repr`` does (``\\n``, ``\\x1b``, ``\\u2028``), without
   the quotes, and leaves printable text as it is: ``user ops`` stays ``user ops``.
   Backslashes are kept, so escaping twice changes nothing.
3. ``LogFormatter`` (the one ``herald serve`` logs with) escapes each whole line
   again, and the messages of the exceptions in a traceback: the backstop for code
   that is not Herald's (aiohttp, asyncio) and for exceptions that quote a client.

This module imports nothing from Herald, so every layer may use it.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TypeAlias

__all__ = ["LOG_VALUE_MAX_CHARS", "LogFormatter", "logsafe"]

# Longer values are cut (with a note of how much was cut): a client's 8 KiB header
# or a source's huge row must not turn one log line into a flood. Long enough for
# any name, subject or error message a person needs to read.
LOG_VALUE_MAX_CHARS = 300

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_ExcInfo: TypeAlias = (
    "tuple[type[BaseException], BaseException, TracebackType | None]"
    " | tuple[None, None, None]")


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def logsafe(value: object, limit: int | None = LOG_VALUE_MAX_CHARS) -> str:
    """``value`` as text with no control or other non-printable character (C0, DEL,
    C1, ESC, line and paragraph separators, bidi overrides, lone surrogates…), each
    escaped as ``repr`` would; at most ``limit`` characters plus a short note of
    what was cut (``None``: no limit)."""
    text = value if isinstance(value, str) else str(value)
    if (limit is None or len(text) <= limit) and text.isprintable():
        return text
    pieces: list[str] = []
    size = 0
    for index, char in enumerate(text):
        piece = char if char.isprintable() else _escape(char)
        size += len(piece)
        if limit is not None and size > limit:
            pieces.append(f"...[{len(text) - index} more]")
            break
        pieces.append(piece)
    return "".join(pieces)


def _exceptions(first: BaseException) -> list[BaseException]:
    """``first`` and the exceptions chained to it, as a traceback shows them."""
    found: list[BaseException] = []
    todo = [first]
    while todo and len(found) < 100:
        exc = todo.pop()
        if any(exc is seen for seen in found):
            continue
        found.append(exc)
        todo.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
        todo.extend(getattr(exc, "exceptions", ()))  # an ExceptionGroup's
    return found


class LogFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose every record is one line of printable text, and
    whose tracebacks show their exceptions' messages escaped."""

    def format(self, record: logging.LogRecord) -> str:
        # logging caches a record's traceback text (exc_text) for every handler: the
        # first handler's, unescaped, would be used here. So: made again, ours.
        saved = record.exc_text
        if record.exc_info:
            record.exc_text = None
        try:
            text = super().format(record)
        finally:
            record.exc_text = saved
        return "\n".join(logsafe(line, None) for line in text.split("\n"))

    def formatMessage(self, record: logging.LogRecord) -> str:
        return logsafe(super().formatMessage(record), None)

    def formatException(self, ei: _ExcInfo) -> str:
        text = super().formatException(ei)
        if ei[1] is not None:
            for exc in _exceptions(ei[1]):
                try:
                    parts = [str(exc), *map(str, getattr(exc, "__notes__", ()))]
                except Exception:  # a broken __str__ must not stop the log
                    continue
                for part in parts:
                    safe = logsafe(part, None)
                    if safe != part:
                        text = text.replace(part, safe)
        return text  # format() escapes what else is unprintable, line by line
