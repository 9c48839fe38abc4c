"""The members' view of a conversation's action items (PROTOCOL.md "AI over a
conversation"): list them and set their status, with the contract's checks in its
order, and the wiring that keeps them extracted.

Made by the server when the jobs runner is up; `rest/action_items.py` is its door.
Reads and writes go through the conversation's actor (`commands.Ai`), so the switch is
read in the same step as the items. A list whose extraction is behind the
conversation (a message or change since the last applied run) touches the triggers,
so items appear on a later read; an edit or delete touches them through
`message_changed` (the registry's hook), which is how items follow edits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

import apsw

from messageai.ai.action_item_job import action_items_kind
from messageai.ai.action_item_triggers import ActionItemTriggers
from messageai.ai.assistant import check_member
from messageai.ai.background import conversation_of, names_of
from messageai.ai.endpoint import Endpoint
from messageai.config import AiConfig
from messageai.conversations.commands import Ai
from messageai.conversations.registry import Registry
from messageai.errors import BadRequest, Forbidden, NotFound, Unavailable
from messageai.jobs import JobKind
from messageai.model import Message, now_ms
from messageai.services.directory import Directory
from messageai.store import action_items as sql
from messageai.store import ai as ai_sql
from messageai.store import conversation as messages_sql

T = TypeVar("T")
P = ParamSpec("P")

OFF = "the AI is off in this conversation: a member can turn it on"


class ActionItemBoard:
    def __init__(
        self,
        directory: Directory,
        registry: Registry,
        triggers: ActionItemTriggers | None,
    ) -> None:
        """`triggers` None: no endpoint is configured (every call is `unavailable`)."""
        self._directory = directory
        self._registry = registry
        self._triggers = triggers

    def message_changed(self, message: Message) -> None:
        """An edit or delete committed: extract again (the job checks the switch)."""
        # A delete has left the items in its own commit already; the items drawn
        # partly from it, and those drawn from an edited message, may read differently.
        if self._triggers is not None:
            self._triggers.touched(message.conversation_id)

    async def items(self, user_id: str, conversation_id: str) -> list[sql.ActionItem]:
        self._check_member(conversation_id, user_id)
        self._require_endpoint()

        def read(conn: apsw.Connection, _user: str) -> tuple[bool, list[sql.ActionItem], bool]:
            on = ai_sql.settings(conn).enabled
            behind = sql.extracted_rev(conn) < messages_sql.last_rev(conn)
            return on, sql.items(conn) if on else [], behind

        on, found, behind = await self._registry.call(conversation_id, user_id, Ai(read))
        if not on:
            raise Forbidden(OFF)
        if on and behind and self._triggers is not None:
            self._triggers.touched(conversation_id)
        return found

    async def set_status(
        self, user_id: str, conversation_id: str, item_id: str, status: object
    ) -> sql.ActionItem:
        if status not in sql.STATUSES:
            raise BadRequest('status: must be "open" or "done"')
        assert isinstance(status, str)
        self._check_member(conversation_id, user_id)
        self._require_endpoint()

        def write(conn: apsw.Connection, _user: str) -> sql.ActionItem | bool:
            if not ai_sql.settings(conn).enabled:
                return False
            sql.set_status(conn, item_id, status, now_ms())
            return sql.item(conn, item_id) or True

        done = await self._registry.call(conversation_id, user_id, Ai(write, writes=True))
        if done is False:
            raise Forbidden(OFF)
        if done is True:
            raise NotFound("no action item with this id here")
        return done

    def _check_member(self, conversation_id: str, user_id: str) -> None:
        check_member(self._directory, conversation_id, user_id)

    def _require_endpoint(self) -> None:
        if self._triggers is None:
            raise Unavailable("this server has no AI endpoint configured")


def chain(*hooks: Callable[P, None] | None) -> Callable[P, None]:
    """One registry hook (`changed`, `sent`) calling each of `hooks` in turn."""
    present = [hook for hook in hooks if hook is not None]

    def chained(*args: P.args, **kwargs: P.kwargs) -> None:
        for hook in present:
            hook(*args, **kwargs)

    return chained


def job_kind(
    endpoint: Endpoint, config: AiConfig, directory: Directory, registry: Registry
) -> JobKind:
    """The `ai.action_items` kind bound to this server: the conversation's actor (the
    call names a current member, as every actor call does; the work uses no user), its
    switch and log (`user_id` null: a background job), the directory's names."""

    def switch(conn: apsw.Connection) -> bool:
        return ai_sql.settings(conn).enabled

    def log(conn: apsw.Connection, seqs: Sequence[int], now: int) -> None:
        ai_sql.add_log(conn, ai_sql.LogEntry(now, None, "action_items", list(seqs)))

    return action_items_kind(
        endpoint,
        conversation_of(directory, registry),
        switch,
        log,
        names_of(directory),
        max_messages=config.max_context_messages,
        max_chars=config.max_context_chars,
    )
