"""A loopback TCP proxy for client tests: the "network" between a client and the server.

`cut()` drops every connection and refuses new ones (a pulled cable that the
client notices), `blackhole()` keeps connections open but discards what the
server sends (acks lost on the way back), `restore()` heals it. Real sockets
on 127.0.0.1 only.
"""

from __future__ import annotations

import trio


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port: int | None = None
        self.accepting = True
        self.drop_downstream = False
        self._scopes: set[trio.CancelScope] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        self.accepting = False
        for scope in list(self._scopes):
            scope.cancel()

    def blackhole(self) -> None:
        self.drop_downstream = True

    def restore(self) -> None:
        self.accepting = True
        self.drop_downstream = False

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.accepting:
                return
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream:
                with trio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(
                                self._pump, client, upstream, False, nursery.cancel_scope
                            )
                            nursery.start_soon(
                                self._pump, upstream, client, True, nursery.cancel_scope
                            )
                    finally:
                        self._scopes.discard(scope)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        downstream: bool,
        scope: trio.CancelScope,
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                if downstream and self.drop_downstream:
                    continue
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # one side went away: the other is closed with it below
        scope.cancel()
