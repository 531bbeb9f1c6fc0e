"""The engine contract: the one small interface every storage engine implements.

An engine stores streams of batches. It promises:

* ``append`` is atomic: a batch gets positions ``head … head+n-1`` or nothing is
  written. With ``expected_head`` it fails with ExpectedHeadMismatch unless the
  stream's head (counting appends already accepted) equals it. Events whose id is
  already in the stream's dedup window are not appended again; the result lists
  them. The call returns only once the batch is durable.
* ``read`` returns whole records holding positions at or after ``start``, and only
  durable ones: a reader never sees an event that a crash could take back.
* ``wait`` returns as soon as the durable head passes a position (or on timeout).
* checkpoints are small named integers kept durably (consumer groups, gatherers).

The conformance suite in ``tests/conformance`` runs unchanged against every engine.
"""

from __future__ import annotations

import abc

from ..codec import Record
from ..model import AppendResult, Batch, StreamInfo

__all__ = ["Engine", "READ_CHUNK_BYTES"]

# What one read returns at most (beyond the first record, which is always whole).
# Large enough that a catch-up reader pays one call per megabyte, small enough that
# a hundred subscribers do not pin a hundred large buffers.
READ_CHUNK_BYTES = 1024 * 1024


class Engine(abc.ABC):
    """Storage for streams. Used from one asyncio event loop."""

    name: str = "engine"

    @abc.abstractmethod
    async def open(self) -> None:
        """Recover and get ready. Raises StorageUnavailable if that is impossible."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending appends and release every resource."""

    @abc.abstractmethod
    async def append(
        self, stream: str, batch: Batch, expected_head: int | None = None
    ) -> AppendResult:
        """Append a batch atomically and durably (see the module docstring)."""

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

    @abc.abstractmethod
    async def wait(self, stream: str, position: int, timeout: float) -> int:
        """Wait until the durable head is greater than ``position``; return the head.

        Returns the (unchanged) head after ``timeout`` seconds.
        """

    @abc.abstractmethod
    async def streams(self) -> list[StreamInfo]:
        """Every stream that has at least one event, by name."""

    @abc.abstractmethod
    async def stream(self, stream: str) -> StreamInfo | None:
        """One stream's information, or None if it has no events."""

    @abc.abstractmethod
    async def get_checkpoint(self, name: str) -> int | None:
        """The value last stored under ``name``, or None."""

    @abc.abstractmethod
    async def set_checkpoint(self, name: str, value: int) -> None:
        """Store ``value`` under ``name`` durably."""

    async def ping(self) -> None:
        """Raise StorageUnavailable if the storage cannot serve requests now (the
        health check). An embedded engine that is open can: the default passes."""
        return None

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
