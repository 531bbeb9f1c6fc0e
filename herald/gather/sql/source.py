"""What the three SQL sources share: their common keys, mapping a row to an event,
and reading a table (or a query) in pages by its position column.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from ...config import GatherConfig, SettingError
from ...errors import SourceError
from ...model import MAX_META_KEY_LENGTH, NewEvent
from ..base import Source, SourceRead, Unmappable
from .fence import Tail

__all__ = ["GATHER_FIELDS", "SqlSettings", "SqlSource", "row_event", "START",
           "CONNECT_TIMEOUT_SECONDS", "QUERY_TIMEOUT_SECONDS"]

# The position before every position: `position > START` reads from the beginning.
# BIGINT's minimum, so that every database compares it as an integer.
START = -(2**63)
# How long to wait for a source to accept a connection before calling it down.
CONNECT_TIMEOUT_SECONDS = 5.0
# A gatherer's queries are small indexed reads; one that runs this long is stuck
# (a lock, a dead network), and is cut off so the gatherer can retry.
QUERY_TIMEOUT_SECONDS = 60

_raw = msgspec.json.Decoder(msgspec.Raw)
_meta = msgspec.json.Decoder(dict[str, str])
_NULL = msgspec.Raw(b"null")
_encoder = msgspec.json.Encoder()


# --- settings: a SQL source's keys in its [[gather]] table ------------------------------

# A table name, optionally schema-qualified. Checked, then quoted by each driver: the
# config is trusted, but a typo should be an error, not SQL.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?")
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
# Herald's fields, which ``columns`` maps to source columns.
GATHER_FIELDS = ("id", "type", "data", "meta")


@dataclass(frozen=True)
class SqlSettings:
    """A SQL source reads ``table`` — or a custom ``query`` with ``%(after)s`` and
    ``%(limit)s`` — ordered by the increasing integer column ``position``; ``columns``
    maps Herald's fields (``id``, ``type``, ``data``, ``meta``) to source columns."""

    kind: ClassVar[str] = "sql"
    misplaced_keys: ClassVar[Mapping[str, str]] = {
        "notify": "only a postgres source can LISTEN"}

    # repr=False: a DSN may hold a password. Required; None only so that its absence
    # is a clear error, not a missing argument.
    dsn: str | None = field(default=None, repr=False)
    table: str | None = None
    query: str | None = None
    position: str = "id"
    columns: dict[str, str] = field(default_factory=lambda: {"type": "type", "data": "data"})

    def __post_init__(self) -> None:
        if not self.dsn:
            raise SettingError("dsn", f"required for a {self.kind} source")
        if self.table is None and self.query is None:
            raise SettingError(None, "give a table or a query")
        if self.table is not None and not _TABLE_NAME.fullmatch(self.table):
            raise SettingError("table", f"{self.table!r} is not a table name")
        if self.query is not None and not ("%(after)s" in self.query
                                           and "%(limit)s" in self.query):
            raise SettingError("query", "must use %(after)s and %(limit)s (rows with "
                               "position > after, ordered by position, at most limit)")
        unknown = set(self.columns) - set(GATHER_FIELDS)
        if unknown:
            raise SettingError("columns", f"unknown field {sorted(unknown)[0]!r} "
                               f"(known: {', '.join(GATHER_FIELDS)})")
        for name in ("type", "data"):
            if name not in self.columns:
                raise SettingError("columns", f"{name} is required")
        for column in (self.position, *self.columns.values()):
            if not _COLUMN_NAME.fullmatch(column):
                raise SettingError("columns", f"{column!r} is not a column name")

    @property
    def conninfo(self) -> str:
        assert self.dsn is not None  # checked above
        return self.dsn



# --- mapping rows -----------------------------------------------------------------------


def row_event(row: Sequence[Any], meta: dict[str, str]) -> NewEvent:
    """(position, type, data, id, meta) → an event, or Unmappable saying why."""
    _, type_, data, event_id, row_meta = row
    if type(type_) is not str:
        if isinstance(type_, bytes):
            type_ = type_.decode("utf-8", "replace")
        if not isinstance(type_, str):
            raise Unmappable("it has no type (the type column is empty)")
    if type(data) is str or isinstance(data, (bytes, bytearray, memoryview)):
        try:
            raw = _raw.decode(data)
        except msgspec.DecodeError as exc:
            raise Unmappable(f"its data is not JSON ({exc})") from None
    elif data is None:
        raw = _NULL
    else:  # a driver that decodes JSON itself
        raw = msgspec.Raw(_encoder.encode(data))
    if row_meta is not None:
        try:
            extra = _meta.decode(row_meta) if not isinstance(row_meta, dict) else row_meta
        except msgspec.DecodeError as exc:
            raise Unmappable(f"its meta is not a JSON object of strings ({exc})") from None
        for key, value in extra.items():
            if not (isinstance(key, str) and isinstance(value, str)
                    and 0 < len(key) <= MAX_META_KEY_LENGTH):
                raise Unmappable("its meta is not a JSON object of strings "
                                 f"(keys of 1 to {MAX_META_KEY_LENGTH} characters)")
        meta = {**extra, **meta}  # Herald's source and source_position win
    if event_id is None:
        return NewEvent(type=type_, data=raw, meta=meta)
    return NewEvent(type=type_, data=raw, id=str(event_id), meta=meta)


def _first(row: Sequence[Any]) -> int:
    position = row[0]
    if type(position) is not int:
        raise SourceError(f"the position column holds {position!r}, not an integer",
                          code="bad_position")
    return position


# --- the common part of the three SQL sources ----------------------------------------------


class SqlSource(Source):
    """A table (or a query) in a SQL database. Subclasses connect and quote."""

    settings: ClassVar[type[SqlSettings]] = SqlSettings
    options: SqlSettings

    def __init__(self, config: GatherConfig, options: SqlSettings) -> None:
        super().__init__(config, options)
        self.tail = Tail(None)

    # The row functions themselves, not methods calling them: they run once per row.
    position = staticmethod(_first)  # type: ignore[assignment]
    event = staticmethod(row_event)  # type: ignore[assignment]

    def read(self, after: int | None, limit: int) -> SourceRead:
        return self.tail.read(self._select, _first, after, limit)

    def _select(self, after: int | None, limit: int) -> Sequence[Any]:
        return self._fetch(self._select_sql, {"after": START if after is None else after,
                                              "limit": limit})

    def bounds(self) -> tuple[int, int] | None:
        if self._bounds_sql is None:
            return None
        rows = self._fetch(self._bounds_sql, {})
        if not rows or rows[0][0] is None:
            return None
        return int(rows[0][0]), int(rows[0][1])

    # what subclasses provide

    _select_sql: Any
    _bounds_sql: Any = None

    def _fetch(self, query: Any, params: dict[str, Any]) -> Sequence[Any]:
        raise NotImplementedError

    def _build(self, quote: Callable[[str], str], param: Callable[[str], str],
               fields: Sequence[str | None] | None = None) -> None:
        """Build the select (and bounds) statements with a dialect's quoting.

        A row is (position, *fields); by default the fields are the configured
        columns for type, data, id and meta, NULL where one is not configured.
        """
        c = self.options
        if fields is None:
            fields = [c.columns.get(f) for f in ("type", "data", "id", "meta")]
        columns = [quote(c.position)] + [quote(f) if f else "NULL" for f in fields]
        select = ", ".join(columns)
        position = quote(c.position)
        if c.query is not None:
            query = c.query.replace("%(after)s", param("after")).replace(
                "%(limit)s", param("limit"))
            self._select_sql = (f"SELECT {select} FROM ({query}) AS herald_rows "
                                f"ORDER BY {position}")
        else:
            assert c.table is not None
            self._select_sql = (f"SELECT {select} FROM {_qualified(c.table, quote)} "
                                f"WHERE {position} > {param('after')} ORDER BY {position} "
                                f"LIMIT {param('limit')}")
        if c.table is not None:
            self._bounds_sql = (f"SELECT min({position}), max({position}) "
                                f"FROM {_qualified(c.table, quote)}")


def _qualified(table: str, quote: Callable[[str], str]) -> str:
    return ".".join(quote(part) for part in table.split("."))


def _double_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
