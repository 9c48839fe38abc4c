"""REST handlers of PROTOCOL.md: accounts, users, conversations, members, messages,
media and push tokens (thin: the work is in `services.media` and `services.push`).

Each handler validates its input completely before calling the directory or an
actor. Conversation reads and sends go through the conversation's actor, the
same path as the WebSocket, so both see one order and one idempotency rule.
"""

from __future__ import annotations

from typing import Any

import cattrs

from messageai.config import Config
from messageai.conversations.commands import Summary
from messageai.conversations.registry import Registry
from messageai.edge.asgi import Request, Response, Router
from messageai.errors import BadRequest, Forbidden, NotFound, RateLimited, Unauthorized, Unavailable
from messageai.live.guard import Guard
from messageai.live.presence import Presence
from messageai.model import Conversation, ConversationRecord, User
from messageai.protocol import (
    MAX_SEQ,
    ConversationAdded,
    GetHistory,
    SendMessage,
    converter,
    encode,
    frame_from_object,
)
from messageai.services.directory import Directory
from messageai.services.media import Media
from messageai.services.push import Push

MAX_TITLE_CHARS = 200


class Rest:
    def __init__(
        self,
        config: Config,
        directory: Directory,
        registry: Registry,
        presence: Presence,
        *,
        media: Media | None = None,
        push: Push | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._config = config
        self._directory = directory
        self._registry = registry
        # The same per-user message bucket as the WebSocket: one budget, any door.
        self._guard = guard
        self._presence = presence
        self._media = media
        self._push = push

    def routes(self, router: Router) -> None:
        add = router.add
        add("GET", "/healthz", self.healthz)
        add("POST", "/v1/auth/register", self.register)
        add("POST", "/v1/auth/login", self.login)
        add("POST", "/v1/auth/logout", self.logout)
        add("GET", "/v1/me", self.me)
        add("GET", "/v1/users", self.search_users)
        add("GET", "/v1/users/{user_id}", self.get_user)
        add("POST", "/v1/conversations", self.create_conversation)
        add("GET", "/v1/conversations", self.list_conversations)
        add("GET", "/v1/conversations/{conversation_id}", self.get_conversation)
        add("POST", "/v1/conversations/{conversation_id}/members", self.add_members)
        add("DELETE", "/v1/conversations/{conversation_id}/members/{user_id}", self.remove_member)
        add("GET", "/v1/conversations/{conversation_id}/messages", self.get_messages)
        add("POST", "/v1/conversations/{conversation_id}/messages", self.send_message)
        # The upload reads its body itself, streaming it to disk (never all in memory).
        add("POST", "/v1/media", self.upload_media, stream=True)
        add("GET", "/v1/media/{media_id}", self.get_media)
        add("POST", "/v1/push-tokens", self.add_push_token)
        add("DELETE", "/v1/push-tokens/{token}", self.remove_push_token)

    # ------------------------------------------------------------ helpers

    def _user(self, request: Request) -> User:
        # The ASGI app resolved the bearer token with the identity.Authenticator.
        user = request.user
        if not isinstance(user, User):
            raise Unauthorized("a valid bearer token is required")
        return user

    def _member_record(self, conversation_id: str, user: User) -> ConversationRecord:
        record = self._directory.conversation(conversation_id)
        if record is None:
            raise NotFound("no such conversation")
        if not self._directory.is_member(conversation_id, user.id):
            raise Forbidden("you are not a member of this conversation")
        return record

    async def _conversation(self, record: ConversationRecord, user: User) -> Conversation:
        summary = await self._registry.call(record.id, user.id, Summary())
        return Conversation(
            id=record.id,
            kind=record.kind,
            title=record.title,
            member_ids=self._directory.member_ids(record.id),
            created_at=record.created_at,
            last_seq=summary.last_seq,
            last_message=summary.last_message,
            unread_count=summary.unread_count,
        )

    async def _announce(self, record: ConversationRecord, user_ids: list[str]) -> None:
        """Tell the live connections of `user_ids` that they are now in `record`
        (`conversation_added`, an extension of PROTOCOL.md, so clients need not poll)."""
        for user_id in user_ids:
            peers = self._presence.peers_of(user_id)
            if peers:
                user = self._directory.user(user_id)
                if user is not None:
                    frame = ConversationAdded(conversation=await self._conversation(record, user))
                    text = encode(frame)
                    for peer in peers:
                        peer.push(text)

    # ------------------------------------------------------------ handlers

    async def healthz(self, request: Request) -> Response:
        return Response(200, {"status": "ok"})

    async def not_enabled(self, request: Request) -> Response:
        self._user(request)
        raise Unavailable("this feature is not enabled on this server yet")

    async def upload_media(self, request: Request) -> Response:
        user = self._user(request)
        if self._media is None or request.receive is None:
            raise Unavailable("media is not enabled on this server")
        record = await self._media.upload(user.id, request.headers, request.receive)
        return Response(
            201,
            {
                "id": record.id,
                "content_type": record.content_type,
                "size": record.size,
                "sha256": record.sha256,
            },
        )

    async def get_media(self, request: Request) -> Response:
        user = self._user(request)
        if self._media is None:
            raise Unavailable("media is not enabled on this server")
        return await self._media.download(
            user.id, request.params["media_id"], request.headers.get("range")
        )

    async def add_push_token(self, request: Request) -> Response:
        user = self._user(request)
        if self._push is None:
            raise Unavailable("push notifications are not enabled on this server")
        body = request.json()
        token = await self._push.register(user.id, body.get("token"), body.get("platform"))
        return Response(201, {"token": token, "platform": body.get("platform")})

    async def remove_push_token(self, request: Request) -> Response:
        user = self._user(request)
        if self._push is None:
            raise Unavailable("push notifications are not enabled on this server")
        await self._push.unregister(user.id, request.params["token"])
        return Response(204)

    async def register(self, request: Request) -> Response:
        body = request.json()
        user, token = await self._directory.register(
            body.get("username"), body.get("password"), body.get("display_name")
        )
        return Response(201, {"user": user, "token": token})

    async def login(self, request: Request) -> Response:
        body = request.json()
        user, token = await self._directory.login(body.get("username"), body.get("password"))
        return Response(200, {"user": user, "token": token})

    async def logout(self, request: Request) -> Response:
        self._user(request)
        token = request.bearer_token()
        assert token is not None
        await self._directory.logout(token)
        return Response(204)

    async def me(self, request: Request) -> Response:
        return Response(200, self._user(request))

    async def get_user(self, request: Request) -> Response:
        self._user(request)
        found = self._directory.user(request.params["user_id"])
        if found is None:
            raise NotFound("no such user")
        return Response(200, found)

    async def search_users(self, request: Request) -> Response:
        self._user(request)
        prefix = request.query.get("q", "")
        if len(prefix) > 64:
            raise BadRequest("q: at most 64 characters")
        return Response(200, {"users": self._directory.search_users(prefix)})

    async def create_conversation(self, request: Request) -> Response:
        user = self._user(request)
        body = request.json()
        kind = body.get("kind")
        member_ids = _string_list(body.get("member_ids"), "member_ids")
        if kind == "direct":
            if len(member_ids) != 1:
                raise BadRequest("member_ids: a direct conversation takes exactly one other user")
            record, created = await self._directory.open_direct(user.id, member_ids[0])
            if created:
                await self._announce(record, [user.id, member_ids[0]])
            return Response(201 if created else 200, await self._conversation(record, user))
        if kind == "group":
            title = body.get("title")
            if not isinstance(title, str) or not 1 <= len(title.strip()) <= MAX_TITLE_CHARS:
                raise BadRequest(
                    f"title: a group needs a title of 1 to {MAX_TITLE_CHARS} characters"
                )
            record = await self._directory.create_group(user.id, title.strip(), member_ids)
            await self._announce(record, self._directory.member_ids(record.id))
            return Response(201, await self._conversation(record, user))
        raise BadRequest('kind: must be "direct" or "group"')

    async def list_conversations(self, request: Request) -> Response:
        user = self._user(request)
        conversations = []
        for conversation_id in self._directory.conversation_ids_of(user.id):
            record = self._directory.conversation(conversation_id)
            if record is not None:
                conversations.append(await self._conversation(record, user))
        conversations.sort(key=_activity, reverse=True)
        return Response(200, {"conversations": conversations})

    async def get_conversation(self, request: Request) -> Response:
        user = self._user(request)
        record = self._member_record(request.params["conversation_id"], user)
        return Response(200, await self._conversation(record, user))

    async def add_members(self, request: Request) -> Response:
        user = self._user(request)
        record = self._member_record(request.params["conversation_id"], user)
        user_ids = _string_list(request.json().get("user_ids"), "user_ids")
        if not user_ids:
            raise BadRequest("user_ids: name at least one user")
        if record.kind != "group":
            raise BadRequest("members can be added to groups only")
        await self._directory.add_members(record.id, user_ids)
        await self._registry.members_changed(record.id, added=tuple(user_ids))
        await self._announce(record, user_ids)
        return Response(200, await self._conversation(record, user))

    async def remove_member(self, request: Request) -> Response:
        user = self._user(request)
        record = self._member_record(request.params["conversation_id"], user)
        target = request.params["user_id"]
        if record.kind != "group":
            raise BadRequest("members can be removed from groups only")
        if target != user.id and user.id != record.creator_id:
            raise Forbidden("only the group's creator may remove other members")
        await self._directory.remove_member(record.id, target)
        await self._registry.members_changed(record.id, removed=(target,))
        return Response(204)

    async def get_messages(self, request: Request) -> Response:
        user = self._user(request)
        record = self._member_record(request.params["conversation_id"], user)
        query = request.query
        op = GetHistory(
            conversation_id=record.id,
            after_seq=_seq_param(query, "after_seq"),
            before_seq=_seq_param(query, "before_seq"),
            limit=_int_param(query, "limit", 50, minimum=1),
        )
        page = await self._registry.call(record.id, user.id, op)
        return Response(200, {"messages": page.messages, "has_more": page.has_more})

    async def send_message(self, request: Request) -> Response:
        user = self._user(request)
        conversation_id = request.params["conversation_id"]
        # Who may post is decided before what is posted: 404/403 come before 400.
        self._member_record(conversation_id, user)
        body = request.json()
        body.pop("type", None)
        body.pop("req", None)
        frame = {**body, "type": "send_message", "conversation_id": conversation_id}
        _, op = frame_from_object(frame)
        assert isinstance(op, SendMessage)
        if self._guard is not None:
            wait = self._guard.take(user.id)
            if wait > 0:
                raise RateLimited("too many messages: retry later", retry_after_seconds=wait)
        sent = await self._registry.call(conversation_id, user.id, op)
        return Response(200 if sent.duplicate else 201, sent.message)


def _activity(conversation: Conversation) -> int:
    if conversation.last_message is not None:
        return conversation.last_message.created_at
    return conversation.created_at


def _string_list(value: Any, name: str) -> list[str]:
    try:
        items = converter.structure(value, list[str])
    except (cattrs.BaseValidationError, TypeError) as exc:
        raise BadRequest(f"{name}: must be an array of user ids ({exc})") from None
    return list(dict.fromkeys(items))


def _int_param(query: dict[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    # isdigit() alone accepts "²", which int() refuses: ASCII digits only.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > MAX_SEQ:
        raise BadRequest(f"{name}: must be a non-negative integer")
    value = int(raw)
    if value < minimum:
        raise BadRequest(f"{name}: must be at least {minimum}")
    return value


def _seq_param(query: dict[str, str], name: str) -> int | None:
    if query.get(name) in (None, ""):
        return None
    return _int_param(query, name, 0)
