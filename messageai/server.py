"""The server: wires config, directory, registry, presence, REST and WebSocket on one port.

`Server.run` is a Trio service (`await nursery.start(server.run)` gives the bound
port, so tests use 127.0.0.1:0). Nurseries, from the outside in: the actor
nursery (owned by the registry; outlives every connection; the media cleanup task
and the push task run there too), then the connection nursery (one task per TCP
connection). `shutdown()` stops accepting, closes
WebSockets with 1001, gives connections `shutdown_timeout_seconds`, then cancels
the actors, which let a commit already in its worker thread finish and close
their databases.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import orjson
import trio
import trio_websocket

from messageai.config import Config
from messageai.conversations.registry import Registry
from messageai.edge.asgi import App, Router
from messageai.edge.frontdoor import FrontDoor, ReplayStream
from messageai.errors import CLOSE_POLICY, MessageAIError
from messageai.identity.authenticator import Authenticator, make_authenticator
from messageai.live.guard import Guard
from messageai.live.presence import Presence
from messageai.live.session import Session
from messageai.model import User
from messageai.rest import Rest
from messageai.rest.clerk_webhooks import ClerkWebhooks
from messageai.services.directory import Directory
from messageai.services.media import Media
from messageai.services.push import Push
from messageai.sqlite import apply_best_practice

log = logging.getLogger(__name__)

# Client frames buffered by trio-websocket before its reader stops reading the socket.
WS_INBOUND_QUEUE = 4


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.port: int | None = None
        self._stop = trio.Event()
        self._sessions: set[Session] = set()
        self.directory: Directory | None = None
        self.registry: Registry | None = None
        self.authenticator: Authenticator | None = None
        self.media: Media | None = None
        self.push: Push | None = None
        self.guard = Guard(config)

    def shutdown(self) -> None:
        """Begin a graceful shutdown; `run` returns once it is done."""
        self._stop.set()

    def close_user_sessions(self, user_id: str, reason: str = "account deleted") -> int:
        """Close every open WebSocket of `user_id` with 1008 (policy violation), without
        waiting; returns how many. Called when Clerk reports the user deleted."""
        closing = [session for session in self._sessions if session.user_id == user_id]
        for session in closing:
            session.close(CLOSE_POLICY, reason)
        return len(closing)

    @property
    def url(self) -> str:
        host = self.config.server.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        apply_best_practice()  # before the first database is opened
        config = self.config
        directory = Directory(config)
        self.directory = directory
        presence = Presence(directory)
        authenticator = make_authenticator(config, directory)
        self.authenticator = authenticator
        try:
            async with trio.open_nursery() as actor_nursery:
                media = Media(config, directory)
                push = Push(config, directory, presence)
                self.media, self.push = media, push
                registry = Registry(
                    config,
                    directory,
                    actor_nursery,
                    presence.is_online,
                    media=media,
                    notify=push.notify if push.enabled else None,
                )
                # Background services run beside the actors and end with them at shutdown.
                await actor_nursery.start(media.run)
                if push.enabled:
                    await actor_nursery.start(push.run)
                presence.registry = registry
                self.registry = registry
                router = Router()
                Rest(
                    config, directory, registry, presence, media=media, push=push, guard=self.guard
                ).routes(router)
                if config.auth.mode == "clerk" and config.clerk.webhook_secret:
                    ClerkWebhooks(config.clerk, directory, self.close_user_sessions).routes(router)
                front = FrontDoor(
                    App(router, config.server.max_request_body_bytes, authenticator.authenticate),
                    lambda stream: self._websocket(stream, directory, registry, presence),
                    handshake_timeout=config.server.handshake_timeout_seconds,
                    max_request_body_bytes=config.server.max_request_body_bytes,
                )
                async with trio.open_nursery() as connections:
                    listeners = await trio.open_tcp_listeners(
                        config.server.port, host=config.server.host
                    )
                    self.port = listeners[0].socket.getsockname()[1]
                    accept_scope = trio.CancelScope()

                    async def accept() -> None:
                        with accept_scope:
                            await trio.serve_listeners(
                                front.handle, listeners, handler_nursery=connections
                            )

                    connections.start_soon(accept)
                    task_status.started(self)
                    await self._stop.wait()
                    log.info("shutting down")
                    accept_scope.cancel()
                    for listener in listeners:
                        await listener.aclose()
                    for session in list(self._sessions):
                        session.shutdown()
                    await front.context.terminated.set()
                    connections.cancel_scope.deadline = (
                        trio.current_time() + config.server.shutdown_timeout_seconds
                    )
                registry.closing = True
                actor_nursery.cancel_scope.cancel()
        finally:
            if self.registry is not None:
                # After the actors' nursery: no commit is running or waiting now.
                self.registry.close()
            directory.close()

    async def _websocket(
        self, stream: ReplayStream, directory: Directory, registry: Registry, presence: Presence
    ) -> None:
        config = self.config
        authenticator = self.authenticator
        assert authenticator is not None
        counted: str | None = None  # the user the guard counts this connection for
        async with trio.open_nursery() as nursery:
            try:
                request = await trio_websocket.wrap_server_stream(
                    nursery,
                    stream,
                    message_queue_size=WS_INBOUND_QUEUE,
                    max_message_size=config.limits.max_frame_bytes,
                )
                # Origin first: a page on a foreign site learns nothing, not even 401.
                # (wsproto keeps Host out of the headers trio-websocket shows.)
                host = request._event.host
                if not self.guard.origin_allowed(request.headers, host):
                    await _reject(request, 403, "forbidden", "this Origin is not allowed")
                    return
                try:
                    user = await _authenticate(request, authenticator)
                except MessageAIError as exc:
                    await _reject(request, exc.status, exc.code, exc.message)
                    return
                if user is None:
                    await _reject(request, 401, "unauthorized", "a valid token is required")
                    return
                if not self.guard.connect(user.id):
                    limit = config.limits.max_connections_per_user
                    await _reject(
                        request, 429, "rate_limited", f"at most {limit} connections per user"
                    )
                    return
                counted = user.id
                ws = await request.accept()
            except (
                trio_websocket.ConnectionClosed,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
            ):
                return
            finally:
                if "ws" not in locals():
                    if counted is not None:
                        self.guard.disconnect(counted)
                    nursery.cancel_scope.cancel()
                    await trio.aclose_forcefully(stream)
            session = Session(ws, stream, user.id, config, registry, presence, self.guard)
            self._sessions.add(session)
            if not authenticator.is_active(user.id):
                # Deleted while the handshake was finishing: close_user_sessions missed it.
                session.close(CLOSE_POLICY, "account deleted")
            try:
                await session.run()
            finally:
                self.guard.disconnect(user.id)
                self._sessions.discard(session)
                nursery.cancel_scope.cancel()
                await trio.aclose_forcefully(stream)


async def _reject(
    request: trio_websocket.WebSocketRequest, status: int, code: str, message: str
) -> None:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    await request.reject(status, extra_headers=[(b"content-type", b"application/json")], body=body)


async def _authenticate(
    request: trio_websocket.WebSocketRequest, authenticator: Authenticator
) -> User | None:
    token = None
    for name, value in request.headers:
        if name.lower() == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                token = rest.strip()
    if token is None:
        query = parse_qs(urlsplit(request.path).query)
        values = query.get("access_token")
        token = values[-1] if values else None
    if not token:
        return None
    return await authenticator.authenticate(token)
