"""`/v1/auth/*`, `/v1/me` and `/v1/users`: local accounts (register, login, logout,
v1.1's password change), the caller's own profile (v1.1: `PATCH /v1/me`) and the user
directory (prefix search, or v1.1's paged list). Thin: the work is in
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
# `after=` is a username (at most 32 characters; Clerk ids stand in for some): longer
# cannot name a place in the list.
MAX_AFTER_CHARS = 128


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
        add("PATCH", "/v1/me", self.update_me)
        add("POST", "/v1/me/password", self.change_password)
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
        found = await self._directory.lookup_user(request.params["user_id"])
        if found is None:
            raise NotFound("no such user")
        return Response(200, found)

    async def update_me(self, request: Request) -> Response:
        """`{"display_name"?}`: 200 the user as stored now (an empty body changes nothing)."""
        user = require_user(request)
        body = request.json()
        if "display_name" not in body:
            return Response(200, user)
        return Response(200, await self._directory.set_display_name(user.id, body["display_name"]))

    async def change_password(self, request: Request) -> Response:
        """204 once the new password is stored and every other token of the user is
        revoked; the WebSockets opened with those tokens are closed with 1008 after
        the commit. The caller's own token (and its sockets) stay."""
        user = require_user(request)
        body = request.json()
        token = request.bearer_token()
        assert token is not None
        revoked = await self._directory.change_password(
            user.id, body.get("old_password"), body.get("new_password"), token
        )
        for token_hash in revoked:
            self._close_token_sessions(user.id, token_hash)
        return Response(204)

    async def search_users(self, request: Request) -> Response:
        """With `q`: the prefix search (at most 20). Without: v1.1's list of every user
        by username, a page of 100 after `after` (a username); the next page starts
        after the last one returned, and a page shorter than 100 is the last."""
        require_user(request)
        prefix = request.query.get("q", "")
        if len(prefix) > MAX_SEARCH_CHARS:
            raise BadRequest(f"q: at most {MAX_SEARCH_CHARS} characters")
        after = request.query.get("after")
        if prefix:
            if after is not None:
                raise BadRequest("after: pages the list without q; a search has one page")
            return Response(200, {"users": await self._directory.search_users(prefix)})
        if after is not None and len(after) > MAX_AFTER_CHARS:
            raise BadRequest(f"after: at most {MAX_AFTER_CHARS} characters")
        return Response(200, {"users": await self._directory.users_after(after or "")})
