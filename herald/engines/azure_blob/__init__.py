"""The ``azure-blob`` engine: streams in Azure append blobs (MessageVault, made safe).

Several Herald nodes share one storage account; every node reads and writes every
stream, and correctness rests on the storage's conditions alone, never on a lease
or a clock: two nodes that both believe they are a stream's writer can neither lose
nor interleave nor duplicate an acknowledged append.

Blobs (in one container, ``herald`` by default)::

    heads/<stream>                      the stream's pointer: its committed head
                                        (block blob; JSON, see pointer.py)
    streams/<stream>/<first>-<token>    the records, as the files engine's (codec):
                                        append blobs, one after another
    checkpoints/<name>                  {"value", "version"}, set under its ETag

**Append blobs, not page blobs.** An append blob takes records as they are, with no
512-byte pages to pad or to rewrite, and Append Block's append-position condition
(``x-ms-blob-condition-appendpos``) is exactly "only if nobody appended since":
two writers can never interleave bytes in one blob. Its limits decide the rest: a
block holds at most 4 MiB (``APPEND_BLOCK_BYTES``: what every service version and
Azurite accept; newer versions take 100 MiB), so a write larger than that is
several blocks, and one blob holds 50,000 blocks (``MAX_BLOCKS``), so a stream rolls
over to a new blob before it would need more — or when it passes ``blob_bytes``,
which bounds what a node scans to find a position in a blob it has not indexed yet.
A record may thus be up to the format's 64 MiB (``max_record_body``): it spans
blocks, never blobs.

**The pointer commits.** A write (``Engine.write``: the records the hub placed)

1. appends the records to the stream's current blob at its committed end, each
   block under the append-position condition (one round trip per 4 MiB);
2. writes the pointer — head, last time, bytes, and the blob chain with the blob's
   new committed end — under ``If-Match`` of the pointer's ETag (``If-None-Match:
   *`` for a new stream): one round trip.

The pointer's ETag is the fence: of the writers that placed records on one head,
exactly one moves the pointer; the others get 412 and their bytes are **garbage**
past the blob's committed end — never read, since readers read a blob only up to
the end the pointer names. A writer that loses a race loads the pointer again and
places again (``Write.replace``; ``HeadMoved`` without it). A writer whose append
position is taken while the pointer has not moved finds garbage (or a rival's
write in flight) after the committed end: it can never append after it, so it
continues in a **new blob** (a unique name: no two writers ever share one), and the
pointer it commits names where the old blob's committed records end. A write whose
conditional PUT is answered 412 after the SDK retried it looks at the pointer's
``token`` to learn whether its first try landed.

So an append of up to 4 MiB costs **two round trips** (append, pointer) on a node
that knows the stream's pointer — one it loaded for the placement, or its own last
write — plus a round trip to create the blob when the stream rolls over, and one
more per 4 MiB beyond the first. The hub's group commit puts every append waiting
for a stream into one write: many appends share those two round trips.

**Reads** go straight to storage: the pointer (unless this node's copy already
covers the position: committed bytes never change), then a ranged GET of the blob
holding the position, found through a sparse index each node learns (reader.py).

**The dedup window** is read from the records themselves: ``load`` decodes the ids
of the last ``window`` events once per stream and node, then only the records
appended since (by any node), and this node's own writes add theirs.

**No notifications**: the storage has none; ``watch`` keeps the listener and the hub
polls the heads of the streams it waits on (hub.heads).

**What a node keeps** per stream that exists and that it touched: the pointer it
last saw, its sparse index and, once it appended with ids, the window's ids. A name
without events leaves nothing.

**No lease (yet).** MessageVault elected one writer per stream with a blob lease;
here every node may write, and the conditions alone keep the streams whole — a
lease would only spare racing writers their lost round trips (and orphan blobs),
never be needed for correctness.

The package::

    __init__.py   the engine: settings, lifecycle, load, write, read, heads, listing,
                  checkpoints
    pointer.py    the pointer's format and the blobs' names (pure)
    reader.py     reading records up to a committed end; the sparse index
    storage.py    the SDK's client, its errors as Herald's
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from ... import codec
from ...codec import Record
from ...config import bounded, check_bounds
from ...errors import ConfigError, CorruptRecord, HeraldError, StorageUnavailable
from ...model import StreamInfo, validate_stream_name
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
# `engine = "azure-blob"` is this clear ConfigError, not an ImportError.
try:
    from azure.core import MatchConditions
    from azure.storage.blob.aio import BlobServiceClient, ContainerClient
except ImportError as _exc:  # pragma: no cover - depends on the installation
    raise ConfigError(
        "[storage] engine = \"azure-blob\" needs azure-storage-blob: "
        "pip install 'herald[azure]'") from _exc

from .pointer import (
    HEADS_PREFIX,
    POINTER_VERSION,
    DataBlob,
    Pointer,
    checkpoint_blob,
    data_blob_name,
    decode_pointer,
    encode_pointer,
    new_token,
    pointer_blob,
)
from .reader import BlobIndex, read_records
from .storage import (
    DRIVER_ERRORS,
    exists,
    not_found,
    open_service,
    precondition_failed,
    storage_error,
)

if TYPE_CHECKING:
    from ...config import Config

__all__ = ["AzureBlobConfig", "AzureBlobEngine"]

# Azure's and Azurite's limits (see the module docstring).
APPEND_BLOCK_BYTES = 4 * 1024 * 1024
MAX_BLOCKS = 50_000
# A blob rolls over when the next write would take it past this. Large blobs mean
# fewer round trips to create them; small ones bound the scan of a blob a node has
# not indexed yet (one read of a position there reads at most this much).
DEFAULT_BLOB_BYTES = 1024 * 1024 * 1024
MIN_BLOB_BYTES = 4096
# An append blob holds 50,000 blocks of up to 4 MiB (~195 GiB).
MAX_BLOB_BYTES = 64 * 1024**3
# A write placed again this often because other nodes kept writing first fails with
# storage_unavailable (retryable); the hub places it again too (hub.appends).
MAX_WRITE_ATTEMPTS = 10
# The pause after a lost race grows by this much per attempt (randomised).
RACE_PAUSE_SECONDS = 0.02
# How long bytes after a blob's committed end may stay there, the pointer unmoved,
# before a writer takes them for garbage and continues in a new blob: a rival's
# write in flight commits within a round trip or two.
GARBAGE_WAIT_SECONDS = 0.5
# Compare-and-set loops of an unconditional checkpoint write that keeps losing.
MAX_CHECKPOINT_ATTEMPTS = 20
# Pointers fetched at once by ``heads`` (one request each).
MAX_PARALLEL_REQUESTS = 32
# A single GET holds a whole record (up to the format's 64 MiB, and its header):
# a download split in chunks would be fenced on the blob's ETag, which appends by
# other writers change (the SDK's chunked download), and fail.
MAX_SINGLE_GET_BYTES = codec.MAX_RECORD_BODY + 1024 * 1024

# Azure's rule for container names: 3 to 63 of a-z 0-9 -, beginning and ending with a
# letter or digit, no "--".
_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")


@dataclass(frozen=True)
class AzureBlobConfig:
    """``[storage.azure-blob]``: the engine's own keys (docs/configuration.md)."""

    # The storage account's connection string; without it, the environment's
    # AZURE_STORAGE_CONNECTION_STRING, as every Azure tool reads it (azure_account).
    connection_string: str | None = field(default=None, repr=False)
    # The container of Herald's blobs (created on start). Several deployments can
    # share an account under different containers.
    container: str = "herald"
    # A stream's append blob rolls over when the next write would take it past this.
    blob_bytes: int = bounded(DEFAULT_BLOB_BYTES, MIN_BLOB_BYTES, MAX_BLOB_BYTES, unit="bytes")

    def __post_init__(self) -> None:
        self.account  # noqa: B018 - resolved now: a missing account is a ConfigError at start
        if not _CONTAINER.fullmatch(self.container):
            raise ConfigError(
                "[storage.azure-blob] container: expected an Azure container name (3 to 63 "
                f"of a-z, 0-9 and single hyphens, not at either end), got {self.container!r}")
        check_bounds(self, "[storage.azure-blob]")

    @property
    def account(self) -> AzureAccount:
        return AzureAccount.resolve(self.connection_string, "[storage.azure-blob]")


class _Checkpoint(msgspec.Struct, frozen=True):
    value: int
    version: int


_checkpoint_decoder = msgspec.json.Decoder(_Checkpoint)


@dataclass
class _Window:
    """The supplied ids of a stream's last ``size`` events (at least), as of ``head``."""

    size: int
    head: int
    known: dict[str, tuple[int, int]] = field(default_factory=dict)  # id → (position, end)
    pruned: int = 0  # the head at the last pruning


@dataclass
class _Known:
    """What this node knows of a stream that exists: its pointer as last seen (and
    its ETag), where records begin in its blobs, and its dedup window if loaded."""

    pointer: Pointer
    etag: str
    indexes: dict[str, BlobIndex] = field(default_factory=dict)
    window: _Window | None = None
    asked: int = 0  # when the pointer was asked for (AzureBlobEngine._asked)


class AzureBlobEngine(SharedEngine):
    name = "azure-blob"
    settings = AzureBlobConfig
    max_record_body = codec.MAX_RECORD_BODY  # a record spans append blocks

    def __init__(self, config: AzureBlobConfig) -> None:
        self.config = config
        self._service: BlobServiceClient | None = None
        self._container_client: ContainerClient | None = None
        self._listener: HeadListener | None = None
        # Only streams that exist: a name without events leaves nothing behind.
        self._known: dict[str, _Known] = {}
        self._asked = 0  # pointer requests issued: the latest answer is the newest

    @classmethod
    def from_config(cls, config: Config, settings: AzureBlobConfig) -> AzureBlobEngine:
        return cls(settings)

    @property
    def location(self) -> str:
        account = self.config.account
        where = account.endpoint("blob") or account.account_name or "?"
        return f"Azure Blob storage {where}, container {self.config.container}"

    def watch(self, listener: HeadListener) -> None:
        # Blob storage notifies nobody: the hub polls the heads it waits on.
        self._listener = listener

    # lifecycle

    async def open(self) -> None:
        service = open_service(self.config.account.connection_string, MAX_SINGLE_GET_BYTES)
        container = service.get_container_client(self.config.container)
        try:
            await container.create_container()
        except DRIVER_ERRORS as exc:
            if not exists(exc):
                await service.close()
                error = storage_error(exc, f"creating container {self.config.container}")
                raise StorageUnavailable(error.message) from exc
        self._service, self._container_client = service, container
        self._known = {}

    async def close(self) -> None:
        service, self._service, self._container_client = self._service, None, None
        self._known = {}
        if service is not None:
            await service.close()

    @property
    def _container(self) -> ContainerClient:
        if self._container_client is None:
            raise StorageUnavailable("the azure-blob engine is not open")
        return self._container_client

    async def ping(self) -> None:
        try:
            await self._container.get_container_properties()
        except DRIVER_ERRORS as exc:
            error = storage_error(exc, "checking the container")
            raise StorageUnavailable(error.message) from exc

    # the pointer

    async def _fetch(self, stream: str) -> _Known | None:
        """The stream's pointer, read now (one round trip); None: no such stream."""
        blob = self._container.get_blob_client(pointer_blob(stream))
        self._asked += 1
        asked = self._asked
        try:
            downloader = await blob.download_blob()
            raw = await downloader.readall()
        except DRIVER_ERRORS as exc:
            if not_found(exc):
                self._known.pop(stream, None)
                return None
            raise storage_error(exc, f"reading the head of stream {stream}") from exc
        pointer = decode_pointer(stream, raw)
        etag = str(downloader.properties.etag)
        known = self._known.get(stream)
        if known is None:
            known = self._known[stream] = _Known(pointer, etag, asked=asked)
        elif asked > known.asked:
            # The answer to the latest question wins — not the highest head: a
            # storage that lost writes (Azurite killed before it saved them) must
            # not leave this node fenced by an ETag that no longer exists.
            known.pointer, known.etag, known.asked = pointer, etag, asked
        else:  # an older question's answer, overtaken: the caller's, not the node's
            return _Known(pointer, etag, known.indexes, known.window, asked)
        return known

    # appends

    async def load(self, stream: str, window: int,
                   ids: Collection[str] | None = None) -> StreamState:
        """The pointer (one round trip), and where the ids are: from this node's
        window of the stream, brought up to the head by reading the records
        appended since (by any node)."""
        validate_stream_name(stream)
        known = await self._fetch(stream)
        if known is None:
            return StreamState()
        return await self._state(stream, known, window, ids)

    async def _state(self, stream: str, known: _Known, window: int,
                     ids: Collection[str] | None) -> StreamState:
        pointer = known.pointer
        if ids is not None and not ids:
            return StreamState(pointer.head, pointer.last_time)
        ids_window = await self._window(stream, known, window)
        edge = pointer.head - window
        wanted = ids_window.known if ids is None else ids
        found = {event_id: ids_window.known[event_id] for event_id in wanted
                 if event_id in ids_window.known and ids_window.known[event_id][1] > edge}
        return StreamState(pointer.head, pointer.last_time, found)

    async def _window(self, stream: str, known: _Known, size: int) -> _Window:
        """This node's window of the stream, up to the pointer's head."""
        pointer = known.pointer
        ids = known.window
        if ids is None or ids.size < size or ids.head > pointer.head:
            ids = _Window(size, max(0, pointer.head - size))
            ids.pruned = ids.head
        position = ids.head
        while position < pointer.head:
            records = await read_records(self._download, stream, pointer, known.indexes,
                                         position, READ_CHUNK_BYTES)
            if not records:
                raise CorruptRecord(f"stream {stream}: no records at position {position}, "
                                    f"below its head {pointer.head}", stream=stream,
                                    first=position)
            for record in records:
                _add_ids(ids, record)
                position = record.end
        ids.head = pointer.head
        _prune(ids)
        known.window = ids
        return ids

    async def write(self, stream: str, write: Write) -> None:
        """Append, then move the pointer under its ETag (see the module docstring).
        A lost race loads the pointer again and places again (Write.replace)."""
        validate_stream_name(stream)
        known = self._known.get(stream)
        fresh = known is None
        if known is None:
            known = await self._fetch(stream)
        for _attempt in range(MAX_WRITE_ATTEMPTS):
            head = known.pointer.head if known is not None else 0
            if head != write.expected_head:
                if not fresh:  # this node's copy may be old: look again
                    known, fresh = await self._fetch(stream), True
                    continue
                if write.replace is None:
                    raise HeadMoved(head)
                state = (StreamState() if known is None else
                         await self._state(stream, known, write.replace.window,
                                           write.replace.ids))
                write = write.replace.place(state)
                if not write.written:
                    return
            if await self._commit(stream, known, write):
                return
            # Lost the race: look again, after a pause that grows and differs per
            # node, so that writers racing for one stream do not keep colliding.
            await asyncio.sleep(random.uniform(0, RACE_PAUSE_SECONDS * (_attempt + 1)))
            known, fresh = await self._fetch(stream), True
        # The hub loads the state again and places again (its own attempts).
        raise HeadMoved(known.pointer.head if known is not None else 0)

    async def _commit(self, stream: str, known: _Known | None, write: Write) -> bool:
        """Write's records, then the pointer. False: another writer moved the pointer
        first (nothing of this write is committed)."""
        records = write.records
        data = b"".join(r.raw for r in records)
        blocks_needed = -(-len(data) // APPEND_BLOCK_BYTES)
        token = new_token()
        # What this write is placed on, as of now: ``known`` is this node's copy,
        # which other requests may refresh meanwhile.
        pointer = known.pointer if known is not None else None
        etag = known.etag if known is not None else None
        blobs: tuple[DataBlob, ...] | None = None
        offset = 0
        if pointer is not None:
            current = pointer.blobs[-1]
            if (current.end + len(data) <= self.config.blob_bytes
                    and current.blocks + blocks_needed <= MAX_BLOCKS):
                blocks = await self._append(stream, current.name, current.end, data)
                if blocks is not None:
                    offset = current.end
                    blobs = (*pointer.blobs[:-1], DataBlob(
                        current.name, current.first, current.end + len(data), blocks))
                elif await self._pointer_moves(stream, etag):
                    return False
                # else: what follows the committed end is garbage: go on in a new blob
        if blobs is None:
            name = data_blob_name(stream, write.expected_head, token)
            await self._create(stream, name, write.expected_head)
            blocks = await self._append(stream, name, 0, data)
            if blocks is None:  # a blob nobody else knows of: not reached
                return False
            blobs = (*(pointer.blobs if pointer is not None else ()),
                     DataBlob(name, write.expected_head, len(data), blocks))
        new = Pointer(POINTER_VERSION, write.head, write.last_time,
                      (pointer.bytes if pointer is not None else 0) + len(data), token, blobs)
        moved = await self._move_pointer(stream, etag, new)
        if moved is None:
            return False
        self._committed(stream, new, moved, records, blobs[-1].name, offset)
        return True

    async def _pointer_moves(self, stream: str, etag: str | None) -> bool:
        """Someone appended after the committed end: a rival whose write is in flight
        (its pointer is about to move), or the garbage of one that lost or died
        (it never will). Nothing may follow those bytes; True if the pointer moves
        within GARBAGE_WAIT_SECONDS (this write lost: place again), False if it does
        not (garbage: the caller goes on in a new blob). Waiting a little spares
        racing writers a new blob each."""
        delay = GARBAGE_WAIT_SECONDS / 8
        waited = 0.0
        while True:
            again = await self._fetch(stream)
            if again is None or again.etag != etag:
                return True
            if waited >= GARBAGE_WAIT_SECONDS:
                return False
            await asyncio.sleep(delay)
            waited += delay
            delay *= 2

    async def _append(self, stream: str, name: str, offset: int, data: bytes) -> int | None:
        """Append ``data`` at ``offset`` of blob ``name``, a block per 4 MiB, each only
        if the blob ends where the previous one left it. The blob's committed blocks
        afterwards; None if someone else's bytes are in the way."""
        blob = self._container.get_blob_client(name)
        blocks = 0
        for start in range(0, len(data), APPEND_BLOCK_BYTES):
            chunk = data[start:start + APPEND_BLOCK_BYTES]
            try:
                # A file-like body: aiohttp streams it instead of sending megabytes
                # of bytes from the event loop in one go (and warns about that).
                answer = await blob.append_block(io.BytesIO(chunk), length=len(chunk),
                                                 appendpos_condition=offset + start)
            except DRIVER_ERRORS as exc:
                if precondition_failed(exc):
                    return None
                raise storage_error(exc, f"appending to stream {stream}") from exc
            blocks = int(str(answer["blob_committed_block_count"]))
        return blocks

    async def _create(self, stream: str, name: str, first: int) -> None:
        blob = self._container.get_blob_client(name)
        try:
            await blob.create_append_blob(metadata={"first": str(first)},
                                          match_condition=MatchConditions.IfMissing)
        except DRIVER_ERRORS as exc:
            if exists(exc):  # the SDK's retry of a request that had landed: ours
                return
            raise storage_error(exc, f"creating a blob of stream {stream}") from exc

    async def _move_pointer(self, stream: str, etag: str | None,
                            new: Pointer) -> str | None:
        """Write the pointer if its ETag is still ``etag`` (None: if there is none);
        its new ETag, or None if another writer moved it first."""
        blob = self._container.get_blob_client(pointer_blob(stream))
        try:
            if etag is None:
                answer = await blob.upload_blob(encode_pointer(new), metadata=new.metadata,
                                                match_condition=MatchConditions.IfMissing)
            else:
                answer = await blob.upload_blob(encode_pointer(new), overwrite=True,
                                                metadata=new.metadata, etag=etag,
                                                match_condition=MatchConditions.IfNotModified)
        except DRIVER_ERRORS as exc:
            if precondition_failed(exc) or exists(exc):
                # Lost — or the SDK tried again a request that had landed.
                again = await self._fetch(stream)
                if again is not None and again.pointer.token == new.token:
                    return again.etag
                return None
            # The outcome is unknown (the answer was lost): the pointer says.
            error = storage_error(exc, f"committing an append to stream {stream}")
            with contextlib.suppress(HeraldError):
                again = await self._fetch(stream)
                if again is not None and again.pointer.token == new.token:
                    return again.etag
            self._known.pop(stream, None)
            raise StorageUnavailable(
                f"{error.message}; the append may or may not have been committed") from exc
        return str(answer["etag"])

    def _committed(self, stream: str, new: Pointer, etag: str,
                   records: Sequence[Record], name: str, offset: int) -> None:
        """This node's copy of the stream after its own write."""
        self._asked += 1
        known = self._known.setdefault(stream, _Known(new, etag))
        known.pointer, known.etag, known.asked = new, etag, self._asked
        index = known.indexes.setdefault(name, BlobIndex())
        for record in records:
            index.add(record.base, offset)
            offset += len(record.raw)
        ids = known.window
        if ids is not None and records and ids.head == records[0].base:
            for record in records:
                _add_ids(ids, record)
            ids.head = new.head
            _prune(ids)

    async def _download(self, name: str, offset: int, length: int) -> bytes:
        blob = self._container.get_blob_client(name)
        try:
            downloader = await blob.download_blob(offset=offset, length=length)
            return await downloader.readall()
        except DRIVER_ERRORS as exc:
            raise storage_error(exc, f"reading blob {name}") from exc

    # reads

    async def read(
        self, stream: str, start: int, max_bytes: int = READ_CHUNK_BYTES
    ) -> list[Record]:
        validate_stream_name(stream)
        known = self._known.get(stream)
        if known is None or start >= known.pointer.head:
            known = await self._fetch(stream)
            if known is None:
                return []
        return await read_records(self._download, stream, known.pointer, known.indexes,
                                  max(0, start), max_bytes)

    async def head(self, stream: str) -> int:
        validate_stream_name(stream)
        known = await self._fetch(stream)
        return known.pointer.head if known is not None else 0

    async def heads(self, streams: Sequence[str]) -> dict[str, int]:
        names = list(streams)
        limit = asyncio.Semaphore(MAX_PARALLEL_REQUESTS)

        async def one(name: str) -> int:
            async with limit:
                return await self.head(name)

        heads = await asyncio.gather(*(one(name) for name in names))
        return dict(zip(names, heads, strict=True))

    # listing

    async def streams(self) -> list[StreamInfo]:
        """One listing of the pointers: their metadata repeat head and bytes."""
        out: list[StreamInfo] = []
        try:
            async for blob in self._container.list_blobs(name_starts_with=HEADS_PREFIX,
                                                         include=["metadata"]):
                metadata = blob.metadata or {}
                try:
                    head, size = int(metadata["head"]), int(metadata["bytes"])
                except (KeyError, ValueError) as exc:
                    raise CorruptRecord(f"pointer blob {blob.name} has no head in its "
                                        "metadata") from exc
                if head > 0:
                    out.append(StreamInfo(name=blob.name[len(HEADS_PREFIX):], head=head,
                                          bytes=size))
        except DRIVER_ERRORS as exc:
            raise storage_error(exc, "listing streams") from exc
        return sorted(out, key=lambda s: s.name)

    async def stream(self, stream: str) -> StreamInfo | None:
        validate_stream_name(stream)
        known = await self._fetch(stream)
        if known is None or known.pointer.head == 0:
            return None
        return StreamInfo(name=stream, head=known.pointer.head, bytes=known.pointer.bytes)

    # checkpoints

    async def _read_checkpoint(self, name: str) -> tuple[Checkpoint, str] | None:
        blob = self._container.get_blob_client(checkpoint_blob(name))
        try:
            downloader = await blob.download_blob()
            raw = await downloader.readall()
        except DRIVER_ERRORS as exc:
            if not_found(exc):
                return None
            raise storage_error(exc, f"reading checkpoint {name}") from exc
        try:
            stored = _checkpoint_decoder.decode(raw)
        except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
            raise CorruptRecord(f"checkpoint {name} does not decode ({exc})") from exc
        return Checkpoint(stored.value, stored.version), str(downloader.properties.etag)

    async def get_checkpoint(self, name: str) -> Checkpoint | None:
        found = await self._read_checkpoint(validate_checkpoint_name(name))
        return found[0] if found is not None else None

    async def set_checkpoint(self, name: str, value: int,
                             expected_version: int | None = None) -> Checkpoint:
        """Compare-and-set on the checkpoint blob's ETag (``If-None-Match: *`` for
        version 0); without ``expected_version``, the same in a loop."""
        validate_checkpoint_name(name)
        blob = self._container.get_blob_client(checkpoint_blob(name))
        for _attempt in range(MAX_CHECKPOINT_ATTEMPTS):
            found = None if expected_version == 0 else await self._read_checkpoint(name)
            current = found[0] if found is not None else None
            version = current.version if current is not None else 0
            if expected_version is not None and version != expected_version:
                raise CheckpointConflict(name, current)
            new = Checkpoint(value, version + 1)
            content = msgspec.json.encode(_Checkpoint(value, new.version))
            try:
                if found is None:
                    await blob.upload_blob(content, match_condition=MatchConditions.IfMissing)
                else:
                    await blob.upload_blob(content, overwrite=True, etag=found[1],
                                           match_condition=MatchConditions.IfNotModified)
            except DRIVER_ERRORS as exc:
                if not (precondition_failed(exc) or exists(exc)):
                    raise storage_error(exc, f"writing checkpoint {name}") from exc
                if expected_version is None:
                    continue  # another node set it meanwhile: set it over theirs
                again = await self._read_checkpoint(name)
                raise CheckpointConflict(name, again[0] if again else None) from None
            return new
        raise StorageUnavailable(f"checkpoint {name}: other nodes kept setting it first "
                                 f"({MAX_CHECKPOINT_ATTEMPTS} tries); try again")


def _add_ids(ids: _Window, record: Record) -> None:
    """The supplied ids of ``record`` into the window (records at or after its head)."""
    if record.end <= ids.head:
        return
    for offset, event in enumerate(codec.decode_batch(record.body).e):
        if event.id is not None:
            ids.known[event.id] = (record.base + offset, record.end)


def _prune(ids: _Window) -> None:
    """Forget ids whose batch ended more than the window behind the head, when the
    head has moved a quarter of the window since the last time."""
    if ids.head - ids.pruned < max(1, ids.size // 4):
        return
    edge = ids.head - ids.size
    for event_id in [i for i, (_, end) in ids.known.items() if end <= edge]:
        del ids.known[event_id]
    ids.pruned = ids.head
