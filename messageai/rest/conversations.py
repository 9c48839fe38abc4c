"""`/v1/conversations`: conversations, their members, their messages and (v1.1) the
changes to messages.

Each handler validates its input completely before calling the directory or an actor
(for v1.1's changes: the fields, then membership, then the actor's checks of the
message, as PROTOCOL.md orders them). Conversation reads, sends and changes go through
the conversation's actor (`Registry.call`), the same path as the WebSocket, so both
see one order and one idempotency rule. Mounted by `rest.mount`.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

import trio

from messageai.conversations.commands import Edits
from messageai.conversations.registry import Registry
from messageai.edge.asgi import Request, Response, Router
from messageai.errors import BadRequest, Forbidden, MessageAIError, NotFound, RateLimited
from messageai.live.guard import Guard
from messageai.live.presence import Presence
from messageai.model import Conversation, ConversationRecord, User
from messageai.protocol import (
    CHANGES_DEFAULT_LIMIT,
    HISTORY_DEFAULT_LIMIT,
    MAX_SEQ,
    DeleteMessage,
    EditMessage,
    GetChanges,
    GetHistory,
    React,
    SendMessage,
    check_edit_body,
    check_emoji,
    frame_from_object,
)
from messageai.rest.announce import Announcer
from messageai.rest.params import int_param, require_user, seq_param, string_list
from messageai.services.directory import Directory, check_title, check_topic

# Conversation summaries one listing asks of the actors at once: enough to overlap
# database opens, few enough that one listing neither floods the actors' queues
# nor opens a burst of files against storage.max_open_databases.
SUMMARY_CONCURRENCY = 8


class Conversations:
    def __init__(
        self,
        directory: Directory,
        registry: Registry,
        presence: Presence,
        guard: Guard,
        *,
        max_body_chars: int,
    ) -> None:
        self._directory = directory
        self._registry = registry
        self._presence = presence
        # The same per-user message bucket as the WebSocket: one budget, any door.
        self._guard = guard
        self._announce = Announcer(directory, registry, presence)
        self._limits_body_chars = max_body_chars

    def routes(self, router: Router) -> None:
        add = router.add
        add("POST", "/v1/conversations", self.create_conversation)
        add("GET", "/v1/conversations", self.list_conversations)
        add("GET", "/v1/conversations/{conversation_id}", self.get_conversation)
        add("POST", "/v1/conversations/{conversation_id}/members", self.add_members)
        add("DELETE", "/v1/conversations/{conversation_id}/members/{user_id}", self.remove_member)
        add("GET", "/v1/conversations/{conversation_id}/messages", self.get_messages)
        add("POST", "/v1/conversations/{conversation_id}/messages", self.send_message)
        message = "/v1/conversations/{conversation_id}/messages/{seq}"
        add("PATCH", message, self.edit_message)
        add("DELETE", message, self.delete_message)
        add("PUT", message + "/reactions/{emoji}", self.add_reaction)
        add("DELETE", message + "/reactions/{emoji}", self.remove_reaction)
        add("GET", message + "/edits", self.get_edits)
        add("GET", "/v1/conversations/{conversation_id}/changes", self.get_changes)

    # ------------------------------------------------------------ helpers

    async def _member_record(self, conversation_id: str, user: User) -> ConversationRecord:
        record, member = await self._directory.conversation_for_member(conversation_id, user.id)
        if record is None:
            raise NotFound("no such conversation")
        if not member:
            raise Forbidden("you are not a member of this conversation")
        return record

    def _spend(self, user: User) -> None:
        """One message from the caller's budget (sends, edits, deletes, reactions), or
        RateLimited (429 with Retry-After)."""
        wait = self._guard.take(user.id)
        if wait > 0:
            raise RateLimited("too many messages: retry later", retry_after_seconds=wait)

    async def _conversation(self, record: ConversationRecord, user: User) -> Conversation:
        return await self._announce.view(record, user)

    # ------------------------------------------------------------ handlers

    async def create_conversation(self, request: Request) -> Response:
        user = require_user(request)
        body = request.json()
        kind = body.get("kind")
        raw_ids = body.get("member_ids")
        # A channel starts with its creator alone, so it needs no `member_ids`.
        member_ids = string_list(
            [] if kind == "channel" and raw_ids is None else raw_ids, "member_ids"
        )
        if kind == "direct":
            if len(member_ids) != 1:
                raise BadRequest("member_ids: a direct conversation takes exactly one other user")
            record, created = await self._directory.open_direct(user.id, member_ids[0])
            if created:
                await self._announce.added(record, [user.id, member_ids[0]])
            return Response(201 if created else 200, await self._conversation(record, user))
        if kind in ("group", "channel"):
            title = check_title(body.get("title"), kind)
            topic = check_topic(body.get("topic"))
            if kind == "group":
                record = await self._directory.create_group(user.id, title, member_ids, topic)
            else:
                if member_ids:
                    raise BadRequest("member_ids: a channel starts with its creator only")
                record = await self._directory.create_channel(user.id, title, topic)
            await self._announce.added(record, await self._directory.members(record.id))
            return Response(201, await self._conversation(record, user))
        raise BadRequest('kind: must be "direct", "group" or "channel"')

    async def list_conversations(self, request: Request) -> Response:
        """Every conversation of the caller, most recently active first. The summaries
        (one actor round trip each, which may start the actor and open its database)
        are asked SUMMARY_CONCURRENCY at a time rather than one after another. If one
        fails, the others still finish and the first error is the answer."""
        user = require_user(request)
        records = await self._directory.conversations_of(user.id)
        # By position, so that ties in activity keep the directory's order, as before.
        found: dict[int, Conversation] = {}
        errors: list[MessageAIError] = []
        limiter = trio.CapacityLimiter(SUMMARY_CONCURRENCY)

        async def summarise(index: int, record: ConversationRecord) -> None:
            async with limiter:
                try:
                    found[index] = await self._conversation(record, user)
                except MessageAIError as exc:
                    errors.append(exc)

        async with trio.open_nursery() as nursery:
            for index, record in enumerate(records):
                nursery.start_soon(summarise, index, record)
        if errors:
            raise errors[0]
        conversations = [found[index] for index in range(len(records))]
        conversations.sort(key=_activity, reverse=True)
        return Response(200, {"conversations": conversations})

    async def get_conversation(self, request: Request) -> Response:
        user = require_user(request)
        record = await self._member_record(request.params["conversation_id"], user)
        return Response(200, await self._conversation(record, user))

    async def add_members(self, request: Request) -> Response:
        user = require_user(request)
        record = await self._member_record(request.params["conversation_id"], user)
        user_ids = string_list(request.json().get("user_ids"), "user_ids")
        if not user_ids:
            raise BadRequest("user_ids: name at least one user")
        if record.kind not in ("group", "channel"):
            raise BadRequest("members can be added to groups and channels only")
        before = await self._directory.members(record.id)
        await self._directory.add_members(record.id, user_ids, channel=record.kind == "channel")
        await self._registry.members_changed(record.id, added=tuple(user_ids))
        new = [user_id for user_id in user_ids if user_id not in set(before)]
        await self._announce.added(record, new)
        if new:
            # Extension: the members who were there already learn the new member list.
            await self._announce.updated(record, before)
        return Response(200, await self._conversation(record, user))

    async def remove_member(self, request: Request) -> Response:
        user = require_user(request)
        record = await self._member_record(request.params["conversation_id"], user)
        target = request.params["user_id"]
        if record.kind not in ("group", "channel"):
            raise BadRequest("members can be removed from groups and channels only")
        if target != user.id and user.id != record.creator_id:
            raise Forbidden(f"only the {record.kind}'s creator may remove other members")
        await self._directory.remove_member(record.id, target)
        await self._registry.members_changed(record.id, removed=(target,))
        # Extension: the members who stay learn the new member list.
        await self._announce.updated(record, await self._directory.members(record.id))
        return Response(204)

    async def get_messages(self, request: Request) -> Response:
        user = require_user(request)
        record = await self._member_record(request.params["conversation_id"], user)
        query = request.query
        op = GetHistory(
            conversation_id=record.id,
            after_seq=seq_param(query, "after_seq"),
            before_seq=seq_param(query, "before_seq"),
            limit=int_param(query, "limit", HISTORY_DEFAULT_LIMIT, minimum=1),
        )
        page = await self._registry.call(record.id, user.id, op)
        return Response(200, {"messages": page.messages, "has_more": page.has_more})

    async def send_message(self, request: Request) -> Response:
        user = require_user(request)
        conversation_id = request.params["conversation_id"]
        # Who may post is decided before what is posted: 404/403 come before 400.
        await self._member_record(conversation_id, user)
        body = request.json()
        body.pop("type", None)
        body.pop("req", None)
        frame = {**body, "type": "send_message", "conversation_id": conversation_id}
        _, op = frame_from_object(frame)
        assert isinstance(op, SendMessage)
        self._spend(user)
        sent = await self._registry.call(conversation_id, user.id, op)
        return Response(200 if sent.duplicate else 201, sent.message)

    # ------------------------------------------------------------ v1.1 message changes

    async def edit_message(self, request: Request) -> Response:
        user = require_user(request)
        conversation_id, seq = request.params["conversation_id"], _seq(request)
        body = request.json().get("body")
        if not isinstance(body, str):
            raise BadRequest("body: must be a string")
        check_edit_body(body, self._limits_body_chars)
        await self._member_record(conversation_id, user)
        self._spend(user)
        op = EditMessage(conversation_id=conversation_id, seq=seq, body=body)
        change = await self._registry.call(conversation_id, user.id, op)
        return Response(200, change.message)

    async def delete_message(self, request: Request) -> Response:
        user = require_user(request)
        conversation_id, seq = request.params["conversation_id"], _seq(request)
        await self._member_record(conversation_id, user)
        self._spend(user)
        op = DeleteMessage(conversation_id=conversation_id, seq=seq)
        change = await self._registry.call(conversation_id, user.id, op)
        return Response(200, change.message)

    async def add_reaction(self, request: Request) -> Response:
        return await self._react(request, on=True)

    async def remove_reaction(self, request: Request) -> Response:
        return await self._react(request, on=False)

    async def _react(self, request: Request, *, on: bool) -> Response:
        user = require_user(request)
        conversation_id, seq = request.params["conversation_id"], _seq(request)
        emoji = _emoji(request)
        check_emoji(emoji)
        await self._member_record(conversation_id, user)
        self._spend(user)
        op = React(conversation_id=conversation_id, seq=seq, emoji=emoji, on=on)
        change = await self._registry.call(conversation_id, user.id, op)
        return Response(200, change.message)

    async def get_edits(self, request: Request) -> Response:
        user = require_user(request)
        conversation_id, seq = request.params["conversation_id"], _seq(request)
        await self._member_record(conversation_id, user)
        history = await self._registry.call(conversation_id, user.id, Edits(seq))
        return Response(
            200, {"edits": [{"body": body, "edited_at": at} for body, at in history.edits]}
        )

    async def get_changes(self, request: Request) -> Response:
        user = require_user(request)
        conversation_id = request.params["conversation_id"]
        query = request.query
        if query.get("after_rev") in (None, ""):
            raise BadRequest("after_rev: required")
        op = GetChanges(
            conversation_id=conversation_id,
            after_rev=int_param(query, "after_rev", 0),
            limit=int_param(query, "limit", CHANGES_DEFAULT_LIMIT, minimum=1),
        )
        await self._member_record(conversation_id, user)
        page = await self._registry.call(conversation_id, user.id, op)
        return Response(
            200,
            {"messages": page.messages, "last_rev": page.last_rev, "has_more": page.has_more},
        )


def _seq(request: Request) -> int:
    """The `{seq}` path parameter: ASCII digits, at most MAX_SEQ, else BadRequest."""
    raw = request.params["seq"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > MAX_SEQ:
        raise BadRequest("seq: must be a non-negative integer")
    return int(raw)


def _emoji(request: Request) -> str:
    """The `{emoji}` path segment, percent-decoded as strict UTF-8 from the raw path (the
    decoded path has already replaced bytes that are not UTF-8 with U+FFFD)."""
    segment = request.raw_path.rpartition(b"/")[2]
    try:
        return unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("emoji: must be percent-encoded UTF-8") from None


def _activity(conversation: Conversation) -> int:
    if conversation.last_message is not None:
        return conversation.last_message.created_at
    return conversation.created_at
