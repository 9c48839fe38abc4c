"""The conversation actor: the single owner of one conversation's SQLite file.

Lifecycle: the registry creates an actor on first use and runs `run` under its
supervisor in the registry's own nursery. The actor opens (or creates) its
database in a worker thread (the registry's `WorkerPool`), then loops: it waits
for a command, takes every command already waiting (up to `max_batch`), checks
authorization against its in-memory member set, commits all writes of the batch
in ONE transaction in a worker thread (group commit; a small batch of a
conversation alone commits on the loop, `_commit`), and only then acks and
fans out, in order. Edits, deletes and reactions (PROTOCOL.md v1.1) are writes of the
same batch: phase 1 gives each committed change the next `rev` inside the
transaction, so revs are gapless and the answers and `message_updated` frames leave
in rev order, with the sends'. With no subscribers and no commands for `idle_seconds`,
`run` returns (retire); the next use starts a fresh actor. An exception while
processing a batch is logged, every command of the batch not answered yet gets
`unavailable` (nothing of it was acked, so clients resend safely), the state is
reloaded from disk, and the actor goes on. Whenever `run` itself ends (retire,
crash, shutdown), the supervisor calls `fail_pending`, which closes the channel,
answers whatever is still in flight or queued `unavailable`, and ends the
subscriptions (their peers are told; the next actor starts without them).

Typing is ephemeral state of the actor (PROTOCOL.md v1.1 "Typing expires"): one
deadline per member typing now. The loop's own wait for the next command also wakes
at the earliest deadline and announces `typing: false` for what has expired; a send
from the typist ends it at once, and so does the typist's last connection closing
(`typist_gone`, called through the registry when presence sees the user go offline).
Typing state never keeps an actor from retiring: with no subscribers nobody hears it.

Channels: commands arrive on a bounded memory channel (`conversations.queue_size`;
senders wait when it is full); the registry's supervisor owns it and closes it
last. Answers leave through each peer's non-blocking `push`, never waiting on a
slow reader, or through a caller's `Waiter`; a batch's pushes are written when all
of them are made (`commands.answering`), one write per connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, assert_never

import apsw
import attrs
import trio

from messageai.ai.vector_indexer import VectorIndexer
from messageai.config import Config
from messageai.conversations.commands import (
    Ai,
    AiDone,
    Changed,
    ChangesPage,
    Command,
    ConversationSummary,
    CursorMoved,
    CursorUnchanged,
    Duplicate,
    EditHistory,
    Edits,
    MembersChanged,
    Page,
    Peer,
    Refused,
    StorageResult,
    Stored,
    Summary,
    Unchanged,
    Unread,
    answered,
    answering,
)
from messageai.conversations.indexer import IndexFiller
from messageai.counters import COUNTS
from messageai.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    MessageAIError,
    NotFound,
    TooLarge,
    Unavailable,
)
from messageai.model import Message, new_id, now_ms
from messageai.protocol import (
    Ack,
    AiSettingsChanged,
    Changes,
    DeleteMessage,
    EditMessage,
    Error,
    GetChanges,
    GetHistory,
    History,
    MarkRead,
    MessageRead,
    MessageUpdated,
    NewMessage,
    Ok,
    React,
    SendMessage,
    ServerFrame,
    Subscribe,
    Subscribed,
    Typing,
    TypingUpdate,
    Unsubscribe,
    Unsubscribed,
    Updated,
    changes_limit,
    check_message_content,
    encode,
    history_limit,
)
from messageai.sqlite import BUSY_TIMEOUT_MS, migrate, open_db, transaction
from messageai.store import ai as ai_sql
from messageai.store import conversation as sql
from messageai.store.fence import Fenced
from messageai.store.paths import conversation_path
from messageai.threads import WorkerPool

if TYPE_CHECKING:
    from messageai.ai.embeddings import Embeddings
    from messageai.cluster.fence import Fence
    from messageai.cluster.replica import Replica
    from messageai.services.media import Media

log = logging.getLogger(__name__)

_NO_BATCH: Sequence[Command] = ()

# PROTOCOL.md v1.1: a typist who has not renewed `typing: true` for this long has
# stopped. A protocol constant, not a config key: clients renew against it, and a
# server that expired sooner would make every conforming client's indicator flicker.
TYPING_TIMEOUT_SECONDS = 6.0

# Largest batch a conversation alone commits on the loop (`_commits_inline`): the two
# senders of a direct conversation. Larger batches are a busy group, where the commit
# thread lets the loop fan out the previous batch during the fsync.
SOLO_BATCH = 2


def _open(path: Path, synchronous: str) -> apsw.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = open_db(path, synchronous)
    # A deleted message's content must not stay in free pages or the WAL (PROTOCOL.md
    # v1.1: a tombstone's content is gone from the server); cost measured in the README.
    conn.execute("PRAGMA secure_delete = ON")
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
        media: Media | None = None,
        notify: Callable[[Message], None] | None = None,
        changed: Callable[[Message], None] | None = None,
        sent: Callable[[Message, bool], None] | None = None,
        creator_id: str | None = None,
        bot_id: str | None = None,
        embeddings: Embeddings | None = None,
        fence: Fence | None = None,
        replica: Replica | None = None,
    ) -> None:
        self.id = conversation_id
        # cluster: this node's lease and epoch, checked by every commit (None: single
        # node, nothing checked; docs/SCALE.md §4).
        self._fence = fence
        # cluster: where every commit's WAL frames go before any ack (None: single node,
        # nothing shipped; docs/SCALE.md §7).
        self._replica = replica
        # A group's creator, who may delete any of its messages (None: nobody but the
        # sender may, as in a direct conversation).
        self._creator_id = creator_id
        # Attachment checks and references (None: no attachment is usable), and the
        # push service's non-blocking queue (None: push is off).
        self._media = media
        self._notify = notify
        # Told of each committed edit or delete (the assistant's answer cache), never waits.
        self._changed = changed
        # Told of each new message while the conversation's AI switch is on, with its
        # `proactive` setting (action items, proactive scheduling); never waits. The
        # switch is kept here (read with the file, then from each `ai_settings` change),
        # so a conversation with the switch off costs one attribute test per message.
        self._sent = sent
        self.ai_enabled = False
        self.ai_proactive = False
        # The assistant's bot user: not a member, but any member may delete its posts.
        self._bot_id = bot_id
        self.members: set[str] = set(member_ids)
        self.subscribers: set[Peer] = set()
        self._config = config
        self._path = conversation_path(config.data_dir, conversation_id)
        self._online = online
        self._workers = workers
        self._on_db_open = on_db_open
        self._send, self._receive = trio.open_memory_channel[Command](
            config.conversations.queue_size
        )
        # The batch being processed; `fail_pending` answers what of it is unanswered.
        self._batch: Sequence[Command] = _NO_BATCH
        # `perf_counter()` as phase 2 of the current batch began (`counters.ack_seconds`).
        self._answered_at = 0.0
        self._conn: apsw.Connection | None = None
        self.busy = False
        self.last_seq = 0
        self.last_rev = 0
        self.last_message: Message | None = None
        self.cursors: dict[str, int] = {}
        self._loaded = False
        # Members typing now: user id -> (trio deadline, the connection whose
        # `typing: true` set it, which is not told when it ends). At most one entry
        # per member; never stored.
        self._typists: dict[str, tuple[float, Peer | None]] = {}
        # search: fills an old file's index between commands (conversations/indexer.py).
        self._filler = IndexFiller(conversation_id, config.search.fill_chunk_rows)
        # embeddings: vectors computed between commands (ai/vector_indexer.py); None: off.
        self._vectors = (
            VectorIndexer(
                conversation_id,
                embeddings,
                config.embeddings.batch_rows,
                config.storage.synchronous,
            )
            if embeddings is not None and embeddings.model_id is not None
            else None
        )

    # ------------------------------------------------------------ entry points

    async def submit(self, command: Command) -> None:
        """Queue a command; waits while the queue is full. Raises trio.BrokenResourceError
        or trio.ClosedResourceError once the actor has ended (the registry then starts
        a new one). Cancelled while waiting, the command is not queued."""
        await self._send.send(command)

    def offer(self, command: Command) -> bool:
        """Queue a command if there is room now, without waiting; False if the queue is
        full. Raises like `submit` once the actor has ended."""
        try:
            self._send.send_nowait(command)
        except trio.WouldBlock:
            return False
        return True

    def close_db(self) -> None:
        """Close the database between batches (LRU eviction, retire, shutdown)."""
        if self._conn is not None and not self.busy:
            self._conn.close()
            self._conn = None

    async def run(self) -> None:
        """The actor's loop; returns when it retires. Cancellation (shutdown) lets a
        commit in its worker thread finish, then closes the database. It never closes
        its channel: the registry's supervisor does, after `fail_pending`."""
        try:
            await self._ensure_db()
            idle = self._config.conversations.idle_seconds
            limit = self._config.conversations.max_batch
            quiet_since = trio.current_time()
            vectors = self._vectors
            while True:
                wake = quiet_since + idle
                if self._typists:
                    wake = min(wake, self._expire_typists())
                first = None
                if self._filler.pending:  # search: one chunk of the index while none waits
                    first = await self._fill_unless_waiting()
                    if first is None:
                        continue
                elif vectors is not None and vectors.runnable(self.last_rev):
                    first = await self._embed_unless_waiting(vectors)
                    if first is None:
                        continue
                elif vectors is not None:
                    # embeddings: the model's delivery cancels this wait.
                    with (
                        trio.move_on_at(min(wake, vectors.wake_at(self.last_rev))) as scope,
                        vectors.waiting(scope),
                    ):
                        first = await self._receive.receive()
                else:
                    with trio.move_on_at(wake):
                        first = await self._receive.receive()
                if first is None:
                    now = trio.current_time()
                    if now < quiet_since + idle:
                        continue  # a typist's deadline woke us, not idleness
                    if (
                        self.subscribers
                        or self._receive.statistics().current_buffer_used
                        or (vectors is not None and vectors.pending(self.last_rev))
                    ):
                        quiet_since = now
                        continue
                    # Retire. No await from this check to the supervisor closing the
                    # channel: a racing sender either got in before (and is served)
                    # or finds the channel closed and goes to a new actor.
                    return
                batch = [first]
                while len(batch) < limit:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._process_guarded(batch)
                quiet_since = trio.current_time()
        finally:
            self.busy = False
            self.close_db()

    def typist_gone(self, user_id: str) -> None:
        """The user's last connection closed: if they were typing here, the others are
        told they stopped. Called by the registry on the event loop; never waits."""
        self._stop_typing(user_id, None)

    def fail_pending(self) -> None:
        """Once `run` has ended (retired, crashed or cancelled): close both ends of the
        channel, answer every command not answered yet `unavailable` (the rest of the
        batch in flight and everything queued), and end the subscriptions. Called by
        the registry's supervisor, the channel's owner. Senders waiting for room get
        trio.ClosedResourceError and go to a new actor. No await: nothing slips in."""
        error = Unavailable("the conversation restarted; please retry")
        # Close the send end first: the buffer stays readable until it is empty.
        self._send.close()
        pending = [command for command in self._batch if not command.answered]
        self._batch = _NO_BATCH
        while True:
            try:
                pending.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self._receive.close()
        for command in pending:
            try:
                _reply_error(command, error)
            except Exception:
                # A peer that fails to take its answer must not cost the others theirs.
                log.exception("conversation %s: a queued command could not be answered", self.id)
        # Live frames stop here: the next actor starts without subscribers, so their
        # peers stop counting these subscriptions (clients resubscribe to get more).
        ended, self.subscribers = self.subscribers, set()
        for peer in ended:
            try:
                peer.subscription_ended(self.id)
            except Exception:
                log.exception("conversation %s: a subscriber could not be told", self.id)

    # ------------------------------------------------------------ internals

    async def _ensure_db(self) -> apsw.Connection:
        if self._conn is None:
            self._conn = await self._workers.run(
                _open, self._path, self._config.storage.synchronous
            )
            if self._replica is not None:
                # cluster: no checkpoint of this connection's own may hide a frame.
                self._replica.configure(self._conn)
            self._on_db_open(self)
            if not self._loaded:
                self.last_seq = sql.last_seq(self._conn)
                self.last_rev = sql.last_rev(self._conn)
                self.last_message = sql.latest_message(self._conn, self.id)
                self.cursors = sql.read_cursors(self._conn)
                switch = ai_sql.settings(self._conn)
                self.ai_enabled, self.ai_proactive = switch.enabled, switch.proactive
                self._filler.load(self._conn)  # search
                self._loaded = True
        else:
            self._on_db_open(self)
        return self._conn

    async def _fill_unless_waiting(self) -> Command | None:
        # search: a waiting command goes first; else one short chunk of the index.
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            pass
        conn = await self._ensure_db()
        self.busy = True  # the LRU must not close the connection under the chunk
        try:
            await self._filler.step(conn, self._workers)
        finally:
            self.busy = False
        return None

    async def _embed_unless_waiting(self, vectors: VectorIndexer) -> Command | None:
        # embeddings: a waiting command goes first; else one short write of vectors.
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            pass
        conn = await self._ensure_db()
        self.busy = True  # the LRU must not close the connection under the write
        try:
            await vectors.step(conn, self._workers, self.last_rev)
        finally:
            self.busy = False
        return None

    async def _process_guarded(self, batch: list[Command]) -> None:
        self.busy = True
        self._batch = batch
        try:
            await self._process(batch)
        except Exception as exc:
            if isinstance(exc, Fenced):
                # cluster: an expected refusal (the lease moved), not a bug: one line.
                log.warning(
                    "conversation %s: batch of %d refused by the fence: %s",
                    self.id,
                    len(batch),
                    exc,
                )
            else:
                log.exception(
                    "conversation %s: batch of %d failed; restarting actor state",
                    self.id,
                    len(batch),
                )
            # Only what was not answered yet: a batch that failed after its commit
            # has acked some commands already, and each command gets one answer.
            for command in batch:
                if not command.answered:
                    _reply_error(command, Unavailable("not done; please retry"))
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._loaded = False
        finally:
            self.busy = False
        # Not reached if the handler above raised: the supervisor then answers the rest.
        self._batch = _NO_BATCH

    async def _process(self, batch: list[Command]) -> None:
        if self._replica is not None and not self._replica.healthy:
            # cluster: the file is ahead of a lost replica; not even a read is served
            # from it (the actor's cancel may still be on its way: docs/SCALE.md §7).
            raise Fenced(f"conversation {self.id}: its replica was lost")
        # Phase 0, on the loop: authorization in order (a removal earlier in the
        # batch applies to what follows) and content checks, before any I/O.
        # The live member set, copied only if the batch itself changes membership.
        members = self.members
        limits = self._config.limits
        accepted: list[Command] = []
        attaching = needs_db = writes = False
        for command in batch:
            op = command.op
            if isinstance(op, MembersChanged):
                members = (members | set(op.added)) - set(op.removed)
                accepted.append(command)
                continue
            if (
                command.user_id not in members
                and not command.internal
                and not (isinstance(op, Ai) and op.internal)
            ):
                _reply_error(command, Forbidden("you are not a member of this conversation"))
                continue
            if isinstance(op, SendMessage):
                try:
                    check_message_content(
                        op.body, op.attachments, limits.max_body_chars, limits.max_attachments
                    )
                    if op.mentions:
                        outsider = next((m for m in op.mentions if m not in members), None)
                        if outsider is not None:
                            command.refusal = BadRequest(
                                f"mentions: {outsider!r} is not a member here"
                            )
                    if op.attachments:
                        # Only messages with attachments pay for this: a few indexed reads.
                        refused = (
                            op.attachments[0]
                            if self._media is None
                            else self._media.first_refused(command.user_id, op.attachments)
                        )
                        if refused is not None:
                            raise Forbidden(f"attachments: media {refused!r} is not yours to use")
                        attaching = True
                except MessageAIError as exc:
                    _reply_error(command, exc)
                    continue
                writes = needs_db = True
            elif isinstance(op, (MarkRead, EditMessage, DeleteMessage, React)):
                writes = needs_db = True
            elif isinstance(op, (GetHistory, Summary, GetChanges, Edits)):
                needs_db = True
            elif isinstance(op, Ai):
                needs_db = True
                writes = writes or op.writes
            accepted.append(command)
        if not accepted:
            return
        # Phase 1: storage. Writes commit in one transaction in a worker thread;
        # a batch of reads only runs inline (no fsync, short).
        results: list[StorageResult]
        if needs_db:
            conn = await self._ensure_db()
            if writes:
                started = perf_counter()
                results = await self._commit(conn, accepted)
                # Per commit, not per message: two bucket bumps (`counters`).
                COUNTS.commit_seconds.observe(perf_counter() - started)
                COUNTS.commit_batch.observe(len(accepted))
            else:
                results = self._store(conn, accepted)
        else:
            results = [None] * len(accepted)
        if self._media is not None:
            await self._update_references(results, attaching)
        # Phase 2, on the loop, after the commit: state, acks and fan-out in order.
        # One clock read for the batch: its acks all leave now (ack latency).
        # Each connection pushed to writes once, after all of the batch's frames for it
        # are queued (`answering`): straight to its socket when it is free.
        self._answered_at = perf_counter()
        pushed = answering()
        try:
            for command, result in zip(accepted, results, strict=True):
                self._apply(command, result)
        finally:
            answered(pushed)

    async def _commit(self, conn: apsw.Connection, accepted: list[Command]) -> list[StorageResult]:
        """`_store_committed` in a commit thread, or on the loop without the thread's
        hand-off when this conversation is alone in using the commit threads lately
        (threads.py) and the batch is at most SOLO_BATCH sends or read marks (no delete:
        its WAL checkpoint is long) with no per-commit hook that may wait (the cluster
        fence, the replica's PUT). Another connection holding the file's write lock sends
        it to a thread too: the loop must not wait for that lock."""
        if (
            self._fence is None
            and self._replica is None
            and len(accepted) <= SOLO_BATCH
            and all(isinstance(command.op, (SendMessage, MarkRead)) for command in accepted)
        ):
            # What else is ready runs first (a reader queues the next send): the loop
            # is about to block in the fsync.
            await trio.lowlevel.checkpoint()
            if self._workers.solo(self):
                conn.set_busy_timeout(0)
                try:
                    return self._store_committed(conn, accepted)
                except apsw.BusyError:
                    pass  # rolled back by `transaction`: a thread waits for the lock
                finally:
                    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        else:
            self._workers.solo(self)  # a use all the same: the others are not alone
        return await self._workers.run(self._store_committed, conn, accepted)

    async def _update_references(self, results: list[StorageResult], attaching: bool) -> None:
        """Phase 1b, after the commit and before any answer: the directory's media
        references follow the batch. First what deletes released (members may no longer
        fetch a deleted message's files; the media sweep erases the bytes of an upload
        nothing references), then what sends referenced, so an id released and attached
        again in one batch stays referenced."""
        assert self._media is not None
        released = [
            media_id
            for result in results
            if isinstance(result, Changed)
            for media_id in result.released
        ]
        if released:
            await self._media.remove_references(self.id, released)
        if attaching:
            # Members may fetch what a message references. For a resent duplicate
            # too, so a reference lost to a crash here is made then.
            referenced = [
                media_id
                for result in results
                if isinstance(result, (Stored, Duplicate))
                for media_id in result.message.attachments
            ]
            if referenced:
                await self._media.add_references(self.id, referenced)

    # ------------------------------------------------------------ phase 1: storage

    def _store_committed(self, conn: apsw.Connection, batch: list[Command]) -> list[StorageResult]:
        """`_store` in one transaction; runs in a commit thread (or on the loop:
        `_commit`). After a batch that
        deleted a message, the WAL is checkpointed into the file and truncated before
        anything is answered: secure_delete has zeroed the content in the new pages,
        and the old frames that still held it are gone with the truncation."""
        with transaction(conn):
            results = self._store(conn, batch)
            if self._fence is not None:
                # cluster: a stale owner's batch rolls back here, so nothing of it is acked.
                self._fence.check(conn)
        if self._replica is not None:
            # cluster: in the replica before any ack; a failure answers the whole batch
            # `unavailable` (ReplicaLost), and this file is never served again.
            self._replica.ship(conn)
        if any(
            isinstance(result, Changed) and isinstance(command.op, DeleteMessage)
            for command, result in zip(batch, results, strict=True)
        ):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return results

    def _store(self, conn: apsw.Connection, batch: list[Command]) -> list[StorageResult]:
        """Storage work of a batch, one result per command. Touches no shared state
        (it may run in a worker thread): it computes from copies."""
        results: list[StorageResult] = []
        next_seq = self.last_seq + 1
        next_rev = self.last_rev + 1
        cursors = self.cursors
        copied = False
        now = now_ms()
        for command in batch:
            op = command.op
            if isinstance(op, SendMessage):
                error = command.refusal
                if error is None and op.reply_to is not None and not sql.is_live(conn, op.reply_to):
                    error = BadRequest("reply_to: no message with this seq, or it was deleted")
                if error is None and command.guard is not None:
                    error = command.guard(conn)
                if error is not None:
                    # Idempotency first: a resend of a stored message gets its original
                    # ack even if what it replied to or mentioned has gone since.
                    original = sql.find_by_client_id(conn, self.id, command.user_id, op.client_id)
                    results.append(Refused(error) if original is None else Duplicate(original))
                    continue
                message = Message(
                    id=new_id("m_"),
                    conversation_id=self.id,
                    seq=next_seq,
                    sender_id=command.user_id,
                    client_id=op.client_id,
                    # PROTOCOL.md v1.1: bodies are stored trimmed, and returned as stored.
                    body=op.body.strip(),
                    attachments=op.attachments,
                    created_at=now,
                    reply_to=op.reply_to,
                    mentions=op.mentions,
                    rev=next_rev,
                )
                original = sql.insert_message(conn, message)
                if original is None:
                    next_seq += 1
                    next_rev += 1
                    results.append(Stored(message))
                else:
                    results.append(Duplicate(original))
            elif isinstance(op, (EditMessage, DeleteMessage, React)):
                result = self._change(conn, command.user_id, op, next_rev, now, command.internal)
                if isinstance(result, Changed):
                    next_rev += 1
                results.append(result)
            elif isinstance(op, MarkRead):
                old = cursors.get(command.user_id, 0)
                new = max(old, min(op.seq, next_seq - 1))
                if new == old:
                    results.append(CursorUnchanged(old))
                    continue
                sql.set_read_cursor(conn, command.user_id, new)
                if not copied:  # the live cursors change only in phase 2
                    cursors, copied = dict(cursors), True
                cursors[command.user_id] = new
                results.append(CursorMoved(new))
            elif isinstance(op, GetHistory):
                results.append(self._history(conn, op))
            elif isinstance(op, Summary):
                cursor = cursors.get(command.user_id, 0)
                results.append(
                    Unread(sql.unread_count(conn, command.user_id, cursor, next_seq - 1))
                )
            elif isinstance(op, GetChanges):
                messages, has_more = sql.changes(
                    conn, self.id, op.after_rev, changes_limit(op.limit)
                )
                results.append(ChangesPage(messages, next_rev - 1, has_more))
            elif isinstance(op, Ai):
                results.append(AiDone(op.work(conn, command.user_id)))
            elif isinstance(op, Edits):
                if sql.message(conn, self.id, op.seq) is None:
                    results.append(Refused(NotFound("no message with this seq")))
                else:
                    results.append(EditHistory(sql.edits(conn, op.seq)))
            else:
                results.append(None)
        return results

    def _change(
        self,
        conn: apsw.Connection,
        user_id: str,
        op: EditMessage | DeleteMessage | React,
        rev: int,
        now: int,
        internal: bool = False,
    ) -> Changed | Unchanged | Refused:
        """One edit, delete or reaction, in the batch's transaction: the checks in
        PROTOCOL.md's order after membership (the message, who may, its state), then
        the write with `rev` if it changes anything. Runs in the worker thread."""
        message = sql.message(conn, self.id, op.seq)
        if message is None:
            return Refused(NotFound("no message with this seq"))
        if isinstance(op, EditMessage):
            if message.sender_id != user_id:
                return Refused(Forbidden("only its sender may edit a message"))
            if message.deleted_at is not None:
                return Refused(Conflict("the message was deleted"))
            body = op.body.strip()
            if body == message.body:
                return Unchanged(message)
            sql.edit(conn, op.seq, message.body, body, now, rev)
            return Changed(attrs.evolve(message, body=body, edited_at=now, rev=rev))
        if isinstance(op, DeleteMessage):
            if (
                not internal  # the server's own: the retention sweep
                and message.sender_id != user_id
                and user_id != self._creator_id
                and message.sender_id != self._bot_id  # any member may delete the bot's
            ):
                return Refused(
                    Forbidden("only its sender, or the group's creator, may delete a message")
                )
            if message.deleted_at is not None:
                return Unchanged(message)
            sql.tombstone(conn, op.seq, message.body, now, rev)
            released = [
                media_id
                for media_id in dict.fromkeys(message.attachments)
                if not sql.attachment_in_use(conn, media_id)
            ]
            return Changed(
                attrs.evolve(
                    message,
                    body="",
                    attachments=[],
                    mentions=[],
                    reactions={},
                    deleted_at=now,
                    rev=rev,
                ),
                released,
            )
        # React: any member may; a tombstone has nothing to react to.
        if message.deleted_at is not None:
            return Refused(Conflict("the message was deleted"))
        reactions = message.reactions
        users = reactions.get(op.emoji, [])
        if op.on:
            if user_id in users:
                return Unchanged(message)
            limit = self._config.limits.max_reactions_per_message
            if op.emoji not in reactions and len(reactions) >= limit:
                return Refused(TooLarge(f"emoji: at most {limit} distinct emoji per message"))
            sql.add_reaction(conn, op.seq, op.emoji, user_id, rev)
            reactions = {**reactions, op.emoji: [*users, user_id]}
        else:
            if user_id not in users:
                return Unchanged(message)
            sql.remove_reaction(conn, op.seq, op.emoji, user_id, rev)
            reactions = dict(reactions)
            left = [u for u in users if u != user_id]
            if left:
                reactions[op.emoji] = left
            else:
                # The last user of an emoji removed it: the key goes, and stops counting.
                del reactions[op.emoji]
        return Changed(attrs.evolve(message, reactions=reactions, rev=rev))

    def _history(self, conn: apsw.Connection, op: GetHistory) -> Page | Refused:
        if op.after_seq is not None and op.before_seq is not None and op.before_seq <= op.after_seq:
            return Refused(BadRequest("before_seq must be greater than after_seq"))
        messages, has_more = sql.history(
            conn,
            self.id,
            after_seq=op.after_seq,
            before_seq=op.before_seq,
            limit=history_limit(op.limit),
        )
        return Page(messages, has_more)

    # ------------------------------------------------------------ phase 2: answers

    def _apply(self, command: Command, result: StorageResult) -> None:
        # The send first: it is the hot path.
        match command.op:
            case SendMessage() as op:
                self._on_send(command, op, result)
            case MarkRead():
                self._on_mark_read(command, result)
            case GetHistory():
                self._on_history(command, result)
            case Subscribe():
                self._on_subscribe(command)
            case Unsubscribe():
                self._on_unsubscribe(command)
            case Typing() as op:
                self._on_typing(command, op)
            case Summary():
                self._on_summary(command, result)
            case MembersChanged() as op:
                self._on_members_changed(command, op)
            case EditMessage() | DeleteMessage() | React():
                self._on_change(command, result)
            case GetChanges():
                self._on_changes(command, result)
            case Edits():
                self._on_edits(command, result)
            case Ai() as op:
                self._on_ai(command, op, result)
            case _:
                assert_never(command.op)

    def _on_send(self, command: Command, op: SendMessage, result: StorageResult) -> None:
        if self._typists:
            # Typing ends with the message it was for, before the message arrives.
            self._stop_typing(command.user_id, command.peer)
        if isinstance(result, Stored):
            message = result.message
            self.last_seq = message.seq
            self.last_rev = message.rev
            self.last_message = message
            self._fan_out(encode(NewMessage(message)), skip=command.peer)
            ack = Ack(client_id=op.client_id, message=message, duplicate=False, req=command.req)
            _reply(command, ack, result)
            counts = COUNTS
            counts.messages_committed += 1
            counts.ack_seconds.observe(self._answered_at - command.received)
            if self._notify is not None:
                self._notify(message)
            if self.ai_enabled and self._sent is not None:
                self._sent(message, self.ai_proactive)
        elif isinstance(result, Duplicate):
            ack = Ack(
                client_id=op.client_id, message=result.message, duplicate=True, req=command.req
            )
            _reply(command, ack, result)
        elif isinstance(result, Refused):
            _reply_error(command, result.error)
        else:
            raise _mismatch(command, result)

    def _on_change(self, command: Command, result: StorageResult) -> None:
        if isinstance(result, Changed):
            COUNTS.changes_committed += 1
            message = result.message
            self.last_rev = message.rev
            if message.seq == self.last_seq:
                self.last_message = message
            # Skip: the changer's own connection gets `updated`; a REST change (no
            # peer) reaches every subscriber.
            self._fan_out(encode(MessageUpdated(message)), skip=command.peer)
            if self._changed is not None and not isinstance(command.op, React):
                self._changed(message)
        elif isinstance(result, Refused):
            _reply_error(command, result.error)
            return
        elif not isinstance(result, Unchanged):
            raise _mismatch(command, result)
        _reply(command, Updated(result.message, req=command.req), result)

    def _on_changes(self, command: Command, result: StorageResult) -> None:
        if not isinstance(result, ChangesPage):
            raise _mismatch(command, result)
        frame = Changes(
            conversation_id=self.id,
            messages=result.messages,
            last_rev=result.last_rev,
            has_more=result.has_more,
            req=command.req,
        )
        _reply(command, frame, result)

    def _on_edits(self, command: Command, result: StorageResult) -> None:
        if isinstance(result, Refused):
            _reply_error(command, result.error)
        elif isinstance(result, EditHistory):
            _reply(command, None, result)
        else:
            raise _mismatch(command, result)

    def _on_ai(self, command: Command, op: Ai[Any], result: StorageResult) -> None:
        if not isinstance(result, AiDone):
            raise _mismatch(command, result)
        if op.announce is not None:
            frame = op.announce(result.value)
            if isinstance(frame, AiSettingsChanged):
                # The switch as committed: what `_sent` is told from now on.
                self.ai_enabled, self.ai_proactive = frame.enabled, frame.proactive
            if frame is not None:
                # To every subscriber, the changer's own connection included.
                self._fan_out(encode(frame))
        _reply(command, None, result.value)

    def _on_mark_read(self, command: Command, result: StorageResult) -> None:
        if isinstance(result, CursorMoved):
            self.cursors[command.user_id] = result.seq
            self._fan_out(
                encode(
                    MessageRead(conversation_id=self.id, user_id=command.user_id, seq=result.seq)
                )
            )
        elif not isinstance(result, CursorUnchanged):
            raise _mismatch(command, result)
        _reply(command, Ok(req=command.req), result.seq)

    def _on_history(self, command: Command, result: StorageResult) -> None:
        if isinstance(result, Refused):
            _reply_error(command, result.error)
            return
        if not isinstance(result, Page):
            raise _mismatch(command, result)
        frame = History(
            conversation_id=self.id,
            messages=result.messages,
            has_more=result.has_more,
            req=command.req,
        )
        _reply(command, frame, result)

    def _on_subscribe(self, command: Command) -> None:
        peer = command.peer
        # The peer learns first: one that has ended (or fails to take it) is not kept.
        if peer is not None and peer.subscription_started(self.id):
            self.subscribers.add(peer)
        frame = Subscribed(
            conversation_id=self.id,
            last_seq=self.last_seq,
            read_cursors=dict(self.cursors),
            online=sorted(m for m in self.members if self._online(m)),
            req=command.req,
        )
        _reply(command, frame, frame)

    def _on_unsubscribe(self, command: Command) -> None:
        peer = command.peer
        if peer is not None:
            self.subscribers.discard(peer)
            peer.subscription_ended(self.id)
        _reply(command, Ok(req=command.req), None)

    def _on_typing(self, command: Command, op: Typing) -> None:
        if op.typing:
            deadline = trio.current_time() + TYPING_TIMEOUT_SECONDS
            self._typists[command.user_id] = (deadline, command.peer)
        else:
            self._typists.pop(command.user_id, None)
        update = TypingUpdate(conversation_id=self.id, user_id=command.user_id, typing=op.typing)
        self._fan_out(encode(update), skip=command.peer)
        _reply(command, Ok(req=command.req), None)

    def _stop_typing(self, user_id: str, skip: Peer | None) -> None:
        """If `user_id` is typing here, forget it and tell the others it stopped."""
        entry = self._typists.pop(user_id, None)
        if entry is not None:
            update = TypingUpdate(conversation_id=self.id, user_id=user_id, typing=False)
            self._fan_out(encode(update), skip=skip or entry[1])

    def _expire_typists(self) -> float:
        """Announce `typing: false` for every typist past their deadline; return the
        earliest deadline left (infinity when none). O(typists), at most the members."""
        now = trio.current_time()
        earliest = float("inf")
        for user_id, (deadline, peer) in list(self._typists.items()):
            if deadline <= now:
                self._stop_typing(user_id, peer)
            else:
                earliest = min(earliest, deadline)
        return earliest

    def _on_summary(self, command: Command, result: StorageResult) -> None:
        if not isinstance(result, Unread):
            raise _mismatch(command, result)
        _reply(
            command,
            None,
            ConversationSummary(self.last_seq, self.last_message, result.count, self.last_rev),
        )

    def _on_members_changed(self, command: Command, op: MembersChanged) -> None:
        self.members |= set(op.added)
        self.members -= set(op.removed)
        removed = set(op.removed)
        for user_id in removed:
            # A removed member's typing ends with their access.
            self._stop_typing(user_id, None)
        for peer in [p for p in self.subscribers if p.user_id in removed]:
            self.subscribers.discard(peer)
            peer.push_frame(Unsubscribed(conversation_id=self.id, reason="removed"))
            peer.subscription_ended(self.id)
        _reply(command, None, None)

    def _fan_out(self, text: str, skip: Peer | None = None) -> None:
        """Push one encoded frame to every subscriber but `skip` (the sender's own
        connection); never waits (a peer that cannot keep up closes itself)."""
        for peer in self.subscribers:
            if peer is not skip:
                peer.push(text)


def _mismatch(command: Command, result: StorageResult) -> AssertionError:
    # A bug: phase 1 computed the wrong kind of result. The batch guard answers it.
    return AssertionError(f"{type(command.op).__name__} got {type(result).__name__}")


def _reply(command: Command, frame: ServerFrame | None, value: object) -> None:
    command.answered = True
    if command.waiter is not None:
        command.waiter.set(value)
    elif command.peer is not None and frame is not None and command.req is not None:
        # PROTOCOL.md: a frame sent without `req` gets a response only on error.
        command.peer.push_frame(frame)


def _reply_error(command: Command, error: MessageAIError) -> None:
    command.answered = True
    if command.waiter is not None:
        command.waiter.fail(error)
    elif command.peer is not None:
        # A waiter's error is counted where it is told (REST's error response).
        COUNTS.errors[error.code] += 1
        command.peer.push_frame(Error(code=error.code, message=error.message, req=command.req))
