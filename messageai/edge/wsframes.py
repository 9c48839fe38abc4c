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
* `receive_messages`, `send_now` and the reader (`_ServerConnection._reader_task`,
  `_handle_message_event`, `_send`, `_receive_buffer_size`, `_reader_running`,
  `_message_parts`, `_recv_channel`): once the session is running, each message is
  handed to it in the reader task itself (no channel, no second task per message),
  and the reader waits for the socket, then reads it without trio's extra
  reschedule (trio's `SocketType._sock`); an actor's answers are written to the
  socket at the end of its batch
  when nothing else is writing (no writer task woken). Measured in the README
  ("Performance", issue 13).
* `_ServerConnection._deliver_simple` (wsproto's `connection._proto._frame_decoder`
  and `_message_decoder`): while wsproto holds no part of a frame or message, a whole,
  final, masked text frame is parsed here (3-4 µs against wsproto's 50 on the 2-core
  VM); anything else (control frames, fragments, a frame not whole yet, invalid UTF-8,
  over the limit) goes to wsproto from its first byte, which refuses it as before.
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
import socket
from collections.abc import Awaitable, Callable
from typing import cast

import trio
import trio_websocket
import wsproto
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from messageai.edge.frontdoor import ReplayStream

# Most bytes the reader takes from the socket at once (trio-websocket's own default).
RECEIVE_BYTES = 4096
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
        if isinstance(ws, _ServerConnection) and ws.unsent:
            # The rest of a frame `send_now` began goes before anything else.
            data, ws.unsent = ws.unsent + data, b""
        await _send_locked(ws, data)


async def _send_locked(ws: trio_websocket.WebSocketConnection, data: bytes) -> None:
    # The write itself, under the stream lock the caller holds: a broken stream is
    # trio-websocket's abort, and ConnectionClosed.
    try:
        await ws._stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await ws._abort_web_socket()
        raise trio_websocket.ConnectionClosed(
            ws.closed or trio_websocket.CloseReason(1006, "connection lost")
        ) from None


def send_now(ws: trio_websocket.WebSocketConnection, data: bytes) -> bool:
    """Write ready-made frames to `ws` at once, without waiting and without a task
    switch, if nothing else is writing to it; False (nothing written) when it cannot,
    and the caller goes through `send_frames` as usual.

    True means all of `data` is written, or what the socket did not take is kept and
    goes out first, before any other frame (`unsent`): the caller then has its writer
    call `send_frames`. Only a connection whose messages go to `receive_messages`
    (the reader owns a plain socket then) and that is open.
    """
    if (
        not isinstance(ws, _ServerConnection)
        or ws.raw is None
        or not ws.plain_socket_open()
        or ws.unsent
        or ws._stream_lock.locked()
        or ws._wsproto.state is not ConnectionState.OPEN
    ):
        return False
    try:
        sent = ws.raw.send(data)
    except OSError:
        # Full (EAGAIN) or broken: the writer waits for room or finds it broken.
        return False
    if sent < len(data):
        ws.unsent = data[sent:]
    return True


def unsent(ws: trio_websocket.WebSocketConnection) -> bool:
    """Whether `send_now` left part of a frame that `send_frames` must write first."""
    return isinstance(ws, _ServerConnection) and bool(ws.unsent)


async def receive_messages(
    ws: trio_websocket.WebSocketConnection, handler: Callable[[str | bytes], Awaitable[None]]
) -> None:
    """Hand each message `ws` receives to `handler`, in order, until the connection
    ends. For a connection from `wrap_server_stream`, `handler` runs in its reader task
    (what was queued before is handed over first), which reads no more while
    `handler` waits; for any other, messages are taken with `get_message`."""
    if not isinstance(ws, _ServerConnection):
        while True:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            await handler(message)
    channel = ws._recv_channel
    while True:
        try:
            message = channel.receive_nowait()
        except trio.WouldBlock:
            break
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return
        await handler(message)
    # No await from the empty channel to here: nothing can be queued in between.
    ws.deliver = handler
    ws.use_plain_socket()
    await ws.reader_done.wait()


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
    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: _ServerProtocol,
        *,
        message_queue_size: int,
        max_message_size: int,
    ) -> None:
        super().__init__(
            stream,
            protocol,
            message_queue_size=message_queue_size,
            max_message_size=max_message_size,
            receive_buffer_size=RECEIVE_BYTES,
        )
        # Set by `receive_messages`: each message goes to it, in the reader task.
        self.deliver: Callable[[str | bytes], Awaitable[None]] | None = None
        # The stdlib socket inside trio's (`_sock`), read and written without trio's
        # wrapper (no reschedule per call); None until `use_plain_socket` and once the
        # reader ends. Trio still owns and closes it. (Not a second descriptor from
        # os.dup: that doubles the file descriptors per connection, and 10,000 held
        # connections need 20,000 then, the hard limit on the development machine.)
        self.raw: socket.socket | None = None
        self._socket: trio.socket.SocketType | None = None
        # What `send_now` wrote part of: the rest goes first (`send_frames`, `_send`).
        self.unsent = b""
        self.reader_done = trio.Event()
        self._limit = protocol.limit.limit

    def use_plain_socket(self) -> None:
        """Read (and let `send_now` write) through a plain socket from now on, if the
        stream is a TCP socket with nothing left to replay; otherwise keep the stream."""
        stream: trio.abc.Stream | None = self._stream
        if isinstance(stream, ReplayStream):
            stream = stream.plain()
        if isinstance(stream, trio.SocketStream) and self._reader_running:
            raw = getattr(stream.socket, "_sock", None)
            if isinstance(raw, socket.socket) and raw.fileno() >= 0:
                self._socket, self.raw = stream.socket, raw

    def plain_socket_open(self) -> bool:
        """Whether the plain socket may be used: trio has not closed it (its number
        may belong to another connection then)."""
        return self._socket is not None and self._socket.fileno() >= 0

    async def _reader_task(self) -> None:
        # trio-websocket's own reader (0.12), with two changes: messages go to
        # `deliver` once it is set (`_handle_message_event`), and `_receive` reads.
        handlers: dict[type[Event], Callable[..., Awaitable[None]]] = {
            AcceptConnection: self._handle_accept_connection_event,
            BytesMessage: self._handle_message_event,
            CloseConnection: self._handle_close_connection_event,
            Ping: self._handle_ping_event,
            Pong: self._handle_pong_event,
            RejectConnection: self._handle_reject_connection_event,
            RejectData: self._handle_reject_data_event,
            Request: self._handle_request_event,
            TextMessage: self._handle_message_event,
        }
        try:
            async with self._send_channel:
                while self._reader_running:
                    for event in self._wsproto.events():
                        handler = handlers.get(type(event))
                        if handler is None:
                            continue  # no such wsproto event today
                        try:
                            await handler(event)
                        except trio_websocket.ConnectionClosed:
                            self._reader_running = False
                            break
                    try:
                        data = await self._receive()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        await self._abort_web_socket()
                        break
                    if not data:
                        # TCP closed before the WebSocket: an abnormal closure.
                        if self._wsproto.state != ConnectionState.CLOSED:
                            await self._abort_web_socket()
                        break
                    if self.deliver is not None and self._decoder_idle():
                        # The usual frame by hand; wsproto takes the rest from its start.
                        data = await self._deliver_simple(data)
                    if data and self._wsproto.state != ConnectionState.CLOSED:
                        try:
                            self._wsproto.receive_data(data)
                        except wsproto.utilities.RemoteProtocolError as err:
                            if err.event_hint:
                                await self._send(err.event_hint)
                            await self._close_stream()
        finally:
            self.raw = None
            self.reader_done.set()

    async def _receive(self) -> bytes:
        raw = self.raw
        if raw is None:
            return bytes(await self._stream.receive_some(RECEIVE_BYTES))
        # Waits first: in a conversation the next frame has rarely arrived yet, and
        # trio's receive_some would try a recv (EAGAIN), wait, recv, and reschedule.
        while True:
            if not self.plain_socket_open():
                raise trio.ClosedResourceError("the stream was closed")
            await trio.lowlevel.wait_readable(cast(trio.socket.SocketType, self._socket))
            try:
                return raw.recv(RECEIVE_BYTES)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError from exc

    def _decoder_idle(self) -> bool:
        # wsproto holds no byte of a frame and no message in progress, and the
        # connection is open: the next byte received starts a new message.
        connection = self._wsproto.connection
        if (
            connection is None
            or self._wsproto.state is not ConnectionState.OPEN
            or not self._reader_running
            or self._message_parts
        ):
            return False
        proto = connection._proto
        decoder = proto._frame_decoder
        return (
            decoder.header is None
            and not len(decoder.buffer)
            and proto._message_decoder.opcode is None
        )

    async def _deliver_simple(self, data: bytes) -> bytes:
        """Hand each whole, final, masked text frame at the start of `data` (the client
        frames of the chat protocol) to `deliver`, parsed here (wsproto takes 50 µs a
        frame on the 2-core VM, this 3-4); return the rest, from the first frame that is
        anything else (a control frame, a fragment, a frame not whole yet, one over the
        limit, invalid UTF-8), for wsproto to parse and refuse as it does."""
        deliver = self.deliver
        assert deliver is not None
        limit = self._limit
        pos, end = 0, len(data)
        while end - pos >= 6 and data[pos] == 0x81:  # FIN, no RSV bit, text
            second = data[pos + 1]
            if not second & 0x80:  # unmasked: wsproto refuses it (1002)
                break
            length, head = second & 0x7F, 6
            if length == 126:
                if end - pos < 8:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 8
            elif length == 127:
                break
            if length > limit or end - pos < head + length:
                break
            start = pos + head
            mask = data[start - 4 : start]
            key = int.from_bytes((mask * ((length >> 2) + 1))[:length], "big")
            payload = int.from_bytes(data[start : start + length], "big") ^ key
            try:
                text = payload.to_bytes(length, "big").decode()
            except UnicodeDecodeError:
                break  # wsproto closes with 1007
            pos = start + length
            await deliver(text)
            if not self._decoder_idle():
                break  # closed meanwhile: wsproto takes (and drops) the rest
        return data[pos:] if pos else data

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        deliver = self.deliver
        if deliver is None:
            await super()._handle_message_event(event)
            return
        # trio-websocket's own check, in characters; `_MessageLimit` refuses a message
        # over the limit in bytes at its frame header, before this can fire.
        data: str | bytes = event.data if isinstance(event, TextMessage) else bytes(event.data)
        if self._message_size + len(data) > self._max_message_size:
            await super()._handle_message_event(event)
            return
        self._message_size += len(data)
        if not event.message_finished:
            self._message_parts.append(data)
            return
        message = data
        if self._message_parts:
            self._message_parts.append(data)
            parts = self._message_parts
            if isinstance(event, BytesMessage):
                message = b"".join(cast(list[bytes], parts))
            else:
                message = "".join(cast(list[str], parts))
            self._message_parts = []
        self._message_size = 0
        await deliver(message)

    async def _send(self, event: Event) -> None:
        if self.unsent:
            # A pong or close frame must not land inside a frame `send_now` began.
            async with self._stream_lock:
                rest, self.unsent = self.unsent, b""
                if rest:
                    await _send_locked(self, rest)
        await super()._send(event)

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
