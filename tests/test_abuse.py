"""Abuse limits, each configurable: handshake timeout (slowloris), idle timeout, server
pings, per-user message rate, connections per user, and the Origin allow-list.

Real server on 127.0.0.1:0, real sockets; raw TCP clients where a well-behaved
WebSocket client cannot misbehave on purpose (trickling a head, never answering a
ping). Every loop is bounded; each test has an absolute deadline.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio_websocket

from tests.helpers import Harness, harness, make_config, raw_websocket_handshake

DEADLINE = 30


@asynccontextmanager
async def started(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Harness]:
    with trio.fail_after(DEADLINE):
        async with harness(make_config(tmp_path / "data", **sections)) as h:
            yield h


async def _wait_closed(stream: trio.SocketStream) -> bytes:
    """Read until the server ends the connection; return everything it sent."""
    data = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset by the server: closed as well
            return data
        if not chunk:
            return data
        data += chunk


# ------------------------------------------------------------------ handshake


async def test_connection_that_sends_nothing_is_dropped_after_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    async with started(tmp_path, server={"handshake_timeout_seconds": 0.3}) as h:
        assert h.server.port is not None
        async with await trio.open_tcp_stream("127.0.0.1", h.server.port) as stream:
            assert await _wait_closed(stream) == b""
        # The server itself is fine.
        assert (await h.http.get("/healthz")).status_code == 200


@pytest.mark.parametrize("path", ["/v1/ws", "/healthz"])
async def test_slowloris_trickling_a_request_head_is_dropped(tmp_path: Path, path: str) -> None:
    async with started(tmp_path, server={"handshake_timeout_seconds": 0.5}) as h:
        assert h.server.port is not None
        # A valid start, then a header that never ends: one byte every 20 ms, for at most
        # 2,000 bytes (40 s), far past the 0.5 s the server allows for the whole head.
        start = f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Slow: ".encode()
        total = 2000
        sent = 0
        async with await trio.open_tcp_stream("127.0.0.1", h.server.port) as stream:
            await stream.send_all(start)

            async def trickle() -> None:
                nonlocal sent
                for _ in range(total):
                    try:
                        await stream.send_all(b"a")
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    sent += 1
                    await trio.sleep(0.02)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                answer = await _wait_closed(stream)
                nursery.cancel_scope.cancel()
        assert answer == b"", "nothing is answered to an incomplete head"
        assert sent < total, "the server cut the trickle, the client did not stop by itself"
        assert (await h.http.get("/healthz")).status_code == 200


# ------------------------------------------------------------------ idle and pings


async def test_idle_connection_is_closed_but_a_subscribed_quiet_one_is_kept(
    tmp_path: Path,
) -> None:
    async with started(tmp_path, server={"idle_timeout_seconds": 0.3}) as h:
        ada, bob = await h.account(), await h.account()
        cid = await h.direct(ada, bob)
        async with h.ws(ada) as watcher:
            await watcher.request("subscribe", conversation_id=cid)
            async with h.ws(bob) as idle:
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await idle.conn.get_message()
                reason = closed.value.reason
                assert reason is not None
                assert reason.code == 1000
                assert reason.reason == "idle timeout"
            # Quiet for longer than the idle timeout too, but subscribed: still served.
            assert (await watcher.request("ping"))["type"] == "pong"


def _ws_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each complete unmasked server frame in `data`."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        if len(data) < offset + length:
            break
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


async def test_server_pings_drop_a_peer_that_never_answers_and_keep_one_that_does(
    tmp_path: Path,
) -> None:
    # A generous timeout: the live peer must answer in time even on a busy machine.
    server = {"ping_interval_seconds": 0.2, "ping_timeout_seconds": 1.0}
    async with started(tmp_path, server=server) as h:
        ada, bob = await h.account(), await h.account()
        cid = await h.direct(ada, bob)
        assert h.server.port is not None
        # trio-websocket answers pings by itself: a live peer.
        async with h.ws(ada) as live:
            await live.request("subscribe", conversation_id=cid)
            # A dead peer: completes the handshake, then never answers (raw TCP).
            head = (
                "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {bob.token}\r\n\r\n"
            )
            async with await trio.open_tcp_stream("127.0.0.1", h.server.port) as dead:
                await dead.send_all(head.encode())
                data = await _wait_closed(dead)
            response, _, rest = data.partition(b"\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 101")
            frames = _ws_frames(rest)
            assert frames[0][0] == 0x9, "the server pinged"
            close = [payload for opcode, payload in frames if opcode == 0x8]
            assert close and close[0][2:] == b"ping timeout", frames
            assert struct.unpack("!H", close[0][:2])[0] == 1001
            # The live peer answered every ping meanwhile and is still served.
            assert (await live.request("ping"))["type"] == "pong"


# ------------------------------------------------------------------ message rate


async def test_sends_over_the_rate_get_rate_limited_with_retry_after_never_silence(
    tmp_path: Path,
) -> None:
    limits = {"messages_per_second": 5.0, "message_burst": 4}
    async with started(tmp_path, limits=limits) as h:
        ada, bob = await h.account(), await h.account()
        cid = await h.direct(ada, bob)
        async with h.ws(ada) as a, h.ws(ada) as a2, h.ws(bob) as b:
            for i in range(10):
                await a.send(
                    {
                        "type": "send_message",
                        "req": i,
                        "conversation_id": cid,
                        "client_id": f"k{i}",
                        "body": "x",
                    }
                )
            replies = {}
            for _ in range(10):  # every frame with a req gets exactly one answer
                frame = await a.recv()
                replies[frame["req"]] = frame
            acked = sorted(i for i, f in replies.items() if f["type"] == "ack")
            limited = [f for f in replies.values() if f["type"] == "error"]
            assert len(acked) >= 4 and len(acked) + len(limited) == 10
            assert limited, "ten sends at once are over a burst of four"
            for error in limited:
                assert error["code"] == "rate_limited" and error["message"]
                assert isinstance(error["retry_after_ms"], int) and error["retry_after_ms"] > 0
            # The bucket is the user's, not the connection's.
            other = await a2.send_message(cid, "from my other device")
            assert other["type"] == "error" and other["code"] == "rate_limited"
            # Waiting as told is enough; a limited client id was never stored, so it is new.
            await trio.sleep(other["retry_after_ms"] / 1000)
            retry = await a2.send_message(cid, "x", client_id=limited[0]["req"].__str__())
            assert retry["type"] == "ack" and retry["duplicate"] is False
            # Others have their own bucket.
            assert (await b.send_message(cid, "bob is fine"))["type"] == "ack"
            history = await b.request("get_history", conversation_id=cid, limit=200)
            seqs = [m["seq"] for m in history["messages"]]
            assert seqs == list(range(1, len(acked) + 3))


# ------------------------------------------------------------------ connections per user


async def test_connections_past_the_per_user_cap_are_refused_with_429(tmp_path: Path) -> None:
    async with started(tmp_path, limits={"max_connections_per_user": 2}) as h:
        ada, bob = await h.account(), await h.account()
        auth = {"Authorization": f"Bearer {ada.token}"}
        async with h.ws(ada) as first, h.ws(ada):
            status, body = await raw_websocket_handshake(h.url, "/v1/ws", auth)
            assert status == 429
            error = orjson.loads(body)["error"]
            # The same body as a REST 429: the code and when to try again.
            assert error["code"] == "rate_limited"
            assert error["retry_after_ms"] >= 1000
            # Another user is not affected.
            async with h.ws(bob) as b:
                assert (await b.request("ping"))["type"] == "pong"
            assert (await first.request("ping"))["type"] == "pong"
        # Both closed: the slots come back (the server notices the close shortly).
        for _ in range(100):
            status, _ = await raw_websocket_handshake(h.url, "/v1/ws", auth)
            if status == 101:
                break
            await trio.sleep(0.05)
        assert status == 101


# ------------------------------------------------------------------ Origin


async def test_origin_allow_list_forged_origin_is_403_missing_or_listed_or_own_is_fine(
    tmp_path: Path,
) -> None:
    async with started(tmp_path, server={"allowed_origins": ["https://chat.example.com"]}) as h:
        ada = await h.account()
        auth = {"Authorization": f"Bearer {ada.token}"}
        for origin in ("https://evil.example.com", "null", "http://chat.example.com"):
            status, body = await raw_websocket_handshake(
                h.url, "/v1/ws", {**auth, "Origin": origin}
            )
            assert status == 403, origin
            assert orjson.loads(body)["error"]["code"] == "forbidden"
        # A forged Origin is refused before the token is even looked at.
        status, _ = await raw_websocket_handshake(
            h.url, "/v1/ws?access_token=wrong", {"Origin": "https://evil.example.com"}
        )
        assert status == 403
        for headers in (
            auth,  # no Origin: not a browser
            {**auth, "Origin": "https://chat.example.com"},
            {**auth, "Origin": "HTTPS://Chat.Example.com"},
            {**auth, "Origin": h.url},  # the server's own origin (a page it served)
        ):
            status, _ = await raw_websocket_handshake(h.url, "/v1/ws", headers)
            assert status == 101, headers
        # Browsers use the query token; with an allowed Origin that works too.
        status, _ = await raw_websocket_handshake(
            h.url, f"/v1/ws?access_token={ada.token}", {"Origin": "https://chat.example.com"}
        )
        assert status == 101


async def test_default_config_refuses_foreign_origins_and_allows_any_with_star(
    tmp_path: Path,
) -> None:
    async with started(tmp_path) as h:
        ada = await h.account()
        auth = {"Authorization": f"Bearer {ada.token}"}
        foreign = {**auth, "Origin": "https://elsewhere.example"}
        assert (await raw_websocket_handshake(h.url, "/v1/ws", foreign))[0] == 403
        assert (await raw_websocket_handshake(h.url, "/v1/ws", auth))[0] == 101
    async with started(tmp_path, server={"allowed_origins": ["*"]}) as h:
        ada = await h.account("ada2")
        foreign = {"Authorization": f"Bearer {ada.token}", "Origin": "https://elsewhere.example"}
        assert (await raw_websocket_handshake(h.url, "/v1/ws", foreign))[0] == 101


async def test_rest_sends_share_the_users_message_bucket_and_get_429_with_retry_after(
    tmp_path: Path,
) -> None:
    limits = {"messages_per_second": 0.5, "message_burst": 3}
    async with started(tmp_path, limits=limits) as h:
        ada, bob = await h.account(), await h.account()
        cid = await h.direct(ada, bob)
        async with h.ws(ada) as a:
            assert (await a.send_message(cid, "over the websocket"))["type"] == "ack"
        statuses = []
        for i in range(3):
            r = await h.http.post(
                f"/v1/conversations/{cid}/messages",
                json={"client_id": f"rest{i}", "body": "over rest"},
                headers=h.auth(ada),
            )
            statuses.append(r.status_code)
        # A burst of three: one went over the WebSocket, so the third REST send is over.
        assert statuses == [201, 201, 429]
        assert int(r.headers["retry-after"]) >= 1
        error = r.json()["error"]
        assert error["code"] == "rate_limited" and error["retry_after_ms"] > 0
        page = await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(ada))
        assert [m["client_id"] for m in page.json()["messages"]][-1] == "rest1"  # nothing stored
        # Another user's budget is their own.
        r = await h.http.post(
            f"/v1/conversations/{cid}/messages",
            json={"client_id": "bob1", "body": "hi"},
            headers=h.auth(bob),
        )
        assert r.status_code == 201
