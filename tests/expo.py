"""A loopback HTTP server playing Expo's Push API for tests (real HTTP, served by hypercorn).

It records every request (path, headers, decoded JSON body) and answers the way
Expo does: `/push/send` with one ticket per message (`DeviceNotRegistered` for
tokens in `dead`), `/push/getReceipts` with receipts (`DeviceNotRegistered` for
tokens in `dead_on_receipt`). Statuses in `fail_next` are answered first, one per
request (429 and 5xx, with Expo's error body); `stall` holds every request open.
"""

from __future__ import annotations

import contextlib
import gzip
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

SEND_PATH = "/--/api/v2/push/send"

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@attrs.define
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    at: float = 0.0  # trio.current_time() when it arrived


class FakeExpo:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.dead: set[str] = set()
        self.dead_on_receipt: set[str] = set()
        self.fail_next: list[int] = []
        self.stall = False
        self.retry_after: str | None = None  # sent with the statuses of `fail_next`
        self.tickets: dict[str, str] = {}
        self.url = ""
        self._changed = trio.Event()

    @property
    def endpoint(self) -> str:
        return self.url + SEND_PATH

    def sends(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/send")]

    def notifications(self) -> list[dict[str, Any]]:
        return [n for r in self.sends() for n in r.body]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking after every request."""
        while not predicate():
            await self._changed.wait()

    def _record(self, request: Recorded) -> None:
        self.requests.append(request)
        self._changed.set()
        self._changed = trio.Event()

    async def app(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self._record(Recorded(scope["path"], headers, orjson.loads(body), trio.current_time()))
        if self.stall:
            await trio.sleep_forever()
        if self.fail_next:
            status = self.fail_next.pop(0)
            code = "TOO_MANY_REQUESTS" if status == 429 else "INTERNAL_SERVER_ERROR"
            extra = [(b"retry-after", self.retry_after.encode())] if self.retry_after else []
            errors = {"errors": [{"code": code, "message": "try later"}]}
            await _respond(send, status, errors, extra)
            return
        request = self.requests[-1]
        if scope["path"].endswith("/send"):
            await _respond(send, 200, {"data": [self._ticket(m) for m in request.body]})
        elif scope["path"].endswith("/getReceipts"):
            data = {}
            for ticket in request.body["ids"]:
                token = self.tickets.get(ticket)
                if token in self.dead_on_receipt:
                    data[ticket] = _not_registered(token)
                elif token is not None:
                    data[ticket] = {"status": "ok"}
            await _respond(send, 200, {"data": data})
        else:
            await _respond(send, 404, {"errors": [{"code": "NOT_FOUND", "message": "no"}]})

    def _ticket(self, message: dict[str, Any]) -> dict[str, Any]:
        token = message["to"]
        if token in self.dead:
            return _not_registered(token)
        ticket = str(uuid.uuid4())
        self.tickets[ticket] = token
        return {"status": "ok", "id": ticket}


def _not_registered(token: str | None) -> dict[str, Any]:
    return {
        "status": "error",
        "message": f'"{token}" is not a registered push notification recipient',
        "details": {"error": "DeviceNotRegistered", "expoPushToken": token},
    }


async def _respond(
    send: Send, status: int, body: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(data)),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


@contextlib.asynccontextmanager
async def fake_expo() -> AsyncIterator[FakeExpo]:
    expo = FakeExpo()
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, expo.app, config)
        expo.url = binds[0]
        try:
            yield expo
        finally:
            nursery.cancel_scope.cancel()
