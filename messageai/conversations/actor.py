"""The conversation actor: the single owner of one conversation's SQLite file.

Lifecycle: the registry creates an actor on first use and starts `run` in its
own nursery. The actor opens (or creates) its database in a worker thread (the
registry's `WorkerPool`), then
loops: it waits for a command, takes every command already waiting (up to
`max_batch`), checks authorization against its in-memory member set, commits all
writes of the batch in ONE transaction in a worker thread (group commit), and
only then acks and fans out, in order. With no subscribers and no commands for
`idle_seconds` it retires; the next use starts a fresh actor. An exception while
processing a batch is logged, every command of the batch gets `unavailable`
(nothing of it was acked, so clients resend safely), the state is reloaded from
disk, and the actor goes on. Channels: commands arrive on a bounded memory
channel (senders wait when it is full); answers leave through each peer's
non-blocking `push`, never waiting on a slow reader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw
import trio

from messageai.config import Config
from messageai.conversations.commands import Command, MembersChanged, Peer, Summary
from messageai.errors import BadRequest, Forbidden, MessageAIError, Unavailable
from messageai.model import Message, new_id, now_ms
from messageai.protocol import (
    Ack,
    Error,
    GetHistory,
    History,
    MarkRead,
    MessageRead,
    NewMessage,
    Ok,
    Ping,
    Pong,
    SendMessage,
    Subscribe,
    Subscribed,
    Typing,
    TypingUpdate,
    Unsubscribe,
    Unsubscribed,
    check_message_content,
    encode,
    history_limit,
)
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import conversation as sql
from messageai.store.paths import conversation_path
from messageai.threads import WorkerPool

if TYPE_CHECKING:
    from messageai.services.media import Media

log = logging.getLogger(__name__)

WRITES = (SendMessage, MarkRead)


def _open(path: Path, synchronous: str) -> apsw.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = open_db(path, synchronous)
    migrate(conn, sql.MIGRATIONS)
    return conn


class ConversationActor:
    """One active conversation: its ordering, its subscribers, its database."""

    def __init__(
        self,
        conversation_id: str,
        member_ids: list[str],
        config: Config,
        *,
        online: Callable[[str], bool],
        workers: WorkerPool,
        on_db_open: Callable[[ConversationActor], None],
        on_retire: Callable[[ConversationActor], None],
        media: Media | None = None,
        notify: Callable[[Message], None] | None = None,
    ) -> None:
        self.id = conversation_id
        # Attachment checks and references (None: no attachment is usable), and the
        # push service's non-blocking queue (None: push is off).
        self._media = media
        self._notify = notify
        self.members: set[str] = set(member_ids)
        self.subscribers: set[Peer] = set()
        self._config = config
        self._path = conversation_path(config.data_dir, conversation_id)
        self._online = online
        self._workers = workers
        self._on_db_open = on_db_open
        self._on_retire = on_retire
        self._send, self._receive = trio.open_memory_channel[Command](
            config.conversations.queue_size
        )
        self._conn: apsw.Connection | None = None
        self.busy = False
        self.last_seq = 0
        self.last_message: Message | None = None
        self.cursors: dict[str, int] = {}
        self._loaded = False

    # ------------------------------------------------------------ entry points

    async def submit(self, command: Command) -> None:
        """Queue a command; waits while the queue is full. Raises trio.BrokenResourceError
        if the actor has retired (the registry then starts a new one)."""
        await self._send.send(command)

    def close_db(self) -> None:
        """Close the database between batches (LRU eviction, retire, shutdown)."""
        if self._conn is not None and not self.busy:
            self._conn.close()
            self._conn = None

    async def run(self) -> None:
        """The actor's loop; returns when it retires. Cancellation (shutdown) lets a
        commit in its worker thread finish, then closes the database."""
        try:
            await self._ensure_db()
            async with self._receive:
                while True:
                    first = None
                    with trio.move_on_after(self._config.conversations.idle_seconds):
                        first = await self._receive.receive()
                    if first is None:
                        if self.subscribers or self._receive.statistics().current_buffer_used:
                            continue
                        # No await between this check and the close: a racing sender
                        # either got in before (and is served) or finds the channel closed.
                        self._on_retire(self)
                        return
                    batch = [first]
                    limit = self._config.conversations.max_batch
                    while len(batch) < limit:
                        try:
                            batch.append(self._receive.receive_nowait())
                        except trio.WouldBlock:
                            break
                    await self._process_guarded(batch)
        finally:
            self.busy = False
            self.close_db()

    def fail_pending(self) -> None:
        """After a crash of the loop itself: answer every queued command `unavailable`."""
        self._send.close()
        while True:
            try:
                command = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                return
            _reply_error(command, Unavailable("the conversation restarted; please retry"))

    # ------------------------------------------------------------ internals

    async def _ensure_db(self) -> apsw.Connection:
        if self._conn is None:
            self._conn = await self._workers.run(
                _open, self._path, self._config.storage.synchronous
            )
            self._on_db_open(self)
            if not self._loaded:
                self.last_seq = sql.last_seq(self._conn)
                self.last_message = sql.latest_message(self._conn, self.id)
                self.cursors = sql.read_cursors(self._conn)
                self._loaded = True
        else:
            self._on_db_open(self)
        return self._conn

    async def _process_guarded(self, batch: list[Command]) -> None:
        try:
            self.busy = True
            await self._process(batch)
        except Exception:
            log.exception(
                "conversation %s: batch of %d failed; restarting actor state", self.id, len(batch)
            )
            # Only what was not answered yet: a batch that failed after its commit
            # has acked some commands already, and each command gets one answer.
            for command in batch:
                if not command.answered:
                    _reply_error(command, Unavailable("not done; please retry"))
            self.busy = False
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._loaded = False
        finally:
            self.busy = False

    async def _process(self, batch: list[Command]) -> None:
        # Phase 0, on the loop: authorization in order (a removal earlier in the
        # batch applies to what follows) and content checks, before any I/O.
        # The live member set, copied only if the batch itself changes membership.
        members = self.members
        accepted: list[Command] = []
        attaching = needs_db = writes = False
        for command in batch:
            op = command.op
            if isinstance(op, MembersChanged):
                members = (members | set(op.added)) - set(op.removed)
                accepted.append(command)
                continue
            if command.user_id not in members:
                _reply_error(command, Forbidden("you are not a member of this conversation"))
                continue
            if isinstance(op, SendMessage):
                try:
                    check_message_content(
                        op.body,
                        op.attachments,
                        self._config.limits.max_body_chars,
                        self._config.limits.max_attachments,
                    )
                    if op.attachments:
                        # Only messages with attachments pay for this: a few indexed reads.
                        refused = (
                            op.attachments[0]
                            if self._media is None
                            else self._media.unusable(command.user_id, op.attachments)
                        )
                        if refused is not None:
                            raise Forbidden(f"attachments: media {refused!r} is not yours to use")
                        attaching = True
                except MessageAIError as exc:
                    _reply_error(command, exc)
                    continue
            if isinstance(op, WRITES):
                writes = needs_db = True
            elif isinstance(op, (GetHistory, Summary)):
                needs_db = True
            accepted.append(command)
        if not accepted:
            return
        # Phase 1: storage. Writes commit in one transaction in a worker thread;
        # a batch of reads only runs inline (no fsync, short).
        results: list[Any] = [None] * len(accepted)
        if needs_db:
            conn = await self._ensure_db()
            if writes:
                results = await self._workers.run(self._store_batch, conn, accepted, True)
            else:
                results = self._store_batch(conn, accepted, False)
        if attaching and self._media is not None:
            # Phase 1b, after the commit and before any ack: the directory learns which
            # media this conversation references (members may then fetch them). For a
            # resent duplicate too, so a reference lost to a crash here is made then.
            referenced = [
                media_id
                for command, result in zip(accepted, results, strict=True)
                if isinstance(command.op, SendMessage) and isinstance(result, tuple)
                for media_id in result[0].attachments
            ]
            if referenced:
                await self._media.add_references(self.id, referenced)
        # Phase 2, on the loop, after the commit: state, acks and fan-out in order.
        for command, result in zip(accepted, results, strict=True):
            self._apply(command, result)

    def _store_batch(self, conn: apsw.Connection, batch: list[Command], write: bool) -> list[Any]:
        """Storage work of a batch; runs in a worker thread when `write`. Touches no
        shared state: it computes from copies and returns one result per command."""
        results: list[Any] = []
        next_seq = self.last_seq + 1
        cursors = dict(self.cursors)
        now = now_ms()

        def work() -> None:
            nonlocal next_seq
            for command in batch:
                op = command.op
                if isinstance(op, SendMessage):
                    message = Message(
                        id=new_id("m_"),
                        conversation_id=self.id,
                        seq=next_seq,
                        sender_id=command.user_id,
                        client_id=op.client_id,
                        body=op.body,
                        attachments=op.attachments,
                        created_at=now,
                    )
                    original = sql.insert_message(conn, message)
                    if original is None:
                        next_seq += 1
                        results.append((message, False))
                    else:
                        results.append((original, True))
                elif isinstance(op, MarkRead):
                    old = cursors.get(command.user_id, 0)
                    new = max(old, min(op.seq, next_seq - 1))
                    if new != old:
                        sql.set_read_cursor(conn, command.user_id, new)
                        cursors[command.user_id] = new
                    results.append((new, new != old))
                elif isinstance(op, GetHistory):
                    if (
                        op.after_seq is not None
                        and op.before_seq is not None
                        and op.before_seq <= op.after_seq
                    ):
                        results.append(BadRequest("before_seq must be greater than after_seq"))
                        continue
                    results.append(
                        sql.history(
                            conn,
                            self.id,
                            after_seq=op.after_seq,
                            before_seq=op.before_seq,
                            limit=history_limit(op.limit),
                        )
                    )
                elif isinstance(op, Summary):
                    cursor = cursors.get(command.user_id, 0)
                    results.append(sql.unread_count(conn, command.user_id, cursor, next_seq - 1))
                else:
                    results.append(None)

        if write:
            with transaction(conn):
                work()
        else:
            work()
        return results

    def _apply(self, command: Command, result: Any) -> None:
        op = command.op
        if isinstance(result, MessageAIError):
            _reply_error(command, result)
        elif isinstance(op, SendMessage):
            message, duplicate = result
            if not duplicate:
                self.last_seq = message.seq
                self.last_message = message
                text = encode(NewMessage(message))
                for peer in self.subscribers:
                    if peer is not command.peer:
                        peer.push(text)
            _reply(
                command,
                Ack(client_id=op.client_id, message=message, duplicate=duplicate, req=command.req),
                result,
            )
            if not duplicate and self._notify is not None:
                self._notify(message)
        elif isinstance(op, MarkRead):
            cursor, moved = result
            if moved:
                self.cursors[command.user_id] = cursor
                self._broadcast(
                    MessageRead(conversation_id=self.id, user_id=command.user_id, seq=cursor)
                )
            _reply(command, Ok(req=command.req), cursor)
        elif isinstance(op, GetHistory):
            messages, has_more = result
            _reply(
                command,
                History(
                    conversation_id=self.id, messages=messages, has_more=has_more, req=command.req
                ),
                result,
            )
        elif isinstance(op, Subscribe):
            if command.peer is not None:
                self.subscribers.add(command.peer)
            frame = Subscribed(
                conversation_id=self.id,
                last_seq=self.last_seq,
                read_cursors=dict(self.cursors),
                online=sorted(m for m in self.members if self._online(m)),
                req=command.req,
            )
            _reply(command, frame, frame)
        elif isinstance(op, Unsubscribe):
            self.subscribers.discard(command.peer)
            _reply(command, Ok(req=command.req), None)
        elif isinstance(op, Typing):
            text = encode(
                TypingUpdate(conversation_id=self.id, user_id=command.user_id, typing=op.typing)
            )
            for peer in self.subscribers:
                if peer is not command.peer:
                    peer.push(text)
            _reply(command, Ok(req=command.req), None)
        elif isinstance(op, Summary):
            _reply(command, None, (self.last_seq, self.last_message, result))
        elif isinstance(op, MembersChanged):
            self.members |= set(op.added)
            self.members -= set(op.removed)
            removed = set(op.removed)
            for peer in [p for p in self.subscribers if p.user_id in removed]:
                self.subscribers.discard(peer)
                peer.push_frame(Unsubscribed(conversation_id=self.id, reason="removed"))
                peer.subscription_ended(self.id)
            _reply(command, None, None)
        elif isinstance(op, Ping):
            _reply(command, Pong(req=command.req), None)

    def _broadcast(self, frame: MessageRead) -> None:
        text = encode(frame)
        for peer in self.subscribers:
            peer.push(text)


def _reply(command: Command, frame: Any, value: Any) -> None:
    command.answered = True
    if command.waiter is not None:
        command.waiter.set(value)
    elif command.peer is not None and frame is not None:
        command.peer.push_frame(frame)


def _reply_error(command: Command, error: MessageAIError) -> None:
    command.answered = True
    if command.waiter is not None:
        command.waiter.fail(error)
    elif command.peer is not None:
        command.peer.push_frame(Error(code=error.code, message=error.message, req=command.req))
