"""`/v1/auth/*`, `/v1/me` and `/v1/users`: local accounts (register, login, logout),
the caller's own profile and the user directory. Thin: the work is in
`services.directory`. Mounted by `rest.mount`.
"""

from __future__ import annotations

from collections.abc import Callable

from messageai import passwords
from messageai.edge.asgi import Request, Response, Router
from messageai.errors import BadRequest, NotFound
from messageai.rest.params import require_user
from messageai.services.directory import Directory

MAX_SEARCH_CHARS = 64


class Accounts:
    def __init__(
        self, directory: Directory, close_token_sessions: Callable[[str, bytes], object]
    ) -> None:
        self._directory = directory
        # The server's: closes the WebSockets opened with a token, once it is revoked.
        self._close_token_sessions = close_token_sessions

    def routes(self, router: Router) -> None:
        add = router.add
        add("POST", "/v1/auth/register", self.register)
        add("POST", "/v1/auth/login", self.login)
        add("POST", "/v1/auth/logout", self.logout)
        add("GET", "/v1/me", self.me)
        add("GET", "/v1/users", self.search_users)
        add("GET", "/v1/users/{user_id}", self.get_user)

    async def register(self, request: Request) -> Response:
        body = request.json()
        user, token = await self._directory.register(
            body.get("username"), body.get("password"), body.get("display_name")
        )
        return Response(201, {"user": user, "token": token})

    async def login(self, request: Request) -> Response:
        body = request.json()
        user, token = await self._directory.login(
            body.get("username"), body.get("password"), request.client
        )
        return Response(200, {"user": user, "token": token})

    async def logout(self, request: Request) -> Response:
        user = require_user(request)
        token = request.bearer_token()
        assert token is not None
        await self._directory.logout(token)
        # After the commit: a handshake with this token that is still finishing finds
        # it revoked (server._serve_session), so no socket of it outlives the logout.
        self._close_token_sessions(user.id, passwords.token_hash(token))
        return Response(204)

    async def me(self, request: Request) -> Response:
        return Response(200, require_user(request))

    async def get_user(self, request: Request) -> Response:
        require_user(request)
        found = self._directory.user(request.params["user_id"])
        if found is None:
            raise NotFound("no such user")
        return Response(200, found)

    async def search_users(self, request: Request) -> Response:
        require_user(request)
        prefix = request.query.get("q", "")
        if len(prefix) > MAX_SEARCH_CHARS:
            raise BadRequest(f"q: at most {MAX_SEARCH_CHARS} characters")
        return Response(200, {"users": self._directory.search_users(prefix)})
