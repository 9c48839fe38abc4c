"""`Client`: one account on one server, local-first. The SDK's public object.

Reads (`conversations`, `messages`, `read_by`) come from the local store only
and work with the server down. `send` writes the message as `sending` before
any I/O and returns it; `edit`, `delete` and `react` (v1.1) are optimistic the
same way and wait in the same outbox, in order (see `outbox`); `run()` (stay
connected) or `sync()` (one pass) deliver them. Search, channels, topics and
media are REST calls and need the server, as does the assistant (`ask`, `catch_up`,
`action_items`, the switch and its log: PROTOCOL.md "AI over a conversation"), whose
answers are private to the asker and never stored. Runs under Trio or asyncio (httpx,
httpx-ws and anyio underneath).

    async with Client.open() as client:        # the store's current account
        async with anyio.create_task_group() as tg:
            await tg.start(client.run)
            await client.send(conversation_id, "hello")
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import re
import time
import unicodedata
import uuid
from collections.abc import Callable
from email.message import Message as MimeHeaders
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import apsw

from messageai.client import accounts, outbox, store
from messageai.client.accounts import ws_url
from messageai.client.api import AI_TIMEOUT_SECONDS, Api, check_answer
from messageai.client.errors import ClientError, Forbidden, NotSignedIn, ServerError, Unreachable
from messageai.client.events import (
    DEFAULT_BUFFER,
    ConnectionState,
    ConversationsChanged,
    Events,
    EventStream,
    MessageAdded,
    MessageRemoved,
    MessageUpdated,
    ReadReceipt,
)
from messageai.client.link import Link, open_link
from messageai.client.store import Account, LocalConversation, LocalMessage, MediaInfo
from messageai.client.sync import Settings, Syncer, SyncReport
from messageai.protocol import DEFAULT_MAX_BODY_CHARS
from messageai.sqlite import apply_best_practice, transaction

# Longer bodies are refused before they are queued: a default server would refuse them.
MAX_BODY_CHARS = DEFAULT_MAX_BODY_CHARS
# PROTOCOL.md v1.1: at most 50 mentions; an emoji is 1-32 bytes of UTF-8.
MAX_MENTIONS = 50
MAX_EMOJI_BYTES = 32
# `@name` in a message body: a username as the server allows them.
MENTION = re.compile(r"(?<![\w@])@([a-z0-9_.-]{3,32})")
# The most bytes `upload` reads into memory (a default server takes 25 MiB).
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
# PROTOCOL.md: a question is 1-2000 code points after trimming.
MAX_QUESTION_CHARS = 2000
# The most answer text `ask` passes on from `ai_delta` frames: a server streaming
# without end is cut off here (the final `ai_answer` is checked whole all the same).
MAX_ANSWER_CHARS = 200_000

log = logging.getLogger(__name__)


def emoji_refusal(emoji: str) -> str | None:
    """Why `emoji` is not a reaction PROTOCOL.md allows, or None."""
    size = len(emoji.encode())
    if not 1 <= size <= MAX_EMOJI_BYTES:
        return f"a reaction is 1 to {MAX_EMOJI_BYTES} bytes of UTF-8; this one has {size}"
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in emoji):
        return "a reaction has no spaces or control characters"
    return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _safe_name(name: str) -> str:
    """A file name from the server, reduced to a plain name in the current folder."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip().lstrip(".")
    return base or "attachment"


def _media_info(media_id: str, headers: Any) -> MediaInfo:
    """Name, type and size from a media response's headers (`Content-Disposition`'s
    RFC 6266 `filename*` or `filename`, `Content-Range`'s total or `Content-Length`)."""
    kind = headers.get("content-type")
    size: int | None = None
    total = (headers.get("content-range") or "").rpartition("/")[2]
    if total.isdigit():
        size = int(total)
    elif (headers.get("content-length") or "").isdigit():
        size = int(headers["content-length"])
    name = None
    disposition = headers.get("content-disposition")
    if disposition:
        parsed = MimeHeaders()
        parsed["content-disposition"] = disposition
        name = parsed.get_filename()
    return MediaInfo(media_id, name, kind, size)


def _unasked(frame: dict[str, Any]) -> None:
    """A frame on `ask`'s own connection that answers nothing it asked (it subscribes
    to nothing): logged by type only (frames may carry message bodies)."""
    log.debug("ignored a %s frame on the connection opened for a question", frame.get("type"))


async def _ask_on(
    link: Link, conversation_id: str, question: str, on_delta: Callable[[str], None]
) -> dict[str, Any]:
    """`ai_ask` on `link`: each `ai_delta` to `on_delta`, then the `ai_answer`."""
    passed = 0
    failure: list[Exception] = []

    def delta(frame: dict[str, Any]) -> None:
        nonlocal passed
        text = frame.get("text")
        if not isinstance(text, str) or failure or passed + len(text) > MAX_ANSWER_CHARS:
            return
        passed += len(text)
        try:
            on_delta(text)
        except Exception as exc:  # raised from ask(), not in the connection's reader
            failure.append(exc)

    slot = await link.send(
        "ai_ask",
        partial=("ai_delta", delta),
        conversation_id=conversation_id,
        question=question,
    )
    frame = await link.answer(slot, "ai_answer", seconds=AI_TIMEOUT_SECONDS)
    if failure:
        raise failure[0]
    answer = check_answer(frame)
    return {key: answer[key] for key in ("answer", "citations", "cached")}


def _not_a_member() -> Forbidden:
    return Forbidden("forbidden", "you are no longer a member of this conversation")


class Client:
    def __init__(self, conn: apsw.Connection, *, settings: Settings | None = None) -> None:
        account = store.get_account(conn)
        if account is None or account.token is None:
            raise NotSignedIn("this store has no signed-in account: run `messageai login`")
        self._conn = conn
        self.account: Account = account
        self.api = Api(account.server_url, account.token)
        self._events = Events()
        self.syncer = Syncer(conn, account, self.api, self._events, settings or Settings())

    # ------------------------------------------------------------ opening

    @classmethod
    def open(
        cls, store_dir: str | Path | None = None, *, settings: Settings | None = None
    ) -> Client:
        """The current account of a store directory (see `accounts.store_dir`)."""
        apply_best_practice()  # the store's connection settings (WAL, ...) for this process
        path = accounts.current_path(accounts.store_dir(store_dir))
        conn = store.open_store(path)
        try:
            return cls(conn, settings=settings)
        except BaseException:
            conn.close()
            raise

    @classmethod
    async def login(
        cls,
        server_url: str,
        username: str,
        password: str,
        *,
        store_dir: str | Path | None = None,
        register: bool = False,
        display_name: str | None = None,
        settings: Settings | None = None,
    ) -> Client:
        """Sign in (or register) over REST, keep the session in the store, make it current."""
        apply_best_practice()
        url = accounts.normalize_server_url(server_url)
        api = Api(url)
        try:
            if register:
                body = await api.register(username, password, display_name)
            else:
                body = await api.login(username, password)
        finally:
            await api.aclose()
        user = body["user"]
        directory = accounts.store_dir(store_dir)
        filename = accounts.account_file(url, user["username"])
        conn = store.open_store(directory / filename)
        try:
            store.save_account(
                conn,
                Account(url, user["id"], user["username"], user["display_name"], body["token"]),
            )
            with transaction(conn):
                store.save_users(conn, [user])
            accounts.set_current(directory, filename)
            return cls(conn, settings=settings)
        except BaseException:
            conn.close()
            raise

    async def logout(self) -> None:
        """Revoke the token on the server (if reachable) and forget it locally."""
        # Unreachable: the token is forgotten here anyway, and expires on the server.
        with contextlib.suppress(Unreachable):
            await self.api.logout()
        store.forget_token(self._conn)

    async def aclose(self) -> None:
        self._events.close()
        await self.api.aclose()
        self._conn.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()

    # ------------------------------------------------------------ identity and state

    @property
    def me(self) -> str:
        return self.account.user_id

    @property
    def state(self) -> ConnectionState:
        """`connecting`, `online`, `offline` or `signed_out`."""
        return self.syncer.state

    def is_online(self, user_id: str) -> bool | None:
        """Presence as last told by the server; None while we are not connected."""
        return self.syncer.online_users.get(user_id)

    def user_name(self, user_id: str) -> str:
        return store.user_names(self._conn).get(user_id, user_id)

    def user_names(self) -> dict[str, str]:
        return store.user_names(self._conn)

    def display_names(self) -> dict[str, tuple[str, str]]:
        """user id -> (username, display name) of every user the store knows."""
        return store.display_names(self._conn)

    # ------------------------------------------------------------ local reads

    def conversations(self) -> list[LocalConversation]:
        return store.list_conversations(self._conn, self.me)

    def conversation(self, conversation_id: str) -> LocalConversation | None:
        """One conversation; `active` is False once we know we are no longer a member
        (removed from the group: the server's `unsubscribed` or a `forbidden` answer)."""
        return store.get_conversation(self._conn, self.me, conversation_id)

    def messages_since(
        self, conversation_id: str, after_seq: int, limit: int = 500
    ) -> tuple[int, list[LocalMessage]]:
        """For followers: the seq up to which the store holds every message, and the
        oldest `limit` messages above `after_seq` up to it, by seq, whoever stored them
        (another process sharing the store included)."""
        return store.messages_since(self._conn, conversation_id, after_seq, limit)

    def unacknowledged(self, conversation_id: str) -> list[LocalMessage]:
        """My messages without a seq yet (`sending`) or refused (`failed`), oldest first."""
        return store.unacknowledged(self._conn, conversation_id)

    def messages(self, conversation_id: str, limit: int | None = None) -> list[LocalMessage]:
        """Oldest first; the newest `limit` if given. Unacknowledged messages come last."""
        return store.messages(self._conn, conversation_id, limit)

    def messages_after(self, conversation_id: str, local_id: int) -> list[LocalMessage]:
        """Messages stored after `local_id`, in the order they were stored."""
        return store.messages_after_local_id(self._conn, conversation_id, local_id)

    def message(self, conversation_id: str, client_id: str) -> LocalMessage | None:
        """One of my messages by its client_id."""
        return store.message_by_client_id(self._conn, conversation_id, self.me, client_id)

    def read_by(self, message: LocalMessage) -> list[str]:
        """Members other than the sender who have read `message` ("read by 3 of 5")."""
        if message.seq is None:
            return []
        return store.read_by(self._conn, message.conversation_id, message.seq, message.sender_id)

    def readers_of(self, message: LocalMessage) -> int:
        """The M of "read by N of M": the other members who could read it (with the
        server's `members_joined_at`, not those who joined after it)."""
        if message.seq is None:
            return len(self.member_ids(message.conversation_id)) - 1
        return store.readers_of(self._conn, message.conversation_id, message.seq, message.sender_id)

    def member_ids(self, conversation_id: str) -> list[str]:
        return store.member_ids(self._conn, conversation_id)

    def outbox_size(self) -> int:
        """Sends, edits, deletes and reactions waiting for the server."""
        return store.outbox_size(self._conn)

    def last_rev(self, conversation_id: str) -> int:
        """The change cursor: every change up to this rev is in the store (v1.1)."""
        return store.last_rev(self._conn, conversation_id)

    # ------------------------------------------------------------ writes

    async def send(
        self,
        conversation_id: str,
        body: str,
        *,
        reply_to: int | None = None,
        mentions: list[str] | None = None,
        attachments: list[str] | None = None,
    ) -> LocalMessage:
        """Store a message as `sending` and hand it to the connection, if any.

        Returns at once with the stored message; its status changes arrive as
        `MessageUpdated` events. While offline it stays queued, across restarts.
        `reply_to` is the seq of a message of the conversation; `mentions` are member
        ids (deduplicated here); a message with attachments may have no text.
        """
        if not conversation_id or len(conversation_id) > 128:
            raise ClientError("a conversation id is 1 to 128 characters")
        if not body.strip() and not attachments:
            raise ClientError("a message needs some text")
        if len(body.strip()) > MAX_BODY_CHARS:
            raise ClientError(f"a message is at most {MAX_BODY_CHARS} characters")
        if not store.is_active(self._conn, conversation_id):
            raise _not_a_member()
        mentions = list(dict.fromkeys(mentions or []))
        if len(mentions) > MAX_MENTIONS:
            raise ClientError(f"a message mentions at most {MAX_MENTIONS} people")
        if reply_to is not None:
            target = store.message_by_seq(self._conn, conversation_id, reply_to)
            if target is None:
                raise ClientError(f"no message #{reply_to} here to reply to")
            if target.deleted:
                raise ClientError(f"message #{reply_to} was deleted: no reply to it")
        # Replying means I have read what I replied to: my read cursor moves to the
        # newest message stored now (the server moves it only on mark_read, and the
        # syncer sends that mark just before the message).
        seen = store.last_seq(self._conn, conversation_id)
        with transaction(self._conn):
            moved = seen > 0 and store.set_read_seq(self._conn, conversation_id, self.me, seen)
        if moved:
            self._events.emit(ReadReceipt(conversation_id, self.me, seen))
        message = store.add_outgoing(
            self._conn,
            conversation_id,
            self.me,
            uuid.uuid4().hex,
            body,
            _now_ms(),
            attachments=attachments,
            reply_to=reply_to,
            mentions=mentions,
        )
        self._events.emit(MessageAdded(message))
        self.syncer.outbox_changed()
        return message

    def mentions_in(self, conversation_id: str, body: str) -> list[str]:
        """The member ids that `@username` in `body` names (members only: anyone else's
        name stays plain text), in order of first mention."""
        known = {username: user_id for user_id, (username, _) in self.display_names().items()}
        members = set(self.member_ids(conversation_id))
        found = [known.get(name) for name in MENTION.findall(body)]
        return list(dict.fromkeys(u for u in found if u is not None and u in members))

    def message_by_seq(self, conversation_id: str, seq: int) -> LocalMessage | None:
        return store.message_by_seq(self._conn, conversation_id, seq)

    def message_by_local_id(self, local_id: int) -> LocalMessage | None:
        return store.message_by_local_id(self._conn, local_id)

    def _current(self, message: LocalMessage) -> LocalMessage:
        now = store.message_by_local_id(self._conn, message.local_id)
        if now is None:
            raise ClientError("that message is no longer here")
        if not store.is_active(self._conn, now.conversation_id):
            raise _not_a_member()
        return now

    def _queued(self, kind: str, message: LocalMessage, **fields: Any) -> LocalMessage:
        with transaction(self._conn):
            outbox.enqueue(self._conn, kind, message.local_id, _now_ms(), **fields)
        shown = self._current(message)
        self._events.emit(MessageUpdated(shown))
        self.syncer.outbox_changed()
        return shown

    async def edit(self, message: LocalMessage, body: str) -> LocalMessage:
        """Change the text of one of my messages; returns it as shown now (edited,
        `pending` until the server confirms). Queued after everything queued before
        it, the message's own send included; a refusal rolls it back
        (`ChangeRefused`)."""
        message = self._current(message)
        if message.sender_id != self.me:
            raise ClientError("only its sender can edit a message")
        if message.deleted:
            raise ClientError("that message was deleted")
        text = body.strip()
        if not text:
            raise ClientError("an edit needs some text (/delete removes a message)")
        if len(text) > MAX_BODY_CHARS:
            raise ClientError(f"a message is at most {MAX_BODY_CHARS} characters")
        if message.status == "failed":
            # Never delivered: nothing to tell the server; /retry sends the new text.
            outbox.edit_unsent(self._conn, message.local_id, text)
            shown = self._current(message)
            self._events.emit(MessageUpdated(shown))
            return shown
        return self._queued("edit", message, body=text)

    async def delete(self, message: LocalMessage) -> LocalMessage | None:
        """Delete a message (mine; in a group its creator may delete anyone's: the
        server decides, a refusal rolls it back). A message of mine that no server can
        have yet leaves the store and nothing is sent: returns None."""
        message = self._current(message)
        if message.deleted:
            return message
        if message.sender_id == self.me and outbox.unsent(self._conn, message.local_id):
            with transaction(self._conn):
                outbox.remove_message(self._conn, message.local_id)
            self._events.emit(MessageRemoved(message.conversation_id, message.local_id))
            return None
        return self._queued("delete", message)

    async def react(self, message: LocalMessage, emoji: str, on: bool = True) -> LocalMessage:
        """Add (or with `on=False` remove) my reaction; optimistic and queued like
        `edit`. A change that changes nothing is not queued."""
        refusal = emoji_refusal(emoji)
        if refusal is not None:
            raise ClientError(refusal)
        message = self._current(message)
        if message.deleted:
            raise ClientError("that message was deleted")
        if message.status == "failed":
            raise ClientError("that message was not delivered: /retry it first")
        if (self.me in message.reactions.get(emoji, [])) == on:
            return message
        return self._queued("react", message, emoji=emoji, on=on)

    def reacted(self, message: LocalMessage, emoji: str) -> bool:
        return self.me in message.reactions.get(emoji, [])

    async def retry(self, message: LocalMessage) -> LocalMessage | None:
        """Queue a `failed` message again, with its original client_id."""
        again = store.retry_failed(self._conn, message.local_id)
        if again is not None:
            self.syncer.outbox_changed()
        return again

    async def mark_read(self, conversation_id: str, seq: int | None = None) -> None:
        """Move my read cursor (default: to the newest stored message). Sent now if
        connected, else at the next connection. Raises Forbidden if we are no longer a
        member (known locally, or answered now: the conversation becomes inactive)."""
        if not store.has_conversation(self._conn, conversation_id):
            raise ClientError(f"no conversation {conversation_id!r} in the local store")
        if not store.is_active(self._conn, conversation_id):
            raise _not_a_member()
        seq = store.last_seq(self._conn, conversation_id) if seq is None else seq
        with transaction(self._conn):
            moved = store.set_read_seq(self._conn, conversation_id, self.me, seq)
        if not moved:
            return
        self._events.emit(ReadReceipt(conversation_id, self.me, seq))
        link = self.syncer.link
        if link is not None:
            try:
                await link.request("mark_read", "ok", conversation_id=conversation_id, seq=seq)
            except Unreachable:
                return  # sent at the next connection
            except Forbidden:
                self.syncer.lost_access(conversation_id)
                raise
            store.set_read_sent(self._conn, conversation_id, seq)

    async def set_typing(self, conversation_id: str, typing: bool) -> None:
        """`typing: true`, or `false` to stop at once. Ephemeral: dropped silently while
        offline or in a conversation we are no longer in."""
        link = self.syncer.link
        if link is not None and store.is_active(self._conn, conversation_id):
            # Typing is never worth queueing.
            with contextlib.suppress(Unreachable):
                await link.send("typing", conversation_id=conversation_id, typing=typing)

    # ------------------------------------------------------------ REST

    async def find_users(self, prefix: str) -> list[dict[str, Any]]:
        users = await self.api.find_users(prefix)
        with transaction(self._conn):
            store.save_users(self._conn, users)
        return users

    async def user_id_for(self, name_or_id: str) -> str:
        """A username (exact match) or a user id, resolved to the id."""
        name = name_or_id.lstrip("@")
        for user in await self.find_users(name):
            if user["username"] == name or user["id"] == name:
                return str(user["id"])
        if name in store.user_names(self._conn):
            return name
        raise ClientError(f"no user named {name!r}")

    async def create_direct(self, user: str) -> str:
        """Open (or find) the direct conversation with a user (name or id); returns its id."""
        conv = await self.api.create_direct(await self.user_id_for(user))
        return await self._adopt(conv)

    async def create_group(self, title: str, users: list[str]) -> str:
        ids = [await self.user_id_for(u) for u in users]
        conv = await self.api.create_group(title, ids)
        return await self._adopt(conv)

    async def add_members(self, conversation_id: str, users: list[str]) -> list[str]:
        """Add users (names or ids) to a group; returns their ids. An unknown user is a
        ClientError before anything is asked of the server (nobody is added); a direct
        conversation or a conversation I am not in is the server's ServerError."""
        ids = [await self.user_id_for(u) for u in users]
        conv = await self.api.add_members(conversation_id, ids)
        self._save_conversation(conv)
        return ids

    def member_id(self, conversation_id: str, name_or_id: str) -> str | None:
        """The member of a conversation with this username (or id), from the local store."""
        name = name_or_id.lstrip("@")
        known = self.display_names()
        for user_id in self.member_ids(conversation_id):
            if name in (user_id, known.get(user_id, ("", ""))[0]):
                return user_id
        return None

    async def remove_member(self, conversation_id: str, user: str) -> str:
        """Remove a member (name or id) from a group; returns their id. Removing myself
        is leaving: the conversation becomes inactive here (its history stays). Raises
        ClientError if they are not a member as far as the store knows (nothing is
        asked), Forbidden if only the group's creator may remove them."""
        user_id = self.member_id(conversation_id, user)
        if user_id is None:
            raise ClientError(f"{user.lstrip('@')!r} is not a member of this conversation")
        await self.api.remove_member(conversation_id, user_id)
        if user_id == self.me:
            self.syncer.lost_access(conversation_id)
            return user_id
        # The removal is done; the member list is re-read for the screen. Unreachable
        # now: the periodic refresh brings it later.
        with contextlib.suppress(Unreachable):
            self._save_conversation(await self.api.conversation(conversation_id))
        return user_id

    async def leave(self, conversation_id: str) -> None:
        """Leave a group (see remove_member)."""
        await self.remove_member(conversation_id, self.me)

    # ------------------------------------------------------------ REST, v1.1

    async def search(
        self, query: str, *, conversation_id: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Keyword search over my conversations (or one): the server's results, best
        first (`conversation_id`, `message`, `snippet`, `highlights`, `score`)."""
        if not query.strip():
            raise ClientError("search for at least one word")
        body = await self.api.search(query, conversation_id=conversation_id, limit=limit)
        results: list[dict[str, Any]] = body["results"]
        return results

    async def channels(self, prefix: str = "") -> list[dict[str, Any]]:
        """Channels on the server (title prefix), most members first."""
        return await self.api.channels(prefix)

    async def join(self, name_or_id: str) -> str:
        """Join a channel by its title (exact, else the only prefix match) or id."""
        wanted = name_or_id.lstrip("#")
        found = await self.api.channels(wanted)
        exact = [c for c in found if c["id"] == wanted or c.get("title") == wanted]
        if not exact and len(found) == 1:
            exact = found
        if not exact:
            names = ", ".join(str(c.get("title")) for c in found[:5])
            more = f" (did you mean: {names}?)" if names else ""
            raise ClientError(f"no channel named {wanted!r}{more}")
        conv = await self.api.join(exact[0]["id"])
        return await self._adopt(conv)

    async def create_channel(self, title: str, topic: str | None = None) -> str:
        return await self._adopt(await self.api.create_channel(title, topic))

    async def rename(self, conversation_id: str, title: str) -> None:
        """A group's or channel's title (any member); the others get `conversation_updated`."""
        if not title.strip():
            raise ClientError("a title needs some text")
        self._save_conversation(await self.api.update_conversation(conversation_id, title=title))

    async def set_topic(self, conversation_id: str, topic: str) -> None:
        self._save_conversation(await self.api.update_conversation(conversation_id, topic=topic))

    async def upload(
        self, conversation_id: str, path: str | Path, caption: str = ""
    ) -> LocalMessage:
        """Upload a file (its name kept) and queue a message that carries it. The upload
        needs the server; the message then travels like any other."""
        if not store.is_active(self._conn, conversation_id):
            raise _not_a_member()
        source = anyio.Path(path)
        try:
            size = (await source.stat()).st_size
            if size > MAX_UPLOAD_BYTES:
                raise ClientError(f"{source.name} is larger than {MAX_UPLOAD_BYTES} bytes")
            data = await source.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
        kind = mimetypes.guess_type(source.name)[0] or "application/octet-stream"
        media = await self.api.upload(data, kind, source.name)
        info = MediaInfo(
            str(media["id"]),
            str(media.get("filename") or source.name),
            str(media.get("content_type") or kind),
            int(media.get("size") or len(data)),
        )
        with transaction(self._conn):
            store.save_media(self._conn, info)
        return await self.send(
            conversation_id,
            caption,
            attachments=[info.id],
            mentions=self.mentions_in(conversation_id, caption),
        )

    def media(self, media_id: str) -> MediaInfo | None:
        """What the store knows of an attachment (name, type, size), or None."""
        return store.media_info(self._conn, media_id)

    async def learn_media(self, media_id: str) -> MediaInfo:
        """Ask the server for an attachment's name, type and size (`/info`, else its
        first byte's headers) and keep them in the store."""
        known = self.media(media_id)
        if known is not None:
            return known
        try:
            media = await self.api.media_info(media_id)
            info = MediaInfo(
                media_id,
                media.get("filename") if isinstance(media.get("filename"), str) else None,
                media.get("content_type") if isinstance(media.get("content_type"), str) else None,
                media.get("size") if type(media.get("size")) is int else None,
            )
        except ServerError as exc:
            if exc.code != "not_found":
                raise
            # A server without the `/info` extension: the first byte's headers say it.
            info = _media_info(media_id, (await self.api.media_head(media_id)).headers)
        with transaction(self._conn):
            store.save_media(self._conn, info)
        return info

    async def save_attachment(self, media_id: str, dest: str | Path | None = None) -> Path:
        """Download an attachment: into `dest` (a file, or a folder to put it in under
        its own name), default the current folder. Never overwrites a file."""
        info = self.media(media_id)
        name = _safe_name(info.filename if info and info.filename else media_id)
        target = anyio.Path(dest if dest is not None else name)
        if await target.is_dir():
            target = target / name
        if await target.exists():
            raise ClientError(f"{target} exists already: name another path")
        headers = await self.api.download_to(media_id, Path(target))
        if info is None:
            with transaction(self._conn):
                store.save_media(self._conn, _media_info(media_id, headers))
        return Path(target)

    # ------------------------------------------------------------ AI over a conversation

    def ai_settings_known(self, conversation_id: str) -> dict[str, Any] | None:
        """The conversation's AI settings as last heard (a GET, a PUT, or the server's
        `ai_settings` frame on this client's connection), or None: no I/O."""
        return self.syncer.ai_settings.get(conversation_id)

    async def ai_settings(self, conversation_id: str) -> dict[str, Any]:
        """`{enabled, proactive, changed_by, changed_at}` from the server (works without
        an endpoint configured)."""
        settings = await self.api.ai_settings(conversation_id)
        self.syncer.note_ai_settings(conversation_id, settings)
        return settings

    async def set_ai(
        self, conversation_id: str, enabled: bool, proactive: bool | None = None
    ) -> dict[str, Any]:
        """Turn the conversation's assistant on or off (for every member; they hear of it
        as `ai_settings`); the settings afterwards."""
        settings = await self.api.set_ai_settings(conversation_id, enabled, proactive)
        self.syncer.note_ai_settings(conversation_id, settings)
        return settings

    async def ask(
        self,
        conversation_id: str,
        question: str,
        *,
        on_delta: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Ask the assistant about one conversation: `{answer, citations, cached}`,
        private to me (nothing is posted or stored).

        Without `on_delta`, one REST call. With it, over the WebSocket (`ai_ask`):
        `on_delta(text)` is called with each piece of the answer as it is generated
        (from the connection's reading task: it must return at once), on the running
        connection if there is one, else on one opened for this question. After an
        error the pieces already passed on are void (PROTOCOL.md: the client drops
        them). Raises ServerError `unavailable` (no endpoint, or it failed),
        `forbidden` (the switch is off, or not a member), `rate_limited`."""
        text = question.strip()
        if not text:
            raise ClientError("ask a question")
        if len(text) > MAX_QUESTION_CHARS:
            raise ClientError(f"a question is at most {MAX_QUESTION_CHARS} characters")
        if on_delta is None:
            return await self.api.ask(conversation_id, text)
        link = self.syncer.link
        if link is not None:
            # Not retried on another connection if this one drops: the question may
            # have gone out, and a second one would be answered (and logged) twice.
            return await _ask_on(link, conversation_id, text, on_delta)
        failure: ClientError | None = None
        answer: dict[str, Any] = {}
        async with (
            open_link(
                self.api.http,
                ws_url(self.account.server_url),
                self.account.token or "",
                keepalive_seconds=None,
            ) as own,
            anyio.create_task_group() as tg,
        ):

            async def read() -> None:
                # Its end wakes the pending question with Unreachable: raised there.
                with contextlib.suppress(ClientError):
                    await own.read_forever(_unasked)

            tg.start_soon(read)
            try:
                answer = await _ask_on(own, conversation_id, text, on_delta)
            except ClientError as exc:
                # Raised here, out of the task groups, it stays itself (not wrapped in
                # an ExceptionGroup).
                failure = exc
            finally:
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return answer

    async def catch_up(self, conversation_id: str) -> dict[str, Any]:
        """A summary of exactly my unread range there (read cursor + 1 … last seq):
        `{summary, citations, from_seq, to_seq}`, all but `citations` null with nothing
        unread. It does not move my read cursor."""
        return await self.api.catch_up(conversation_id)

    async def action_items(self, conversation_id: str) -> list[dict[str, Any]]:
        """`{id, text, owner_id, due, source_seqs, status}` each, found in the background."""
        return await self.api.action_items(conversation_id)

    async def set_action_item(
        self, conversation_id: str, item_id: str, *, done: bool = True
    ) -> dict[str, Any]:
        """Mark an action item done (or open again); the item afterwards."""
        return await self.api.set_action_item(conversation_id, item_id, "done" if done else "open")

    async def ai_log(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every request that sent content of the conversation to the endpoint, newest
        first: `{at, user_id (null: a background job), action, seqs}`."""
        return await self.api.ai_log(conversation_id)

    def _save_conversation(self, conv: dict[str, Any]) -> None:
        with transaction(self._conn):
            store.save_conversation(self._conn, conv)
        self._events.emit(ConversationsChanged((conv["id"],)))

    async def _adopt(self, conv: dict[str, Any]) -> str:
        with transaction(self._conn):
            store.save_conversation(self._conn, conv)
        self._events.emit(ConversationsChanged((conv["id"],)))
        link = self.syncer.link
        if link is not None:
            # If the connection just dropped, the next one subscribes to it.
            with contextlib.suppress(Unreachable):
                await self.syncer.subscribe_new(link, [conv["id"]])
        return str(conv["id"])

    # ------------------------------------------------------------ connection

    def events(self, size: int = DEFAULT_BUFFER) -> EventStream:
        """A bounded stream of change events (see `events`):

        async with client.events() as events:
            async for event in events: ...
        """
        return self._events.subscribe(size)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Stay connected (reconnecting with backoff) until cancelled.

        Raises AuthError if the server revoked the session."""
        await self.syncer.run_forever(task_status=task_status)

    async def sync(self) -> SyncReport:
        """One pass: connect, catch up every conversation, deliver the outbox, disconnect.

        Raises Unreachable if the server cannot be reached."""
        return await self.syncer.sync_once()

    def reconnect_now(self) -> None:
        self.syncer.reconnect_now()
