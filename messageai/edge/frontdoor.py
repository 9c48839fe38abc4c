"""The one port: reads each connection's request head and hands the connection on.

A WebSocket upgrade to `/v1/ws` goes to trio-websocket; everything else goes to
hypercorn's HTTP/1.1 protocol serving the ASGI app. The bytes already read are
replayed to whichever side takes the connection. A head that is too large is
answered here (414 URI Too Long, 431 Request Header Fields Too Large, with the
protocol's error body) and the connection closed; a head that does not arrive
within the handshake timeout is dropped without an answer. Called by
`server.Server`, once per accepted connection.

Private API. `TCPServer`, `WorkerContext` and `ASGIWrapper` are hypercorn's
per-connection internals, not its public surface (that is `hypercorn.trio.serve`,
which owns the listening socket). They are used only in this module, pinned by
`hypercorn<0.19` in pyproject.toml, and `tests/test_http_edge.py` fails loudly if
their shape changes. The reason: one port for REST and the WebSocket, with the
WebSocket on trio-websocket rather than on hypercorn's ASGI WebSocket, because the
WebSocket is the hot path and an ASGI WebSocket costs 1.5-2.6x trio-websocket in
server CPU per frame (issue 2's measurement, idle machine). Re-measured with
`python bench/ws_echo_cpu.py --frames 20000 --rounds 3` on a loaded 2-core
machine: 289 against 369 µs per echo, 1.28x (its docstring has the details).
The alternative with public API only is two ports (hypercorn's `serve` for REST,
trio-websocket's `serve_websocket` for /v1/ws).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import orjson
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

from messageai import logs
from messageai.counters import COUNTS
from messageai.errors import HeadersTooLarge, MessageAIError, TooLarge, UriTooLong, error_body

log = logging.getLogger(__name__)

# A request line longer than this is answered 414 (a bearer token in the query,
# as browsers must send it to /v1/ws, is about 1-2 KB).
MAX_REQUEST_LINE_BYTES = 8192
# A request head larger than this, or with more header lines, is answered 431.
MAX_HEAD_BYTES = 16384
MAX_HEADERS = 100
WEBSOCKET_PATH = b"/v1/ws"
# After answering 414/431 the server stops writing, then reads and drops what the
# client is still sending for at most this long (or this many bytes) before closing:
# closing a socket with unread bytes sends a TCP reset, which can destroy the
# answer before the client reads it.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20
REASONS = {414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class ReplayStream(trio.abc.Stream):
    """A socket stream that first returns bytes that were already read from it."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self.transport = stream
        # hypercorn's TCPServer reads the peer's address from `socket`.
        self.socket = stream.socket
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return await self.transport.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    def plain(self) -> trio.SocketStream | None:
        """The socket stream itself once everything read ahead has been replayed (from
        then on reading it directly loses nothing), else None."""
        return None if self._prefix else self.transport

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()


async def read_head(stream: trio.abc.ReceiveStream) -> bytes | None:
    """Read until the end of the HTTP request head and return every byte read (the
    head and whatever followed it). None if the peer left first. Raises UriTooLong
    when the request line passes MAX_REQUEST_LINE_BYTES and HeadersTooLarge when the
    head passes MAX_HEAD_BYTES or MAX_HEADERS lines, as soon as that is known."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        line_end = data.find(b"\r\n")
        if (line_end if line_end >= 0 else len(data)) > MAX_REQUEST_LINE_BYTES:
            raise UriTooLong(f"the request line is longer than {MAX_REQUEST_LINE_BYTES} bytes")
        if (end if end >= 0 else len(data)) > MAX_HEAD_BYTES:
            raise HeadersTooLarge(f"the request head is larger than {MAX_HEAD_BYTES} bytes")
        # Lines ended so far, less the request line: a complete head's last header
        # line ends with the blank line's CRLF, at `end`.
        lines = data.count(b"\r\n", 0, end) if end >= 0 else data.count(b"\r\n") - 1
        if lines > MAX_HEADERS:
            raise HeadersTooLarge(f"the request has more than {MAX_HEADERS} header lines")
        if end >= 0:
            return data
        try:
            chunk = await stream.receive_some(MAX_HEAD_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not chunk:
            return None
        data += chunk


def is_websocket_upgrade(head: bytes) -> bool:
    """Whether `head` is a WebSocket opening handshake for /v1/ws: GET, `Upgrade:
    websocket`, `upgrade` among the `Connection` tokens (RFC 6455 4.1, as hypercorn
    checks it), names and values in any case. Parsed with h11, so whitespace and
    repeated headers are read as HTTP reads them; a head h11 refuses is not an
    upgrade (hypercorn then answers it 400)."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(head)
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return False
    if not isinstance(event, h11.Request) or event.method != b"GET":
        return False
    if event.target.partition(b"?")[0] != WEBSOCKET_PATH:
        return False
    upgrade = tokens = False
    for name, value in event.headers:  # h11 gives lower-case names
        if name == b"upgrade" and value.strip().lower() == b"websocket":
            upgrade = True
        elif name == b"connection":
            tokens = tokens or b"upgrade" in (t.strip().lower() for t in value.split(b","))
    return upgrade and tokens


def error_answer(exc: MessageAIError) -> bytes:
    """A complete HTTP/1.1 response for `exc` with the protocol's error body, telling
    the client the connection closes (hypercorn never sees this connection)."""
    COUNTS.errors[exc.code] += 1
    body = orjson.dumps(error_body(exc))
    reason = REASONS.get(exc.status, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\ncache-control: no-store\r\n\r\n%s"
        % (exc.status, reason, len(body), body)
    )


class FrontDoor:
    """Per-connection dispatch between the WebSocket handler and hypercorn."""

    def __init__(
        self,
        asgi_app: Callable[..., Awaitable[None]],
        websocket_handler: Callable[[ReplayStream], Awaitable[None]],
        *,
        handshake_timeout: float,
        keep_alive_timeout: float,
    ) -> None:
        self._websocket = websocket_handler
        self._handshake_timeout = handshake_timeout
        self._hconfig = HypercornConfig()
        self._hconfig.accesslog = None
        self._hconfig.errorlog = None
        # The same bound for the heads of later requests on a kept-alive connection,
        # which hypercorn reads itself (it answers those 431, with no body).
        self._hconfig.h11_max_incomplete_size = MAX_HEAD_BYTES
        # Also bounds how long hypercorn waits for a later request's head: a
        # connection counts as idle until a whole head has arrived.
        self._hconfig.keep_alive_timeout = keep_alive_timeout
        self._context = WorkerContext(None)
        self._app = ASGIWrapper(asgi_app)
        self._state: dict[str, Any] = {}

    async def shutdown(self) -> None:
        """Tell hypercorn's connections to finish their request in flight and close
        instead of waiting for another (the server then sets a deadline on them)."""
        await self._context.terminated.set()

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one accepted connection to its end. A bug met while serving it is
        logged and ends that connection only, never the server."""
        # This task's own context: every line logged while serving it names it.
        logs.CONNECTION.set(logs.new_connection_id())
        try:
            await self._serve(stream)
        except Exception:
            log.exception("connection failed")
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        head = None
        try:
            with trio.move_on_after(self._handshake_timeout):
                head = await read_head(stream)
        except TooLarge as exc:
            await _refuse(stream, exc)
            return
        if head is None:
            await trio.aclose_forcefully(stream)
            return
        replay = ReplayStream(stream, head)
        if is_websocket_upgrade(head):
            await self._websocket(replay)
        else:
            # TCPServer is annotated for a trio.SSLStream; it uses only the Stream
            # methods and `.socket` of a plain one (see ReplayStream).
            await TCPServer(self._app, self._hconfig, self._context, self._state, replay)  # type: ignore[arg-type]


async def _refuse(stream: trio.SocketStream, exc: MessageAIError) -> None:
    """Answer `exc`, stop writing, drain what the client still sends (bounded), close."""
    try:
        with trio.move_on_after(LINGER_SECONDS):
            await stream.send_all(error_answer(exc))
            await stream.send_eof()
            drained = 0
            while drained < LINGER_BYTES:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                drained += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client left: nothing more to tell it
    await trio.aclose_forcefully(stream)
