"""Azure SDK exceptions as Herald errors, for the azure-table engine.

Rules: every call into the SDK runs inside ``azure_errors(what)``; what leaves it
is a Herald error (``raise … from exc``), never an azure-core exception.

* the request never reached the account (refused connection, DNS, TLS): definitely
  not applied — StorageUnavailable;
* it was sent and no answer came (a timeout, a broken connection): it may or may
  not have been applied — AmbiguousWrite, a StorageUnavailable. (The SDK retries,
  so even a refused connection may follow an attempt that was applied: the write
  path resolves every failed commit by reading what is stored; see the engine.)
* the account refused the key (401/403), the table is missing, the request is
  malformed: StorageError naming the operation;
* the account is busy or failing (408, 429, 5xx): StorageUnavailable.

Conditions (412, 409) are not errors of the storage: the engine catches them itself
(``is_condition``) before anything reaches here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from ...errors import StorageError, StorageUnavailable

__all__ = ["AmbiguousWrite", "azure_errors", "error_code", "first_line", "is_condition"]


class AmbiguousWrite(StorageUnavailable):
    """A request was sent and its answer lost: it may or may not have been applied."""


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    return str(code.value if hasattr(code, "value") else code) if code else None


def is_condition(exc: BaseException) -> bool:
    """A failed condition: If-Match (412) or a row that already exists (409)."""
    return isinstance(exc, HttpResponseError) and exc.status_code in (409, 412)


@contextlib.contextmanager
def azure_errors(what: str) -> Iterator[None]:
    """Run SDK calls for ``what`` ("appending to stream s"); their exceptions leave
    as Herald errors."""
    try:
        yield
    except ServiceRequestError as exc:
        raise StorageUnavailable(
            f"Azure Storage unreachable while {what}: {first_line(exc)}") from exc
    except ServiceResponseError as exc:
        raise AmbiguousWrite(
            f"Azure Storage did not answer while {what}: {first_line(exc)}") from exc
    except ClientAuthenticationError as exc:
        raise StorageError(
            f"Azure Storage refused the account's key while {what}: {first_line(exc)}"
        ) from exc
    except HttpResponseError as exc:
        status = exc.status_code or 0
        message = f"Azure Storage failed while {what}: {first_line(exc)}"
        if status in (408, 429) or status >= 500:
            raise StorageUnavailable(message) from exc
        raise StorageError(message, code="storage_error") from exc
    except AzureError as exc:
        raise StorageUnavailable(
            f"Azure Storage failed while {what}: {first_line(exc)}") from exc
    except (OSError, TimeoutError) as exc:
        raise StorageUnavailable(
            f"Azure Storage unreachable while {what}: {first_line(exc)}") from exc
