"""What the assistant's background jobs (action items, proactive scheduling) are given
to reach one conversation: its actor, and the directory's names of its people.

Made by `ai.action_item_board.job_kind` and `ai.proactive.job_kind` for the server.
A job has no user: the actor call names a current member (as every actor call does;
the work uses no user), and the job checks the conversation's switch itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import apsw

from messageai.conversations.commands import Ai
from messageai.conversations.registry import Registry
from messageai.jobs import JobFailed
from messageai.services.directory import Directory

T = TypeVar("T")


class Conversation(Protocol):
    """`conversation(cid, work, writes)`: `work(conn)` in the actor's storage phase
    (its own connection, ordered with its messages; `writes`: in the batch's
    transaction)."""

    def __call__(
        self, conversation_id: str, work: Callable[[apsw.Connection], T], writes: bool, /
    ) -> Awaitable[T]: ...


Names = Callable[[str, Sequence[str]], Awaitable[list[tuple[str, str]]]]


def conversation_of(directory: Directory, registry: Registry) -> Conversation:
    async def conversation(
        conversation_id: str, work: Callable[[apsw.Connection], T], writes: bool, /
    ) -> T:
        members = await directory.members(conversation_id)
        if not members:
            raise JobFailed("the conversation has no members")
        op = Ai(lambda conn, _user: work(conn), writes=writes)
        return await registry.call(conversation_id, members[0], op)

    return conversation


def names_of(directory: Directory) -> Names:
    """(display name, user id) of a conversation's members and of `senders` (who may
    have left, or be the assistant)."""

    async def names(conversation_id: str, senders: Sequence[str]) -> list[tuple[str, str]]:
        people = dict.fromkeys([*await directory.members(conversation_id), *senders])
        found = [(await directory.lookup_user(user_id), user_id) for user_id in people]
        return [(user.display_name, user_id) for user, user_id in found if user is not None]

    return names
