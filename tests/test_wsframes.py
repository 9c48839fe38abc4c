"""`edge/wsframes.py`: hand framing equals wsproto's, the private trio-websocket API it
needs is still there, and frames wsproto refuses get a close frame with their code.

The protocol-error tests speak raw TCP to the real server (port 0), because no
WebSocket client library sends malformed frames; the server closes first there.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import struct
from collections.abc import AsyncIterator
from importlib.metadata import version

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from messageai.edge.wsframes import (
    binary_frame,
    receive_messages,
    request_host,
    send_frames,
    send_now,
    text_frame,
    unsent,
    wrap_server_stream,
)
from tests.helpers import Harness

BOUNDARY_LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def _wsproto_server() -> Connection:
    return Connection(ConnectionType.SERVER)


@pytest.mark.parametrize("length", BOUNDARY_LENGTHS)
def test_text_frame_is_wsprotos_server_frame_byte_for_byte(length: int) -> None:
    text = "x" * length
    assert text_frame(text) == _wsproto_server().send(TextMessage(data=text))


@pytest.mark.parametrize("chars", [1, 41, 42, 21845, 21846, 30000])
def test_text_frame_of_multibyte_text_counts_bytes_as_wsproto_does(chars: int) -> None:
    # "€" is 3 bytes: 42 chars are 126 bytes, 21846 chars are 65538 bytes.
    text = "€" * chars
    assert text_frame(text) == _wsproto_server().send(TextMessage(data=text))


@pytest.mark.parametrize("length", BOUNDARY_LENGTHS)
def test_binary_frame_is_wsprotos_server_frame_byte_for_byte(length: int) -> None:
    data = os.urandom(length)
    assert binary_frame(data) == _wsproto_server().send(BytesMessage(data=data))


# ------------------------------------------------------------------ the private API


def _private(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(
            f"trio-websocket {version('trio-websocket')} changed private API that "
            f"messageai/edge/wsframes.py relies on: {what}. Adapt wsframes.py (its "
            "docstring lists every use) before widening the trio-websocket pin.",
            pytrace=False,
        )


@pytest.fixture
async def server_side() -> AsyncIterator[
    tuple[trio_websocket.WebSocketConnection, trio_websocket.WebSocketRequest, trio.abc.Stream]
]:
    """One real loopback TCP connection: our server wrap on one end, trio-websocket's
    client on the other."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client_stream = await trio.open_tcp_stream("127.0.0.1", port)
            server_stream = await listeners[0].accept()
            nursery.start_soon(
                trio_websocket.wrap_client_stream, nursery, client_stream, "127.0.0.1", "/v1/ws"
            )
            request = await wrap_server_stream(
                nursery, server_stream, message_queue_size=4, max_message_bytes=65536
            )
            ws = await request.accept()
            yield ws, request, server_stream
            nursery.cancel_scope.cancel()
        await client_stream.aclose()
        await server_stream.aclose()
        for listener in listeners:
            await listener.aclose()


async def test_the_private_trio_websocket_api_wsframes_uses_is_still_there(
    server_side: tuple[
        trio_websocket.WebSocketConnection, trio_websocket.WebSocketRequest, trio.abc.Stream
    ],
) -> None:
    ws, request, stream = server_side
    cls = trio_websocket.WebSocketConnection
    _private(
        isinstance(getattr(ws, "_stream_lock", None), trio.StrictFIFOLock),
        "WebSocketConnection._stream_lock is no longer a trio.StrictFIFOLock",
    )
    _private(
        isinstance(getattr(ws, "_wsproto", None), wsproto.WSConnection),
        "WebSocketConnection._wsproto is no longer the wsproto.WSConnection it was given",
    )
    _private(
        getattr(ws, "_stream", None) is stream,
        "WebSocketConnection._stream is no longer the wrapped stream",
    )
    _private(
        isinstance(ws.closed, type(None)) and hasattr(ws, "_close_reason"),
        "WebSocketConnection._close_reason is gone",
    )
    for name in ("_abort_web_socket", "_send", "_reader_task", "_get_request"):
        _private(
            inspect.iscoroutinefunction(getattr(cls, name, None)),
            f"WebSocketConnection.{name} is no longer a coroutine method",
        )
    handler = getattr(cls, "_handle_close_connection_event", None)
    _private(
        inspect.iscoroutinefunction(handler)
        and "self._handle_close_connection_event" in inspect.getsource(cls._reader_task),
        "WebSocketConnection._reader_task no longer dispatches close events to "
        "self._handle_close_connection_event, which wsframes._ServerConnection overrides",
    )
    for name in (
        "_handle_message_event",
        "_handle_ping_event",
        "_handle_pong_event",
        "_handle_accept_connection_event",
        "_handle_reject_connection_event",
        "_handle_reject_data_event",
        "_handle_request_event",
        "_close_stream",
    ):
        _private(
            inspect.iscoroutinefunction(getattr(cls, name, None)),
            f"WebSocketConnection.{name} is no longer a coroutine method (wsframes' reader)",
        )
    _private(
        isinstance(getattr(stream.socket, "_sock", None), socket.socket),  # type: ignore[attr-defined]
        "trio's SocketType no longer keeps its stdlib socket in _sock (wsframes' reader)",
    )
    proto = ws._wsproto.connection._proto if ws._wsproto.connection else None
    _private(
        proto is not None
        and hasattr(proto._frame_decoder, "header")
        and hasattr(proto._frame_decoder, "buffer")
        and hasattr(proto._message_decoder, "opcode"),
        "wsproto's FrameProtocol no longer has _frame_decoder.header/.buffer and "
        "_message_decoder.opcode (wsframes' own parse checks them)",
    )
    for attribute in (
        "_recv_channel",
        "_send_channel",
        "_message_parts",
        "_message_size",
        "_max_message_size",
        "_reader_running",
    ):
        _private(hasattr(ws, attribute), f"WebSocketConnection.{attribute} is gone")
    event = getattr(request, "_event", None)
    _private(
        isinstance(event, wsproto.events.Request) and isinstance(event.host, str),
        "WebSocketRequest._event is no longer a wsproto Request with a str host",
    )
    assert request_host(request) == "127.0.0.1"


# ------------------------------------------------------------------ the session's path


async def _session_side(
    nursery: trio.Nursery, stream: trio.SocketStream, received: list[str | bytes]
) -> trio_websocket.WebSocketConnection:
    """Our server wrap on `stream`, accepted, its messages appended to `received` as a
    session takes them (`receive_messages`)."""
    request = await wrap_server_stream(
        nursery, stream, message_queue_size=4, max_message_bytes=65536
    )
    ws = await request.accept()

    async def handle(message: str | bytes) -> None:
        received.append(message)

    nursery.start_soon(receive_messages, ws, handle)
    return ws


async def test_messages_go_to_the_handler_and_a_frame_begun_by_send_now_is_finished_first() -> None:
    # The client does not read until the server has queued a ping and a frame behind a
    # frame larger than the socket buffers: both must arrive after all of it, intact.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    received: list[str | bytes] = []
    big = "a" * 8_000_000
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            client_stream = await trio.open_tcp_stream("127.0.0.1", port)
            server_stream = await listeners[0].accept()
            clients: list[trio_websocket.WebSocketConnection] = []

            async def connect() -> None:
                clients.append(
                    await trio_websocket.wrap_client_stream(
                        nursery,
                        client_stream,
                        "127.0.0.1",
                        "/v1/ws",
                        max_message_size=16_000_000,
                    )
                )

            nursery.start_soon(connect)
            ws = await _session_side(nursery, server_stream, received)
            while not clients:
                await trio.sleep(0.01)
            client = clients[0]
            await client.send_message("hello")
            await client.send_message(b"\x00\x01")
            while len(received) < 2:
                await trio.sleep(0.01)
            assert received == ["hello", b"\x00\x01"]
            assert type(received[1]) is bytes
            assert send_now(ws, text_frame(big))
            assert unsent(ws), "the socket took all of 8 MB at once: nothing was tested"
            nursery.start_soon(ws.ping, b"p1")
            nursery.start_soon(send_frames, ws, text_frame("after"))
            await trio.testing.wait_all_tasks_blocked()
            assert await client.get_message() == big
            assert await client.get_message() == "after"
            assert not unsent(ws)
            nursery.cancel_scope.cancel()
    await client_stream.aclose()
    await server_stream.aclose()
    for listener in listeners:
        await listener.aclose()


async def test_frames_parsed_by_hand_and_by_wsproto_arrive_in_order_from_one_read() -> None:
    # One TCP write holding a simple text frame (wsframes' own parse), a ping, a
    # fragmented message (wsproto's), a simple frame, and an unmasked one (refused).
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    received: list[str | bytes] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            client = await trio.open_tcp_stream("127.0.0.1", port)
            server_stream = await listeners[0].accept()
            await client.send_all(
                b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            await _session_side(nursery, server_stream, received)
            head = b""
            while b"\r\n\r\n" not in head:
                head += await client.receive_some(4096)
            await trio.testing.wait_all_tasks_blocked()
            long_text = "é" * 200  # 400 bytes: a 16-bit length
            await client.send_all(
                _masked(0x81, b"one")
                + _masked(0x89, b"ping")
                + _masked(0x01, b"tw")
                + _masked(0x80, b"o")
                + _masked(0x81, long_text.encode(), bytes((0xFE,)) + (400).to_bytes(2, "big"))
                + bytes((0x81, 3))
                + b"bad"
            )
            answer = b""
            with trio.move_on_after(5):
                while (chunk := await client.receive_some(4096)) and b"\x88" not in answer:
                    answer += chunk
            assert received == ["one", "two", long_text]
            assert answer.startswith(b"\x8a\x04ping")  # the pong, then the close frame
            assert answer[6] == 0x88
            assert struct.unpack("!H", answer[8:10])[0] == 1002
            nursery.cancel_scope.cancel()
    await client.aclose()
    await server_stream.aclose()
    for listener in listeners:
        await listener.aclose()


# ------------------------------------------------------------------ refused frames


def _masked(first: int, payload: bytes, length_field: bytes | None = None) -> bytes:
    mask = os.urandom(4)
    if length_field is None:
        assert len(payload) < 126
        length_field = bytes([0x80 | len(payload)])
    return (
        bytes([first]) + length_field + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


async def _send_raw(h: Harness, token: str, data: bytes, *, pause: float = 0.0) -> bytes:
    """Open a WebSocket by hand, send `data` as is, wait `pause` seconds, and return all
    the server sends after the 101 until it ends the connection."""
    assert h.server.port is not None
    head = (
        "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    # Well inside the server's ping interval (30 s) and ping timeout (20 s).
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", h.server.port) as stream:
            await stream.send_all(head.encode())
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(4096)
            assert received.startswith(b"HTTP/1.1 101"), received
            received = received.partition(b"\r\n\r\n")[2]
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(data)
            await trio.sleep(pause)
            while True:
                try:
                    chunk = await stream.receive_some(4096)
                except trio.BrokenResourceError:
                    return received
                if not chunk:
                    return received
                received += chunk


def _close_code(received: bytes) -> int:
    """The code of the close frame that ends `received` (data frames may come first)."""
    at = 0
    while at < len(received):
        first, second = received[at], received[at + 1]
        assert not second & 0x80, "server frames are never masked"
        n, at = second & 0x7F, at + 2
        if n == 126:
            n, at = struct.unpack("!H", received[at : at + 2])[0], at + 2
        elif n == 127:
            n, at = struct.unpack("!Q", received[at : at + 8])[0], at + 8
        if first == 0x88:
            assert n >= 2, received
            code: int = struct.unpack("!H", received[at : at + 2])[0]
            return code
        at += n
    raise AssertionError(f"no close frame, only {received!r}: the peer would see 1006")


PING = b'{"type": "ping", "req": 1}'

REFUSED = {
    "invalid_utf8": (_masked(0x81, b'{"a": "\xff\xfe"}'), 1007),
    "invalid_utf8_across_fragments": (
        _masked(0x01, b'{"a": "\xe2\x82') + _masked(0x80, b'x"}'),
        1007,
    ),
    "bad_opcode": (_masked(0x83, b"x"), 1002),
    "unmasked_client_frame": (bytes([0x81, len(PING)]) + PING, 1002),
    "fragmented_ping": (_masked(0x09, b"hi"), 1002),
    "reserved_bit": (_masked(0xC1, PING), 1002),
    "continuation_without_start": (_masked(0x80, PING), 1002),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_frames_wsproto_refuses_get_a_close_frame_with_their_code(
    h: Harness, case: str
) -> None:
    data, code = REFUSED[case]
    ada = await h.account()
    received = await _send_raw(h, ada.token, data)
    assert _close_code(received) == code
    async with h.ws(ada) as a:
        assert (await a.request("ping"))["type"] == "pong"


async def test_a_header_declaring_a_terabyte_is_refused_with_1009_at_once(h: Harness) -> None:
    ada = await h.account()
    header = _masked(0x81, b"", bytes([0x80 | 127]) + (1 << 40).to_bytes(8, "big"))
    # Only the header and a few bytes: before the fix the server waited for the rest
    # until the ping timeout, then closed with 1001.
    received = await _send_raw(h, ada.token, header + b"abc")
    assert _close_code(received) == 1009


async def test_fragments_declaring_more_than_the_limit_in_all_are_refused_with_1009(
    h: Harness,
) -> None:
    ada = await h.account()
    first = _masked(0x01, b"", bytes([0x80 | 126]) + (60000).to_bytes(2, "big"))
    # 60,000 bytes declared and sent, then a continuation that declares 10,000 more.
    mask = first[-4:]
    body = bytes(ord("x") ^ mask[i % 4] for i in range(60000))
    more = _masked(0x80, b"", bytes([0x80 | 126]) + (10000).to_bytes(2, "big"))
    received = await _send_raw(h, ada.token, first + body + more)
    assert _close_code(received) == 1009


async def test_a_peer_still_sending_after_a_refused_frame_is_not_reset(h: Harness) -> None:
    # Closing a socket with unread input, or receiving more on a closed one, makes the
    # kernel answer with a RST; a client whose write fails then may never read the close
    # frame (Autobahn's 5.11, sent octet by octet, showed it). The server half-closes and
    # reads until the peer closes (at most wsframes.LINGER_SECONDS) instead.
    ada = await h.account()
    assert h.server.port is not None
    head = (
        "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {ada.token}\r\n\r\n"
    )
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", h.server.port) as stream:
            await stream.send_all(head.encode())
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(4096)
            received = received.partition(b"\r\n\r\n")[2]
            await stream.send_all(_masked(0x81, b"\xff"))
            # Well within LINGER_SECONDS: the server is still reading, not resetting.
            for octet in _masked(0x81, PING)[:10]:  # about 0.1 s
                await trio.sleep(0.01)
                await stream.send_all(bytes([octet]))
            await stream.send_eof()
            while chunk := await stream.receive_some(4096):
                received += chunk
    assert _close_code(received) == 1007
