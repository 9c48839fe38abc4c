"""A loopback TCP proxy for client tests: the "network" between a client and the server.

`cut()` drops every connection and refuses new ones (a pulled cable that the
client notices), `blackhole()` keeps connections open but discards what the
server sends (acks lost on the way back), `restore()` heals it. `hold()` delays
what the server sends on the connections open now (new ones pass) until
`release()`: a slow path to one client. Real sockets on 127.0.0.1 only.
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
        # Per open connection: the gate its downstream waits on while held.
        self._gates: dict[trio.CancelScope, trio.Event | None] = {}
        self._release: trio.Event | None = None

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

    def hold(self) -> None:
        """Stop forwarding server bytes on the connections open now until `release()`
        (at most one chunk waits in memory; the rest waits in the kernel's buffers)."""
        self._release = trio.Event()
        for scope in self._gates:
            self._gates[scope] = self._release

    def release(self) -> None:
        if self._release is not None:
            self._release.set()
        for scope in self._gates:
            self._gates[scope] = None

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
                    self._gates[scope] = None
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(
                                self._pump, client, upstream, None, nursery.cancel_scope
                            )
                            nursery.start_soon(
                                self._pump, upstream, client, scope, nursery.cancel_scope
                            )
                    finally:
                        self._scopes.discard(scope)
                        self._gates.pop(scope, None)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        downstream: trio.CancelScope | None,
        scope: trio.CancelScope,
    ) -> None:
        """Copy bytes one way; `downstream` (server to client) names the connection."""
        try:
            while data := await source.receive_some(65536):
                if downstream is not None:
                    if self.drop_downstream:
                        continue
                    gate = self._gates.get(downstream)
                    if gate is not None:
                        await gate.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # one side went away: the other is closed with it below
        scope.cancel()
