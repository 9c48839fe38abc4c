"""A real S3 server on loopback for the replica tests, and a TCP proxy that can stall it.

`moto_server()` runs moto's S3 server (`python -m moto.server`, a real HTTP server in a
process of its own) on 127.0.0.1 and a free port. moto answers a PUT with
`If-None-Match: *` of an existing key with 412, as S3 does (checked by
`check_store` in every test that uses it); it checks no signature (the signing is
compared with botocore's instead) and its conditional check is not atomic against a
concurrent PUT of the same key, so the tests race two owners one after the other.

`Stall` sits between a node and the store: it forwards bytes both ways until told to
hold one direction; then it drops what arrives that way and says so (`held`). Holding
requests is "the commit happened, its PUT never reached the store"; holding responses
is "the PUT landed, the node never heard": a kill -9 at that moment is a crash between
the commit and the replica, or between the replica and the ack.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import attrs
import httpx
import trio

from tests.redis_server import free_port

START_TIMEOUT_SECONDS = 30.0


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server until the block ends; yields its endpoint (`http://host:port`)."""
    port = free_port("127.0.0.1")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                assert process.stderr is not None
                raise RuntimeError(f"moto.server exited: {process.stderr.read()[-2000:]!r}")
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield endpoint
    finally:
        process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()


@attrs.define(eq=False)
class Stall:
    """A loopback TCP proxy to `target` (host, port); `endpoint` is where to connect."""

    target: tuple[str, int]
    endpoint: str = ""
    # None: forward both ways; "requests" or "responses": drop that direction.
    hold: str | None = None
    held: trio.Event = attrs.Factory(trio.Event)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream(*self.target) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._pipe, client, server, "requests", nursery.cancel_scope)
            nursery.start_soon(self._pipe, server, client, "responses", nursery.cancel_scope)

    async def _pipe(
        self, source: trio.SocketStream, sink: trio.SocketStream, what: str, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                if self.hold == what:
                    self.held.set()
                    continue
                await sink.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()
