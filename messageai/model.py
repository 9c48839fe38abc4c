"""The records MessageAI keeps and speaks about, and the two things every layer needs to
make one: ids and the clock.

Imported by the storage layer (`store/`), the wire protocol (`protocol`), the services
and the actors; it imports nothing of MessageAI, so every edge into it points one way.
"""

from __future__ import annotations

import secrets
import time

import attrs


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch: the `created_at` of every record."""
    return time.time_ns() // 1_000_000


def new_id(prefix: str) -> str:
    """An opaque, unguessable id such as `c_Jq3x0dY9mTzKpA1b`."""
    return prefix + secrets.token_urlsafe(12)


def _rev_default(message: Message) -> int:
    # A v1 server's message has no `rev`: with sends only, `rev == seq` (PROTOCOL.md v1.1).
    return message.seq


@attrs.frozen
class Message:
    """A message as the wire carries it. The v1.1 fields have defaults so that a v1
    server's messages (without them) still parse: nothing replied to, mentioned, edited,
    deleted or reacted, and `rev == seq`."""

    id: str
    conversation_id: str
    seq: int
    sender_id: str
    client_id: str
    body: str
    attachments: list[str]
    created_at: int
    reply_to: int | None = None
    mentions: list[str] = attrs.Factory(list)
    edited_at: int | None = None
    deleted_at: int | None = None
    # Emoji -> ids of the users who reacted with it, in the order they did.
    reactions: dict[str, list[str]] = attrs.Factory(dict)
    rev: int = attrs.Factory(_rev_default, takes_self=True)


@attrs.frozen
class User:
    id: str
    username: str
    display_name: str
    created_at: int
    # v1.1: True for the server's assistant (none yet); every account is a person.
    bot: bool = False


@attrs.frozen
class Conversation:
    """A conversation as one member sees it (the REST list and `conversation_added`)."""

    id: str
    kind: str
    title: str | None
    member_ids: list[str]
    created_at: int
    last_seq: int
    last_message: Message | None
    unread_count: int
    # v1.1: a group's or channel's topic (None: none set; always None for a direct one).
    topic: str | None = None
    # Extension (v1.1): when each member joined (ms), so that a client counting "read by
    # N of M" counts for each message only the members who were there when it came.
    members_joined_at: dict[str, int] = attrs.Factory(dict)
    # v1.1: the conversation's latest change (0: empty). Defaulted so a v1 server's
    # conversations still parse; such a server has sends only, so it equals last_seq.
    last_rev: int = attrs.Factory(lambda self: self.last_seq, takes_self=True)


@attrs.frozen
class ChannelEntry:
    """One entry of `GET /v1/channels`: the conversation (as the caller sees it; for a
    channel they are not in, without its messages) and how many members it has."""

    conversation: Conversation
    member_count: int


@attrs.frozen
class ConversationRecord:
    """A conversation's row in the directory. `kind` is "direct", "group" or "channel";
    `creator_id` is None for `general`, which the server made."""

    id: str
    kind: str
    title: str | None
    creator_id: str | None
    created_at: int
    topic: str | None = None


@attrs.frozen
class MediaRecord:
    id: str
    owner_id: str
    sha256: str
    content_type: str
    size: int
    created_at: int
    # v1.1: the name given at upload (`?filename=`), None when none was.
    filename: str | None = None


@attrs.frozen
class ClerkProfile:
    """What MessageAI keeps of a Clerk user: the id is Clerk's own (`user_…`)."""

    id: str
    username: str | None
    display_name: str
    created_at: int
