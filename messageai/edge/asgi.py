"""The ASGI application hypercorn serves: routing, request bodies, JSON responses.

Handlers live in `messageai.rest`; this module turns their results and their
`MessageAIError`s into HTTP responses (`error_response`, the one mapping of an
error to status, headers and body), bounds request bodies in size and in time
(`BodyDeadline`, wrapped around `receive` before any handler sees it), and makes
sure no exception escapes as anything but a 500 (`errors.Internal`) with a JSON
body. Built by `server.Server`; hypercorn calls it once per request.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import attrs
import orjson
import trio

from messageai import logs
from messageai.counters import COUNTS
from messageai.edge.client_address import ClientAddress
from messageai.errors import (
    BadRequest,
    Internal,
    MessageAIError,
    MethodNotAllowed,
    NotFound,
    RangeNotSatisfiable,
    RateLimited,
    RequestTimeout,
    TooLarge,
    Unavailable,
    UpgradeRequired,
    error_body,
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
        # As sent, still percent-encoded: for a handler that must see the bytes (an emoji
        # in the path that is not valid UTF-8 is refused, not replaced by U+FFFD).
        self.raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        self.params = params
        self.headers: dict[str, str] = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        self.query = {k: v[-1] for k, v in query.items()}
        self.body = body
        # The peer's IP address (hypercorn reads it from the socket), when known; the
        # App then puts the client's there (`edge.client_address`: behind a trusted proxy).
        client = scope.get("client")
        self.client: str | None = client[0] if client else None
        self.user: User | None = None
        # For a streaming route (`Router.add(..., stream=True)`): the ASGI `receive`,
        # from which the handler reads the body itself; `body` is then empty.
        self.receive: Receive | None = None

    def bearer_token(self) -> str | None:
        return bearer_token(self.headers.get("authorization"))

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or BadRequest."""
        try:
            value = orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise BadRequest("body must be a JSON object")
        return value


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value (scheme in any
    case), or None for no header, another scheme or an empty token. The one parser,
    for REST requests and the WebSocket handshake."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


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


@attrs.frozen
class Route:
    """One method on one path: its handler and whether it reads its own body."""

    handler: Handler
    # True: the body is not read into memory first; the handler reads it from
    # `request.receive` (uploads).
    stream: bool = False
    # As added (`/v1/push-tokens/{token}`): what logs name, never the path itself,
    # which may hold a push token or a user's search.
    pattern: str = attrs.field(default="", eq=False)


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], dict[str, Route]]] = []

    def add(self, method: str, pattern: str, handler: Handler, *, stream: bool = False) -> None:
        """Route `method pattern` to `handler`; `{name}` in the pattern matches one path
        segment, given to the handler in `request.params`. With `stream`, see `Route`."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        route = Route(handler, stream, pattern)
        for existing, methods in self._routes:
            if existing.pattern == regex.pattern:
                methods[method] = route
                return
        self._routes.append((regex, {method: route}))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route and path parameters for a request; NotFound when no pattern matches,
        MethodNotAllowed (naming the allowed methods) when the path matches but not the method."""
        for regex, methods in self._routes:
            found = regex.match(path)
            if found:
                route = methods.get(method)
                if route is None:
                    raise MethodNotAllowed(sorted(methods))
                return route, found.groupdict()
        raise NotFound(f"no route for {path}")


class BodyDeadline:
    """The ASGI `receive` of one request, with a deadline on its body.

    The body may take `grace` seconds in all, plus one second per `min_rate` bytes
    already received: a small body must arrive within about `grace`, a large one
    at `min_rate` on average. Only the time spent waiting in `receive` counts, so a
    handler that is slow between reads (the upload's disk writes) costs the client
    nothing. A body that falls behind raises RequestTimeout (408; the ASGI app then
    closes the connection). Once the last chunk is in, `receive` is passed through
    without a deadline (it then only reports the disconnect).
    """

    def __init__(self, receive: Receive, grace: float, min_rate: float) -> None:
        self._receive = receive
        self._grace = grace
        self._min_rate = min_rate
        self._received = 0
        self._waited = 0.0
        self._done = False

    async def __call__(self) -> dict[str, Any]:
        if self._done:
            return await self._receive()
        budget = self._grace + self._received / self._min_rate - self._waited
        started = trio.current_time()
        with trio.move_on_after(max(0.0, budget)):
            event = await self._receive()
            self._waited += trio.current_time() - started
            if event["type"] == "http.request":
                self._received += len(event.get("body", b""))
                self._done = not event.get("more_body", False)
            return event
        raise RequestTimeout(
            f"the request body came too slowly: {self._received} bytes in"
            f" {trio.current_time() - started + self._waited:.1f} s; send it within"
            f" {self._grace:g} s, or at {self._min_rate:g} bytes per second"
        )


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
        *,
        body_timeout_seconds: float = 10.0,
        min_body_bytes_per_second: float = 8192,
        client_address: ClientAddress | None = None,
    ) -> None:
        self._client_address = client_address or ClientAddress(())
        self._router = router
        self._max_body = max_body_bytes
        self._authenticate = authenticate
        self._body_timeout = body_timeout_seconds
        self._min_body_rate = min_body_bytes_per_second

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        if scope["type"] == "websocket":
            # Upgrades on a reused HTTP connection are not served; clients open a new one.
            await send({"type": "websocket.close", "code": 1008})
            return
        logs.REQUEST.set(logs.new_request_id())
        # Wrapped before anything reads it: REST bodies and streamed uploads alike.
        receive = BodyDeadline(receive, self._body_timeout, self._min_body_rate)
        route: Route | None = None
        try:
            route, params = self._router.match(scope["method"], scope["path"])
            if route.stream:
                request = Request(scope, b"", params)
                request.receive = receive
            else:
                request = Request(scope, await self._read_body(scope, receive), params)
            request.client = self._client_address.resolve(
                request.client, request.headers.get("x-forwarded-for")
            )
            token = request.bearer_token()
            if token is not None and self._authenticate is not None:
                request.user = await self._authenticate(token)
            response = await route.handler(request)
        except MessageAIError as exc:
            response = error_response(exc)
        except Exception:
            log.exception("%s %s failed", scope["method"], _pattern(route))
            response = error_response(Internal("internal error"))
        log.debug("%s %s %d", scope["method"], _pattern(route), response.status)
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


def _pattern(route: Route | None) -> str:
    return route.pattern if route is not None else "(no route)"


def error_headers(exc: MessageAIError) -> list[tuple[bytes, bytes]]:
    """The HTTP headers that go with an error: Allow (405), Retry-After (429, whole
    seconds rounded up), Content-Range (416) and Upgrade (426). The one place that maps an error
    to headers; the status and body come from the error itself (`errors.error_body`)."""
    if isinstance(exc, MethodNotAllowed):
        return [(b"allow", ", ".join(exc.allowed).encode())]
    if isinstance(exc, RateLimited):
        seconds = max(1, math.ceil(exc.retry_after_seconds))
        return [(b"retry-after", str(seconds).encode())]
    if isinstance(exc, Unavailable) and exc.retry_after_seconds is not None:
        # An AI endpoint's 429, passed on (PROTOCOL.md v1.1 "AI").
        seconds = max(1, math.ceil(exc.retry_after_seconds))
        return [(b"retry-after", str(seconds).encode())]
    if isinstance(exc, RangeNotSatisfiable):
        return [(b"content-range", f"bytes */{exc.size}".encode())]
    if isinstance(exc, UpgradeRequired):
        # RFC 9110 15.5.22: a 426 names the protocol to upgrade to.
        return [(b"upgrade", b"websocket")]
    if isinstance(exc, RequestTimeout):
        # The rest of the body may still be on its way: this connection is done.
        return [(b"connection", b"close")]
    return []


def error_response(exc: MessageAIError) -> Response:
    """The JSON response for an error: its status, `errors.error_body`, `error_headers`.
    Counted by code for `/metrics`."""
    COUNTS.errors[exc.code] += 1
    return Response(exc.status, error_body(exc), error_headers(exc))


async def _send(send: Send, response: Response) -> None:
    if isinstance(response, StreamingResponse):
        await _send_stream(send, response)
        return
    headers = list(response.headers)
    body = b""
    if isinstance(response.body, bytes):
        # Not JSON (`/metrics`): sent as it is, under the handler's own content type.
        body = response.body
    elif response.body is not None:
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
