"""The HTTPS edge: API, subscriptions, (later) the dashboard."""

from .app import create_app, run_server

__all__ = ["create_app", "run_server"]
