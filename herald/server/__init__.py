"""The HTTPS edge: API, subscriptions, the dashboard's first page, the redirect port."""

from .app import create_app, run_server

__all__ = ["create_app", "run_server"]
