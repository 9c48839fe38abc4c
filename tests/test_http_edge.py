"""The HTTP edge over real sockets: request-body deadlines, the front door's answers to
oversized heads, and unit tests of the pieces (`Router`, `read_head`,
`is_websocket_upgrade`, the hypercorn internals the front door relies on).

End-to-end tests: localhost only, port 0, real SQLite files under tmp_path, an
absolute `trio.fail_after` per test; the raw TCP client sends exactly the bytes the
test names and reads until the server closes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.lowlevel

from messageai.edge.asgi import (
    App,
    Request,
    Response,
    Route,
    Router,
    bearer_token,
    error_headers,
)
from messageai.edge.frontdoor import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_LINE_BYTES,
    ReplayStream,
    is_websocket_upgrade,
    read_head,
)
from messageai.errors import (
    HeadersTooLarge,
    MethodNotAllowed,
    NotFound,
    RangeNotSatisfiable,
    RateLimited,
    UriTooLong,
)
from tests.helpers import Harness, harness, make_config, without_general

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(400_000)


@asynccontextmanager
async def started(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Harness]:
    with trio.fail_after(60):
        async with harness(make_config(tmp_path / "data", **sections)) as h:
            yield h


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    return status, headers, body


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return data
        if not chunk:
            return data
        data += chunk


async def send_slowly(
    port: int, head: bytes, fast: bytes, slow: bytes, pause: float
) -> tuple[bytes, int]:
    """Send `head` and `fast` at once, then `slow` one byte every `pause` seconds while
    reading; return what the server answered before it closed, and how many slow bytes
    went out."""
    sent = 0
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(head + fast)

        async def trickle() -> None:
            nonlocal sent
            for byte in slow:
                await trio.sleep(pause)
                try:
                    await stream.send_all(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                sent += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            answer = await read_until_closed(stream)
            nursery.cancel_scope.cancel()
    return answer, sent


def assert_timeout_answer(answer: bytes) -> None:
    status, headers, body = parse_response(answer)
    assert status == 408, answer
    assert headers.get("connection") == "close", headers
    error = orjson.loads(body)["error"]
    assert error["code"] == "bad_request" and "too slowly" in error["message"], error


# ------------------------------------------------------------------ body deadlines

BODY_LIMITS = {"body_timeout_seconds": 0.5, "min_body_bytes_per_second": 20_000}


async def test_rest_body_trickled_a_byte_at_a_time_gets_408_and_the_connection_closed(
    tmp_path: Path,
) -> None:
    async with started(tmp_path, server=BODY_LIMITS) as h:
        assert h.server.port is not None
        body = orjson.dumps({"username": "slowpoke", "password": "password1" + "x" * 150})
        head = (
            b"POST /v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        # 1 byte every 20 ms: about 3.5 s for the whole body, far past the 0.5 s allowed.
        answer, sent = await send_slowly(h.server.port, head, b"", body, 0.02)
        assert_timeout_answer(answer)
        assert sent < len(body), "the server cut the trickle, the client did not finish"
        # Nothing was created, and the server is fine.
        r = await h.http.post(
            "/v1/auth/login", json={"username": "slowpoke", "password": "password1"}
        )
        assert r.status_code == 401, r.text
        assert (await h.http.get("/healthz")).status_code == 200


async def test_upload_trickled_after_a_fast_start_gets_408_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    async with started(tmp_path, server=BODY_LIMITS) as h:
        assert h.server.port is not None
        who = await h.account()
        data = PNG[:4000]
        head = (
            b"POST /v1/media HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n"
            % (who.token.encode(), len(data))
        )
        # 1,000 bytes at once, then 1 byte every 10 ms (100 B/s): about 30 s for the rest.
        answer, sent = await send_slowly(h.server.port, head, data[:1000], data[1000:], 0.01)
        assert_timeout_answer(answer)
        assert sent < len(data) - 1000
        assert h.server.directory is not None
        count = h.server.directory.read(lambda conn: conn.execute("SELECT count(*) FROM media").get)
        assert count == 0
        assert list((h.server.config.data_dir / "media" / "tmp").glob("*")) == []


async def test_upload_at_a_decent_rate_still_works_under_the_body_deadline(
    tmp_path: Path,
) -> None:
    async with started(tmp_path, server=BODY_LIMITS) as h:
        who = await h.account()

        async def chunks() -> AsyncIterator[bytes]:
            # 16 KiB every 20 ms, about 800 KB/s, 40 times the minimum; 25 chunks take
            # 0.5 s, the whole grace, so the rate allowance is what keeps it going.
            for start in range(0, len(PNG), 16384):
                yield PNG[start : start + 16384]
                await trio.sleep(0.02)

        r = await h.http.post(
            "/v1/media",
            content=chunks(),
            headers={
                **h.auth(who),
                "Content-Type": "image/png",
                "Content-Length": str(len(PNG)),
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["size"] == len(PNG)


# ------------------------------------------------------------------ front door limits


async def send_head(port: int, data: bytes) -> bytes:
    """Send `data` (all of it, however the server answers) and read until closed."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:

        async def write() -> None:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            answer = await read_until_closed(stream)
    return answer


def assert_head_refused(answer: bytes, status: int) -> None:
    assert answer, "the server answered nothing (a reset or a silent close)"
    got, headers, body = parse_response(answer)
    assert got == status, answer[:200]
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    assert len(body) == int(headers["content-length"])
    error = orjson.loads(body)["error"]
    assert error["code"] == "too_large" and error["message"], error


@pytest.mark.parametrize("path", ["/healthz", "/v1/ws"])
async def test_a_100_kb_request_line_is_answered_414_not_reset(tmp_path: Path, path: str) -> None:
    async with started(tmp_path) as h:
        assert h.server.port is not None
        data = b"GET %s?q=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (path.encode(), b"a" * 100_000)
        assert_head_refused(await send_head(h.server.port, data), 414)
        assert (await h.http.get("/healthz")).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/v1/ws"])
async def test_5000_headers_are_answered_431_not_reset(tmp_path: Path, path: str) -> None:
    async with started(tmp_path) as h:
        assert h.server.port is not None
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
        data = b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path.encode(), headers)
        assert_head_refused(await send_head(h.server.port, data), 431)
        assert (await h.http.get("/healthz")).status_code == 200


async def test_101_small_headers_are_431_and_100_are_served(tmp_path: Path) -> None:
    async with started(tmp_path) as h:
        assert h.server.port is not None

        def head(count: int) -> bytes:
            # Host and Connection plus count - 2 others.
            lines = b"".join(b"X-%d: v\r\n" % i for i in range(count - 2))
            return b"GET /healthz HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n" % lines

        assert_head_refused(await send_head(h.server.port, head(MAX_HEADERS + 1)), 431)
        status, _, body = parse_response(await send_head(h.server.port, head(MAX_HEADERS)))
        assert status == 200 and orjson.loads(body) == {"status": "ok"}


async def test_a_head_over_the_size_limit_in_one_long_header_is_431(tmp_path: Path) -> None:
    async with started(tmp_path) as h:
        assert h.server.port is not None
        data = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (b"b" * 20_000)
        assert_head_refused(await send_head(h.server.port, data), 431)


# ------------------------------------------------------------------ read_head


async def read_head_of(*chunks: bytes) -> bytes | None:
    """`read_head` on a real socket pair, the client having sent `chunks` then EOF
    (all under the socket buffer's size, so they are written before reading)."""
    a, b = trio.socket.socketpair()
    async with trio.SocketStream(a) as client, trio.SocketStream(b) as server:
        for chunk in chunks:
            await client.send_all(chunk)
        await client.send_eof()
        return await read_head(server)


async def test_read_head_returns_the_head_and_what_followed_it_across_chunks() -> None:
    got = await read_head_of(b"POST /x HTTP/1.1\r\nHo", b"st: y\r\n", b"\r\nbody")
    assert got == b"POST /x HTTP/1.1\r\nHost: y\r\n\r\nbody"


async def test_read_head_is_none_when_the_peer_leaves_before_the_end() -> None:
    assert await read_head_of(b"GET / HTTP/1.1\r\nHost: y\r\n") is None
    assert await read_head_of() is None


async def test_read_head_limits_line_size_and_count() -> None:
    line = b"GET /" + b"a" * MAX_REQUEST_LINE_BYTES + b" HTTP/1.1\r\n\r\n"
    with pytest.raises(UriTooLong):
        await read_head_of(line)
    # Known before the line ends: the client need not finish it.
    with pytest.raises(UriTooLong):
        await read_head_of(b"GET /" + b"a" * (MAX_REQUEST_LINE_BYTES + 10))
    ok_line = b"GET /" + b"a" * (MAX_REQUEST_LINE_BYTES - 20) + b" HTTP/1.1\r\n\r\n"
    assert await read_head_of(ok_line) == ok_line
    big = b"GET / HTTP/1.1\r\nX: " + b"b" * MAX_HEAD_BYTES + b"\r\n\r\n"
    with pytest.raises(HeadersTooLarge):
        await read_head_of(big)
    many = b"GET / HTTP/1.1\r\n" + b"X: v\r\n" * (MAX_HEADERS + 1) + b"\r\n"
    with pytest.raises(HeadersTooLarge):
        await read_head_of(many)
    enough = b"GET / HTTP/1.1\r\n" + b"X: v\r\n" * MAX_HEADERS + b"\r\n"
    assert await read_head_of(enough) == enough


# ------------------------------------------------------------------ is_websocket_upgrade


def upgrade_head(method: str = "GET", path: str = "/v1/ws", *headers: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n"
    ).encode()


@pytest.mark.parametrize(
    "head",
    [
        upgrade_head("GET", "/v1/ws", "Upgrade: websocket", "Connection: Upgrade"),
        upgrade_head("GET", "/v1/ws", "UPGRADE: WebSocket", "connection: UPGRADE"),
        upgrade_head("GET", "/v1/ws", "Upgrade: websocket", "Connection: keep-alive, Upgrade"),
        upgrade_head("GET", "/v1/ws", "Upgrade:   websocket  ", "Connection:keep-alive,upgrade"),
        upgrade_head("GET", "/v1/ws?access_token=t", "Upgrade: websocket", "Connection: Upgrade"),
        upgrade_head(
            "GET", "/v1/ws", "Connection: keep-alive", "Connection: Upgrade", "Upgrade: websocket"
        ),
    ],
)
def test_is_websocket_upgrade_accepts(head: bytes) -> None:
    assert is_websocket_upgrade(head)


@pytest.mark.parametrize(
    "head",
    [
        upgrade_head("GET", "/v1/ws"),
        upgrade_head("GET", "/v1/ws", "Connection: Upgrade"),
        upgrade_head("GET", "/v1/ws", "Upgrade: websocket"),
        upgrade_head("GET", "/v1/ws", "Upgrade: websocket", "Connection: keep-alive"),
        upgrade_head("GET", "/v1/ws", "Upgrade: h2c", "Connection: Upgrade"),
        upgrade_head("POST", "/v1/ws", "Upgrade: websocket", "Connection: Upgrade"),
        upgrade_head("get", "/v1/ws", "Upgrade: websocket", "Connection: Upgrade"),
        upgrade_head("GET", "/v1/wss", "Upgrade: websocket", "Connection: Upgrade"),
        upgrade_head("GET", "/healthz", "Upgrade: websocket", "Connection: Upgrade"),
        b"GET /v1/ws\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"",
    ],
)
def test_is_websocket_upgrade_refuses(head: bytes) -> None:
    assert not is_websocket_upgrade(head)


# ------------------------------------------------------------------ Router


async def _handler(request: Request) -> Response:
    return Response(200)


async def _other(request: Request) -> Response:
    return Response(204)


def test_router_matches_params_and_methods() -> None:
    router = Router()
    router.add("GET", "/v1/conversations/{conversation_id}", _handler)
    router.add("DELETE", "/v1/conversations/{conversation_id}/members/{user_id}", _other)
    router.add("POST", "/v1/media", _other, stream=True)
    router.add("GET", "/v1/media/{media_id}", _handler)
    route, params = router.match("GET", "/v1/conversations/c_1")
    assert route == Route(_handler, stream=False) and params == {"conversation_id": "c_1"}
    route, params = router.match("DELETE", "/v1/conversations/c_1/members/u_2")
    assert route.handler is _other and params == {"conversation_id": "c_1", "user_id": "u_2"}
    route, params = router.match("POST", "/v1/media")
    assert route.stream and params == {}
    # Same handler on a streaming and a plain route: the flag belongs to the route.
    assert not router.match("GET", "/v1/media/m_1")[0].stream


def test_router_is_404_for_unknown_paths_and_a_param_never_spans_segments() -> None:
    router = Router()
    router.add("GET", "/v1/conversations/{conversation_id}", _handler)
    for path in ("/v1/conversations", "/v1/conversations/a/b", "/v1/conversations/", "/x"):
        with pytest.raises(NotFound):
            router.match("GET", path)


def test_router_is_405_with_the_allowed_methods() -> None:
    router = Router()
    router.add("POST", "/v1/conversations", _handler)
    router.add("GET", "/v1/conversations", _other)
    with pytest.raises(MethodNotAllowed) as raised:
        router.match("PUT", "/v1/conversations")
    assert raised.value.allowed == ["GET", "POST"] and raised.value.status == 405
    assert error_headers(raised.value) == [(b"allow", b"GET, POST")]


# ------------------------------------------------------------------ hypercorn's internals


def test_hypercorn_private_internals_have_the_shape_the_front_door_relies_on() -> None:
    """frontdoor.py drives hypercorn per connection with private classes (pinned by
    `hypercorn<0.19`). If this fails after a hypercorn upgrade, frontdoor.py must be
    adapted before the pin is raised."""
    import inspect

    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext

    where = "hypercorn's private API used by messageai/edge/frontdoor.py changed"
    params = list(inspect.signature(TCPServer.__init__).parameters)
    assert params == ["self", "app", "config", "context", "state", "stream"], (
        f"{where}: TCPServer(app, config, context, state, stream) is now TCPServer{params}"
    )
    assert inspect.iscoroutinefunction(TCPServer.run) and hasattr(TCPServer, "__await__"), (
        f"{where}: TCPServer is no longer awaitable"
    )
    params = list(inspect.signature(WorkerContext.__init__).parameters)
    assert params == ["self", "max_requests"], f"{where}: WorkerContext{params}"
    context = WorkerContext(None)
    assert inspect.iscoroutinefunction(context.terminated.set), (
        f"{where}: WorkerContext.terminated.set is not a coroutine function"
    )
    params = list(inspect.signature(ASGIWrapper.__init__).parameters)
    assert params == ["self", "app"], f"{where}: ASGIWrapper{params}"
    # TCPServer tells TLS from plain streams by `do_handshake` raising AttributeError
    # and then reads the peer address from `.socket`: ReplayStream must keep that shape.
    source = inspect.getsource(TCPServer.run)
    assert "except AttributeError" in source and "self.stream.socket" in source, (
        f"{where}: TCPServer.run no longer detects a plain stream the way ReplayStream needs"
    )
    assert not hasattr(ReplayStream, "do_handshake")


# ------------------------------------------------------------------ listing


async def test_listing_many_conversations_summarises_each_one_in_activity_order(
    tmp_path: Path,
) -> None:
    """More conversations than the listing asks of the actors at once: every summary
    is there, right, and in order of activity."""
    from messageai.rest.conversations import SUMMARY_CONCURRENCY

    async with started(tmp_path) as h:
        me = await h.account()
        ids = []
        for i in range(3 * SUMMARY_CONCURRENCY + 1):
            other = await h.account()
            cid = await h.direct(other, me)
            for n in range(i % 3):
                r = await h.http.post(
                    f"/v1/conversations/{cid}/messages",
                    json={"client_id": f"c{i}-{n}", "body": f"m{i}-{n}"},
                    headers=h.auth(other),
                )
                assert r.status_code == 201, r.text
            ids.append((cid, i % 3))
            await trio.sleep(0.003)  # distinct activity times
        r = await h.http.get("/v1/conversations", headers=h.auth(me))
        assert r.status_code == 200, r.text
        listed = without_general(r.json()["conversations"])
        assert len(listed) == len(ids)
        by_id = {c["id"]: c for c in listed}
        for cid, count in ids:
            assert by_id[cid]["last_seq"] == count and by_id[cid]["unread_count"] == count
        activity = [
            c["last_message"]["created_at"] if c["last_message"] else c["created_at"]
            for c in listed
        ]
        assert activity == sorted(activity, reverse=True)


# ------------------------------------------------------------------ the ASGI app's error mapping


async def call_app(app: App, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI callable itself (a real call, with an empty body)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    await app(scope, receive, send)
    start, body = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body["body"]


async def test_every_error_is_mapped_once_to_status_headers_and_the_protocol_body() -> None:
    async def crash(request: Request) -> Response:
        raise RuntimeError("a bug")

    async def busy(request: Request) -> Response:
        raise RateLimited("slow down", retry_after_seconds=1.2)

    async def outside(request: Request) -> Response:
        raise RangeNotSatisfiable("the range is outside the file", size=10)

    router = Router()
    router.add("GET", "/crash", crash)
    router.add("GET", "/busy", busy)
    router.add("GET", "/range", outside)
    app = App(router, 1024)
    status, headers, body = await call_app(app, "GET", "/crash")
    assert status == 500
    assert orjson.loads(body) == {"error": {"code": "internal", "message": "internal error"}}
    status, headers, body = await call_app(app, "GET", "/busy")
    assert status == 429 and headers["retry-after"] == "2"
    assert orjson.loads(body)["error"] == {
        "code": "rate_limited",
        "message": "slow down",
        "retry_after_ms": 1201,
    }
    status, headers, body = await call_app(app, "GET", "/range")
    assert status == 416 and headers["content-range"] == "bytes */10"
    assert orjson.loads(body)["error"]["code"] == "bad_request"
    status, headers, body = await call_app(app, "POST", "/busy")
    assert status == 405 and headers["allow"] == "GET"
    status, headers, body = await call_app(app, "GET", "/nothing")
    assert status == 404 and orjson.loads(body)["error"]["code"] == "not_found"


async def test_get_v1_ws_without_an_upgrade_is_426_naming_websocket(tmp_path: Path) -> None:
    # curl or a browser tab on the WebSocket URL: say what it needs, not 404.
    with trio.fail_after(10):
        async with started(tmp_path) as h:
            for path in ("/v1/ws", "/v1/ws?access_token=x"):
                r = await h.http.get(path)
                assert r.status_code == 426, (path, r.text)
                assert r.headers["upgrade"] == "websocket"
                error = r.json()["error"]
                # PROTOCOL.md's codes are a closed list (v1.1 adds none): bad_request.
                assert error["code"] == "bad_request" and "WebSocket" in error["message"]
            r = await h.http.post("/v1/ws")
            assert r.status_code == 405 and r.headers["allow"] == "GET"
            # A real upgrade is still a WebSocket.
            async with h.ws(await h.account("ada")) as ws:
                assert (await ws.request("ping"))["type"] == "pong"


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc  ") == "abc"
    for value in ("", "Bearer", "Bearer ", "Basic abc", "Bearerabc"):
        assert bearer_token(value) is None, value
