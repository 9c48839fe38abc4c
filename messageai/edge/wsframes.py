"""Every use of trio-websocket's private API, in one place: framing, batched writes, the
server-side wrap. Called by `server.Server` (handshake) and `live.session.Session` (writer).

What is private here is the API of trio-websocket 0.12, which pyproject pins with
`trio-websocket<0.13`; `tests/test_wsframes.py` fails loudly if any of it changes.
Why not the public API:

* `text_frame` + `send_frames` (`ws._stream_lock`, `ws._wsproto`, `ws._stream`,
  `ws._abort_web_socket`): trio-websocket's `send_message` goes through wsproto and
  takes the stream lock once per message. Framing by hand and writing everything a
  connection has queued with one `send_all` took `group` fan-out from 1.04x to 0.95x
  of the reference server's cost per delivery (README, "Performance").
* `request_host` (`request._event.host`): wsproto keeps the Host header out of the
  headers trio-websocket shows, and the Origin check needs it.
* `wrap_server_stream` (`WebSocketConnection._reader_task`, `_get_request`,
  `_handle_close_connection_event`, `_send`, `_close_reason`): trio-websocket's own
  wrap, with two fixes it does not offer a way to ask for. When wsproto refuses a frame
  (invalid UTF-8, a bad opcode, an unmasked or reserved-bit frame, a fragmented
  control frame) it does not raise `RemoteProtocolError`, which trio-websocket answers
  (that is only for the HTTP handshake): it makes up a `CloseConnection` event with
  the code (1007, 1002), and trio-websocket, as a server, treats that as the peer's
  close and cuts TCP without sending a close frame, so the peer sees 1006.
  `_ServerConnection` sends the close frame first, then half-closes and lets the
  peer finish (at most LINGER_SECONDS) so that no RST destroys it. And a frame header
  declaring more than the limit (say 1 TiB) is refused with 1009 as soon as the
  header is read, through wsproto's public extension hook (`_MessageLimit`), instead
  of holding the socket while the payload never comes.
"""

from __future__ import annotations

import dataclasses

import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Event
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

# How long a connection failed for a refused frame waits for the peer to close after
# our close frame (see `_ServerConnection._linger`).
LINGER_SECONDS = 1.0


def text_frame(text: str) -> bytes:
    """One unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as a server sends.

    The connection negotiates no extension (no permessage-deflate), so this is byte
    for byte what wsproto would produce (tested), at a fraction of its cost. Written
    out rather than shared with `binary_frame`: it runs once per delivered frame.
    """
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def binary_frame(data: bytes) -> bytes:
    """One unmasked, unfragmented binary frame (only the test echo session sends these)."""
    n = len(data)
    if n < 126:
        return bytes((0x82, n)) + data
    if n < 65536:
        return b"\x82\x7e" + n.to_bytes(2, "big") + data
    return b"\x82\x7f" + n.to_bytes(8, "big") + data


async def send_frames(ws: trio_websocket.WebSocketConnection, data: bytes) -> None:
    """Write ready-made data frames to `ws` in one send_all; ConnectionClosed once closed.

    This is trio-websocket's own `_send` (same stream lock, same abort on a broken
    stream) minus the per-message wsproto call. Frames are only written while the
    WebSocket is open, checked under the lock so that none follows a close frame.
    Waits while the peer does not read (TCP backpressure); cancellable, but a
    cancelled write may have sent part of `data`, so the caller closes the stream then.
    """
    async with ws._stream_lock:
        if ws._wsproto.state is not ConnectionState.OPEN:
            raise trio_websocket.ConnectionClosed(
                ws.closed or trio_websocket.CloseReason(1006, "connection closed")
            )
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise trio_websocket.ConnectionClosed(
                ws.closed or trio_websocket.CloseReason(1006, "connection lost")
            ) from None


def request_host(request: trio_websocket.WebSocketRequest) -> str | None:
    """The handshake's Host header (wsproto keeps it out of `request.headers`)."""
    host: str | None = request._event.host
    return host


async def wrap_server_stream(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    *,
    message_queue_size: int,
    max_message_bytes: int,
) -> trio_websocket.WebSocketRequest:
    """trio-websocket's `wrap_server_stream`, with the close frame sent on a refused
    frame and messages over `max_message_bytes` refused with 1009 at the frame header.

    Starts the connection's reader task in `nursery` and waits for the handshake
    request (the caller bounds that wait). `max_message_bytes` counts UTF-8 bytes of a
    whole message, fragments included; trio-websocket's own `max_message_size`, in
    characters, is set to the same number and so never fires first.
    """
    connection = _ServerConnection(
        stream,
        _ServerProtocol(max_message_bytes),
        message_queue_size=message_queue_size,
        max_message_size=max_message_bytes,
    )
    nursery.start_soon(connection._reader_task)
    return await connection._get_request()


class _ServerConnection(trio_websocket.WebSocketConnection):
    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        if self._wsproto.state is ConnectionState.OPEN:
            # A close while still OPEN was not received: wsproto made it up for a frame
            # it refused (a received close frame moves it to REMOTE_CLOSING first).
            # RFC 6455 7.1.7 lets the endpoint send a close frame before failing the
            # connection; without one the peer cannot tell 1007/1002/1009 from a crash.
            if event.code == CloseReason.MESSAGE_TOO_BIG and isinstance(
                self._wsproto, _ServerProtocol
            ):
                # wsproto's reason for an extension's refusal is "error in extension".
                # Replaced here, on the close path, not by wrapping `events()`, which
                # every received message goes through.
                event = CloseConnection(code=event.code, reason=self._wsproto.limit.reason)
            self._close_reason = trio_websocket.CloseReason(event.code, event.reason or None)
            try:
                await self._send(CloseConnection(code=event.code, reason=event.reason))
                await self._linger()
            except trio_websocket.ConnectionClosed:
                pass  # the peer is gone already: there is nobody to tell
        await super()._handle_close_connection_event(event)

    async def _linger(self) -> None:
        # The peer may still be sending the rest of what was refused. Closing with its
        # bytes unread makes the kernel send a RST, which can destroy our close frame
        # before the peer reads it (Autobahn 5.11 showed it). So: half-close, then
        # read and drop until the peer closes too, for at most LINGER_SECONDS. Runs in
        # the reader task, the only one that reads; the write side is under the lock.
        with trio.move_on_after(LINGER_SECONDS):
            try:
                send_eof = getattr(self._stream, "send_eof", None)
                if send_eof is not None:
                    async with self._stream_lock:
                        await send_eof()
                while await self._stream.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # gone: nothing left to wait for


class _ServerProtocol(WSConnection):
    """wsproto's server connection with `_MessageLimit` installed at accept."""

    def __init__(self, max_message_bytes: int) -> None:
        super().__init__(ConnectionType.SERVER)
        self.limit = _MessageLimit(max_message_bytes)

    def send(self, event: Event) -> bytes:
        if isinstance(event, AcceptConnection):
            # wsproto hands every extension listed here to the frame parser; one that
            # the client never offers adds nothing to the 101 response.
            event = dataclasses.replace(event, extensions=[*event.extensions, self.limit])
        return super().send(event)


class _MessageLimit(Extension):
    """Refuses a message once its frame headers declare more than `limit` bytes in all,
    before any of the payload is read. Never negotiated: uses no reserved bit, changes
    no payload."""

    name = "messageai-message-limit"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reason = f"message larger than {limit} bytes"
        self._declared = 0

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if not opcode.iscontrol():  # control frames are at most 125 bytes and apart
            if opcode is not Opcode.CONTINUATION:
                self._declared = 0
            self._declared += payload_length
            if self._declared > self.limit:
                return CloseReason.MESSAGE_TOO_BIG
        return RsvBits(False, False, False)
