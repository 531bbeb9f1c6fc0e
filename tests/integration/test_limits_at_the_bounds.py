"""The limits at the largest values a node accepts, end to end (issue: acknowledged
data became unreadable when a limit exceeded the record format).

A real ``herald serve`` with every limit at its maximum: a batch at each limit is
appended through the Python client, read back in every form (a JSON page, the
compact subscription, SSE), survives kill -9 and a restart, and ``herald check``
finds nothing wrong. A limit one past the maximum stops the start with one line
naming the key.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import urllib.request

import msgspec
import pytest

from herald import TooLarge, codec
from tests.conftest import ROOT, ServerProcess

LARGEST_BODY = codec.MAX_RECORD_BODY - codec.BODY_OVERHEAD
LIMITS_ENV = {
    "HERALD_LIMITS_MAX_BATCH_BYTES": str(LARGEST_BODY),
    "HERALD_LIMITS_MAX_EVENT_BYTES": str(LARGEST_BODY),
    "HERALD_LIMITS_MAX_BATCH_EVENTS": str(codec.MAX_RECORD_COUNT),
    "HERALD_LIMITS_MAX_READ_EVENTS": str(codec.MAX_RECORD_COUNT),
}


def one_event_of(size: int) -> bytes:
    shell = msgspec.json.encode([{"type": "Big", "data": ""}])
    return msgspec.json.encode([{"type": "Big", "data": "x" * (size - len(shell))}])


def test_every_limit_at_its_maximum_reads_back_after_kill_9(
        server_factory: type[ServerProcess]) -> None:
    server = server_factory(env=LIMITS_ENV).start()
    many = msgspec.json.encode([{"type": "T", "data": i}
                                for i in range(codec.MAX_RECORD_COUNT)])
    with server.client(timeout=120) as client:
        assert client.append("bounds", many).head == codec.MAX_RECORD_COUNT
        assert client.append("bounds", one_event_of(LARGEST_BODY)).head == (
            codec.MAX_RECORD_COUNT + 1)
    server.kill()
    server.start()

    with server.client(timeout=120) as client:
        # The compact form, decoded by the client.
        seen = [(e.position, e.type) for e in client.subscribe("bounds", 0, follow=False)]
        assert len(seen) == codec.MAX_RECORD_COUNT + 1
        assert seen[-1] == (codec.MAX_RECORD_COUNT, "Big")
        # A JSON page across both batches.
        page = client.read("bounds", codec.MAX_RECORD_COUNT - 1, limit=2)
        assert [e.type for e in page.events] == ["T", "Big"]
        assert len(page.events[1].data) == LARGEST_BODY - len(b'[{"type":"Big","data":""}]')
    # SSE, read whole.
    request = urllib.request.Request(
        f"{server.url}/v1/streams/bounds/events?from={codec.MAX_RECORD_COUNT}&follow=false",
        headers={"Authorization": f"Bearer {server.token}", "Accept": "text/event-stream"})
    context = ssl.create_default_context(cafile=server.ca)
    with urllib.request.urlopen(request, context=context, timeout=120) as answer:
        body = answer.read()
    assert b'"type":"Big"' in body and len(body) > LARGEST_BODY
    server.stop()

    check = subprocess.run([sys.executable, "-m", "herald.cli", "check", "--data",
                            str(server.data)], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_one_byte_over_is_refused_and_nothing_is_appended(
        server_factory: type[ServerProcess]) -> None:
    server = server_factory(env=LIMITS_ENV).start()
    with server.client(timeout=120) as client:
        with pytest.raises(TooLarge) as refused:
            client.append("bounds", one_event_of(LARGEST_BODY + 1))
        assert refused.value.code == "batch_too_large"
        assert client.append("bounds", one_event_of(100)).first == 0


@pytest.mark.parametrize("key, value", [
    ("HERALD_LIMITS_MAX_BATCH_BYTES", str(LARGEST_BODY + 1)),
    ("HERALD_LIMITS_MAX_BATCH_EVENTS", str(codec.MAX_RECORD_COUNT + 1)),
])
def test_a_limit_beyond_the_format_stops_the_start(
        server_factory: type[ServerProcess], key: str, value: str) -> None:
    server = server_factory(env={key: value})
    with pytest.raises(RuntimeError) as refused:
        server.start()
    name = key.removeprefix("HERALD_LIMITS_").lower()
    assert f"[limits] {name}" in str(refused.value)
    assert "Traceback" not in str(refused.value)
