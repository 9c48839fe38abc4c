"""The operator's commands, done by the running server itself: `user delete`,
`conversation delete`, `conversation restore`. Reached over the admin channel
(`ops.channel`, a 0600 Unix socket in the data directory), which `cli.ops` uses
whenever a server holds the data directory's lock; the SQL and file work is
`ops.removal` and `ops.restore_one`, shared with the offline commands.

Whatever a command replaces or removes, it does with the conversation out of service
(`Registry.stopped`: its actor stopped, none started meanwhile; other conversations go
on) and the search readers of that file closed, so nothing in the server has the
file open while it changes. What members' clients are told:

- conversation deleted: every open connection of every member gets `unsubscribed`
  `{reason: "deleted"}` (PROTOCOL.md: "a connection whose access ended").
- conversation restored: the connections that were subscribed stay subscribed (to the
  new actor), and get `message_updated` for each message the restore changed, in rev
  order, as for any change; past `RESTORE_PUSH_LIMIT` such messages they are closed
  with 1012 instead and catch up with `get_changes` when they reconnect.
- user deleted: their connections close with 1008; groups and channels they left
  send `conversation_updated` to the members who stay.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from messageai.config import Config
from messageai.conversations.commands import Peer
from messageai.conversations.registry import Registry
from messageai.errors import BadRequest, MessageAIError, NotFound
from messageai.live.presence import Presence
from messageai.ops import removal, restore_one
from messageai.ops.backup import BackupError
from messageai.protocol import GetChanges, MessageUpdated, Unsubscribed, encode
from messageai.rest.announce import Announcer
from messageai.services.directory import Directory
from messageai.services.media import Media
from messageai.store import directory as directory_sql
from messageai.threads import blocking

if TYPE_CHECKING:
    from messageai.ai.assistant import Assistant
    from messageai.services.search import Search

# Messages a restore pushes to each subscribed connection as `message_updated`; more,
# and those connections are closed (1012) to catch up by themselves.
RESTORE_PUSH_LIMIT = 1000
CLOSE_SERVICE_RESTART = 1012
# The erasure's deletes queued at once (the actor group-commits them).
ERASE_BATCH = 500


class Admin:
    def __init__(
        self,
        config: Config,
        directory: Directory,
        registry: Registry,
        presence: Presence,
        media: Media,
        search: Search,
        assistant: Assistant | None,
        close_user_sessions: Any,
    ) -> None:
        self._config = config
        self._data_dir = config.data_dir
        self._directory = directory
        self._registry = registry
        self._presence = presence
        self._media = media
        self._search = search
        self._assistant = assistant
        self._close_user_sessions = close_user_sessions
        self._announce = Announcer(directory, registry, presence)

    async def handle(self, body: dict[str, Any]) -> str:
        """One request of the admin channel; what to print, or a MessageAIError."""
        command = body.get("command")
        try:
            if command == "user_delete":
                return await self.delete_user(_text(body, "name"), bool(body.get("erase")))
            if command == "conversation_delete":
                return await self.delete_conversation(_text(body, "conversation_id"))
            if command == "conversation_restore":
                return await self.restore_conversation(
                    _text(body, "conversation_id"), Path(_text(body, "backup"))
                )
        except BackupError as exc:
            raise MessageAIError(str(exc)) from None
        raise BadRequest(f"unknown command {command!r}")

    # ------------------------------------------------------------ users

    async def delete_user(self, name: str, erase: bool) -> str:
        user = await self._directory.fetch(removal.user_named, name)
        # Signed out first, so nothing new of theirs arrives while the rest goes.
        left = await self._directory.write(removal.anonymise_user, user.id)
        self._close_user_sessions(user.id, "account deleted")
        for conversation_id in left:
            await self._registry.members_changed(conversation_id, removed=(user.id,))
            record = await self._directory.lookup_conversation(conversation_id)
            if record is not None:
                await self._announce.updated(record, await self._directory.members(conversation_id))
        if not erase:
            return removal.deleted_user_said(user, len(left), None)
        erased = 0
        for conversation_id in await self._directory.fetch(directory_sql.conversation_ids):
            seqs = await blocking(
                removal.live_messages_of, self._data_dir, conversation_id, user.id
            )
            for start in range(0, len(seqs), ERASE_BATCH):
                async with trio.open_nursery() as nursery:
                    for seq in seqs[start : start + ERASE_BATCH]:
                        nursery.start_soon(self._registry.expire, conversation_id, seq)
            erased += len(seqs)
        async with self._media.lock:
            digests = await self._directory.write(removal.delete_uploads_of, user.id)
            await blocking(removal.unlink_blobs, self._data_dir, digests)
        return removal.deleted_user_said(user, len(left), erased)

    # ------------------------------------------------------------ conversations

    async def delete_conversation(self, conversation_id: str) -> str:
        if await self._directory.lookup_conversation(conversation_id) is None:
            raise NotFound(f"no conversation {conversation_id!r}")
        members = await self._directory.members(conversation_id)
        async with self._registry.stopped(conversation_id) as subscribers:
            async with self._media.lock:
                digests = await self._directory.write(
                    removal.delete_conversation_rows, conversation_id
                )
                await blocking(removal.unlink_blobs, self._data_dir, digests)
            self._search.forget(conversation_id)
            await blocking(removal.remove_conversation_file, self._data_dir, conversation_id)
            if self._assistant is not None:
                self._assistant.conversation_gone(conversation_id)
        gone = encode(Unsubscribed(conversation_id=conversation_id, reason="deleted"))
        peers: set[Peer] = set(subscribers)
        for user_id in members:
            peers.update(self._presence.peers_of(user_id))
        for peer in peers:
            peer.push(gone)
            peer.subscription_ended(conversation_id)
        return removal.deleted_conversation_said(conversation_id, len(digests))

    async def restore_conversation(self, conversation_id: str, backup: Path) -> str:
        # Checked before the conversation stops: a bad backup changes nothing.
        await blocking(restore_one.check_backup, backup, conversation_id)
        async with self._registry.stopped(conversation_id) as subscribers:
            self._search.forget(conversation_id)
            sync = self._config.storage.synchronous
            staged = await blocking(
                lambda: restore_one.stage(
                    backup, self._data_dir, conversation_id, sync, checked=True
                )
            )
            try:
                media = await blocking(restore_one.attached_media, staged.path)
                rows = await blocking(restore_one.read_backup_rows, backup, conversation_id, media)
                if (
                    rows.conversation is None
                    and await self._directory.lookup_conversation(conversation_id) is None
                ):
                    raise NotFound(f"no conversation {conversation_id!r} here or in the backup")
            except BaseException:
                await blocking(restore_one.discard, staged)
                raise
            async with self._media.lock:
                await blocking(
                    restore_one.copy_blobs, backup, self._data_dir, [str(r[2]) for r in rows.media]
                )
                await blocking(restore_one.install, staged, self._data_dir, conversation_id)
                recreated, _ = await self._directory.write(
                    restore_one.put_back_rows, rows, conversation_id, media
                )
            self._search.forget(conversation_id)
        await self._catch_up(conversation_id, subscribers, staged.before_rev)
        record = await self._directory.lookup_conversation(conversation_id)
        if recreated and record is not None:
            await self._announce.added(record, await self._directory.members(conversation_id))
        return restore_one.said(conversation_id, staged, recreated)

    async def _catch_up(self, conversation_id: str, peers: set[Peer], after_rev: int) -> None:
        """The restored conversation's subscribers get what changed (see the module)."""
        members = await self._directory.members(conversation_id)
        if not peers or not members:
            return
        kept = self._registry.resubscribe(conversation_id, peers)
        frames: list[str] = []
        while len(frames) <= RESTORE_PUSH_LIMIT:
            page = await self._registry.call(
                conversation_id, members[0], GetChanges(conversation_id, after_rev, 200)
            )
            frames.extend(encode(MessageUpdated(message=m)) for m in page.messages)
            if not page.has_more or not page.messages:
                break
            after_rev = page.messages[-1].rev
        for peer in kept:
            if len(frames) > RESTORE_PUSH_LIMIT:
                close = getattr(peer, "close", None)
                if close is not None:
                    close(CLOSE_SERVICE_RESTART, "conversation restored; catch up")
                continue
            for text in frames:
                peer.push(text)


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key}: a non-empty string is required")
    return value
