"""The ASGI application hypercorn serves: routing, request bodies, JSON responses.

Handlers live in `messageai.rest`; this module turns their results and their
`MessageAIError`s into HTTP responses, bounds request bodies, and makes sure no
exception escapes as anything but a 500 with a JSON body.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from messageai.errors import (
    BadRequest,
    MessageAIError,
    NotFound,
    RangeNotSatisfiable,
    RateLimited,
    TooLarge,
)
from messageai.model import User
from messageai.protocol import dumps

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Request:
    def __init__(self, scope: Scope, body: bytes, params: dict[str, str]) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.params = params
        self.headers: dict[str, str] = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        self.query = {k: v[-1] for k, v in query.items()}
        self.body = body
        self.user: User | None = None
        # For a streaming route (`Router.add(..., stream=True)`): the ASGI `receive`,
        # from which the handler reads the body itself; `body` is then empty.
        self.receive: Receive | None = None

    def bearer_token(self) -> str | None:
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or BadRequest."""
        try:
            value = orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise BadRequest("body must be a JSON object")
        return value


class Response:
    def __init__(
        self, status: int, body: Any = None, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []


class StreamingResponse(Response):
    """Raw bytes from `chunks`, with the handler's own headers (content type and length
    included); sent chunk by chunk, so a large file never sits in memory."""

    def __init__(
        self, status: int, chunks: AsyncIterator[bytes], headers: list[tuple[bytes, bytes]]
    ) -> None:
        super().__init__(status, None, headers)
        self.chunks = chunks


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []
        self._streaming: list[Handler] = []

    def add(self, method: str, pattern: str, handler: Handler, *, stream: bool = False) -> None:
        """Route `method pattern` to `handler`. With `stream`, the body is not read into
        memory first: the handler reads it from `request.receive` (uploads)."""
        if stream:
            self._streaming.append(handler)
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        for existing, methods in self._routes:
            if existing.pattern == regex.pattern:
                methods[method] = handler
                return
        self._routes.append((regex, {method: handler}))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        for regex, methods in self._routes:
            found = regex.match(path)
            if found:
                handler = methods.get(method)
                if handler is None:
                    raise MethodNotAllowed(sorted(methods))
                return handler, found.groupdict()
        raise NotFound(f"no route for {path}")

    def streams(self, handler: Handler) -> bool:
        return handler in self._streaming


class MethodNotAllowed(MessageAIError):
    code, status = "bad_request", 405

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(f"method not allowed; use {', '.join(allowed)}")
        self.allowed = allowed


class App:
    """ASGI callable. `max_body_bytes` bounds what a request body may hold in memory.

    `authenticate` (an `identity.Authenticator`'s method) resolves a bearer token
    once per request into `request.user` (None when the token is not good)
    before the handler runs; handlers that need a user refuse None.
    """

    def __init__(
        self,
        router: Router,
        max_body_bytes: int,
        authenticate: Callable[[str], Awaitable[User | None]] | None = None,
    ) -> None:
        self._router = router
        self._max_body = max_body_bytes
        self._authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        if scope["type"] == "websocket":
            # Upgrades on a reused HTTP connection are not served; clients open a new one.
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            handler, params = self._router.match(scope["method"], scope["path"])
            if self._router.streams(handler):
                request = Request(scope, b"", params)
                request.receive = receive
            else:
                request = Request(scope, await self._read_body(scope, receive), params)
            token = request.bearer_token()
            if token is not None and self._authenticate is not None:
                request.user = await self._authenticate(token)
            response = await handler(request)
        except MessageAIError as exc:
            headers = []
            if isinstance(exc, MethodNotAllowed):
                headers.append((b"allow", ", ".join(exc.allowed).encode()))
            if isinstance(exc, RateLimited):
                seconds = max(1, math.ceil(exc.retry_after_seconds))
                headers.append((b"retry-after", str(seconds).encode()))
            if isinstance(exc, RangeNotSatisfiable):
                headers.append((b"content-range", f"bytes */{exc.size}".encode()))
            response = Response(exc.status, _error_body(exc), headers)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            response = Response(500, {"error": {"code": "internal", "message": "internal error"}})
        await _send(send, response)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise TooLarge(f"request body larger than {self._max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                break
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise TooLarge(f"request body larger than {self._max_body} bytes")
            chunks.append(chunk)
            if not event.get("more_body", False):
                break
        return b"".join(chunks)


def _error_body(exc: MessageAIError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if isinstance(exc, RateLimited):
        # The same extension field as the WebSocket's `rate_limited` error frame.
        error["retry_after_ms"] = exc.retry_after_ms
    return {"error": error}


async def _send(send: Send, response: Response) -> None:
    if isinstance(response, StreamingResponse):
        await _send_stream(send, response)
        return
    headers = list(response.headers)
    body = b""
    if response.body is not None:
        body = dumps(response.body)
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    headers.append((b"cache-control", b"no-store"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_stream(send: Send, response: StreamingResponse) -> None:
    await send(
        {"type": "http.response.start", "status": response.status, "headers": response.headers}
    )
    try:
        async for chunk in response.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        close = getattr(response.chunks, "aclose", None)
        if close is not None:
            await close()
    await send({"type": "http.response.body", "body": b""})
