"""Who a bearer token belongs to: the one seam that REST and the WebSocket handshake call.

`make_authenticator` picks the implementation from `auth.mode` once, at start-up:
local session tokens looked up in the directory, or Clerk session JWTs verified
by `messageai.identity.clerk`. Called by the ASGI app (every REST request) and by the
server (every WebSocket handshake, and again right after a session is registered);
both read the token with `edge.asgi.bearer_token`.
"""

from __future__ import annotations

from typing import Protocol

from messageai.config import Config
from messageai.model import User
from messageai.services.directory import Directory


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> User | None:
        """The token's user, or None when the token is not good.

        May raise `Unavailable` when the token cannot be checked right now (Clerk's
        JWKS unreachable); it is cancellable and waits at most the configured timeout.
        """
        ...

    def is_active(self, user_id: str) -> bool:
        """False once the user has been deleted. Inline read, no waiting."""
        ...

    def is_revoked(self, token: str) -> bool:
        """True once a token that `authenticate` accepted has been revoked (logout) or
        has expired. Inline read, no waiting: the WebSocket handshake asks it right
        before the session is registered, to catch a logout that raced the handshake."""
        ...

    def session_valid(self, user_id: str, token_hash: bytes) -> bool:
        """Whether an open WebSocket may go on: asked at each keepalive, so an operator's
        `messageai user disable` or `token revoke`, made in another process, ends the
        user's connections within a ping interval. Inline read, no waiting."""
        ...


class LocalAuthenticator:
    """Opaque session tokens issued by this server (`auth.mode = "local"`)."""

    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    async def authenticate(self, token: str) -> User | None:
        return await self._directory.lookup_token(token)

    def is_active(self, user_id: str) -> bool:
        return True

    def is_revoked(self, token: str) -> bool:
        return self._directory.user_for_token(token) is None

    def session_valid(self, user_id: str, token_hash: bytes) -> bool:
        return self._directory.token_valid(token_hash)


def make_authenticator(config: Config, directory: Directory) -> Authenticator:
    if config.auth.mode == "clerk":
        # Imported only in Clerk mode: a local server never loads the JWT stack.
        from messageai.identity.clerk import ClerkAuthenticator

        return ClerkAuthenticator(config.clerk, directory)
    return LocalAuthenticator(directory)
