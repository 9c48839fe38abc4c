"""The one port: reads each connection's request head and hands the connection on.

A WebSocket upgrade to `/v1/ws` goes to trio-websocket (the hot path, measured
to cost far less CPU per frame than an ASGI WebSocket); everything else goes to
hypercorn's HTTP/1.1 protocol serving the ASGI app. The bytes already read are
replayed to whichever side takes the connection. Called by `server.Server`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

log = logging.getLogger(__name__)

# A request head larger than this is not a request we serve.
MAX_HEAD_BYTES = 16384
WEBSOCKET_PATH = b"/v1/ws"


class ReplayStream(trio.abc.Stream):
    """A socket stream that first returns bytes that were already read from it."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self.transport = stream
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

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()


async def read_head(stream: trio.SocketStream) -> bytes | None:
    """Read until the end of the HTTP request head; None if the peer left or sent junk."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD_BYTES:
            return None
        try:
            chunk = await stream.receive_some(MAX_HEAD_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not chunk:
            return None
        data += chunk
    return data


def is_websocket_upgrade(head: bytes) -> bool:
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[1].partition(b"?")[0] != WEBSOCKET_PATH:
        return False
    for header in rest.split(b"\r\n"):
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"upgrade" and value.strip().lower() == b"websocket":
            return True
    return False


class FrontDoor:
    """Per-connection dispatch between the WebSocket handler and hypercorn."""

    def __init__(
        self,
        asgi_app: Callable[..., Awaitable[None]],
        websocket_handler: Callable[[ReplayStream], Awaitable[None]],
        *,
        handshake_timeout: float,
        max_request_body_bytes: int,
    ) -> None:
        self._websocket = websocket_handler
        self._handshake_timeout = handshake_timeout
        self._hconfig = HypercornConfig()
        self._hconfig.accesslog = None
        self._hconfig.errorlog = None
        self._hconfig.h11_max_incomplete_size = MAX_HEAD_BYTES
        self._hconfig.keep_alive_timeout = 30
        self._hconfig.graceful_timeout = 2
        self._hconfig.websocket_max_message_size = max_request_body_bytes
        self.context = WorkerContext(None)
        self._app = ASGIWrapper(asgi_app)
        self._state: dict[str, Any] = {}

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one accepted connection to its end. A bug met while serving it is
        logged and ends that connection only, never the server."""
        try:
            await self._serve(stream)
        except Exception:
            log.exception("connection failed")
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        head = None
        with trio.move_on_after(self._handshake_timeout):
            head = await read_head(stream)
        if head is None:
            await trio.aclose_forcefully(stream)
            return
        replay = ReplayStream(stream, head)
        if is_websocket_upgrade(head):
            await self._websocket(replay)
        else:
            await TCPServer(self._app, self._hconfig, self.context, self._state, replay)  # type: ignore[arg-type]
