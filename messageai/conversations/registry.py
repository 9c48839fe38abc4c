"""The registry of conversation actors: finds or starts the actor of a conversation.

Called by WebSocket sessions (`submit`), REST handlers and push (`call`), and the
directory's membership changes (`members_changed`). Actors run in the registry's
own nursery, never in a connection's, so a dropped socket never stops a
conversation. `actor()` is check-then-act with no await in between: two callers
racing for a new conversation get the same actor. The registry also caps open
conversation databases, closing the least recently used idle one first, and owns
the worker threads that open and commit them (`close()` stops those once the
actors' nursery has exited).

Lifecycle: one supervisor task per actor (`_supervise`) runs `run` and owns the
actor's command channel. Whenever `run` ends (idle retire, a crash of the loop
outside its batch guard, which is logged, or shutdown), the supervisor forgets
the actor, then `fail_pending` takes what is still queued out of the channel
before closing it (trio drops a closed channel's buffer), answers that and the
rest of the batch in flight `unavailable`, and ends the actor's subscriptions;
the next command starts a fresh actor. REST and internal callers wait at most
`conversations.call_timeout_seconds` for an answer (`call`).

The operator's live commands (`services.admin`) take a conversation out of service
with `stopped(id)`: its actor is cancelled and waited for, and until the block ends
no new one starts (callers get `unavailable` and retry), so its file can be
replaced or removed with nothing holding it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar, overload

import apsw
import trio

from messageai import logs
from messageai.config import Config
from messageai.conversations.actor import ConversationActor
from messageai.conversations.commands import (
    Ai,
    Change,
    ChangesPage,
    Command,
    ConversationSummary,
    EditHistory,
    Edits,
    MembersChanged,
    Operation,
    Page,
    Peer,
    Sent,
    Summary,
    Waiter,
)
from messageai.errors import MessageAIError, NotFound, Unavailable
from messageai.protocol import (
    DeleteMessage,
    EditMessage,
    GetChanges,
    GetHistory,
    MarkRead,
    React,
    Req,
    SendMessage,
    Subscribe,
    Subscribed,
    Typing,
    Unsubscribe,
)
from messageai.services.directory import Directory
from messageai.threads import WorkerPool

if TYPE_CHECKING:
    from messageai.ai.embeddings import Embeddings
    from messageai.cluster.link import Links
    from messageai.cluster.node import Node
    from messageai.model import Message
    from messageai.services.media import Media

log = logging.getLogger(__name__)

T = TypeVar("T")

# Conversation ids are server-made; anything longer is not one of ours.
MAX_CONVERSATION_ID = 64


class Registry:
    """The live actors by conversation id, their supervisors, and the open-database LRU."""

    def __init__(
        self,
        config: Config,
        directory: Directory,
        nursery: trio.Nursery,
        online: Callable[[str], bool],
        *,
        media: Media | None = None,
        notify: Callable[[Message], None] | None = None,
        embeddings: Embeddings | None = None,
    ) -> None:
        self._config = config
        # The assistant's cache hears of every edit and delete (set by the server).
        self.changed: Callable[[Message], None] | None = None
        # Told of each new message of a conversation whose AI switch is on, with its
        # `proactive` setting (action items, the scheduler; set by the server).
        self.sent: Callable[[Message, bool], None] | None = None
        # The assistant's bot user (set by the server when an endpoint is configured).
        self.bot_id: str | None = None
        self._embeddings = embeddings
        self._directory = directory
        self._nursery = nursery
        self._online = online
        self._media = media
        self._notify = notify
        self._actors: dict[str, ConversationActor] = {}
        self._open: OrderedDict[str, ConversationActor] = OrderedDict()
        self._workers = WorkerPool(config.storage.commit_threads, name="messageai commit")
        self.closing = False
        # `stopped`: conversations out of service, and each running actor's supervisor
        # scope with the event its end sets.
        self._held: set[str] = set()
        self._running: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        # cluster (docs/SCALE.md §3-5; set by the server, None on a single node): the
        # node's leases, asked before an actor starts, and its links to the other
        # nodes, which carry the commands of conversations owned elsewhere.
        self.node: Node | None = None
        self.links: Links | None = None

    def is_running(self, conversation_id: str) -> bool:
        """Whether the conversation has a live actor now (it retires when idle)."""
        return conversation_id in self._actors

    def actor_count(self) -> int:
        """Live actors now (for `/metrics`)."""
        return len(self._actors)

    def open_database_count(self) -> int:
        """Conversation files open now (for `/metrics`)."""
        return len(self._open)

    def open_databases(self) -> list[str]:
        """Ids of the conversations whose database is open, least recently used first."""
        return list(self._open)

    def actor(self, conversation_id: str) -> ConversationActor:
        """The conversation's actor, started if needed. Raises NotFound for an unknown id."""
        actor = self._actors.get(conversation_id)
        if actor is not None:
            return actor
        if self.closing:
            raise Unavailable("the server is shutting down")
        if conversation_id in self._held:
            raise Unavailable("the operator is restoring or deleting this conversation; retry")
        record = (
            self._directory.conversation(conversation_id)
            if len(conversation_id) <= MAX_CONVERSATION_ID
            else None
        )
        if record is None:
            raise NotFound("no such conversation")
        # cluster: only with the lease taken before this check (`Links.route`).
        fence = self.node.fence(conversation_id) if self.node is not None else None
        replica = self.node.replica(conversation_id) if self.node is not None else None
        actor = ConversationActor(
            conversation_id,
            self._directory.member_ids(conversation_id),
            self._config,
            online=self._online,
            workers=self._workers,
            on_db_open=self._db_opened,
            media=self._media,
            notify=self._notify,
            changed=self.changed,
            sent=self.sent,
            bot_id=self.bot_id,
            creator_id=record.creator_id if record.kind == "group" else None,
            embeddings=self._embeddings,
            fence=fence,
            replica=replica,
        )
        self._actors[conversation_id] = actor
        self._nursery.start_soon(self._supervise, actor, name=f"actor {conversation_id}")
        return actor

    def exists(self, conversation_id: str) -> bool:
        """Whether the directory has the conversation (cluster: before its lease is taken)."""
        return (
            len(conversation_id) <= MAX_CONVERSATION_ID
            and self._directory.conversation(conversation_id) is not None
        )

    def wake(self, conversation_id: str) -> None:
        """Start the conversation's actor if it is not running (search: the actor fills
        a lagging file's index). In cluster mode only where this node owns it."""
        if self.node is None or self.node.holds(conversation_id):
            self.actor(conversation_id)

    async def submit(
        self, conversation_id: str, command: Command, *, forwarded: bool = False
    ) -> None:
        """Route a command to its conversation's actor, waiting while its queue is full.

        Its answer comes later, through `command.peer` or `command.waiter`. Cancelled
        while waiting for room, the command is not queued; once this returns, the
        command runs whatever happens to the caller. In cluster mode a conversation
        without a local actor is first routed (`Links.route`): to its owner node, or
        here once this node holds its lease; `forwarded`: the command came from
        another node and is never sent on (NotOwner if the lease is elsewhere)."""
        command.received = perf_counter()
        links = self.links
        while True:
            if (
                links is not None
                and conversation_id not in self._actors
                and await links.route(conversation_id, command, forwarded=forwarded)
            ):
                return
            actor = self.actor(conversation_id)
            try:
                # Room in the queue (the usual case): no checkpoint, the caller goes on.
                if not actor.offer(command):
                    await actor.submit(command)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The actor ended between lookup and send; a new one takes over.
                if self._actors.get(conversation_id) is actor:
                    del self._actors[conversation_id]

    @overload
    async def call(
        self, conversation_id: str, user_id: str, op: SendMessage, req: Req = None
    ) -> Sent: ...
    @overload
    async def call(
        self,
        conversation_id: str,
        user_id: str,
        op: EditMessage | DeleteMessage | React,
        req: Req = None,
    ) -> Change: ...
    @overload
    async def call(
        self, conversation_id: str, user_id: str, op: GetChanges, req: Req = None
    ) -> ChangesPage: ...
    @overload
    async def call(
        self, conversation_id: str, user_id: str, op: Edits, req: Req = None
    ) -> EditHistory: ...
    @overload
    async def call(
        self, conversation_id: str, user_id: str, op: GetHistory, req: Req = None
    ) -> Page: ...
    @overload
    async def call(self, conversation_id: str, user_id: str, op: Ai[T], req: Req = None) -> T: ...
    @overload
    async def call(
        self, conversation_id: str, user_id: str, op: MarkRead, req: Req = None
    ) -> int: ...
    @overload
    async def call(
        self, conversation_id: str, user_id: str, op: Summary, req: Req = None
    ) -> ConversationSummary: ...
    @overload
    async def call(
        self, conversation_id: str, user_id: str, op: Subscribe, req: Req = None
    ) -> Subscribed: ...
    @overload
    async def call(
        self,
        conversation_id: str,
        user_id: str,
        op: Unsubscribe | Typing | MembersChanged,
        req: Req = None,
    ) -> None: ...
    async def call(
        self, conversation_id: str, user_id: str, op: Operation, req: Req = None
    ) -> object:
        """Run an operation on the actor and return its answer (REST and internal
        callers): `Stored`/`Duplicate` for a send, `Changed`/`Unchanged` for an edit,
        delete or reaction, a `Page` of history, a `ChangesPage`, an `EditHistory`, the
        read cursor, a `ConversationSummary`; the actor's refusal is raised.

        Raises Unavailable if no answer came within `conversations.call_timeout_seconds`
        (queueing included). Cancellation or the deadline while queueing: nothing was
        queued. After that the command stays queued and runs to completion (a send is
        committed all the same); only the answer is lost, which a resend with the same
        `client_id` recovers."""
        waiter: Waiter[Any] = Waiter()
        command = Command(op=op, user_id=user_id, req=req, waiter=waiter)
        with trio.move_on_after(self._config.conversations.call_timeout_seconds):
            await self.submit(conversation_id, command)
            return await waiter.wait()
        raise Unavailable("the conversation did not answer in time; please retry")

    async def post(
        self,
        conversation_id: str,
        user_id: str,
        op: SendMessage,
        guard: Callable[[apsw.Connection], MessageAIError | None],
    ) -> Sent:
        """A send by the server itself (the assistant's bot), not checked for membership,
        stored only if `guard(conn)` finds nothing wrong in the send's own transaction;
        otherwise its error is raised (a resend of a stored post gets its original)."""
        result: Sent = await self._internal(conversation_id, Command(op, user_id, guard=guard))
        return result

    async def expire(self, conversation_id: str, seq: int) -> Change:
        """Delete message `seq` as the server (the retention sweep): the delete's whole
        path (a tombstone, `message_updated`, media, vectors, items), no member check."""
        op = DeleteMessage(conversation_id=conversation_id, seq=seq)
        result: Change = await self._internal(conversation_id, Command(op, ""))
        return result

    async def _internal(self, conversation_id: str, command: Command) -> Any:
        command.internal = True
        command.waiter = Waiter()
        with trio.move_on_after(self._config.conversations.call_timeout_seconds):
            await self.submit(conversation_id, command)
            return await command.waiter.wait()
        raise Unavailable("the conversation did not answer in time; please retry")

    async def members_changed(
        self, conversation_id: str, added: tuple[str, ...] = (), removed: tuple[str, ...] = ()
    ) -> None:
        """Tell a live actor about a membership change; returns once it took effect.
        In cluster mode the live actor may be another node's."""
        if conversation_id in self._actors:
            await self.call(conversation_id, "", MembersChanged(added=added, removed=removed))
        elif self.links is not None:
            await self.links.members_changed(conversation_id, added, removed)

    def unsubscribe_everywhere(self, peer: Peer, conversation_ids: set[str]) -> None:
        """Drop a closed connection from its conversations' actors (the session's cleanup)."""
        for conversation_id in conversation_ids:
            actor = self._actors.get(conversation_id)
            if actor is not None:
                actor.subscribers.discard(peer)
        if self.links is not None:
            self.links.session_gone(peer)

    def typist_gone(self, user_id: str, conversation_ids: list[str]) -> None:
        """The user's last connection closed (presence): end their typing in these
        conversations' live actors. A conversation without one has no typing state."""
        for conversation_id in conversation_ids:
            actor = self._actors.get(conversation_id)
            if actor is not None:
                actor.typist_gone(user_id)

    def subscribers_of(self, conversation_ids: list[str]) -> set[Peer]:
        """The connections subscribed to any of these conversations now (for presence)."""
        peers: set[Peer] = set()
        for conversation_id in conversation_ids:
            actor = self._actors.get(conversation_id)
            if actor is not None:
                peers |= actor.subscribers
        return peers

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the worker threads. Call after the actors' nursery has exited: no
        commit is running or waiting then."""
        self._workers.close()

    async def _supervise(self, actor: ConversationActor) -> None:
        # The owner of the actor's channel: `run` never closes it (closing the
        # receive end drops what is queued); `fail_pending` does, once `run` has
        # ended, after taking out what is left to answer it.
        # Spawned from whichever connection woke it, it serves them all: its log
        # lines name none.
        logs.CONNECTION.set(None)
        logs.REQUEST.set(None)
        scope, ended = trio.CancelScope(), trio.Event()
        self._running[actor.id] = (scope, ended)
        node = self.node
        try:
            with scope:
                if node is not None:
                    node.keep(actor.id, scope)
                await actor.run()
        except Exception:
            log.exception("conversation %s: actor crashed; it restarts on next use", actor.id)
        finally:
            self._forget(actor)
            actor.fail_pending()
            if self._running.get(actor.id, (None,))[0] is scope:
                del self._running[actor.id]
            if node is not None:
                node.retired(actor.id)
            ended.set()

    @contextlib.asynccontextmanager
    async def stopped(self, conversation_id: str) -> AsyncIterator[set[Peer]]:
        """Take the conversation out of service for the block: its actor (if any) is
        cancelled (a commit already in its thread finishes) and waited for, and no new
        one starts until the block ends. Yields the connections that were subscribed;
        they are no longer the actor's, and the caller decides what they are told
        (`resubscribe` puts them back on the next actor)."""
        if conversation_id in self._held:
            raise Unavailable("another operator command is at work on this conversation")
        self._held.add(conversation_id)
        try:
            actor = self._actors.get(conversation_id)
            subscribers: set[Peer] = set()
            if actor is not None:
                # Taken before the cancel, so `fail_pending` does not end them.
                subscribers, actor.subscribers = actor.subscribers, set()
            running = self._running.get(conversation_id)
            if running is not None:
                running[0].cancel()
                await running[1].wait()
            yield subscribers
        finally:
            self._held.discard(conversation_id)

    def resubscribe(self, conversation_id: str, peers: set[Peer]) -> set[Peer]:
        """Give the conversation's (new) actor back the connections `stopped` took,
        those still open; returns them."""
        actor = self.actor(conversation_id)
        kept = {peer for peer in peers if peer.subscription_started(conversation_id)}
        actor.subscribers |= kept
        return kept

    def _forget(self, actor: ConversationActor) -> None:
        if self._actors.get(actor.id) is actor:
            del self._actors[actor.id]
        if self._open.get(actor.id) is actor:
            del self._open[actor.id]

    def _db_opened(self, actor: ConversationActor) -> None:
        self._open[actor.id] = actor
        self._open.move_to_end(actor.id)
        excess = len(self._open) - self._config.storage.max_open_databases
        if excess <= 0:
            return
        for victim_id, victim in list(self._open.items()):
            if excess <= 0:
                break
            if victim is actor or victim.busy:
                continue
            victim.close_db()
            del self._open[victim_id]
            excess -= 1
