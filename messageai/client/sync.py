"""The sync engine: connect, subscribe, catch up, flush the outbox, stay live, reconnect.

`Syncer` is owned by `sdk.Client`. `run_forever` keeps a connection up
(`messageai.backoff.Backoff`: exponential, full jitter, capped); `sync_once` does a
single pass for the one-shot commands. Each connection attempt, in order:
refresh the conversation list over REST, open the WebSocket, subscribe to
every conversation, catch up each with `get_changes` after its `last_rev`
until `has_more` is false (PROTOCOL.md v1.1; a v1 server answers `unknown_type`
and `get_history` after `synced_seq` is used instead), send read marks made
offline, then send the outbox (`outbox`: sends, edits, deletes, reactions) oldest
first, sends with their original `client_id`s (each batch preceded by the read
marks not yet sent: a send moves my read cursor). A refused change is rolled
back and announced (`ChangeRefused`). Live frames are merged into the store as they
arrive; every store change is followed by an event. A `conversation_added` frame
stores the conversation at once and hands it to the adopting task, which
subscribes and catches it up on the same connection (the reader cannot wait for
answers itself: it is the task that delivers them).

All SQL runs inline on the event loop: the writes are a few rows on a local
file, and one ordered writer keeps the store consistent without locks.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import anyio
import apsw
import attrs
import httpx

from messageai.backoff import Backoff
from messageai.client import outbox, store
from messageai.client.accounts import ws_url
from messageai.client.api import Api, check_ai_settings, parse_conversation
from messageai.client.errors import (
    AuthError,
    ClientError,
    Forbidden,
    ProtocolViolation,
    ServerError,
    Unreachable,
)
from messageai.client.events import (
    AiSettingsChanged,
    ChangeRefused,
    ConnectionChanged,
    ConnectionState,
    ConversationsChanged,
    Events,
    MessageAdded,
    MessageUpdated,
    PresenceChanged,
    ReadReceipt,
    StoreChanged,
    TypingChanged,
)
from messageai.client.link import HISTORY_PAGE, Link, Slot, open_link
from messageai.model import Message
from messageai.protocol import structure_record
from messageai.sqlite import transaction

log = logging.getLogger(__name__)

# Queued messages sent per round trip: pipelined on one connection, so the
# server keeps their order and can commit them as one group.
OUTBOX_BATCH = 32
# Unknown member names fetched per connection (for display only).
MAX_USER_LOOKUPS = 50
# Conversations announced by `conversation_added` and not yet subscribed to; beyond
# this the list is re-read instead (a flood costs one REST call, not memory).
MAX_PENDING_ADDED = 256


@attrs.frozen
class Settings:
    """Tuning for the sync engine; the defaults suit a person on a laptop."""

    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    # WebSocket pings: a pulled cable is noticed within about twice this.
    keepalive_seconds: float | None = 15.0
    # New conversations arrive as `conversation_added`; the list is still re-read this
    # often as a safety net (members added to a group are not announced to the others).
    refresh_seconds: float = 30.0


@attrs.define
class SyncReport:
    """What one `sync_once` did."""

    fetched: int = 0
    delivered: list[store.LocalMessage] = attrs.Factory(list)
    failed: list[store.LocalMessage] = attrs.Factory(list)
    queued: int = 0
    # Edits, deletes and reactions: confirmed by the server, and refused (rolled back).
    changed: list[store.LocalMessage] = attrs.Factory(list)
    refused: list[ChangeRefused] = attrs.Factory(list)


def _raise_cancellation(exc: BaseException) -> None:
    """Re-raise only the cancellation of a group that holds one and, beside it, only
    connection errors: the connection closed because the caller is cancelling (the
    link's reader ends and a send in flight finds it closed), which is no failure of
    its own. Anything else beside it stays in the group (`_leaf`)."""
    if isinstance(exc, BaseExceptionGroup):
        cancelled_type = anyio.get_cancelled_exc_class()
        cancelled, _ = exc.split(cancelled_type)
        _, others = exc.split((cancelled_type, ClientError))
        if cancelled is not None and others is None:
            raise cancelled from None


def _leaf(exc: BaseException) -> BaseException:
    """The ClientError inside task-group wrapping, else the exception itself.

    A group that holds a cancellation is returned whole, whatever failed beside it:
    a connection lost while the caller cancels is the caller's cancellation, to be
    re-raised, not a disconnection to back off from (trio's rule: never swallow it).
    """
    if isinstance(exc, BaseExceptionGroup):
        cancelled, _ = exc.split(anyio.get_cancelled_exc_class())
        if cancelled is not None:
            return exc
        for inner in exc.exceptions:
            found = _leaf(inner)
            if isinstance(found, ClientError):
                return found
    return exc


class Syncer:
    def __init__(
        self,
        conn: apsw.Connection,
        account: store.Account,
        api: Api,
        events: Events,
        settings: Settings,
    ) -> None:
        self._conn = conn
        self._account = account
        self._me = account.user_id
        self._api = api
        self._events = events
        self.settings = settings
        self.state: ConnectionState = "offline"
        self.online_users: dict[str, bool] = {}
        self._link: Link | None = None
        # Created inside the event loop (anyio needs one): see sync_once/run_forever.
        self._outbox_wake: anyio.Event | None = None
        self._kick: anyio.Event | None = None
        self._report: SyncReport | None = None
        # Conversations subscribed to on the current connection (reset per connection).
        self._subscribed: set[str] = set()
        # `conversation_added` ids waiting for the adopting task, in arrival order.
        self._added: dict[str, None] = {}
        self._added_overflow = False
        self._added_wake: anyio.Event | None = None
        # Users whose names the store has (refreshed by `_learn_users`): a live message
        # from anyone else (the assistant, someone who left) has the adopting task look
        # the sender up.
        self._known_users: set[str] = set()
        self._senders_wanted = False
        # False once the server answered `get_changes` with `unknown_type` (a v1 server).
        self._has_changes = True
        # Each conversation's AI settings as last told (`ai_settings` frames, and the
        # SDK's GET/PUT answers): at most one entry per conversation of the store.
        self.ai_settings: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ public

    def outbox_changed(self) -> None:
        """Wake the live outbox sender (called after a local send)."""
        if self._outbox_wake is not None:
            self._outbox_wake.set()

    def reconnect_now(self) -> None:
        """Skip the rest of the current backoff wait."""
        if self._kick is not None:
            self._kick.set()

    @property
    def link(self) -> Link | None:
        return self._link

    def lost_access(self, conversation_id: str) -> None:
        """We are no longer a member (`unsubscribed`, or a `forbidden` answer): mark the
        conversation inactive locally and tell the UIs (`ConversationsChanged(left=True)`)."""
        self._subscribed.discard(conversation_id)
        if store.has_conversation(self._conn, conversation_id):
            store.set_active(self._conn, conversation_id, False)
            self._events.emit(ConversationsChanged((conversation_id,), left=True))

    async def sync_once(self) -> SyncReport:
        """Connect once, catch up, flush the whole outbox, disconnect.

        Raises Unreachable if the server cannot be reached; AuthError if the
        session was revoked. Messages the server refused are in `failed`.
        """
        self._report = SyncReport()
        try:
            await self._connection(live=False)
        except BaseException as exc:
            leaf = _leaf(exc)
            if leaf is exc:
                raise
            raise leaf from None
        finally:
            self._set_state("offline")
        report, self._report = self._report, None
        report.queued = store.outbox_size(self._conn)
        return report

    async def run_forever(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Stay connected until cancelled; raises AuthError if the session was revoked."""
        backoff = Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds)
        task_status.started()
        while True:
            try:
                await self._connection(live=True, on_live=backoff.reset)
            except BaseException as exc:
                _raise_cancellation(exc)
                leaf = _leaf(exc)
                if isinstance(leaf, AuthError):
                    self._set_state("signed_out", leaf.message)
                    raise leaf from None
                if not isinstance(leaf, ClientError):
                    raise
                delay = backoff.next_delay()
                log.info("disconnected (%s); retrying in %.1fs", leaf.message, delay)
                self._set_state("offline", leaf.message, delay)
                kick = self._kick = anyio.Event()
                with anyio.move_on_after(delay):
                    await kick.wait()

    # ------------------------------------------------------------ one connection

    def _set_state(
        self, state: ConnectionState, error: str | None = None, retry_in: float | None = None
    ) -> None:
        if state != self.state or error is not None:
            self.state = state
            if state != "online":
                self.online_users.clear()
            self._events.emit(ConnectionChanged(state, error, retry_in))

    async def _connection(self, *, live: bool, on_live: Callable[[], None] | None = None) -> None:
        self._set_state("connecting")
        await self._refresh_conversations()
        http: httpx.AsyncClient = self._api.http
        token = self._account.token or ""
        async with (
            open_link(
                http,
                ws_url(self._account.server_url),
                token,
                keepalive_seconds=self.settings.keepalive_seconds,
            ) as link,
            anyio.create_task_group() as tg,
        ):
            self._link = link
            self._subscribed = set()
            self._added_wake = anyio.Event()
            self._known_users = set(store.display_names(self._conn))
            try:
                tg.start_soon(link.read_forever, self._on_frame)
                await self._catch_up(link, store.conversation_ids(self._conn))
                await self._send_read_marks(link)
                if not live:
                    await self._flush(link, forever=False)
                    await self._adopt_added(link)
                    tg.cancel_scope.cancel()
                    return
                self._set_state("online")
                if on_live is not None:
                    on_live()
                tg.start_soon(self._refresh_forever, link)
                tg.start_soon(self._adopt_forever, link)
                await self._flush(link, forever=True)
            finally:
                self._link = None

    async def _refresh_conversations(self) -> list[str]:
        """Re-read the conversation list; return ids that are new locally."""
        convs = await self._api.conversations()
        with transaction(self._conn):
            new = [c["id"] for c in convs if store.save_conversation(self._conn, c)]
            left = store.deactivate_missing(self._conn, [c["id"] for c in convs])
        await self._learn_users()
        if new:
            self._events.emit(ConversationsChanged(tuple(new)))
        if left:
            self._events.emit(ConversationsChanged(tuple(left), left=True))
        return new

    async def _learn_users(self) -> None:
        """Fetch the names of members not in the store yet (for display only)."""
        unknown = store.unknown_user_ids(self._conn)[:MAX_USER_LOOKUPS]
        learned = False
        for user_id in unknown:
            # Asked once per connection: a deleted account stays shown by its id.
            self._known_users.add(user_id)
            try:
                user = await self._api.user(user_id)
            except ServerError:
                continue
            with transaction(self._conn):
                store.save_users(self._conn, [user])
            learned = True
        if learned:
            self._events.emit(ConversationsChanged(()))  # new names to show: redraw

    async def _refresh_forever(self, link: Link) -> None:
        while True:
            await anyio.sleep(self.settings.refresh_seconds)
            new = await self._refresh_conversations()
            if new:
                await self._catch_up(link, new)

    async def _adopt_forever(self, link: Link) -> None:
        """Subscribe to and catch up each conversation `conversation_added` announces."""
        while True:
            assert self._added_wake is not None
            await self._added_wake.wait()
            self._added_wake = anyio.Event()
            await self._adopt_added(link)

    async def _adopt_added(self, link: Link) -> None:
        ids, self._added = list(self._added), {}
        if self._added_overflow:
            self._added_overflow = False
            await self._refresh_conversations()
            ids = store.conversation_ids(self._conn)  # subscribed ones are skipped
        if ids or self._senders_wanted:
            self._senders_wanted = False
            await self._learn_users()
        if ids:
            await self._catch_up(link, ids)

    async def subscribe_new(self, link: Link, conversation_ids: list[str]) -> None:
        """Subscribe to and catch up conversations created during this connection."""
        await self._catch_up(link, conversation_ids)

    async def _catch_up(self, link: Link, conversation_ids: list[str]) -> None:
        # Each conversation once per connection, whoever asks first (our own create,
        # `conversation_added`, the periodic refresh): marked before the first await.
        conversation_ids = [c for c in conversation_ids if c not in self._subscribed]
        self._subscribed.update(conversation_ids)
        # Subscribe to all first (pipelined), so nothing committed during the
        # catch-up is missed: it either arrives live or is in a later page.
        slots = [
            (cid, await link.send("subscribe", conversation_id=cid)) for cid in conversation_ids
        ]
        for cid, slot in slots:
            try:
                answer = await link.answer(slot, "subscribed")
            except ServerError as exc:
                if not exc.permanent:
                    raise
                self.lost_access(cid)
                continue
            self._apply_subscribed(answer)
        for cid in conversation_ids:
            if store.has_conversation(self._conn, cid):
                await self._catch_up_one(link, cid)

    async def _catch_up_one(self, link: Link, conversation_id: str) -> None:
        if self._has_changes:
            try:
                await self._changes_since(link, conversation_id)
                return
            except ServerError as exc:
                if exc.code != "unknown_type":
                    raise
                self._has_changes = False
        await self._history_since(link, conversation_id)

    async def _changes_since(self, link: Link, conversation_id: str) -> None:
        """v1.1 catch-up: every change after the highest rev held, page by page."""
        while True:
            after = store.last_rev(self._conn, conversation_id)
            page = await link.request(
                "get_changes",
                "changes",
                conversation_id=conversation_id,
                after_rev=after,
                limit=HISTORY_PAGE,
            )
            messages = page.get("messages")
            last_rev = page.get("last_rev")
            if (
                not isinstance(messages, list)
                or not isinstance(page.get("has_more"), bool)
                or type(last_rev) is not int
            ):
                raise ProtocolViolation("changes: messages, last_rev and has_more are required")
            revs = [m.get("rev") if isinstance(m, dict) else None for m in messages]
            ints = [r for r in revs if type(r) is int]
            if len(ints) != len(messages) or any(
                b <= a for a, b in itertools.pairwise([after, *ints])
            ):
                raise ProtocolViolation(f"changes after rev {after}: revs out of order")
            self._merge(messages)
            with transaction(self._conn):
                # Every change up to the page's last one is held (ascending by rev); at
                # the end, every change up to the conversation's last_rev.
                store.set_last_rev(
                    self._conn,
                    conversation_id,
                    ints[-1] if page["has_more"] and ints else max([last_rev, *ints]),
                )
            if not page["has_more"]:
                return
            if not messages:
                raise ProtocolViolation("changes: has_more with an empty page")

    async def _history_since(self, link: Link, conversation_id: str) -> None:
        while True:
            after = store.synced_seq(self._conn, conversation_id)
            page = await link.request(
                "get_history",
                "history",
                conversation_id=conversation_id,
                after_seq=after,
                limit=HISTORY_PAGE,
            )
            messages = page.get("messages")
            if not isinstance(messages, list) or not isinstance(page.get("has_more"), bool):
                raise ProtocolViolation("history: messages and has_more are required")
            seqs = [m.get("seq") for m in messages if isinstance(m, dict)]
            ints = [s for s in seqs if type(s) is int]
            if len(ints) != len(messages) or any(
                b <= a for a, b in itertools.pairwise([after, *ints])
            ):
                raise ProtocolViolation(
                    f"history after seq {after}: seqs out of order or not after it"
                )
            self._merge(messages)
            if not page["has_more"]:
                return
            if not messages:
                raise ProtocolViolation("history: has_more with an empty page")

    async def _send_read_marks(self, link: Link) -> None:
        await self._read_marks_answered(link, await self._read_marks_sent(link))

    async def _read_marks_sent(self, link: Link) -> list[tuple[str, int, Slot]]:
        """Send every read mark the server has not confirmed (pipelined)."""
        return [
            (cid, seq, await link.send("mark_read", conversation_id=cid, seq=seq))
            for cid, seq in store.unsent_read_marks(self._conn, self._me)
        ]

    async def _read_marks_answered(self, link: Link, sent: list[tuple[str, int, Slot]]) -> None:
        for cid, seq, slot in sent:
            try:
                await link.answer(slot, "ok")
            except Forbidden:
                self.lost_access(cid)
                continue
            except ServerError as exc:
                if not exc.permanent:
                    raise
            store.set_read_sent(self._conn, cid, seq)

    async def _flush(self, link: Link, *, forever: bool) -> None:
        while True:
            wake = self._outbox_wake = anyio.Event()
            blocked = outbox.blocked_head(self._conn)
            if blocked is not None:
                # A change of a message that will never be sent (refused meanwhile).
                with transaction(self._conn):
                    outbox.done(self._conn, blocked.pos)
                self._refused(blocked, "the message it changes was never delivered")
                continue
            batch = outbox.ready(self._conn, OUTBOX_BATCH)
            # A send moved my read cursor (sdk.Client.send): the mark goes first, on the
            # same connection, so the server never counts what I replied to as unread.
            marks = await self._read_marks_sent(link)
            if not batch:
                await self._read_marks_answered(link, marks)
                if not forever:
                    return
                await wake.wait()
                continue
            outbox.mark_attempted(self._conn, [e.pos for e in batch])
            slots = []
            for entry in batch:
                type_, fields = _frame(entry)
                slots.append(await link.send(type_, **fields))
            await self._read_marks_answered(link, marks)
            for entry, slot in zip(batch, slots, strict=True):
                if entry.kind == "send":
                    await self._sent(link, entry, slot)
                else:
                    await self._changed(link, entry, slot)

    async def _sent(self, link: Link, entry: outbox.Entry, slot: Slot) -> None:
        message = entry.message
        try:
            ack = await link.answer(slot, "ack")
        except ServerError as exc:
            if not exc.permanent:
                raise
            # Its queued changes go with it (they are announced as refused).
            dependents = outbox.changes_of(self._conn, message.local_id)
            with transaction(self._conn):
                failed = store.mark_failed(self._conn, message.local_id, exc.message)
            if failed is not None:
                if self._report is not None:
                    self._report.failed.append(failed)
                self._events.emit(MessageUpdated(failed))
            for dependent in dependents:
                self._refused(dependent, "the message was not delivered: " + exc.message)
            return
        self._merge([ack.get("message")])
        if self._report is not None:
            done = store.message_by_client_id(
                self._conn, message.conversation_id, self._me, message.client_id
            )
            if done is not None:
                self._report.delivered.append(done)

    async def _changed(self, link: Link, entry: outbox.Entry, slot: Slot) -> None:
        try:
            answer = await link.answer(slot, "updated")
        except ServerError as exc:
            if not exc.permanent:
                raise
            with transaction(self._conn):
                outbox.done(self._conn, entry.pos)
            self._refused(entry, exc.message)
            return
        # The server's state first, then the entry goes: a crash in between resends a
        # change that the server treats as no change (the same body, reaction, delete).
        self._merge([answer.get("message")])
        with transaction(self._conn):
            outbox.done(self._conn, entry.pos)
        stored = store.message_by_local_id(self._conn, entry.local_id)
        if stored is not None:
            self._events.emit(MessageUpdated(stored))  # confirmed: no longer `pending`
            if self._report is not None:
                self._report.changed.append(stored)

    def _refused(self, entry: outbox.Entry, error: str) -> None:
        """Roll back: the entry is gone, so the message reads as the server has it."""
        stored = store.message_by_local_id(self._conn, entry.local_id)
        if stored is None:
            return
        refusal = ChangeRefused(stored, entry.kind, error)
        if self._report is not None:
            self._report.refused.append(refusal)
        self._events.emit(MessageUpdated(stored))
        self._events.emit(refusal)

    # ------------------------------------------------------------ merging

    def _merge(self, messages: list[Any]) -> list[store.LocalMessage]:
        for m in messages:
            _check_message(m)
        changed: list[tuple[store.LocalMessage, bool]] = []
        touched: set[str] = set()
        already: dict[str, None] = {}
        with transaction(self._conn):
            for m in messages:
                existing_local = m["sender_id"] == self._me and store.message_by_client_id(
                    self._conn, m["conversation_id"], self._me, m["client_id"]
                )
                known = existing_local or store.message_by_seq(
                    self._conn, m["conversation_id"], m["seq"]
                )
                stored = store.merge_message(self._conn, m, self._me)
                if stored is not None:
                    changed.append((stored, bool(known)))
                    touched.add(m["conversation_id"])
                else:
                    already[m["conversation_id"]] = None
            for m in messages:
                if type(m.get("rev")) is int:
                    store.step_last_rev(self._conn, m["conversation_id"], m["rev"])
            updated = []
            for cid in touched:
                store.advance_synced_seq(self._conn, cid)
                updated += store.refresh_read_statuses(self._conn, cid, self._me)
        read_now = {u.local_id: u for u in updated}
        for message, was_local in changed:
            message = read_now.pop(message.local_id, message)
            # As the user sees it: with my changes still queued laid over it.
            message = store.message_by_local_id(self._conn, message.local_id) or message
            if was_local:
                self._events.emit(MessageUpdated(message))
                continue
            if self._report is not None and message.sender_id != self._me:
                self._report.fetched += 1
            self._events.emit(MessageAdded(message))
        for message in read_now.values():
            self._events.emit(MessageUpdated(message))
        # Stored already: by this process (a live frame and a history page overlap) or
        # by another one sharing the store, whose events this process never heard.
        for cid in already:
            self._events.emit(StoreChanged(cid))
        return [m for m, _ in changed]

    def _apply_read(self, conversation_id: str, user_id: str, seq: int) -> None:
        with transaction(self._conn):
            moved = store.set_read_seq(self._conn, conversation_id, user_id, seq)
            if user_id == self._me:
                store.set_read_sent(self._conn, conversation_id, seq)
            updated = store.refresh_read_statuses(self._conn, conversation_id, self._me)
        if moved:
            self._events.emit(ReadReceipt(conversation_id, user_id, seq))
        for message in updated:
            self._events.emit(MessageUpdated(message))

    def _apply_subscribed(self, frame: dict[str, Any]) -> None:
        cid = frame.get("conversation_id")
        cursors = frame.get("read_cursors")
        online = frame.get("online")
        if (
            not isinstance(cid, str)
            or not isinstance(cursors, dict)
            or not isinstance(online, list)
        ):
            raise ProtocolViolation(
                "subscribed: conversation_id, read_cursors and online are required"
            )
        for user_id, seq in cursors.items():
            if isinstance(seq, int):
                self._apply_read(cid, user_id, seq)
        for user_id in store.member_ids(self._conn, cid):
            is_online = user_id in online
            if self.online_users.get(user_id) != is_online:
                self.online_users[user_id] = is_online
                self._events.emit(PresenceChanged(user_id, is_online, None))

    def _on_frame(self, frame: dict[str, Any]) -> None:
        """A live frame (no pending `req`): merge it into the store, then tell the UIs."""
        kind = frame["type"]
        if kind in ("new_message", "message_updated"):
            message = frame.get("message")
            self._merge([message])
            sender = message.get("sender_id") if isinstance(message, dict) else None
            if sender not in self._known_users and not self._senders_wanted:
                self._senders_wanted = True
                if self._added_wake is not None:
                    self._added_wake.set()
        elif kind == "conversation_updated":
            conv = parse_conversation(frame.get("conversation"))
            with transaction(self._conn):
                store.save_conversation(self._conn, conv)
            self._events.emit(ConversationsChanged((conv["id"],)))
        elif kind == "message_read":
            cid, user_id, seq = frame.get("conversation_id"), frame.get("user_id"), frame.get("seq")
            if not (isinstance(cid, str) and isinstance(user_id, str) and isinstance(seq, int)):
                raise ProtocolViolation(
                    "message_read: conversation_id, user_id and seq are required"
                )
            if store.has_conversation(self._conn, cid):
                self._apply_read(cid, user_id, seq)
        elif kind == "presence_update":
            user_id, status = frame.get("user_id"), frame.get("status")
            if not isinstance(user_id, str) or status not in ("online", "offline"):
                raise ProtocolViolation("presence_update: user_id and status are required")
            self.online_users[user_id] = status == "online"
            last_seen = frame.get("last_seen_at")
            self._events.emit(
                PresenceChanged(
                    user_id, status == "online", last_seen if isinstance(last_seen, int) else None
                )
            )
        elif kind == "typing":
            cid, user_id = frame.get("conversation_id"), frame.get("user_id")
            if isinstance(cid, str) and isinstance(user_id, str):
                self._events.emit(TypingChanged(cid, user_id, bool(frame.get("typing"))))
        elif kind == "unsubscribed":
            # PROTOCOL.md: sent to "a connection whose access ended" (reason `removed`).
            cid = frame.get("conversation_id")
            if isinstance(cid, str):
                self.lost_access(cid)
        elif kind == "conversation_added":
            self._on_conversation_added(frame.get("conversation"))
        elif kind == "ai_settings":
            self.note_ai_settings(frame.get("conversation_id"), frame)
        elif kind == "error":
            # We always send a req, so this answers a frame we cannot match: worth a log line only.
            log.warning("server error frame without a request: %s", frame)
        # Unknown types are protocol extensions this client does not know yet: ignored.

    def note_ai_settings(self, conversation_id: Any, settings: dict[str, Any]) -> None:
        """Remember a conversation's AI settings; announce them (`AiSettingsChanged`)
        when they differ from what was known. A conversation the store does not hold
        is ignored."""
        if not isinstance(conversation_id, str) or not store.has_conversation(
            self._conn, conversation_id
        ):
            return
        check_ai_settings(settings)
        fields = ("enabled", "proactive", "changed_by", "changed_at")
        # A frame has no `changed_at` (the change is now): null, rather than the time
        # of an earlier change.
        kept = {k: settings.get(k) for k in fields}
        before = self.ai_settings.get(conversation_id)
        self.ai_settings[conversation_id] = kept
        if before is not None and all(before[k] == kept[k] for k in fields[:3]):
            return
        self._events.emit(
            AiSettingsChanged(
                conversation_id,
                bool(kept["enabled"]),
                bool(kept["proactive"]),
                kept["changed_by"],
            )
        )

    def _on_conversation_added(self, conversation: Any) -> None:
        """README "Protocol notes": we were made a member. Stored and announced now;
        subscribed to and caught up by the adopting task (`_adopt_forever`)."""
        conv = parse_conversation(conversation)
        with transaction(self._conn):
            store.save_conversation(self._conn, conv)
        self._events.emit(ConversationsChanged((conv["id"],)))
        # Already subscribed on this connection (our own create got there first): the
        # adopting task skips it. A re-added member's old subscription was dropped from
        # `_subscribed` by its `unsubscribed`, so it is subscribed again.
        if len(self._added) < MAX_PENDING_ADDED:
            self._added[conv["id"]] = None
        else:
            self._added_overflow = True
        if self._added_wake is not None:
            self._added_wake.set()


def _frame(entry: outbox.Entry) -> tuple[str, dict[str, Any]]:
    """The frame type and fields that carry an outbox entry."""
    m = entry.message
    if entry.kind == "send":
        fields: dict[str, Any] = {
            "conversation_id": m.conversation_id,
            "client_id": m.client_id,
            "body": m.body,
            "attachments": m.attachments,
        }
        # Only when used: a plain message stays a plain v1 frame.
        if m.reply_to is not None:
            fields["reply_to"] = m.reply_to
        if m.mentions:
            fields["mentions"] = m.mentions
        return "send_message", fields
    base = {"conversation_id": m.conversation_id, "seq": m.seq}
    if entry.kind == "edit":
        return "edit_message", {**base, "body": entry.body}
    if entry.kind == "delete":
        return "delete_message", base
    return "react", {**base, "emoji": entry.emoji, "on": entry.on}


# The v1.1 message fields and the types they must have where present.
_V11_TYPES: dict[str, tuple[type, ...]] = {
    "reply_to": (int, type(None)),
    "mentions": (list,),
    "edited_at": (int, type(None)),
    "deleted_at": (int, type(None)),
    "reactions": (dict,),
    "rev": (int,),
}


def _check_message(m: Any) -> None:
    """A server message has the shape of `model.Message` (the server's own record),
    and its v1.1 fields, where present, the types PROTOCOL.md gives them."""
    try:
        message = structure_record(m, Message)
    except ValueError as exc:
        raise ProtocolViolation(f"message: {exc}") from None
    if message.seq < 1:
        raise ProtocolViolation("message: seq must be at least 1")
    for name, types in _V11_TYPES.items():
        if name in m and (type(m[name]) not in types):
            raise ProtocolViolation(f"message: {name} has the wrong type")
    reactions = m.get("reactions") or {}
    if not all(
        isinstance(users, list) and all(isinstance(u, str) for u in users)
        for users in reactions.values()
    ) or not all(isinstance(u, str) for u in m.get("mentions") or []):
        raise ProtocolViolation("message: reactions and mentions hold user ids")


__all__ = ["Backoff", "Settings", "SyncReport", "Syncer", "Unreachable"]
