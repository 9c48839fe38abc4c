"""Conversation objects as one member sees them, and the frames that tell members'
live connections about a conversation: `conversation_added` (they are in it now) and
`conversation_updated` (v1.1: its title, topic or member list changed).

Both go to every open connection of the user, subscribed or not (the rule of
`conversation_added`, which PROTOCOL.md's "More details" gives
`conversation_updated` too). Called by `rest/conversations.py` and `rest/channels.py`
after the directory has committed the change. In cluster mode `Presence.tell` also
publishes them for the user's connections on the other nodes (docs/SCALE.md §6).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from messageai.conversations.commands import Summary
from messageai.conversations.registry import Registry
from messageai.errors import MessageAIError
from messageai.live.presence import Presence
from messageai.model import Conversation, ConversationRecord, User
from messageai.protocol import ConversationAdded, dumps, encode
from messageai.services.directory import Directory

# Members whose view (one actor round trip each, for their unread count) is built at
# once when a change is announced: the actor batches them, and a big channel's
# announcement neither floods its queue nor waits for one member at a time.
ANNOUNCE_CONCURRENCY = 8


class Announcer:
    def __init__(self, directory: Directory, registry: Registry, presence: Presence) -> None:
        self._directory = directory
        self._registry = registry
        self._presence = presence

    async def view(self, record: ConversationRecord, user: User) -> Conversation:
        """The conversation as the member `user` sees it (their `unread_count`)."""
        summary = await self._registry.call(record.id, user.id, Summary())
        joined = self._directory.members_joined_at(record.id)
        return Conversation(
            id=record.id,
            kind=record.kind,
            title=record.title,
            member_ids=list(joined),
            created_at=record.created_at,
            last_seq=summary.last_seq,
            last_message=summary.last_message,
            unread_count=summary.unread_count,
            last_rev=summary.last_rev,
            topic=record.topic,
            members_joined_at=_joined_at(record, joined),
        )

    def directory_view(self, record: ConversationRecord) -> Conversation:
        """The conversation for someone who is not a member (a channel they may join):
        its title, topic and members, none of its messages (`last_seq` 0,
        `last_message` null, `unread_count` 0): those are for members."""
        joined = self._directory.members_joined_at(record.id)
        return Conversation(
            id=record.id,
            kind=record.kind,
            title=record.title,
            member_ids=list(joined),
            created_at=record.created_at,
            last_seq=0,
            last_message=None,
            unread_count=0,
            topic=record.topic,
            members_joined_at=_joined_at(record, joined),
        )

    async def added(self, record: ConversationRecord, user_ids: list[str]) -> None:
        """`conversation_added` to the live connections of `user_ids` (now members)."""
        await self._each(record, user_ids, lambda c: encode(ConversationAdded(conversation=c)))

    async def updated(self, record: ConversationRecord, user_ids: list[str]) -> None:
        """`conversation_updated` `{conversation}` to the live connections of `user_ids`."""
        await self._each(record, user_ids, _updated_text)

    async def _each(
        self,
        record: ConversationRecord,
        user_ids: list[str],
        text_of: Callable[[Conversation], str],
    ) -> None:
        limiter = trio.CapacityLimiter(ANNOUNCE_CONCURRENCY)

        async def tell(user_id: str) -> None:
            # `is_online`: a connection here, or (cluster mode) on another node.
            online = self._presence.is_online(user_id)
            user = self._directory.user(user_id) if online else None
            if user is None:
                return
            async with limiter:
                try:
                    conversation = await self.view(record, user)
                except MessageAIError:
                    # The change is committed and answered; a member whose actor call
                    # failed (removed meanwhile, a timeout) catches up from the list.
                    return
            self._presence.tell(user_id, text_of(conversation))

        async with trio.open_nursery() as nursery:
            for user_id in dict.fromkeys(user_ids):
                if self._presence.is_online(user_id):
                    nursery.start_soon(tell, user_id)


def _updated_text(conversation: Conversation) -> str:
    # Built here rather than as a frame class of `protocol` (whose frames another
    # change owns in this release); the same converter, so the same JSON.
    return dumps({"type": "conversation_updated", "conversation": conversation}).decode()


def _joined_at(record: ConversationRecord, joined: dict[str, int]) -> dict[str, int]:
    # Groups only: "read by N of M" is a group's; a direct conversation's two joined
    # at once, and a channel's list (general: every user) would only weigh on every
    # conversation object.
    return joined if record.kind == "group" else {}
