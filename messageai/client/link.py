"""One WebSocket connection to `/v1/ws`: requests matched to answers by `req`.

`open_link` (httpx-ws, so Trio and asyncio alike) is entered by `sync.Syncer`
for each connection attempt. The syncer runs `Link.read_forever` in its task
group; it hands every frame without a pending `req` to the syncer's callback
and wakes the task waiting on a request. When the connection ends, every
pending and later request raises `Unreachable` (`read_forever` itself raises
`AuthError` for a close 1008: the session was ended by the server).

A request may take partial answers before its one final answer (PROTOCOL.md's
`ai_ask`: `ai_delta` frames, then `ai_answer` or `error`): `send(..., partial=)`
names their type and a callback, which the reader calls for each of them without
waiting (it must not block: it runs in the reading task).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import httpx_ws
import orjson

from messageai.client.errors import (
    AuthError,
    ClientError,
    ProtocolViolation,
    Unreachable,
    server_error,
)

log = logging.getLogger(__name__)

# The largest answer we expect is a history page: at most 200 messages of
# 16,000 characters, JSON-escaped. Pages are asked for in HISTORY_PAGE.
HISTORY_PAGE = 100
# Requests without an answer in this long mean the connection is dead.
REQUEST_TIMEOUT_SECONDS = 30.0
# The close code of a session the server has ended (revoked token, deleted account).
CLOSE_POLICY = 1008


# A partial answer's callback (see the module docstring).
Partial = tuple[str, Callable[[dict[str, Any]], None]]


class Slot:
    """Where the answer to one request lands (`Link.send`, then `Link.answer`)."""

    __slots__ = ("done", "frame", "partial")

    def __init__(self, partial: Partial | None = None) -> None:
        self.done = anyio.Event()
        self.frame: dict[str, Any] | None = None
        self.partial = partial


class Link:
    def __init__(self, ws: httpx_ws.AsyncWebSocketSession) -> None:
        self._ws = ws
        self._next_req = itertools.count(1)
        self._pending: dict[int, Slot] = {}
        self._closed: str | None = None

    async def send(self, type_: str, *, partial: Partial | None = None, **fields: Any) -> Slot:
        """Send a frame with a fresh `req`; the returned slot is filled by its answer.
        Frames of type `partial[0]` with this `req` go to `partial[1]` meanwhile."""
        if self._closed is not None:
            raise Unreachable(self._closed)
        req = next(self._next_req)
        slot = Slot(partial)
        self._pending[req] = slot
        try:
            await self._ws.send_text(orjson.dumps({"type": type_, "req": req, **fields}).decode())
        except (httpx_ws.HTTPXWSException, OSError) as exc:
            self._pending.pop(req, None)
            raise Unreachable(f"connection lost while sending: {type(exc).__name__}") from exc
        return slot

    async def answer(
        self, slot: Slot, expected: str, *, seconds: float = REQUEST_TIMEOUT_SECONDS
    ) -> dict[str, Any]:
        """Wait for a slot's answer; an `error` frame raises ServerError. On timeout the
        request is forgotten (a late answer is then read as an unmatched frame)."""
        with anyio.move_on_after(seconds):
            await slot.done.wait()
        if slot.frame is None:
            for req, pending in list(self._pending.items()):
                if pending is slot:
                    del self._pending[req]
        frame = slot.frame
        if frame is None:
            raise Unreachable(self._closed or "the server did not answer in time")
        if frame["type"] == "error":
            raise server_error(str(frame.get("code")), str(frame.get("message", "")))
        if frame["type"] != expected:
            raise ProtocolViolation(f"expected {expected!r} in answer, got {frame['type']!r}")
        return frame

    async def request(self, type_: str, expected: str, **fields: Any) -> dict[str, Any]:
        return await self.answer(await self.send(type_, **fields), expected)

    async def read_forever(self, on_frame: Callable[[dict[str, Any]], None]) -> None:
        """Read frames until the connection ends, then raise Unreachable."""
        try:
            while True:
                try:
                    text = await self._ws.receive_text()
                except httpx_ws.WebSocketDisconnect as exc:
                    if exc.code == CLOSE_POLICY:
                        # The server ends a session it no longer honours (token revoked,
                        # account deleted) with 1008: reconnecting would only be refused.
                        raise AuthError(
                            "unauthorized",
                            f"the server ended the session ({exc.reason or 'policy'})",
                        ) from exc
                    raise Unreachable(
                        f"the server closed the connection ({exc.code} {exc.reason})".strip()
                    ) from exc
                except (httpx_ws.HTTPXWSException, OSError) as exc:
                    raise Unreachable(f"connection lost: {type(exc).__name__}") from exc
                try:
                    frame = orjson.loads(text)
                except orjson.JSONDecodeError:
                    raise ProtocolViolation("the server sent a frame that is not JSON") from None
                if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
                    raise ProtocolViolation("the server sent a frame without a type")
                req = frame.get("req")
                slot = self._pending.get(req) if isinstance(req, int) else None
                if slot is not None and slot.partial and slot.partial[0] == frame["type"]:
                    slot.partial[1](frame)
                elif slot is not None:
                    del self._pending[frame["req"]]
                    slot.frame = frame
                    slot.done.set()
                else:
                    on_frame(frame)
        except BaseException as exc:
            self._closed = exc.message if isinstance(exc, ClientError) else "connection closed"
            for pending in self._pending.values():
                pending.done.set()
            self._pending.clear()
            raise


@contextlib.asynccontextmanager
async def open_link(
    http: httpx.AsyncClient, url: str, token: str, *, keepalive_seconds: float | None
) -> AsyncIterator[Link]:
    """Connect; a refused handshake raises AuthError (401) or Unreachable."""
    try:
        ws: httpx_ws.AsyncWebSocketSession
        async with httpx_ws.aconnect_ws(
            url,
            http,
            headers={"Authorization": f"Bearer {token}"},
            keepalive_ping_interval_seconds=keepalive_seconds,
            keepalive_ping_timeout_seconds=keepalive_seconds,
        ) as ws:
            yield Link(ws)
    except httpx_ws.WebSocketUpgradeError as exc:
        if exc.response.status_code == 401:
            raise AuthError("unauthorized", "the server refused the session token", 401) from None
        raise Unreachable(f"WebSocket handshake refused: HTTP {exc.response.status_code}") from None
    except httpx.TransportError as exc:
        raise Unreachable(f"cannot reach {url}: {exc or type(exc).__name__}") from exc
