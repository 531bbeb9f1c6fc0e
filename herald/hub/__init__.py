"""The hub: what Herald does whatever the engine — appends, reads, subscriptions."""

from .core import HEARTBEAT_SECONDS, Hub, ReadPage
from .render import render_json_page, render_sse

__all__ = ["Hub", "ReadPage", "HEARTBEAT_SECONDS", "render_json_page", "render_sse"]
