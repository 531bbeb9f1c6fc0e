"""Herald: gathers the events of event-sourced modules and publishes them.

The public surface is what this module exports; everything else is internal.
"""

from .client import AsyncClient, AsyncSubscription, Client, ReadResult, Subscription
from .errors import (
    ClientError,
    ConfigError,
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
    StorageError,
    StorageFull,
    StorageUnavailable,
    TooLarge,
    TransportError,
    Unauthorized,
    UnmappableRow,
    UnsupportedEncoding,
)
from .model import AppendResult, Duplicate, Event, Limits, StreamInfo
from .version import __version__

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
    "UnsupportedEncoding",
    "RateLimited",
    "RequestTimeout",
    "ConfigError",
    "ServerError",
    "StorageError",
    "CorruptRecord",
    "StorageFull",
    "StorageUnavailable",
    "SourceError",
    "SourceUnavailable",
    "UnmappableRow",
    "TransportError",
    "ProtocolError",
]
