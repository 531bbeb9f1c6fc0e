"""The Azure SDK as the engine sees it: clients, and driver errors as Herald's.

Rules of this module: it is the one place that knows how the SDK reports a failure.
Every exception the SDK (or aiohttp under it) raises becomes a Herald error here
(``storage_error``), with the operation named; the engine only asks the questions
the conditions make it ask (``precondition_failed``, ``not_found``, ``exists``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

from ...errors import StorageError, StorageUnavailable

__all__ = ["DRIVER_ERRORS", "exists", "not_found", "open_service", "precondition_failed",
           "storage_error"]

# What the SDK raises for a failed request (AzureError), and what can slip past its
# pipeline from the transport (a refused connection, a timeout).
DRIVER_ERRORS = (AzureError, OSError, asyncio.TimeoutError)

# A request the SDK tries again this often (exponential back-off) before the engine
# reports the storage unavailable: a restarting emulator or a brief network cut is
# ridden over, a dead account is reported within seconds rather than minutes.
RETRY_TOTAL = 3
# Seconds before the first retry, then + 2**n (± 1): ~1, 3, 5 s. The SDK's default
# (15 s, then + 3**n) would keep an append waiting a minute for a dead account.
RETRY_FIRST_SECONDS = 1
RETRY_BASE = 2
# The service version every request names, rather than the newest the installed SDK
# knows: the engine relies on that version's behaviour (4 MiB append blocks, the
# append-position condition), and Azurite refuses versions newer than its own
# (Herald's pinned Azurite, tools/azurite, serves this one; so does every SDK that
# pyproject.toml allows).
API_VERSION = "2024-05-04"
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 60


def open_service(connection_string: str,
                 max_single_get: int = 64 * 1024 * 1024) -> BlobServiceClient:
    """The account's client; a GET of up to ``max_single_get`` bytes is one request.
    Raises StorageUnavailable for a connection string the SDK cannot use (checked
    here, not at the first request)."""
    try:
        retry = ExponentialRetry(initial_backoff=RETRY_FIRST_SECONDS, increment_base=RETRY_BASE,
                                 retry_total=RETRY_TOTAL, random_jitter_range=1)
        return BlobServiceClient.from_connection_string(
            connection_string, retry_policy=retry,
            connection_timeout=CONNECT_TIMEOUT_SECONDS, read_timeout=READ_TIMEOUT_SECONDS,
            max_single_get_size=max_single_get, api_version=API_VERSION)
    except (ValueError, AzureError) as exc:
        raise StorageUnavailable(
            f"the Azure storage connection string cannot be used ({_first_line(exc)})"
        ) from exc


def storage_error(exc: BaseException, doing: str) -> StorageError:
    """The Herald error for a driver exception raised while ``doing`` something:
    StorageUnavailable when the account cannot be reached or refuses us (try again,
    or another node), StorageError for a request the service failed."""
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, OSError,
                        asyncio.TimeoutError)):
        return StorageUnavailable(f"Azure Blob storage cannot be reached while {doing} "
                                  f"({_first_line(exc)})")
    if isinstance(exc, ClientAuthenticationError):
        return StorageUnavailable(f"Azure Blob storage refused the account's credentials "
                                  f"while {doing} ({_first_line(exc)})")
    if isinstance(exc, HttpResponseError) and exc.status_code in (500, 503):
        return StorageUnavailable(f"Azure Blob storage is busy or failing while {doing} "
                                  f"({_error_code(exc)})")
    if isinstance(exc, ResourceNotFoundError) and _error_code(exc) == "ContainerNotFound":
        return StorageUnavailable(f"the Azure Blob container is gone while {doing}")
    return StorageError(f"Azure Blob storage failed while {doing} ({_error_code(exc)})")


def precondition_failed(exc: BaseException) -> bool:
    """A condition (If-Match, If-None-Match, an append position) was not met."""
    return isinstance(exc, HttpResponseError) and exc.status_code == 412


def not_found(exc: BaseException) -> bool:
    """The blob does not exist (but its container does)."""
    return isinstance(exc, ResourceNotFoundError) and _error_code(exc) != "ContainerNotFound"


def exists(exc: BaseException) -> bool:
    """If-None-Match: * failed: the blob exists already (409 BlobAlreadyExists)."""
    return isinstance(exc, ResourceExistsError) or (
        isinstance(exc, HttpResponseError) and exc.status_code == 409
        and _error_code(exc) == "BlobAlreadyExists")


def _error_code(exc: BaseException) -> str:
    code: Any = getattr(exc, "error_code", None)
    status = getattr(exc, "status_code", None)
    text = str(getattr(code, "value", code) or "") or type(exc).__name__
    return f"{text}, HTTP {status}" if status else text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
