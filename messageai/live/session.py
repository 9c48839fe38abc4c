"""The WebSocket session: one per connection, between the socket and the actors.

`run` starts a writer task and takes frames until the connection ends: each one
is handed to `_received` in the connection's reader task (`wsframes.receive_messages`),
validated (`protocol.parse_client_frame`) and routed to its conversation's actor
(`Registry.submit`, which queues without a checkpoint when there is room); bad input
gets an `error` frame and nothing else happens. Everything the server sends goes
through `push`, which never waits: it appends the framed text to a bounded outbound
queue (frames and bytes), and a connection whose queue would overflow is closed with
1013 so it costs only itself. The writer drains the queue to the socket, except
during an actor's answers to a batch: those are written by `flush` at the batch's
end, straight to the socket when nothing else is writing to it (no task woken), and
by the writer otherwise. If the peer does not take even the close frame within a
grace period, the TCP stream is cut. Framing and the batched write
are `edge.wsframes`' (the one home of trio-websocket's private API).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio
import trio_websocket

from messageai.config import Config
from messageai.conversations.commands import Command, defer_flush
from messageai.conversations.registry import Registry
from messageai.counters import COUNTS
from messageai.edge.wsframes import receive_messages, send_frames, send_now, text_frame, unsent
from messageai.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNSUPPORTED_DATA,
    MessageAIError,
    RateLimited,
    error_fields,
)
from messageai.live.guard import Guard
from messageai.live.presence import Presence
from messageai.protocol import (
    AiAnswer,
    AiAsk,
    AiDelta,
    DeleteMessage,
    EditMessage,
    Error,
    Ping,
    Pong,
    React,
    Req,
    Search,
    SendMessage,
    ServerFrame,
    check_edit_body,
    encode,
    parse_client_frame,
)

if TYPE_CHECKING:
    from messageai.ai.assistant import Assistant
    from messageai.services.search import Search as SearchService

log = logging.getLogger(__name__)

# How long a closing peer gets to take the close frame before its TCP stream is cut.
CLOSE_GRACE_SECONDS = 2.0
# The same for a peer closed for reading too slowly (1013): its close frame waits behind
# the socket buffers it has not read yet (up to a write chunk and the kernel's buffers),
# so it gets longer to read them and learn why, rather than see its stream cut (1006).
# The connection's queue is already dropped; only those buffers wait with it.
SLOW_CLOSE_GRACE_SECONDS = 15.0
# Most bytes the writer hands to one send_all.
WRITE_CHUNK_BYTES = 256 * 1024
# Searches one connection may have running at once; one more is `rate_limited`.
MAX_SEARCHES_PER_CONNECTION = 4
SEARCH_RETRY_AFTER_SECONDS = 0.1
# Questions one connection may have being answered at once; one more is `rate_limited`.
MAX_ASKS_PER_CONNECTION = 2


class Session:
    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        stream: trio.abc.Stream,
        user_id: str,
        token_hash: bytes,
        config: Config,
        registry: Registry,
        presence: Presence,
        guard: Guard,
        search: SearchService | None = None,
        assistant: Assistant | None = None,
        still_valid: Callable[[], bool] | None = None,
    ) -> None:
        self.user_id = user_id
        # Asked at each keepalive ping: False (the token revoked, the user disabled, by
        # the operator in another process) closes the connection with 1008.
        self._still_valid = still_valid
        # ai: `ai_ask` answers run as tasks of this connection's nursery, like searches.
        self._assistant = assistant
        self._asks = 0
        # search: `search` frames run as tasks of this connection's nursery, beside the
        # reader, so a slow search delays no other frame (MAX_SEARCHES_PER_CONNECTION).
        self._search = search
        self._searches = 0
        self._nursery: trio.Nursery | None = None
        # The bearer token this connection was opened with (its hash, as the directory
        # keeps it): revoking that token closes this connection and no other.
        self.token_hash = token_hash
        self._guard = guard
        # Client frames read so far; the keepalive task compares it to spot idleness.
        self._frames_in = 0
        self._ws = ws
        self._stream = stream
        self._config = config
        self._registry = registry
        self._presence = presence
        # Framed, ready to write; `_queued_bytes` is their length on the wire.
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        # True while an actor's batch will call `flush` at its end (`defer_flush`).
        self._flush_due = False
        self._wake = trio.Event()
        self._closing = trio.Event()
        self._close_code: int | None = None
        self._close_reason = ""
        # The conversations this connection is subscribed to, as their actors see it:
        # changed only by the actors (`subscription_started`/`_ended`).
        self.subscriptions: set[str] = set()
        # Set once `run` has cleaned up: an actor must not keep this connection after.
        self._ended = False

    # ------------------------------------------------------------ outbound

    def push(self, text: str) -> None:
        """Queue a text frame for this connection without waiting. Overflow closes with 1013."""
        if self._close_code is None:
            # Framed here rather than in the writer: the queue's budget is in bytes.
            self._enqueue(text_frame(text))

    def _enqueue(self, frame: bytes) -> None:
        limits = self._config.limits
        if (
            len(self._queue) >= limits.outbound_queue_frames
            or self._queued_bytes + len(frame) > limits.outbound_queue_bytes
        ):
            if self._close_code is None:
                COUNTS.slow_closes += 1
            self.close(CLOSE_TRY_AGAIN_LATER, "too slow: resync with get_history")
            return
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if not self._flush_due:
            if defer_flush(self):
                self._flush_due = True
            else:
                self._wake.set()

    def flush(self) -> None:
        """Write what was pushed during an actor's batch: straight to the socket when
        nothing else is writing to it and it takes it all now (no writer task woken),
        else by the writer. Called by the actor once its batch is answered."""
        self._flush_due = False
        queue = self._queue
        if not queue or self._close_code is not None:
            return
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        if len(data) <= WRITE_CHUNK_BYTES and send_now(self._ws, data):
            queue.clear()
            self._queued_bytes = 0
            if not unsent(self._ws):
                return
        self._wake.set()

    def push_frame(self, frame: ServerFrame) -> None:
        self.push(encode(frame))

    def _refuse(self, exc: MessageAIError, req: Req) -> None:
        """The `error` frame of `exc` for the frame `req`, with `retry_after_ms` where
        the error carries one (the same fields as a REST error body)."""
        fields = error_fields(exc)
        COUNTS.errors[exc.code] += 1
        self.push_frame(
            Error(
                code=exc.code,
                message=exc.message,
                retry_after_ms=fields.get("retry_after_ms"),
                req=req,
            )
        )

    def _error(self, code: str, message: str, req: Req) -> None:
        """An `error` frame for the frame `req`, counted by code for `/metrics`."""
        COUNTS.errors[code] += 1
        self.push_frame(Error(code=code, message=message, req=req))

    def subscription_started(self, conversation_id: str) -> bool:
        """Called by the actor once it has accepted a `subscribe` from this connection.
        False if the connection has ended meanwhile: the actor then does not keep it."""
        if self._ended:
            return False
        self.subscriptions.add(conversation_id)
        return True

    def subscription_ended(self, conversation_id: str) -> None:
        """Called by the actor on `unsubscribe` and when this user leaves the group."""
        self.subscriptions.discard(conversation_id)

    def close(self, code: int, reason: str) -> None:
        """Ask for the connection to close with `code`; queued frames are dropped."""
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason
            self._queue.clear()
            self._queued_bytes = 0
            self._wake.set()
            self._closing.set()

    async def _writer(self, done: trio.Event) -> None:
        # Takes everything queued (up to WRITE_CHUNK_BYTES) and writes it with one
        # send_all: under fan-out a connection usually has several frames waiting,
        # and one syscall and one trip through the stream lock serve them all.
        try:
            while self._close_code is None:
                await self._wake.wait()
                self._wake = trio.Event()
                # `unsent`: the rest of what `flush` wrote part of, which goes first.
                while (self._queue or unsent(self._ws)) and self._close_code is None:
                    frames = []
                    size = 0
                    while self._queue and size < WRITE_CHUNK_BYTES:
                        frame = self._queue.popleft()
                        self._queued_bytes -= len(frame)
                        frames.append(frame)
                        size += len(frame)
                    await send_frames(self._ws, b"".join(frames))
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            done.set()

    # ------------------------------------------------------------ inbound

    async def run(self) -> None:
        """Serve the connection until it closes; cleans up subscriptions and presence."""
        self._presence.connected(self)
        log.debug("WebSocket open for %s", self.user_id)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                writer_done = trio.Event()
                nursery.start_soon(self._writer, writer_done)
                nursery.start_soon(self._closer, writer_done, nursery.cancel_scope)
                nursery.start_soon(self._keepalive)
                await self._reader()
                self.close(1000, "")
        finally:
            # A subscribe still queued at an actor finds `_ended` set when it runs.
            self._ended = True
            self._registry.unsubscribe_everywhere(self, self.subscriptions)
            self._presence.disconnected(self)
            log.debug("WebSocket closed (%s %s)", self._close_code, self._close_reason)

    async def _closer(self, writer_done: trio.Event, scope: trio.CancelScope) -> None:
        # Waits for a close request, lets the writer finish the frame it is writing,
        # sends the close frame, and cuts the stream if the peer will not take it.
        await self._closing.wait()
        slow = self._close_code == CLOSE_TRY_AGAIN_LATER
        with trio.move_on_after(SLOW_CLOSE_GRACE_SECONDS if slow else CLOSE_GRACE_SECONDS) as grace:
            await writer_done.wait()
            await self._ws.aclose(self._close_code or 1000, self._close_reason or None)
        if grace.cancelled_caught:
            await trio.aclose_forcefully(self._stream)
        scope.cancel()

    async def _keepalive(self) -> None:
        # Pings the peer every ping interval; no pong within the ping timeout means the
        # peer is gone (or not reading at all), and the connection is closed. A
        # connection with no subscription that sends no frame for the idle timeout is
        # closed too. Runs in the session's nursery; the closer's cancel ends it.
        server = self._config.server
        idle, interval = server.idle_timeout_seconds, server.ping_interval_seconds
        frames = self._frames_in
        quiet_since = trio.current_time()
        next_ping = quiet_since + interval
        while self._close_code is None:
            await trio.sleep_until(min(next_ping, quiet_since + idle))
            now = trio.current_time()
            if self._frames_in != frames or self.subscriptions:
                frames, quiet_since = self._frames_in, now
            elif now >= quiet_since + idle:
                self.close(CLOSE_NORMAL, "idle timeout")
                return
            if now >= next_ping:
                if self._still_valid is not None and not self._still_valid():
                    self.close(CLOSE_POLICY, "session ended")
                    return
                with trio.move_on_after(server.ping_timeout_seconds) as waited:
                    try:
                        await self._ws.ping()
                    except trio_websocket.ConnectionClosed:
                        return
                if waited.cancelled_caught:
                    self.close(CLOSE_GOING_AWAY, "ping timeout")
                    return
                next_ping = trio.current_time() + interval

    async def _reader(self) -> None:
        # Each message is handed to `_received` in the connection's reader task, until
        # the connection ends. A message over `limits.max_frame_bytes` never arrives
        # here: wsframes refuses it with 1009 at its frame header.
        await receive_messages(self._ws, self._received)

    async def _received(self, data: str | bytes) -> None:
        """One received message: validated, then answered or routed to its actor.
        (One method, not two: it runs for every frame. `live.echo` overrides it.)"""
        if self._close_code is not None:
            return  # closing: what the peer still sends is not read
        if isinstance(data, bytes):
            self.close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
            return
        self._frames_in += 1
        try:
            req, frame = parse_client_frame(data)
        except MessageAIError as exc:
            self._error(exc.code, exc.message, exc.req)
            return
        if isinstance(frame, EditMessage):
            # A field rule, checked before the conversation (PROTOCOL.md v1.1).
            try:
                check_edit_body(frame.body, self._config.limits.max_body_chars)
            except MessageAIError as exc:
                self._error(exc.code, exc.message, req)
                return
        if isinstance(frame, Ping):
            if req is not None:  # without `req`, only errors are answered
                self.push_frame(Pong(req=req))
            return
        if isinstance(frame, Search):
            self._start_search(frame, req)
            return
        if isinstance(frame, AiAsk):
            self._start_ask(frame, req)
            return
        # Edits, deletes and reactions spend the sender's message budget like sends.
        if isinstance(frame, (SendMessage, EditMessage, DeleteMessage, React)):
            wait = self._guard.take(self.user_id)
            if wait:
                self._refuse(RateLimited("too many messages: retry later", wait), req)
                return
        conversation_id = frame.conversation_id
        command = Command(op=frame, user_id=self.user_id, req=req, peer=self)
        try:
            await self._registry.submit(conversation_id, command)
        except MessageAIError as exc:
            self._error(exc.code, exc.message, req)

    # ------------------------------------------------------------ ai

    def _start_ask(self, frame: AiAsk, req: Req) -> None:
        if self._assistant is None or self._nursery is None:
            self._error("unavailable", "no assistant here", req)
            return
        if req is None:
            self._error("bad_request", "ai_ask needs a req", req)
            return
        if self._asks >= MAX_ASKS_PER_CONNECTION:
            limited = RateLimited(
                f"at most {MAX_ASKS_PER_CONNECTION} questions at once per connection",
                SEARCH_RETRY_AFTER_SECONDS,
            )
            self._refuse(limited, req)
            return
        self._asks += 1
        self._nursery.start_soon(self._run_ask, self._assistant, frame, req)

    async def _run_ask(self, assistant: Assistant, frame: AiAsk, req: Req) -> None:
        # Cancelled with the connection's nursery when the connection ends. Deltas go
        # through `push` like every frame: a reader too slow for them is closed (1013).
        def delta(text: str) -> None:
            self.push_frame(AiDelta(text=text, req=req))

        try:
            answer = await assistant.ask(self.user_id, frame.conversation_id, frame.question, delta)
            self.push_frame(
                AiAnswer(
                    answer=answer.answer,
                    citations=answer.citations,
                    cached=answer.cached,
                    req=req,
                )
            )
        except MessageAIError as exc:
            self._refuse(exc, req)
        except Exception:
            # Supervision: one failed answer is `internal` and the connection lives.
            log.exception("ai_ask failed")
            self._error("internal", "the answer failed", req)
        finally:
            self._asks -= 1

    # ------------------------------------------------------------ search

    def _start_search(self, frame: Search, req: Req) -> None:
        if self._search is None or self._nursery is None:
            self._error("unavailable", "search is not available", req)
            return
        if self._searches >= MAX_SEARCHES_PER_CONNECTION:
            limited = RateLimited(
                f"at most {MAX_SEARCHES_PER_CONNECTION} searches at once per connection",
                SEARCH_RETRY_AFTER_SECONDS,
            )
            self._refuse(limited, req)
            return
        self._searches += 1
        self._nursery.start_soon(self._run_search, self._search, frame, req)

    async def _run_search(self, search: SearchService, frame: Search, req: Req) -> None:
        # Cancelled with the connection's nursery when the connection ends.
        try:
            answer = await search.search(
                self.user_id, frame.q, frame.conversation_id, frame.limit, frame.mode
            )
            if req is not None:  # without `req`, only errors are answered
                self.push_frame(attrs.evolve(answer, req=req))
        except MessageAIError as exc:
            self._error(exc.code, exc.message, req)
        except Exception:
            # Supervision: one failed search answers `internal` and the connection lives.
            log.exception("search failed")
            self._error("internal", "search failed", req)
        finally:
            self._searches -= 1
