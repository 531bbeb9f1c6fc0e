"""The public surface is pinned: ``herald.__all__`` is exactly this list.

Adding or removing a public name is a decision; this test makes it a visible one
(compare httpx's tests/test_exported_members.py). Every exported name must also be
importable and be what its home module defines, and every error class in
``herald.errors`` must be reachable from ``herald``.
"""

from __future__ import annotations

import importlib

import herald
from herald import errors

EXPORTED = [
    "AppendResult",
    "AsyncClient",
    "AsyncSubscription",
    "Client",
    "ClientError",
    "ConfigError",
    "Conflict",
    "CorruptRecord",
    "Duplicate",
    "EmptyBatch",
    "Event",
    "ExpectedHeadMismatch",
    "Forbidden",
    "HeraldError",
    "InvalidRequest",
    "InvalidStreamName",
    "Limits",
    "NotFound",
    "ProtocolError",
    "RateLimited",
    "ReadResult",
    "RequestTimeout",
    "ServerError",
    "SourceError",
    "SourceUnavailable",
    "StorageError",
    "StorageFull",
    "StorageUnavailable",
    "StreamInfo",
    "Subscription",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "UnmappableRow",
    "UnsupportedEncoding",
    "__version__",
]


def test_all_is_exactly_the_public_surface() -> None:
    assert sorted(herald.__all__) == EXPORTED
    assert len(set(herald.__all__)) == len(herald.__all__), "no name listed twice"


def test_every_exported_name_is_importable() -> None:
    module = importlib.import_module("herald")
    for name in herald.__all__:
        assert hasattr(module, name), name
    namespace: dict[str, object] = {}
    exec("from herald import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(herald.__all__)


def test_exported_members_belong_to_herald() -> None:
    for name in herald.__all__:
        member = getattr(herald, name)
        if name == "__version__":
            assert isinstance(member, str) and member
            continue
        assert member.__module__.startswith("herald."), (name, member.__module__)
        assert member.__name__ == name


def test_every_error_is_public() -> None:
    classes = [getattr(errors, name) for name in errors.__all__
               if isinstance(getattr(errors, name), type)]
    for cls in classes:
        assert issubclass(cls, herald.HeraldError)
        assert getattr(herald, cls.__name__) is cls, cls.__name__
