"""The ``azure-table`` engine: streams in Azure Table Storage, written by any node.

Streamstone's design — a partition per stream, a head entity whose ETag fences every
write — made atomic for Herald's batches of up to 10,000 events. Several Herald
nodes share one storage account; each append is one entity-group transaction.

Tables (``{table_prefix}streams`` and ``{table_prefix}checkpoints``; the rows in
``layout``)::

    streams      PartitionKey = stream     the head entity ("h") and the segments
    checkpoints  PartitionKey = name       one entity per checkpoint: value, version

**A write is one transaction in the stream's partition**: the head entity updated
under the ETag this node last saw (``If-Match``; created, for a new stream, which
fails if another node created it first) together with the rows of the new
records — created, never overwritten. Either all of it commits or nothing does, so
a stream's rows are exactly its committed batches and a reader never sees half a
batch. Records travel as segments (``layout.pack``: consecutive records' bytes in
entities of at most 704 KiB, in binary properties of 64 KiB) — at most 99 rows and
about 2 MiB of data in the transaction (``layout.plan``); a larger write sends its
larger segments' bytes first, as staged rows in transactions of their own, and the
commit transaction then creates the segment rows that name them: they become
visible only when the head entity moves, and staged rows of a write that lost are
never named by a segment row (they are deleted, best effort). Round trips per
append: one when this node holds the head's current ETag (its last write, or the
``load`` just before), else two (the head's point read, then the transaction);
plus one per three staged entities of a write over ~2 MiB.

**A lost race** (412: another node moved the head) reads the head again; with
``Write.replace`` the appends are placed again against it and the transaction is
tried again, else ``HeadMoved``. **A failed or unanswered transaction** (a
timeout, a dropped connection, the SDK's own retry answered 412 for the first
attempt's success) is resolved before the append is answered: the segment rows carry the write's
token, so reading one says whether it committed; if it did not, the head entity
is touched under the old ETag first, so the lost request can never apply later.
Nothing acknowledged is lost, nothing is written twice.

**Dedup** (``window``): from the stream's records themselves, decoded once per
node and then kept up to date with what other nodes append — one point read per
``load`` in the steady state (the reasons against id rows are in window.py).

**Reads** are range queries over the segment rows from the one holding ``start``:
every segment row is committed, so no head read is needed. **Other nodes' appends**
are learnt by the hub's poll of the heads it waits on (``SharedEngine``): Azure
Tables has no notifications, so ``watch`` only records the listener.

**max_record_body** is the record format's own bound (64 MiB): a record larger
than one transaction can carry is staged (about 100 entities for 64 MiB) and made
visible by the one commit transaction, so the engine reads back every record the
format admits; nothing in Azure Tables caps a partition's size.

The package::

    __init__.py  the engine: settings, lifecycle, load, write, read, heads, listing,
                 checkpoints
    layout.py    the rows: keys, records cut into entities and put together again
    window.py    the dedup window learnt from the records
    errors.py    the SDK's exceptions as Herald errors
    transport.py the HTTP transport under the SDK (large bodies streamed)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ... import codec
from ...codec import Record
from ...errors import ConfigError, CorruptRecord, StorageError, StorageUnavailable
from ...logsafe import logsafe
from ...model import Limits, StreamInfo, validate_stream_name
from ...placement import StreamState
from ..azure_account import AzureAccount
from ..base import (
    READ_CHUNK_BYTES,
    Checkpoint,
    CheckpointConflict,
    HeadListener,
    HeadMoved,
    SharedEngine,
    Write,
    validate_checkpoint_name,
)

# Before the package's modules, which import the SDK themselves: without it,
# `engine = "azure-table"` is this clear ConfigError, not an ImportError.
try:
    from azure.core import MatchConditions
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.data.tables import EdmType, EntityProperty, UpdateMode
    from azure.data.tables.aio import TableClient, TableServiceClient
except ImportError as _exc:  # pragma: no cover - depends on the installation
    raise ConfigError(
        "[storage] engine = \"azure-table\" needs azure-data-tables: "
        "pip install 'herald[azure]'") from _exc

from .errors import azure_errors, error_code, is_condition
from .layout import (
    ENTITY_BYTES,
    HEAD_ROW,
    SEGMENT_RANGE_END,
    STAGE_ENTITIES_PER_TRANSACTION,
    Plan,
    chunk_properties,
    data_of,
    pack,
    parts,
    plan,
    segment_key,
    staged_key,
    staged_range,
)
from .transport import StreamingTransport
from .window import IdWindow

if TYPE_CHECKING:
    from ...config import Config

__all__ = ["AzureTableConfig", "AzureTableEngine"]

log = logging.getLogger("herald.azure_table")

# A table name is 3-63 letters and digits, starting with a letter; the prefix
# leaves room for "checkpoints".
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9]{0,49}")
# Transactions of one write's staged rows in flight at once: enough to fill a link,
# few enough that one large append does not take every connection of the pool.
STAGE_CONCURRENCY = 8
# Times a write is placed again under a fresh head before HeadMoved goes to the hub
# (which loads and places again itself, up to its own MAX_ATTEMPTS).
REPLACE_ATTEMPTS = 5
# Segment rows one read asks for at first (then sized by the stream's average row):
# a segment is up to 704 KiB, a read returns about READ_CHUNK_BYTES.
FIRST_READ_ROWS = 4
MAX_READ_ROWS = 1000
# Point reads of heads in flight at once (``heads``).
HEADS_CONCURRENCY = 16
# The SDK's retries of one request: transient failures (a 503, a dropped
# connection) are retried with a short back-off; an unreachable account fails in
# seconds, not minutes, so the hub can fail its callers over.
CLIENT_OPTIONS: Mapping[str, Any] = {
    "retry_total": 3,
    "retry_backoff_factor": 0.2,
    "retry_backoff_max": 2,
    "connection_timeout": 10,
    "read_timeout": 60,
}


@dataclass(frozen=True)
class AzureTableConfig:
    """``[storage.azure-table]``: the engine's own keys (docs/configuration.md)."""

    # The storage account (azure_account.AzureAccount): this key, else the
    # AZURE_STORAGE_CONNECTION_STRING environment variable.
    connection_string: str | None = field(default=None, repr=False)
    # Herald's tables are {table_prefix}streams and {table_prefix}checkpoints, so
    # several deployments can share one account under different prefixes.
    table_prefix: str = "herald"

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.table_prefix):
            raise ConfigError("[storage.azure-table] table_prefix: expected a letter, then "
                              "letters and digits (at most 50), got "
                              f"{self.table_prefix!r}")
        self.account  # noqa: B018 - resolve it now: a missing account is a start error

    @property
    def account(self) -> AzureAccount:
        return AzureAccount.resolve(self.connection_string, "[storage.azure-table]")

    @property
    def streams_table(self) -> str:
        return f"{self.table_prefix}streams"

    @property
    def checkpoints_table(self) -> str:
        return f"{self.table_prefix}checkpoints"


@dataclass(frozen=True, slots=True)
class _Head:
    """The head entity as last seen: None etag means "not seen, read it"."""

    head: int
    last_time: int
    bytes: int
    version: int
    etag: str | None


def _int64(value: int) -> EntityProperty:
    return EntityProperty(value, EdmType.INT64)


def _int(value: Any) -> int:
    """An integer property (Int64 ones arrive as EntityProperty)."""
    return int(value.value if isinstance(value, EntityProperty) else value)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class AzureTableEngine(SharedEngine):
    name = "azure-table"
    settings = AzureTableConfig
    max_record_body = codec.MAX_RECORD_BODY

    def __init__(self, config: AzureTableConfig, limits: Limits | None = None) -> None:
        self.config = config
        self.limits = limits or Limits()
        self._account = config.account
        self._service: TableServiceClient | None = None
        self._streams_table: TableClient | None = None
        self._checkpoints_table: TableClient | None = None
        self._listener: HeadListener | None = None
        self._heads: dict[str, _Head] = {}
        self._windows: dict[str, IdWindow] = {}
        self._avg_row: dict[str, int] = {}
        self._cleanups: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, config: Config, settings: AzureTableConfig) -> AzureTableEngine:
        return cls(settings, config.limits)

    @property
    def location(self) -> str:
        account = self._account.account_name or self._account.endpoint("table") or "?"
        return (f"Azure Table Storage account {account}, tables "
                f"{self.config.streams_table} and {self.config.checkpoints_table}")

    def watch(self, listener: HeadListener) -> None:
        # No notifications in Azure Tables: the hub polls the heads it waits on.
        self._listener = listener

    # lifecycle

    async def open(self) -> None:
        with azure_errors("connecting to the storage account"):
            try:
                service = TableServiceClient.from_connection_string(
                    self._account.connection_string, transport=StreamingTransport(),
                    **CLIENT_OPTIONS)
            except ValueError as exc:
                raise ConfigError("[storage.azure-table] connection_string: not usable "
                                  f"({exc})") from None
        try:
            for table in (self.config.streams_table, self.config.checkpoints_table):
                with azure_errors(f"creating table {table}"):
                    await service.create_table_if_not_exists(table)
        except BaseException:
            await service.close()
            raise
        self._service = service
        self._streams_table = service.get_table_client(self.config.streams_table)
        self._checkpoints_table = service.get_table_client(self.config.checkpoints_table)

    async def close(self) -> None:
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=5)
        for task in list(self._cleanups):
            task.cancel()
        service, self._service = self._service, None
        self._streams_table = self._checkpoints_table = None
        self._heads.clear()
        self._windows.clear()
        if service is not None:
            with contextlib.suppress(Exception):
                await service.close()

    @property
    def _table(self) -> TableClient:
        if self._streams_table is None:
            raise StorageUnavailable("the azure-table engine is not open")
        return self._streams_table

    @property
    def _checkpoints(self) -> TableClient:
        if self._checkpoints_table is None:
            raise StorageUnavailable("the azure-table engine is not open")
        return self._checkpoints_table

    async def ping(self) -> None:
        table = self._table
        with azure_errors("checking the storage account"):
            try:
                await table.get_entity("~", "~")
            except ResourceNotFoundError as exc:
                if error_code(exc) == "TableNotFound":
                    raise StorageError(f"table {self.config.streams_table} is missing",
                                       code="storage_error") from exc

    # the head entity

    async def _read_head(self, stream: str) -> _Head | None:
        """The head entity now (and remembered, with its ETag)."""
        table = self._table
        with azure_errors(f"reading the head of stream {stream}"):
            try:
                entity = await table.get_entity(stream, HEAD_ROW)
            except ResourceNotFoundError as exc:
                if error_code(exc) == "TableNotFound":
                    raise
                self._heads.pop(stream, None)
                return None
        try:
            head = _Head(_int(entity["head"]), _int(entity["last_time"]),
                         _int(entity["bytes"]), _int(entity["version"]),
                         str(entity.metadata["etag"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecord(f"stream {stream}: the head entity is damaged",
                                stream=stream, first=0) from exc
        self._heads[stream] = head
        return head

    def _head_entity(self, stream: str, head: _Head, writer: str) -> dict[str, Any]:
        return {"PartitionKey": stream, "RowKey": HEAD_ROW, "head": _int64(head.head),
                "last_time": _int64(head.last_time), "bytes": _int64(head.bytes),
                "version": _int64(head.version), "writer": writer}

    # appends

    async def load(self, stream: str, window: int,
                   ids: Collection[str] | None = None) -> StreamState:
        validate_stream_name(stream)
        head = await self._read_head(stream)
        if head is None:
            return StreamState()
        known = ({} if ids is not None and not ids
                 else await self._known(stream, head.head, window, ids))
        return StreamState(head.head, head.last_time, known)

    async def _known(self, stream: str, head: int, window: int,
                     ids: Collection[str] | None) -> dict[str, tuple[int, int]]:
        """Where ``ids`` are in the last ``window`` events below ``head``: this
        node's window, brought up to ``head`` with the records others appended."""
        ids_window = self._windows.get(stream)
        if ids_window is None or ids_window.window != window or ids_window.head > head:
            ids_window = IdWindow(window, head=max(0, head - window))
        if ids_window.head < head:
            ids_window.add_records(await self._read_until(stream, ids_window.head, head))
            ids_window.head = head
        self._windows[stream] = ids_window
        return ids_window.known(ids)

    async def _read_until(self, stream: str, start: int, stop: int) -> list[Record]:
        """Every record holding positions start…stop-1 (and none beyond stop)."""
        out: list[Record] = []
        position = start
        while position < stop:
            records = await self.read(stream, position, 8 * READ_CHUNK_BYTES)
            records = [r for r in records if r.base < stop]
            if not records:
                raise CorruptRecord(f"stream {stream}: positions {position}…{stop - 1} are "
                                    "missing below the head", stream=stream, first=position)
            out.extend(records)
            position = records[-1].end
        return out

    async def write(self, stream: str, write: Write) -> None:
        validate_stream_name(stream)
        for _attempt in range(REPLACE_ATTEMPTS):
            if not write.written:
                return
            head = self._heads.get(stream)
            if head is None or head.head != write.expected_head:
                head = await self._read_head(stream)
            current = head.head if head is not None else 0
            if current != write.expected_head:
                if write.replace is None:
                    raise HeadMoved(current)
                # Another node wrote first: place again against what is there now.
                assert head is not None
                replace = write.replace
                known = (await self._known(stream, current, replace.window, replace.ids)
                         if replace.ids else {})
                write = replace.place(StreamState(current, head.last_time, known))
                continue
            if await self._commit(stream, write, head):
                return
            self._heads.pop(stream, None)  # lost: read the head again
        head = await self._read_head(stream)
        raise HeadMoved(head.head if head is not None else 0)

    async def _commit(self, stream: str, write: Write, head: _Head | None) -> bool:
        """One write's transaction under ``head``'s ETag; True once it committed,
        False if another node's write came first (nothing of this one is visible)."""
        table = self._table
        records = write.records
        layout = plan(pack(records))
        token = uuid.uuid4().hex
        what = f"appending to stream {stream}"
        if layout.staged:
            await self._stage(stream, token, layout, what)
        new = _Head(write.head, write.last_time,
                    (head.bytes if head else 0) + sum(len(r.raw) for r in records),
                    (head.version if head else 0) + 1, None)
        operations: list[Any] = []
        entity = self._head_entity(stream, new, token)
        if head is None:
            operations.append(("create", entity))
        else:
            operations.append(("update", entity, {
                "mode": UpdateMode.REPLACE, "etag": head.etag,
                "match_condition": MatchConditions.IfNotModified}))
        for index, segment in enumerate(layout.segments):
            row: dict[str, Any] = {
                "PartitionKey": stream, "RowKey": segment_key(segment.last),
                "base": _int64(segment.base), "end": _int64(segment.end), "w": token}
            if index in layout.staged:
                row.update(n=0, seg=index, sn=-(-len(segment.data) // ENTITY_BYTES))
            else:
                row.update(chunk_properties(segment.data))
            operations.append(("create", row))
        etag: str | None = None
        try:
            with azure_errors(what):
                try:
                    result = await table.submit_transaction(operations)
                    committed = True
                    if result and "etag" in result[0]:
                        etag = str(result[0]["etag"])
                except HttpResponseError as exc:
                    if not is_condition(exc):
                        raise
                    committed = False  # another write came first — or our own retry
        except StorageUnavailable:
            # Sent and never answered (AmbiguousWrite) — or refused on the SDK's retry
            # of an attempt that was: either way it may have been applied.
            committed = False
        if not committed:
            try:
                committed = await self._resolve(stream, token, layout, head)
            except StorageUnavailable as exc:
                raise StorageUnavailable(
                    f"Azure Storage failed while appending to stream {stream}; it may or "
                    f"may not have been appended ({exc.message})") from exc
        if not committed:
            if layout.staged:
                self._clean_up(stream, token, layout)
            return False
        self._heads[stream] = _Head(new.head, new.last_time, new.bytes, new.version, etag)
        if etag is None:
            self._heads.pop(stream, None)
        ids_window = self._windows.get(stream)
        if ids_window is not None and ids_window.head == write.expected_head:
            ids_window.add_written(((p.ids, p.record.end) for p in write.written), write.head)
        else:
            self._windows.pop(stream, None)
        return True

    async def _resolve(self, stream: str, token: str, layout: Plan,
                       head: _Head | None) -> bool:
        """Did the transaction carrying ``token`` commit? Its first segment row says
        (segment rows are created once, never replaced). If it did not, make sure it
        never will: the head entity is touched under the ETag the transaction named
        (created, if it named none), so a request still travelling fails its
        condition. Bounded: every failed fence means another write moved the head,
        after which the old condition can never hold again."""
        table = self._table
        key = segment_key(layout.segments[0].last)
        for _ in range(3):
            with azure_errors(f"checking an append to stream {stream}"):
                try:
                    row = await table.get_entity(stream, key, select=["w"])
                    if str(row.get("w")) == token:
                        return True
                except ResourceNotFoundError:
                    pass
                current = await self._read_head(stream)
                if head is None and current is not None:
                    return False  # created by another write: our create can never apply
                if head is not None and (current is None or current.etag != head.etag):
                    return False  # moved: our If-Match can never hold again
                # Unchanged: our request may still arrive. Fence it out.
                try:
                    if head is None:
                        await table.create_entity(self._head_entity(
                            stream, _Head(0, 0, 0, 0, None), "fence"))
                    else:
                        assert current is not None
                        await table.update_entity(
                            self._head_entity(stream, current, "fence"),
                            mode=UpdateMode.REPLACE, etag=head.etag,
                            match_condition=MatchConditions.IfNotModified)
                    self._heads.pop(stream, None)
                    return False
                except HttpResponseError as exc:
                    if not is_condition(exc):
                        raise
                    # Something moved meanwhile (maybe our request): look again.
        raise StorageUnavailable(f"appending to stream {stream}: could not learn whether "
                                 "the append was stored; it may or may not have been")

    async def _stage(self, stream: str, token: str, layout: Plan, what: str) -> None:
        """The staged segments' bytes as rows of their own, before the commit."""
        table = self._table
        transactions: list[list[Any]] = []
        for index in sorted(layout.staged):
            rows = [("upsert", {"PartitionKey": stream, "RowKey": staged_key(token, index, k),
                                **chunk_properties(part)})
                    for k, part in enumerate(parts(layout.segments[index].data))]
            for first in range(0, len(rows), STAGE_ENTITIES_PER_TRANSACTION):
                transactions.append(rows[first:first + STAGE_ENTITIES_PER_TRANSACTION])
        gate = asyncio.Semaphore(STAGE_CONCURRENCY)

        async def send(operations: list[Any]) -> None:
            async with gate:
                with azure_errors(what):
                    await table.submit_transaction(operations)

        try:
            await asyncio.gather(*(send(t) for t in transactions))
        except BaseException:
            self._clean_up(stream, token, layout)
            raise

    def _clean_up(self, stream: str, token: str, layout: Plan) -> None:
        """Delete a lost write's staged rows, in the background, best effort: no
        segment row names them, so they are garbage either way."""
        async def run() -> None:
            table = self._table
            try:
                for index in sorted(layout.staged):
                    low, high = staged_range(token, index)
                    async for entity in table.query_entities(
                            f"PartitionKey eq {_quote(stream)} and RowKey ge {_quote(low)} "
                            f"and RowKey lt {_quote(high)}", select=["RowKey"]):
                        await table.delete_entity(stream, entity["RowKey"])
            except Exception as exc:  # garbage left behind, nothing lost
                log.info("stream %s: staged rows of a lost write left behind (%s)",
                         logsafe(stream), logsafe(str(exc)[:200]))

        task = asyncio.get_running_loop().create_task(run())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    # reads

    async def read(self, stream: str, start: int,
                   max_bytes: int = READ_CHUNK_BYTES) -> list[Record]:
        validate_stream_name(stream)
        table = self._table
        avg = self._avg_row.get(stream)
        rows = FIRST_READ_ROWS if avg is None else max(
            1, min(MAX_READ_ROWS, max_bytes // avg + 1))
        query = (f"PartitionKey eq {_quote(stream)} and RowKey ge "
                 f"{_quote(segment_key(max(0, start)))} and RowKey lt "
                 f"{_quote(SEGMENT_RANGE_END)}")
        out: list[Record] = []
        total = 0
        expected = -1
        seen = 0
        with azure_errors(f"reading stream {stream}"):
            pages = table.query_entities(query, results_per_page=rows).by_page()
            async for page in pages:
                async for entity in page:
                    seen += 1
                    data = await self._segment_data(stream, entity)
                    records = self._records(stream, entity, data, expected, start)
                    expected = _int(entity["end"])
                    self._avg_row[stream] = (3 * (avg or len(data)) + len(data)) // 4 or 1
                    avg = self._avg_row[stream]
                    for record in records:
                        if record.end <= start:
                            continue
                        if out and total + len(record.raw) > max_bytes:
                            return out
                        out.append(record)
                        total += len(record.raw)
                if out and total >= max_bytes:
                    break
        return out

    async def _segment_data(self, stream: str, entity: Mapping[str, Any]) -> bytes:
        try:
            if int(entity["n"]) > 0:
                return data_of(entity)
            token, index, count = str(entity["w"]), int(entity["seg"]), int(entity["sn"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._damaged(stream, entity) from exc
        low, high = staged_range(token, index)
        chunks: list[bytes] = []
        async for part in self._table.query_entities(
                f"PartitionKey eq {_quote(stream)} and RowKey ge {_quote(low)} "
                f"and RowKey lt {_quote(high)}"):
            if part["RowKey"] != staged_key(token, index, len(chunks)):
                raise self._damaged(stream, entity)
            try:
                chunks.append(data_of(part))
            except (KeyError, TypeError, ValueError) as exc:
                raise self._damaged(stream, entity) from exc
        if len(chunks) != count:
            raise self._damaged(stream, entity)
        return b"".join(chunks)

    def _records(self, stream: str, entity: Mapping[str, Any], data: bytes,
                 expected: int, start: int) -> list[Record]:
        try:
            base, end = _int(entity["base"]), _int(entity["end"])
            records, used = codec.parse_records(data)
        except (KeyError, TypeError, ValueError, CorruptRecord) as exc:
            raise self._damaged(stream, entity, expected, start) from exc
        position = base
        for record in records:
            if record.base != position:
                raise self._damaged(stream, entity, expected, start)
            position = record.end
        if (used != len(data) or position != end or not records
                or (expected >= 0 and base != expected)):
            raise self._damaged(stream, entity, expected, start)
        return records

    @staticmethod
    def _damaged(stream: str, entity: Mapping[str, Any], expected: int = -1,
                 start: int = 0) -> CorruptRecord:
        first = max(start, expected)
        return CorruptRecord(
            f"stream {stream}: the batch after position {first} is damaged or out of "
            f"sequence (row {entity.get('RowKey')!r})", stream=stream, first=first)

    async def head(self, stream: str) -> int:
        validate_stream_name(stream)
        head = await self._read_head(stream)
        return head.head if head is not None else 0

    async def heads(self, streams: Sequence[str]) -> dict[str, int]:
        gate = asyncio.Semaphore(HEADS_CONCURRENCY)

        async def one(name: str) -> int:
            async with gate:
                return await self.head(name)

        names = list(dict.fromkeys(streams))
        values = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, values, strict=True))

    # listing

    async def streams(self) -> list[StreamInfo]:
        table = self._table
        out: list[StreamInfo] = []
        with azure_errors("listing streams"):
            async for entity in table.query_entities(
                    f"RowKey eq {_quote(HEAD_ROW)}",
                    select=["PartitionKey", "head", "bytes"]):
                head = _int(entity["head"])
                if head > 0:
                    out.append(StreamInfo(name=str(entity["PartitionKey"]), head=head,
                                          bytes=_int(entity["bytes"])))
        return sorted(out, key=lambda s: s.name)

    async def stream(self, stream: str) -> StreamInfo | None:
        validate_stream_name(stream)
        head = await self._read_head(stream)
        if head is None or head.head == 0:
            return None
        return StreamInfo(name=stream, head=head.head, bytes=head.bytes)

    # checkpoints: an entity each (PartitionKey = name), compare-and-set by ETag

    async def _read_checkpoint(self, name: str) -> tuple[Checkpoint, str] | None:
        table = self._checkpoints
        with azure_errors(f"reading checkpoint {name}"):
            try:
                entity = await table.get_entity(name, "c")
            except ResourceNotFoundError as exc:
                if error_code(exc) == "TableNotFound":
                    raise
                return None
        return (Checkpoint(_int(entity["value"]), _int(entity["version"])),
                str(entity.metadata["etag"]))

    async def get_checkpoint(self, name: str) -> Checkpoint | None:
        validate_checkpoint_name(name)
        found = await self._read_checkpoint(name)
        return found[0] if found is not None else None

    async def set_checkpoint(self, name: str, value: int,
                             expected_version: int | None = None) -> Checkpoint:
        validate_checkpoint_name(name)
        table = self._checkpoints
        while True:
            found = await self._read_checkpoint(name)
            version = found[0].version if found is not None else 0
            if expected_version is not None and expected_version != version:
                raise CheckpointConflict(name, found[0] if found is not None else None)
            entity = {"PartitionKey": name, "RowKey": "c", "value": _int64(value),
                      "version": _int64(version + 1)}
            with azure_errors(f"writing checkpoint {name}"):
                try:
                    if found is None:
                        await table.create_entity(entity)
                    else:
                        await table.update_entity(
                            entity, mode=UpdateMode.REPLACE, etag=found[1],
                            match_condition=MatchConditions.IfNotModified)
                    return Checkpoint(value, version + 1)
                except HttpResponseError as exc:
                    if not is_condition(exc):
                        raise
            # Another writer came first: a compare-and-set reports it (with what is
            # there now); a plain set tries again on top of it.
            if expected_version is not None:
                found = await self._read_checkpoint(name)
                raise CheckpointConflict(name, found[0] if found is not None else None)
