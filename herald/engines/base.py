"""The storage port: what every engine must do, and nothing more.

Rules of this package:

1. An engine stores streams of records and checkpoints. It knows nothing of what an
   append means (positions, ids, duplicates, conflicts, times: ``herald.placement``),
   of subscribers, waiting, caches or HTTP: those are the hub's.
2. Only the hub calls an engine (enforced by the import-linter contract in
   pyproject.toml). Engines may import the model, the errors, the codec and the
   placement's values; never the hub, the server, the gatherers or the client.
3. Every driver exception (OSError, psycopg…) becomes a Herald error inside the
   engine (``raise … from exc``).
4. An engine is used from one asyncio event loop; blocking work runs in threads.

The port, layered as eventsourcing's recorders are:

``Engine`` — every engine:

* ``load(stream, window, ids)`` — the stream's state for placement: its durable
  head, the time of its last record, and where each of ``ids`` (None: every
  supplied id) is if it lies in the last ``window`` events (more is allowed; the
  placement applies the window).
* ``write(stream, write)`` — write the placed records **atomically and durably, if
  the stream's durable head is still** ``write.expected_head``; else place them
  again inside the critical section (``Write.replace``) where the engine can, or
  raise ``HeadMoved``. Returns only once the records are durable. An engine that can
  fail half-way (the files engine between two segments) raises ``PartlyWritten``
  naming how many leading records are durable.
* ``read(stream, start, max_bytes)`` — durable records holding positions ≥ start.
* ``head``/``heads``/``streams``/``stream`` — durable heads and listing.
* checkpoints — small named integers with a version, set with compare-and-set.

``SharedEngine`` — storage several nodes write at once (postgres, later Azure):
another node's appends are learnt through ``watch`` (a hint, never the data), and
the hub falls back to polling the heads of the streams it waits on.

The conformance suite in ``tests/conformance`` runs unchanged against every engine
(through the hub, which is how everything reaches an engine).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .. import codec
from ..codec import Record
from ..errors import HeraldError
from ..model import StreamInfo
from ..placement import Placed, StreamState

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "READ_CHUNK_BYTES",
    "Checkpoint",
    "CheckpointConflict",
    "Engine",
    "HeadListener",
    "HeadMoved",
    "NoSettings",
    "PartlyWritten",
    "Replace",
    "SharedEngine",
    "StreamState",
    "Write",
    "validate_checkpoint_name",
]

# What one read returns at most (beyond the first record, which is always whole).
# Large enough that a catch-up reader pays one call per megabyte, small enough that
# a hundred subscribers do not pin a hundred large buffers.
READ_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Replace:
    """How to place a write again inside the engine's critical section.

    An engine that finds the head moved while it holds the stream (PostgreSQL's row
    lock) loads the state there — the head, the last time, and where ``ids`` are
    within the last ``window`` events — and writes ``place(state)`` instead: the
    appends are placed against what is really there, under the lock, so a node
    that keeps losing races still makes progress."""

    ids: Sequence[str]
    window: int
    place: Callable[[StreamState], Write]


@dataclass(frozen=True, slots=True)
class Write:
    """Placed records for one stream, to be written if its head is ``expected_head``.

    ``head`` is the stream's head once they are written (the end of the last
    record), ``last_time`` the time of the last record. ``written`` may be empty
    (a re-placement found every append a retry or a conflict): nothing is written.
    ``replace``: see Replace; without it a moved head is HeadMoved."""

    expected_head: int
    written: Sequence[Placed]
    head: int
    last_time: int
    replace: Replace | None = None

    @property
    def records(self) -> list[Record]:
        return [p.record for p in self.written]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A named integer and its version (1 for the first value, then +1 per set)."""

    value: int
    version: int


class HeadMoved(Exception):
    """The stream's durable head is not the one the placement saw (another node
    wrote): nothing was written. The hub loads the state again and re-places."""

    def __init__(self, head: int) -> None:
        super().__init__(f"the stream's head is {head}")
        self.head = head


class PartlyWritten(Exception):
    """The first ``durable`` records of a write are durable; the rest were not
    written, for ``error``."""

    def __init__(self, durable: int, error: HeraldError) -> None:
        super().__init__(error.message)
        self.durable = durable
        self.error = error


class CheckpointConflict(Exception):
    """A compare-and-set found another version: ``current`` is what is stored."""

    def __init__(self, name: str, current: Checkpoint | None) -> None:
        super().__init__(f"checkpoint {name} was changed meanwhile")
        self.name = name
        self.current = current


class HeadListener(Protocol):
    """What a shared engine tells the hub (see SharedEngine.watch)."""

    def advance(self, stream: str, head: int) -> None:
        """Another node made ``stream``'s durable head at least ``head``."""

    def alarm(self) -> None:
        """Notifications may have been lost (a lost connection): every waiter should
        ask the storage now, and fail over if it cannot be reached."""


def validate_checkpoint_name(name: str) -> str:
    """The names every engine accepts, so that a deployment can move between them."""
    from ..errors import InvalidRequest

    if (not 1 <= len(name) <= 200 or name.startswith(".")
            or not all(c.isascii() and (c.isalnum() or c in "._:-") for c in name)):
        raise InvalidRequest(f"invalid checkpoint name {name!r}", code="invalid_parameter")
    return name


@dataclass(frozen=True)
class NoSettings:
    """The settings of an engine without keys of its own."""


class Engine(abc.ABC):
    """Storage for streams. Used from one asyncio event loop."""

    name: str = "engine"
    # The dataclass of the engine's own table, [storage.<name>] (engines/__init__.py).
    settings: ClassVar[type[Any]] = NoSettings
    # The largest record body the engine stores and reads back whole: the format's
    # bound, or lower where the storage is tighter (a blob write, a table entity).
    # The hub refuses limits beyond it at start (hub.check_limits).
    max_record_body: ClassVar[int] = codec.MAX_RECORD_BODY

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Config, settings: Any) -> Engine:
        """The engine for ``config``, with ``settings`` parsed from its table."""

    @property
    def location(self) -> str | None:
        """Where the data is, for the start-up banner (no secrets); None: the data
        directory."""
        return None

    @abc.abstractmethod
    async def open(self) -> None:
        """Recover and get ready. Raises StorageUnavailable if that is impossible."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish the writes in progress and release every resource."""

    async def ping(self) -> None:
        """Raise StorageUnavailable if the storage cannot serve requests now (the
        health check). An embedded engine that is open can: the default passes."""
        return None

    # appends: the hub places, the engine writes

    @abc.abstractmethod
    async def load(self, stream: str, window: int,
                   ids: Collection[str] | None = None) -> StreamState:
        """The stream's durable state: its head, the time of its last record, and
        where the supplied ids that lie in the last ``window`` events are (each with
        the end of its batch). With ``ids``, only those need be looked up; None: every
        supplied id of the window (the hub then keeps the window itself). Raises
        (CorruptRecord, a failed stream) if the stream cannot take appends now."""

    @abc.abstractmethod
    async def write(self, stream: str, write: Write) -> None:
        """Write ``write.records`` atomically and durably if the stream's durable head
        is ``write.expected_head``; else raise HeadMoved (see the module docstring)."""

    # reads

    @abc.abstractmethod
    async def read(
        self, stream: str, start: int, max_bytes: int = READ_CHUNK_BYTES
    ) -> list[Record]:
        """Durable records holding positions ≥ ``start``, in order.

        The first record may begin before ``start`` (the caller skips into it). An
        empty list means ``start`` is at or beyond the durable head. Raises
        CorruptRecord, naming the position range, for damaged storage.
        """

    @abc.abstractmethod
    async def head(self, stream: str) -> int:
        """The durable head; 0 for a stream that has no events."""

    async def heads(self, streams: Sequence[str]) -> dict[str, int]:
        """The durable heads of several streams (one query where the storage can)."""
        return {name: await self.head(name) for name in streams}

    @abc.abstractmethod
    async def streams(self) -> list[StreamInfo]:
        """Every stream that has at least one event, by name."""

    @abc.abstractmethod
    async def stream(self, stream: str) -> StreamInfo | None:
        """One stream's information, or None if it has no events."""

    # checkpoints

    @abc.abstractmethod
    async def get_checkpoint(self, name: str) -> Checkpoint | None:
        """The value last stored under ``name`` and its version, or None."""

    @abc.abstractmethod
    async def set_checkpoint(self, name: str, value: int,
                             expected_version: int | None = None) -> Checkpoint:
        """Store ``value`` under ``name`` durably; return it with its new version.

        With ``expected_version`` (0: "does not exist yet") it is a compare-and-set:
        CheckpointConflict unless the stored version is that one."""

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class SharedEngine(Engine):
    """Storage that several Herald nodes write at once.

    The hub then never trusts a head it cached (every append loads the state, and
    the conditional write catches a race), and waits for other nodes' appends
    through the notifications this engine delivers, with a fallback poll."""

    @abc.abstractmethod
    def watch(self, listener: HeadListener) -> None:
        """Deliver other nodes' new heads to ``listener`` from now on (called once,
        before ``open``)."""
