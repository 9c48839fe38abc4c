"""The REST half of PROTOCOL.md for clients: accounts, users, conversations, channels,
search and media (v1.1), and the AI routes of "AI over a conversation".

`Api` wraps one `httpx.AsyncClient` (anyio: runs under Trio and asyncio). It
is used by `sdk.Client` and `sync.Syncer`; every failure leaves as a
`ClientError` (network trouble as `Unreachable`, error bodies as `ServerError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from messageai.client.errors import ProtocolViolation, Unreachable, server_error
from messageai.model import Conversation
from messageai.protocol import structure_record

DEFAULT_TIMEOUT_SECONDS = 10.0
# An AI answer may take the server's `ai.timeout_seconds` (default 30) to come: wait
# past it, so the server's own `unavailable` arrives rather than our timeout.
AI_TIMEOUT_SECONDS = 60.0


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
        wait_seconds: float | None = None,
    ) -> Any:
        """One request; the decoded JSON body (None for 204). `wait_seconds` replaces
        the client's timeout for this request."""
        headers = {"Authorization": f"Bearer {self.token}"} if auth and self.token else {}
        extra: dict[str, Any] = {} if wait_seconds is None else {"timeout": wait_seconds}
        try:
            response = await self.http.request(
                method, path, json=json, params=params, headers=headers, **extra
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

    # ------------------------------------------------------------ v1.1

    async def update_conversation(self, conversation_id: str, **fields: str) -> dict[str, Any]:
        """`PATCH /v1/conversations/{id}` with `title` and/or `topic` (groups, channels)."""
        path = f"/v1/conversations/{conversation_id}"
        return parse_conversation(await self.call("PATCH", path, json=fields))

    async def channels(self, prefix: str = "") -> list[dict[str, Any]]:
        params = {"q": prefix} if prefix else None
        return _list(await self.call("GET", "/v1/channels", params=params), "channels")

    async def create_channel(self, title: str, topic: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "channel", "title": title}
        if topic is not None:
            body["topic"] = topic
        return parse_conversation(await self.call("POST", "/v1/conversations", json=body))

    async def join(self, conversation_id: str) -> dict[str, Any]:
        path = f"/v1/conversations/{conversation_id}/join"
        return parse_conversation(await self.call("POST", path))

    async def search(
        self, query: str, *, conversation_id: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """`GET /v1/search`: `{"mode", "results": [...]}`, best first."""
        params: dict[str, Any] = {"q": query}
        if conversation_id is not None:
            params["conversation_id"] = conversation_id
        if limit is not None:
            params["limit"] = limit
        body = await self.call("GET", "/v1/search", params=params)
        _list(body, "results")
        for result in body["results"]:
            if not isinstance(result.get("message"), dict) or not isinstance(
                result.get("conversation_id"), str
            ):
                raise ProtocolViolation("search: each result has a conversation_id and message")
        return _object(body, "results")

    async def upload(self, data: bytes, content_type: str, filename: str) -> dict[str, Any]:
        """`POST /v1/media?filename=`: the media object (`id`, `content_type`, `size`, …)."""
        path = f"/v1/media?filename={quote(filename, safe='')}"
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type}
        try:
            response = await self.http.post(path, content=data, headers=headers)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.server_url}: {exc}") from exc
        return _object(_answer(response, "POST /v1/media"), "id")

    async def download_to(self, media_id: str, dest: Path) -> httpx.Headers:
        """Stream a media file into `dest` (written as `dest.part`, then renamed, so a
        failed download leaves no half file under the name); the response's headers."""
        headers = {"Authorization": f"Bearer {self.token}"}
        part = anyio.Path(str(dest) + ".part")
        try:
            async with self.http.stream(
                "GET", f"/v1/media/{quote(media_id, safe='')}", headers=headers
            ) as response:
                if not response.is_success:
                    await response.aread()
                    _answer(response, "GET /v1/media")
                async with await anyio.open_file(part, "wb") as out:
                    async for chunk in response.aiter_bytes():
                        await out.write(chunk)
        except httpx.TransportError as exc:
            await part.unlink(missing_ok=True)
            raise Unreachable(f"cannot reach {self.server_url}: {exc}") from exc
        await part.rename(dest)
        return response.headers

    async def media_info(self, media_id: str) -> dict[str, Any]:
        """`GET /v1/media/{id}/info` (an extension of v1.1): the media object, no bytes."""
        return _object(await self.call("GET", f"/v1/media/{quote(media_id, safe='')}/info"), "id")

    async def media_head(self, media_id: str) -> httpx.Response:
        """The first byte of a media file: its headers say its type, size and name."""
        headers = {"Authorization": f"Bearer {self.token}", "Range": "bytes=0-0"}
        try:
            response = await self.http.get(f"/v1/media/{quote(media_id, safe='')}", headers=headers)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.server_url}: {exc}") from exc
        if not response.is_success:
            _answer(response, "GET /v1/media")
        return response

    # ------------------------------------------------------------ AI over a conversation

    def _ai(self, conversation_id: str, rest: str = "") -> str:
        return f"/v1/conversations/{quote(conversation_id, safe='')}/ai{rest}"

    async def ai_settings(self, conversation_id: str) -> dict[str, Any]:
        """`GET …/ai`: `{enabled, proactive, changed_by, changed_at}`."""
        return check_ai_settings(await self.call("GET", self._ai(conversation_id)))

    async def set_ai_settings(
        self, conversation_id: str, enabled: bool, proactive: bool | None = None
    ) -> dict[str, Any]:
        """`PUT …/ai`: the settings as they are afterwards."""
        body: dict[str, Any] = {"enabled": enabled}
        if proactive is not None:
            body["proactive"] = proactive
        return check_ai_settings(await self.call("PUT", self._ai(conversation_id), json=body))

    async def ask(self, conversation_id: str, question: str) -> dict[str, Any]:
        """`POST …/ai/ask`: `{answer, citations, cached}`."""
        body = await self.call(
            "POST",
            self._ai(conversation_id, "/ask"),
            json={"question": question},
            wait_seconds=AI_TIMEOUT_SECONDS,
        )
        return check_answer(body)

    async def catch_up(self, conversation_id: str) -> dict[str, Any]:
        """`POST …/ai/catch-up`: `{summary, citations, from_seq, to_seq}` (all but
        `citations` null with nothing unread)."""
        body = await self.call(
            "POST", self._ai(conversation_id, "/catch-up"), wait_seconds=AI_TIMEOUT_SECONDS
        )
        body = _object(body, "summary")
        if not (body["summary"] is None or isinstance(body["summary"], str)) or not all(
            body.get(k) is None or type(body.get(k)) is int for k in ("from_seq", "to_seq")
        ):
            raise ProtocolViolation("catch-up: summary is text or null, from_seq/to_seq seqs")
        _seqs(body, "citations", "catch-up")
        return body

    async def action_items(self, conversation_id: str) -> list[dict[str, Any]]:
        """`GET …/ai/action-items`: the items, as the server orders them."""
        body = await self.call(
            "GET", self._ai(conversation_id, "/action-items"), wait_seconds=AI_TIMEOUT_SECONDS
        )
        return [check_item(i) for i in _list(body, "items")]

    async def set_action_item(
        self, conversation_id: str, item_id: str, status: str
    ) -> dict[str, Any]:
        """`PATCH …/ai/action-items/{id}` `{status}` (`open` / `done`): the item."""
        path = self._ai(conversation_id, f"/action-items/{quote(item_id, safe='')}")
        return check_item(await self.call("PATCH", path, json={"status": status}))

    async def ai_log(self, conversation_id: str) -> list[dict[str, Any]]:
        """`GET …/ai/log`: every request that sent content to the endpoint, newest first."""
        entries = _list(await self.call("GET", self._ai(conversation_id, "/log")), "entries")
        for entry in entries:
            if type(entry.get("at")) is not int or not isinstance(entry.get("action"), str):
                raise ProtocolViolation("ai log: each entry has `at` and `action`")
            if not (entry.get("user_id") is None or isinstance(entry.get("user_id"), str)):
                raise ProtocolViolation("ai log: user_id is an id or null")
            _seqs(entry, "seqs", "ai log")
        return entries


def _seqs(body: dict[str, Any], key: str, what: str) -> list[int]:
    seqs = body.get(key)
    if not isinstance(seqs, list) or not all(type(s) is int for s in seqs):
        raise ProtocolViolation(f"{what}: {key} is a list of seqs")
    return seqs


def check_ai_settings(value: Any) -> dict[str, Any]:
    """An `ai` settings object (or the fields of an `ai_settings` frame)."""
    body = _object(value, "enabled")
    if not isinstance(body["enabled"], bool) or not isinstance(body.get("proactive"), bool):
        raise ProtocolViolation("ai settings: enabled and proactive are booleans")
    if not (body.get("changed_by") is None or isinstance(body.get("changed_by"), str)):
        raise ProtocolViolation("ai settings: changed_by is a user id or null")
    if not (body.get("changed_at") is None or type(body.get("changed_at")) is int):
        raise ProtocolViolation("ai settings: changed_at is a time or null")
    return body


def check_answer(value: Any) -> dict[str, Any]:
    """An answer: `{answer, citations, cached}` (REST, or WebSocket `ai_answer`)."""
    body = _object(value, "answer")
    if not isinstance(body["answer"], str) or not isinstance(body.get("cached"), bool):
        raise ProtocolViolation("answer: answer is text and cached a boolean")
    _seqs(body, "citations", "answer")
    return body


def check_item(value: Any) -> dict[str, Any]:
    """An action item: `{id, text, owner_id, due, source_seqs, status}`."""
    item = _object(value, "id")
    if not isinstance(item["id"], str) or not isinstance(item.get("text"), str):
        raise ProtocolViolation("action item: id and text are strings")
    if item.get("status") not in ("open", "done"):
        raise ProtocolViolation("action item: status is open or done")
    for key in ("owner_id", "due"):
        if not (item.get(key) is None or isinstance(item.get(key), str)):
            raise ProtocolViolation(f"action item: {key} is text or null")
    _seqs(item, "source_seqs", "action item")
    return item


def _answer(response: httpx.Response, what: str) -> Any:
    """The JSON body of a success; an error body raised as ServerError."""
    try:
        body = response.json()
    except ValueError:
        raise ProtocolViolation(f"{what}: HTTP {response.status_code}, not JSON") from None
    if response.is_success:
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        raise ProtocolViolation(f"{what}: HTTP {response.status_code} without an error object")
    raise server_error(error["code"], str(error.get("message", "")), response.status_code)


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
