"""The registry of conversation actors: finds or starts the actor of a conversation.

Actors run in the registry's own nursery, never in a connection's, so a dropped
socket never stops a conversation. `actor()` is check-then-act with no await in
between: two callers racing for a new conversation get the same actor. The
registry also caps open conversation databases, closing the least recently used
idle one first, and owns the worker threads that open and commit them (`close()`
stops those once the actors' nursery has exited). When an actor's loop dies (a
bug outside its batch guard) the supervisor logs it, answers what was queued,
and forgets the actor; the next command starts a fresh one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from messageai.config import Config
from messageai.conversations.actor import ConversationActor
from messageai.conversations.commands import Command, MembersChanged, Operation, Peer, Waiter
from messageai.errors import NotFound, Unavailable
from messageai.protocol import Req
from messageai.services.directory import Directory
from messageai.threads import WorkerPool

if TYPE_CHECKING:
    from messageai.model import Message
    from messageai.services.media import Media

log = logging.getLogger(__name__)

# Conversation ids are server-made; anything longer is not one of ours.
MAX_CONVERSATION_ID = 64


class Registry:
    def __init__(
        self,
        config: Config,
        directory: Directory,
        nursery: trio.Nursery,
        online: Callable[[str], bool],
        *,
        media: Media | None = None,
        notify: Callable[[Message], None] | None = None,
    ) -> None:
        self._config = config
        self._directory = directory
        self._nursery = nursery
        self._online = online
        self._media = media
        self._notify = notify
        self._actors: dict[str, ConversationActor] = {}
        self._open: OrderedDict[str, ConversationActor] = OrderedDict()
        self._workers = WorkerPool(config.storage.commit_threads, name="messageai commit")
        self.closing = False

    def active(self, conversation_id: str) -> ConversationActor | None:
        return self._actors.get(conversation_id)

    def actor(self, conversation_id: str) -> ConversationActor:
        """The conversation's actor, started if needed. Raises NotFound for an unknown id."""
        actor = self._actors.get(conversation_id)
        if actor is not None:
            return actor
        if self.closing:
            raise Unavailable("the server is shutting down")
        if (
            len(conversation_id) > MAX_CONVERSATION_ID
            or self._directory.conversation(conversation_id) is None
        ):
            raise NotFound("no such conversation")
        actor = ConversationActor(
            conversation_id,
            self._directory.member_ids(conversation_id),
            self._config,
            online=self._online,
            workers=self._workers,
            on_db_open=self._db_opened,
            on_retire=self._retired,
            media=self._media,
            notify=self._notify,
        )
        self._actors[conversation_id] = actor
        self._nursery.start_soon(self._supervise, actor, name=f"actor {conversation_id}")
        return actor

    async def submit(self, conversation_id: str, command: Command) -> None:
        """Route a command to its conversation's actor, waiting while its queue is full."""
        while True:
            actor = self.actor(conversation_id)
            try:
                await actor.submit(command)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The actor retired between lookup and send; a new one takes over.
                if self._actors.get(conversation_id) is actor:
                    del self._actors[conversation_id]

    async def call(self, conversation_id: str, user_id: str, op: Operation, req: Req = None) -> Any:
        """Run an operation on the actor and wait for its answer (REST and internal callers)."""
        waiter = Waiter()
        await self.submit(conversation_id, Command(op=op, user_id=user_id, req=req, waiter=waiter))
        return await waiter.wait()

    async def members_changed(
        self, conversation_id: str, added: tuple[str, ...] = (), removed: tuple[str, ...] = ()
    ) -> None:
        """Tell a live actor about a membership change; returns once it took effect."""
        if conversation_id in self._actors:
            await self.call(conversation_id, "", MembersChanged(added=added, removed=removed))

    def unsubscribe_everywhere(self, peer: Peer, conversation_ids: set[str]) -> None:
        for conversation_id in conversation_ids:
            actor = self._actors.get(conversation_id)
            if actor is not None:
                actor.subscribers.discard(peer)

    def subscribers_of(self, conversation_ids: list[str]) -> set[Peer]:
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
        try:
            await actor.run()
        except Exception:
            log.exception("conversation %s: actor crashed; it restarts on next use", actor.id)
            actor.fail_pending()
        finally:
            self._forget(actor)

    def _forget(self, actor: ConversationActor) -> None:
        if self._actors.get(actor.id) is actor:
            del self._actors[actor.id]
        if self._open.get(actor.id) is actor:
            del self._open[actor.id]

    def _retired(self, actor: ConversationActor) -> None:
        self._forget(actor)

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
