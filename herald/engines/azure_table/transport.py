"""The HTTP transport under the azure-table engine's SDK clients.

It owns one quirk: aiohttp warns (``ResourceWarning``: "Sending a large body
directly with raw bytes might lock the event loop") for every request body over
1 MiB given as ``bytes`` — and an entity-group transaction carrying records is up
to 4 MiB. Handed the same bytes as a file-like object, aiohttp streams them in
chunks and does not warn. Each attempt wraps the request's bytes afresh, so the
SDK's retries resend the whole body.
"""

from __future__ import annotations

import io
from typing import Any

from azure.core.pipeline.transport import AioHttpTransport

__all__ = ["LARGE_BODY_BYTES", "StreamingTransport"]

# aiohttp's own threshold (aiohttp.payload.TOO_LARGE_BYTES_BODY).
LARGE_BODY_BYTES = 1024 * 1024


class StreamingTransport(AioHttpTransport):  # type: ignore[misc]  # azure-core: untyped base
    """AioHttpTransport that sends large bodies from a buffer, not as raw bytes."""

    def _get_request_data(self, request: Any) -> Any:
        data = super()._get_request_data(request)  # type: ignore[no-untyped-call]
        if isinstance(data, bytes | bytearray) and len(data) > LARGE_BODY_BYTES:
            return io.BytesIO(data)
        return data
