"""The REST half of PROTOCOL.md for clients: accounts, users, conversations.

`Api` wraps one `httpx.AsyncClient` (anyio: runs under Trio and asyncio). It
is used by `sdk.Client` and `sync.Syncer`; every failure leaves as a
`ClientError` (network trouble as `Unreachable`, error bodies as `ServerError`).
"""

from __future__ import annotations

from typing import Any

import httpx

from messageai.client.errors import ProtocolViolation, Unreachable, server_error
from messageai.model import Conversation
from messageai.protocol import structure_record

DEFAULT_TIMEOUT_SECONDS = 10.0


class Api:
    def __init__(
        self, server_url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self.server_url = server_url
        self.token = token
        self.http = httpx.AsyncClient(base_url=server_url, timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        auth: bool = True,
    ) -> Any:
        """One request; the decoded JSON body (None for 204)."""
        headers = {"Authorization": f"Bearer {self.token}"} if auth and self.token else {}
        try:
            response = await self.http.request(
                method, path, json=json, params=params, headers=headers
            )
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach {self.server_url}: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            raise ProtocolViolation(
                f"{method} {path}: HTTP {response.status_code} with a body that is not JSON"
            ) from None
        if response.is_success:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            raise ProtocolViolation(
                f"{method} {path}: HTTP {response.status_code} without an error object"
            )
        raise server_error(error["code"], str(error.get("message", "")), response.status_code)

    async def register(self, username: str, password: str, display_name: str | None = None) -> Any:
        body = {"username": username, "password": password}
        if display_name:
            body["display_name"] = display_name
        return _session(await self.call("POST", "/v1/auth/register", json=body, auth=False))

    async def login(self, username: str, password: str) -> Any:
        body = {"username": username, "password": password}
        return _session(await self.call("POST", "/v1/auth/login", json=body, auth=False))

    async def logout(self) -> None:
        await self.call("POST", "/v1/auth/logout")

    async def user(self, user_id: str) -> dict[str, Any]:
        return _object(await self.call("GET", f"/v1/users/{user_id}"), "id")

    async def find_users(self, prefix: str) -> list[dict[str, Any]]:
        return _list(await self.call("GET", "/v1/users", params={"q": prefix}), "users")

    async def conversations(self) -> list[dict[str, Any]]:
        return [
            parse_conversation(c)
            for c in _list(await self.call("GET", "/v1/conversations"), "conversations")
        ]

    async def create_direct(self, user_id: str) -> dict[str, Any]:
        body = {"kind": "direct", "member_ids": [user_id]}
        return parse_conversation(await self.call("POST", "/v1/conversations", json=body))

    async def create_group(self, title: str, member_ids: list[str]) -> dict[str, Any]:
        body = {"kind": "group", "title": title, "member_ids": member_ids}
        return parse_conversation(await self.call("POST", "/v1/conversations", json=body))

    async def conversation(self, conversation_id: str) -> dict[str, Any]:
        return parse_conversation(await self.call("GET", f"/v1/conversations/{conversation_id}"))

    async def add_members(self, conversation_id: str, user_ids: list[str]) -> dict[str, Any]:
        """Groups only; the conversation as it is afterwards."""
        path = f"/v1/conversations/{conversation_id}/members"
        return parse_conversation(await self.call("POST", path, json={"user_ids": user_ids}))

    async def remove_member(self, conversation_id: str, user_id: str) -> None:
        """Groups only; oneself, or anyone if the caller created the group."""
        await self.call("DELETE", f"/v1/conversations/{conversation_id}/members/{user_id}")


def _object(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict) or key not in value:
        raise ProtocolViolation(f"expected an object with {key!r}, got {str(value)[:100]}")
    return value


def _list(value: Any, key: str) -> list[dict[str, Any]]:
    items = _object(value, key)[key]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ProtocolViolation(f"{key}: expected a list of objects")
    return items


def _session(value: Any) -> Any:
    body = _object(value, "token")
    _object(body.get("user"), "id")
    return body


def parse_conversation(value: Any) -> dict[str, Any]:
    """A server conversation has the shape of `model.Conversation` (the server's record)."""
    try:
        structure_record(value, Conversation)
    except ValueError as exc:
        raise ProtocolViolation(f"conversation: {exc}") from None
    return _object(value, "id")
