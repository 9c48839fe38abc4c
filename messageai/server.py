"""The server: wires config, directory, registry, presence, REST and WebSocket on one port.

`Server.run` is a Trio service (`await nursery.start(server.run)` gives the bound
port, so tests use 127.0.0.1:0). Nurseries, from the outside in: the actor
nursery (owned by the registry; outlives every connection; the directory's
housekeeping, the media cleanup task, the push task and the jobs runner with its
handlers run there too), then the
connection nursery (one task per TCP connection). `shutdown()` stops accepting, closes
WebSockets with 1001, gives connections `shutdown_timeout_seconds`, then cancels
the actors, which let a commit already in its worker thread finish and close
their databases.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson
import trio
import trio_websocket

from messageai import passwords, rest
from messageai.ai import action_item_board, proactive
from messageai.ai.action_item_triggers import ActionItemTriggers
from messageai.ai.assistant import Assistant
from messageai.ai.embeddings import Embeddings
from messageai.ai.endpoint import Endpoint, load_api_key
from messageai.config import Config
from messageai.conversations.commands import Summary
from messageai.conversations.registry import Registry
from messageai.counters import COUNTS
from messageai.edge.asgi import App, Router, bearer_token, error_headers
from messageai.edge.client_address import ClientAddress
from messageai.edge.frontdoor import FrontDoor, ReplayStream
from messageai.edge.wsframes import request_host, wrap_server_stream
from messageai.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    Forbidden,
    MessageAIError,
    RateLimited,
    StartupError,
    Unauthorized,
    Unavailable,
    error_body,
)
from messageai.identity.authenticator import Authenticator, make_authenticator
from messageai.jobs import JobKind, Jobs
from messageai.live.echo import EchoSession
from messageai.live.guard import Guard
from messageai.live.presence import Presence
from messageai.live.session import Session
from messageai.model import User
from messageai.ops.channel import Channel
from messageai.services.admin import Admin
from messageai.services.directory import Directory, make_data_dir
from messageai.services.media import Media
from messageai.services.push import Push
from messageai.services.retention import Retention
from messageai.services.search import Search
from messageai.sqlite import apply_best_practice

if TYPE_CHECKING:
    from messageai.cluster.node import Node

log = logging.getLogger(__name__)

# Client frames trio-websocket buffers before the session takes them (the handshake's
# window); from then on each goes to the session in the reader task (wsframes).
WS_INBOUND_QUEUE = 4


class Server:
    def __init__(
        self,
        config: Config,
        *,
        echo_websockets: bool = False,
        job_kinds: Sequence[JobKind] = (),
    ) -> None:
        """`echo_websockets` is for tests only (Autobahn|Testsuite): every WebSocket,
        once through the same handshake, is an `EchoSession` on the same writer and
        limits instead of the chat protocol. No config key turns it on. `job_kinds`
        are added to the server's own job kinds (tests register theirs so)."""
        self.config = config
        self.port: int | None = None
        self._stop = trio.Event()
        self._echo = echo_websockets
        self.directory: Directory | None = None
        self.presence: Presence | None = None
        self.registry: Registry | None = None
        # cluster mode's node (None on a single node; `messageai.cluster.node`).
        self.node: Node | None = None
        self.authenticator: Authenticator | None = None
        self.media: Media | None = None
        self.push: Push | None = None
        self.search: Search | None = None
        self.jobs: Jobs | None = None
        self._job_kinds = tuple(job_kinds)
        self.assistant: Assistant | None = None
        self.action_items: action_item_board.ActionItemBoard | None = None
        self.retention: Retention | None = None
        self.endpoint: Endpoint | None = None
        self.embeddings: Embeddings | None = None
        self.admin: Admin | None = None
        self.guard = Guard(config)

    def shutdown(self) -> None:
        """Begin a graceful shutdown; `run` returns once it is done."""
        self._stop.set()

    def close_user_sessions(self, user_id: str, reason: str = "account deleted") -> int:
        """Close every open WebSocket of `user_id` with 1008 (policy violation), without
        waiting; returns how many. Called when Clerk reports the user deleted."""
        return self._close_sessions(user_id, reason)

    def close_token_sessions(self, user_id: str, token_hash: bytes) -> int:
        """Close every open WebSocket opened with the token whose hash is `token_hash`
        with 1008, without waiting; the user's other sessions stay. Returns how many.
        Called once the token is revoked (logout); a handshake still finishing with it
        is caught by the check in `_serve_session`."""
        return self._close_sessions(user_id, "token revoked", token_hash)

    def _close_sessions(self, user_id: str, reason: str, token_hash: bytes | None = None) -> int:
        if self.presence is None:
            return 0
        return self.presence.close_sessions(user_id, CLOSE_POLICY, reason, token_hash)

    @property
    def url(self) -> str:
        host = self.config.server.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        # The data directory's lock first: a second server, or an operator's offline
        # command at work on the files, stops start-up before anything is opened.
        make_data_dir(self.config.data_dir)
        cluster = self.config.cluster
        channel = Channel(
            self.config.data_dir,
            self._admin_request,
            node_id=cluster.node_id if cluster.enabled else None,
        )
        channel.lock()
        try:
            await self._run(channel, task_status)
        finally:
            channel.close()

    async def _admin_request(self, body: dict[str, Any]) -> str:
        if self.admin is None:
            raise Unavailable("the server is still starting")
        if self.node is not None:
            # A cluster node's channel serves `node drain` only (docs/SCALE.md §9).
            from messageai.cluster.drain import drain

            if body.get("command") != "node_drain" or self.registry is None:
                raise Unavailable("a cluster node takes only `node drain` on its channel")
            return await drain(self.node, self.registry)
        return await self.admin.handle(body)

    async def _run(self, channel: Channel, task_status: trio.TaskStatus[Server]) -> None:
        apply_best_practice()  # before the first database is opened
        config = self.config
        directory = Directory(config)
        self.directory = directory
        # The registry is made in the actor nursery below, and presence only asks it
        # once a session exists, which is after that.
        presence = Presence(
            directory,
            lambda ids: registry.subscribers_of(ids),
            lambda user_id, ids: registry.typist_gone(user_id, ids),
        )
        self.presence = presence
        authenticator = make_authenticator(config, directory)
        self.authenticator = authenticator
        # The port first: a port in use is the first thing said, before the model loads.
        listeners = await _listen(config.server.host, config.server.port)
        # embeddings: the model loads once, before the first actor can want it.
        embeddings = Embeddings(config.embeddings)
        self.embeddings = embeddings
        try:
            await embeddings.start()
            async with trio.open_nursery() as actor_nursery:
                media = Media(config, directory)

                async def unread(conversation_id: str, user_id: str) -> int:
                    # Push's badges: the actor's own count, as the conversation list
                    # shows it. (`registry` is made just below; it needs `push.notify`.)
                    summary = await registry.call(conversation_id, user_id, Summary())
                    return summary.unread_count

                push = Push(config, directory, presence.is_online, unread)
                self.media, self.push = media, push
                registry = Registry(
                    config,
                    directory,
                    actor_nursery,
                    presence.is_online,
                    media=media,
                    notify=push.notify if push.enabled else None,
                    embeddings=embeddings,
                )
                # Background services run beside the actors and end with them at shutdown.
                await actor_nursery.start(directory.run)
                await actor_nursery.start(media.run)
                if push.enabled:
                    await actor_nursery.start(push.run)
                await actor_nursery.start(embeddings.run)
                if config.cluster.enabled:
                    # Imported only here: a single-node server never loads coredis.
                    from messageai.cluster.startup import start_node

                    self.node = await start_node(config, registry, actor_nursery)
                self.registry = registry

                async def members_added(conversation_id: str, user_ids: tuple[str, ...]) -> None:
                    await registry.members_changed(conversation_id, added=user_ids)

                directory.on_members_added = members_added
                # search: its worker threads read the files; the registry wakes a
                # lagging file's actor, which fills its index.
                search = Search(config, directory, registry.wake, embeddings.embedder)
                self.search = search
                # ai: the assistant; without `ai.base_url` its routes answer `unavailable`.
                endpoint = (
                    Endpoint(config.ai, load_api_key(config.ai)) if config.ai.base_url else None
                )
                self.endpoint = endpoint
                self.assistant = Assistant(config.ai, directory, registry, search, endpoint)
                # Durable jobs, and what they do with an endpoint: action items and
                # proactive scheduling, whose posts are the bot user's.
                kinds = list(self._job_kinds)
                bot = None
                if endpoint is not None:
                    bot = await directory.bot_user(
                        config.ai.bot_username, config.ai.bot_display_name
                    )
                    registry.bot_id = bot.id  # before any actor starts
                    kinds.append(
                        action_item_board.job_kind(endpoint, config.ai, directory, registry)
                    )
                    kinds.append(
                        proactive.job_kind(endpoint, config.ai, directory, registry, bot.id)
                    )
                jobs = Jobs(config, kinds)
                await actor_nursery.start(jobs.run)
                self.jobs = jobs
                triggers = scheduler = None
                if bot is not None:
                    triggers = ActionItemTriggers(
                        jobs,
                        debounce_seconds=config.jobs.action_items_delay_seconds,
                        message_debounce_seconds=config.jobs.action_items_after_messages_seconds,
                    )
                    await actor_nursery.start(triggers.run)
                    scheduler = proactive.ProactiveScheduler(
                        jobs, bot.id, delay_seconds=config.ai.proactive_delay_seconds
                    )
                    await actor_nursery.start(scheduler.run)
                    registry.sent = action_item_board.chain(triggers.sent, scheduler.heard)
                self.action_items = action_item_board.ActionItemBoard(directory, registry, triggers)
                registry.changed = action_item_board.chain(
                    self.assistant.message_changed, self.action_items.message_changed
                )
                # Always: a conversation's own retention applies with the server's at 0.
                self.retention = Retention(config.retention, directory, registry)
                await actor_nursery.start(self.retention.run)
                # The operator's channel, once everything it reaches exists.
                self.admin = Admin(
                    config,
                    directory,
                    registry,
                    presence,
                    media,
                    search,
                    self.assistant,
                    self.close_user_sessions,
                )
                await actor_nursery.start(channel.run)
                front = self._front_door(directory, registry, presence, media, push)
                await self._serve(front, presence, listeners, task_status)
                registry.closing = True
                actor_nursery.cancel_scope.cancel()
        finally:
            if self.registry is not None:
                # After the actors' nursery: no commit is running or waiting now.
                self.registry.close()
            if self.search is not None:
                self.search.close()
            if self.endpoint is not None:
                with trio.CancelScope(shield=True):
                    await self.endpoint.aclose()
            for listener in listeners:
                # Already closed after a normal shutdown; closing again does nothing.
                await trio.aclose_forcefully(listener)
            embeddings.close()
            directory.close()

    def _front_door(
        self,
        directory: Directory,
        registry: Registry,
        presence: Presence,
        media: Media,
        push: Push,
    ) -> FrontDoor:
        """The one port's dispatcher: REST routes on the ASGI app, WebSockets to sessions."""
        config = self.config
        assert self.authenticator is not None
        search = self.search
        assert search is not None
        router = Router()
        rest.mount(
            router,
            config,
            directory,
            registry,
            presence,
            media,
            push,
            self.guard,
            self.close_user_sessions,
            self.close_token_sessions,
            search,
            self.assistant,
            self.action_items,
            jobs=self.jobs,
        )
        app = App(
            router,
            config.server.max_request_body_bytes,
            self.authenticator.authenticate,
            body_timeout_seconds=config.server.body_timeout_seconds,
            min_body_bytes_per_second=config.server.min_body_bytes_per_second,
            client_address=ClientAddress(config.server.trusted_proxies),
        )
        return FrontDoor(
            app,
            lambda stream: self._websocket(stream, directory, registry, presence),
            handshake_timeout=config.server.handshake_timeout_seconds,
            keep_alive_timeout=config.server.keep_alive_timeout_seconds,
        )

    async def _serve(
        self,
        front: FrontDoor,
        presence: Presence,
        listeners: list[trio.SocketListener],
        task_status: trio.TaskStatus[Server],
    ) -> None:
        """Listen, report ready (`task_status` gets the bound port through `self`), and
        serve until `shutdown`; then stop accepting, close every WebSocket with 1001 and
        give the open connections `shutdown_timeout_seconds` to finish."""
        config = self.config
        async with trio.open_nursery() as connections:
            self.port = listeners[0].socket.getsockname()[1]
            accept_scope = trio.CancelScope()

            async def accept() -> None:
                with accept_scope:
                    await trio.serve_listeners(front.handle, listeners, handler_nursery=connections)

            connections.start_soon(accept)
            task_status.started(self)
            await self._stop.wait()
            log.info("shutting down")
            accept_scope.cancel()
            for listener in listeners:
                await listener.aclose()
            for session in presence.everyone():
                session.close(CLOSE_GOING_AWAY, "server shutting down")
            await front.shutdown()
            connections.cancel_scope.deadline = (
                trio.current_time() + config.server.shutdown_timeout_seconds
            )

    async def _websocket(
        self, stream: ReplayStream, directory: Directory, registry: Registry, presence: Presence
    ) -> None:
        """Serve one upgraded connection to its end: the handshake, then the session.
        The stream is closed however it ends; the guard's count for the user is taken
        only on accept and given back after the session, whatever raised."""
        async with trio.open_nursery() as nursery:
            try:
                accepted = await self._handshake(nursery, stream)
                if accepted is None:
                    return
                ws, user, token = accepted
                try:
                    await self._serve_session(ws, stream, user, token, registry, presence)
                finally:
                    self.guard.disconnect(user.id)
            finally:
                nursery.cancel_scope.cancel()
                await trio.aclose_forcefully(stream)

    async def _handshake(
        self, nursery: trio.Nursery, stream: ReplayStream
    ) -> tuple[trio_websocket.WebSocketConnection, User, str] | None:
        """Origin, token, connection cap, accept. Returns the open WebSocket, its user
        and the token it was opened with, counted by the guard (the caller gives the
        count back), or None after refusing (403, 401, 429, or the peer gone), with
        nothing counted. The front door bounds how long the request head may take; the
        reader task runs in `nursery`."""
        config = self.config
        authenticator = self.authenticator
        assert authenticator is not None
        counted: str | None = None  # the user the guard counts this connection for
        accepted = False
        try:
            request = await wrap_server_stream(
                nursery,
                stream,
                message_queue_size=WS_INBOUND_QUEUE,
                max_message_bytes=config.limits.max_frame_bytes,
            )
            # Origin first: a page on a foreign site learns nothing, not even 401.
            if not self.guard.origin_allowed(request.headers, request_host(request)):
                await _reject(request, Forbidden("this Origin is not allowed"))
                return None
            token = _token(request)
            try:
                user = await authenticator.authenticate(token) if token else None
            except MessageAIError as exc:
                await _reject(request, exc)
                return None
            if user is None or token is None:
                await _reject(request, Unauthorized("a valid token is required"))
                return None
            if not self.guard.connect(user.id):
                limit = config.limits.max_connections_per_user
                await _reject(request, RateLimited(f"at most {limit} connections per user"))
                return None
            counted = user.id
            ws = await request.accept()
            accepted = True
            return ws, user, token
        except (
            trio_websocket.ConnectionClosed,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ):
            return None
        finally:
            # Also on cancellation or a bug between connect and accept.
            if counted is not None and not accepted:
                self.guard.disconnect(counted)

    async def _serve_session(
        self,
        ws: trio_websocket.WebSocketConnection,
        stream: ReplayStream,
        user: User,
        token: str,
        registry: Registry,
        presence: Presence,
    ) -> None:
        authenticator = self.authenticator
        assert authenticator is not None
        kind = EchoSession if self._echo else Session
        token_hash = passwords.token_hash(token)
        session = kind(
            ws,
            stream,
            user.id,
            token_hash,
            self.config,
            registry,
            presence,
            self.guard,
            self.search,
            self.assistant,
            still_valid=lambda: authenticator.session_valid(user.id, token_hash),
        )
        # Both checks are inline and `run` registers the session with presence before
        # its first await, so a deletion or logout either comes before the check or
        # finds the session among the user's connections.
        if not authenticator.is_active(user.id):
            # Deleted while the handshake was finishing: close_user_sessions missed it.
            session.close(CLOSE_POLICY, "account deleted")
        elif authenticator.is_revoked(token):
            # Logged out while the handshake was finishing: close_token_sessions missed it.
            session.close(CLOSE_POLICY, "token revoked")
        await session.run()


async def _listen(host: str, port: int) -> list[trio.SocketListener]:
    """The listening sockets, or StartupError naming the address (trio's OSError says
    `[Errno 98] error while attempting to bind on address ...`)."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is in use") from exc
        raise StartupError(f"cannot listen on port {port} of {host}: {exc.strerror}") from exc


async def _reject(request: trio_websocket.WebSocketRequest, exc: MessageAIError) -> None:
    """Refuse the handshake with `exc`'s status, headers and body, as REST would."""
    COUNTS.errors[exc.code] += 1
    headers = [(b"content-type", b"application/json"), *error_headers(exc)]
    await request.reject(exc.status, extra_headers=headers, body=orjson.dumps(error_body(exc)))


def _token(request: trio_websocket.WebSocketRequest) -> str | None:
    """The handshake's bearer token. The last Authorization header counts, as in REST;
    browsers cannot set headers on a WebSocket, so `?access_token=` is the fallback."""
    header = None
    for name, value in request.headers:
        if name.lower() == b"authorization":
            header = value.decode("latin-1")
    token = bearer_token(header)
    if token is None:
        query = parse_qs(urlsplit(request.path).query)
        values = query.get("access_token")
        token = values[-1] if values else None
    return token or None
