"""Who is calling, and what they may do.

A *principal* is who is calling: for now the admin (the token Herald writes to
``<data>/admin-token`` on first start). Tokens are compared in constant time and
never logged.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..certs import write_private
from ..errors import Forbidden, Unauthorized

__all__ = ["Principal", "Authenticator", "ensure_admin_token"]

ADMIN_TOKEN_BYTES = 32


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool = False

    def require_publish(self, stream: str) -> None:
        if not self.admin:
            raise Forbidden(f"{self.name} may not publish to stream {stream}",
                            code="forbidden", permission="publish", stream=stream)

    def require_subscribe(self, stream: str) -> None:
        if not self.admin:
            raise Forbidden(f"{self.name} may not subscribe to stream {stream}",
                            code="forbidden", permission="subscribe", stream=stream)


def ensure_admin_token(path: Path) -> tuple[str, bool]:
    """The admin token, created (mode 0600) if missing. Returns (token, created)."""
    try:
        token = path.read_text().strip()
        if token:
            return token, False
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(ADMIN_TOKEN_BYTES)
    write_private(path, (token + "\n").encode())
    return token, True


class Authenticator:
    def __init__(self, admin_token: str) -> None:
        self._admin = admin_token.encode()

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an ``Authorization`` header; Unauthorized if none."""
        if not authorization:
            raise Unauthorized("credentials required: send Authorization: Bearer <token>",
                               code="unauthorized")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("unsupported authorization scheme; use Bearer <token>",
                               code="unauthorized")
        if hmac.compare_digest(token.strip().encode(), self._admin):
            return Principal(name="admin", admin=True)
        raise Unauthorized("invalid token", code="invalid_token")
