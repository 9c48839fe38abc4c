"""v1.1 channels and conversation settings: `GET /v1/channels` (browse by title
prefix, most members first), `POST /v1/conversations/{id}/join`, and
`PATCH /v1/conversations/{id}` (title and topic of groups and channels, announced
as `conversation_updated`). The directory commits; the conversation's live actor
learns of a joiner through the registry (`members_changed`), as for member adds.
Mounted by `rest.mount`.
"""

from __future__ import annotations

import trio

from messageai.conversations.registry import Registry
from messageai.edge.asgi import Request, Response, Router
from messageai.errors import BadRequest, Forbidden, MessageAIError, NotFound
from messageai.live.presence import Presence
from messageai.model import ChannelEntry, ConversationRecord, User
from messageai.protocol import converter
from messageai.rest.announce import ANNOUNCE_CONCURRENCY, Announcer
from messageai.rest.params import require_user
from messageai.services.directory import Directory, check_conversation_changes

MAX_CHANNEL_QUERY_CHARS = 200


class Channels:
    def __init__(self, directory: Directory, registry: Registry, presence: Presence) -> None:
        self._directory = directory
        self._registry = registry
        self._announce = Announcer(directory, registry, presence)

    def routes(self, router: Router) -> None:
        add = router.add
        add("GET", "/v1/channels", self.list_channels)
        add("POST", "/v1/conversations/{conversation_id}/join", self.join)
        add("PATCH", "/v1/conversations/{conversation_id}", self.update)

    async def _record(self, conversation_id: str) -> ConversationRecord:
        record = await self._directory.lookup_conversation(conversation_id)
        if record is None:
            raise NotFound("no such conversation")
        return record

    async def list_channels(self, request: Request) -> Response:
        """Channels whose title starts with `q`, most members first, at most 50. A
        channel the caller is in is shown as in their conversation list; any other
        without its messages (they are for members)."""
        user = require_user(request)
        prefix = request.query.get("q", "")
        if len(prefix) > MAX_CHANNEL_QUERY_CHARS:
            raise BadRequest(f"q: at most {MAX_CHANNEL_QUERY_CHARS} characters")
        found = await self._directory.channels(prefix)
        entries: dict[int, ChannelEntry] = {}
        errors: list[MessageAIError] = []
        limiter = trio.CapacityLimiter(ANNOUNCE_CONCURRENCY)

        async def summarise(index: int, record: ConversationRecord, count: int) -> None:
            # The caller's own channels need their actor (last message, unread count),
            # a few at a time, as the conversation list does; the others do not.
            if not await self._directory.lookup_member(record.id, user.id):
                entries[index] = ChannelEntry(self._announce.directory_view(record), count)
                return
            async with limiter:
                try:
                    entries[index] = ChannelEntry(await self._announce.view(record, user), count)
                except MessageAIError as exc:
                    errors.append(exc)

        async with trio.open_nursery() as nursery:
            for index, (record, count) in enumerate(found):
                nursery.start_soon(summarise, index, record, count)
        if errors:
            raise errors[0]
        listed = [_entry(entries[index]) for index in range(len(found))]
        return Response(200, {"channels": listed})

    async def join(self, request: Request) -> Response:
        """200 the channel as the caller now sees it; joining twice changes nothing
        (and announces nothing). Not a channel: 403, as PROTOCOL.md says."""
        user = require_user(request)
        record = await self._record(request.params["conversation_id"])
        if record.kind != "channel":
            raise Forbidden("only channels can be joined; ask a member to add you")
        before = await self._directory.members(record.id)
        if await self._directory.join(record.id, user.id):
            await self._registry.members_changed(record.id, added=(user.id,))
            await self._announce.added(record, [user.id])
            # Extension: the members who were there learn the new member list.
            await self._announce.updated(record, before)
        return Response(200, await self._announce.view(record, user))

    async def update(self, request: Request) -> Response:
        """`{"title"?, "topic"?}` for groups and channels, by any member; 200 the
        conversation. Every member's open connections get `conversation_updated`
        when something changed (a PATCH to the values it has already sends none)."""
        user = require_user(request)
        # PROTOCOL.md's order: the fields first, then the conversation, then what it is.
        changes = check_conversation_changes(request.json())
        record = await self._member_record(request.params["conversation_id"], user)
        if record.kind == "direct":
            raise BadRequest("a direct conversation has no title or topic")
        updated, changed = await self._directory.update_conversation(record, changes)
        if changed:
            await self._announce.updated(updated, await self._directory.members(record.id))
        return Response(200, await self._announce.view(updated, user))

    async def _member_record(self, conversation_id: str, user: User) -> ConversationRecord:
        record, member = await self._directory.conversation_for_member(conversation_id, user.id)
        if record is None:
            raise NotFound("no such conversation")
        if not member:
            raise Forbidden("you are not a member of this conversation")
        return record


def _entry(entry: ChannelEntry) -> dict[str, object]:
    # The conversation object with `member_count` beside its fields, as PROTOCOL.md
    # lists them ("each with member_count and topic").
    out: dict[str, object] = converter.unstructure(entry.conversation)
    out["member_count"] = entry.member_count
    return out
