"""Herald: gathers the events of event-sourced modules and publishes them.

The public surface is what this module exports; everything else is internal.
"""

__version__ = "0.1.0"

from .client import AsyncClient, AsyncSubscription, Client, ReadResult, Subscription
from .errors import (
    ClientError,
    Conflict,
    CorruptRecord,
    EmptyBatch,
    ExpectedHeadMismatch,
    Forbidden,
    HeraldError,
    InvalidRequest,
    InvalidStreamName,
    NotFound,
    ProtocolError,
    RateLimited,
    RequestTimeout,
    ServerError,
    SourceError,
    SourceUnavailable,
    StorageFull,
    StorageUnavailable,
    TooLarge,
    TransportError,
    Unauthorized,
    UnmappableRow,
)
from .model import AppendResult, Duplicate, Event, Limits, StreamInfo

__all__ = [
    "__version__",
    # clients
    "AsyncClient",
    "AsyncSubscription",
    "Client",
    "Subscription",
    "ReadResult",
    # values
    "AppendResult",
    "Duplicate",
    "Event",
    "Limits",
    "StreamInfo",
    # errors
    "HeraldError",
    "ClientError",
    "InvalidRequest",
    "InvalidStreamName",
    "EmptyBatch",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "ExpectedHeadMismatch",
    "Conflict",
    "TooLarge",
    "RateLimited",
    "RequestTimeout",
    "ServerError",
    "CorruptRecord",
    "StorageFull",
    "StorageUnavailable",
    "SourceError",
    "SourceUnavailable",
    "UnmappableRow",
    "TransportError",
    "ProtocolError",
]
