"""The wire protocol of PROTOCOL.md: frames as attrs classes and the one converter.

`parse_client_frame` is called by the WebSocket session for every text frame; it
validates shape and types before anything touches storage. `encode` turns server
frames into the text that is written to sockets (once per frame, shared by all
recipients).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

import attrs
import cattrs
import orjson
from cattrs.gen import make_dict_unstructure_fn, override

from messageai.errors import BadRequest, TooLarge, UnknownType
from messageai.model import Conversation, Message
from messageai.strict import JSON, json_name, scalar_hook, string_list

MAX_ID_CHARS = 128
MAX_SEQ = 2**63 - 1
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 200
CHANGES_DEFAULT_LIMIT = 100
CHANGES_MAX_LIMIT = 200
# PROTOCOL.md v1.1: at most this many distinct mentions, counted after deduplication.
MAX_MENTIONS = 50
# PROTOCOL.md v1.1: an emoji is 1 to this many bytes of UTF-8.
MAX_EMOJI_BYTES = 32
# The default of `limits.max_body_chars` (config.py), and the longest body the client
# SDK queues: one number, so a client never queues what a default server refuses.
DEFAULT_MAX_BODY_CHARS = 16000

Req: TypeAlias = str | int | None
T = TypeVar("T")


# ---------------------------------------------------------------- client frames


@attrs.frozen
class Subscribe:
    conversation_id: str


@attrs.frozen
class Unsubscribe:
    conversation_id: str


@attrs.frozen
class SendMessage:
    conversation_id: str
    client_id: str
    body: str
    attachments: list[str] = attrs.Factory(list)
    # v1.1: the seq of the message replied to (None: none), and the members mentioned
    # (deduplicated by `_check_ranges`, first occurrence kept).
    reply_to: int | None = None
    mentions: list[str] = attrs.Factory(list)


@attrs.frozen
class EditMessage:
    conversation_id: str
    seq: int
    body: str


@attrs.frozen
class DeleteMessage:
    conversation_id: str
    seq: int


@attrs.frozen
class React:
    conversation_id: str
    seq: int
    emoji: str
    on: bool


@attrs.frozen
class GetChanges:
    conversation_id: str
    after_rev: int
    limit: int = CHANGES_DEFAULT_LIMIT


@attrs.frozen
class GetHistory:
    conversation_id: str
    after_seq: int | None = None
    before_seq: int | None = None
    limit: int = HISTORY_DEFAULT_LIMIT


@attrs.frozen
class MarkRead:
    conversation_id: str
    seq: int


@attrs.frozen
class Typing:
    conversation_id: str
    typing: bool


@attrs.frozen
class Ping:
    pass


# search: PROTOCOL.md v1.1 "Search"; the field rules are services/search.py's.
@attrs.frozen
class Search:
    q: str
    conversation_id: str | None = None
    limit: int | None = None
    mode: str | None = None


# ai: PROTOCOL.md v1.1 "AI over a conversation"; the question's rules are ai/assistant.py's.
@attrs.frozen
class AiAsk:
    conversation_id: str
    question: str


# The v1.1 frames that change a message: they go through the group commit as sends do.
MessageChange: TypeAlias = EditMessage | DeleteMessage | React

ClientFrame: TypeAlias = (
    Subscribe
    | Unsubscribe
    | SendMessage
    | GetHistory
    | MarkRead
    | Typing
    | Ping
    | EditMessage
    | DeleteMessage
    | React
    | GetChanges
    | Search
    | AiAsk
)

CLIENT_FRAMES: dict[str, type[ClientFrame]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "send_message": SendMessage,
    "get_history": GetHistory,
    "mark_read": MarkRead,
    "typing": Typing,
    "ping": Ping,
    "edit_message": EditMessage,
    "delete_message": DeleteMessage,
    "react": React,
    "get_changes": GetChanges,
    "search": Search,
    "ai_ask": AiAsk,
}


# ---------------------------------------------------------------- the converter


converter = cattrs.Converter()
for _t in (str, int, bool):
    converter.register_structure_hook(_t, scalar_hook(_t, JSON))
converter.register_structure_hook_func(
    lambda t: t == list[str], lambda value, _type: string_list(value, JSON)
)


def _format(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        problems = cattrs.transform_error(exc, path="", format_exception=_format)
        out = []
        for problem in problems:
            message, _, path = problem.rpartition(" @ ")
            out.append(f"{path.lstrip('$.')}: {message}" if path.strip("$.") else message)
        return "; ".join(out)
    return str(exc)


def _check_id(name: str, value: str) -> None:
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise BadRequest(f"{name}: must be 1 to {MAX_ID_CHARS} characters")


def _check_seq(name: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= MAX_SEQ:
        raise BadRequest(f"{name}: must be an integer from 0 to {MAX_SEQ}")


def read_req(obj: dict[str, Any]) -> Req:
    """The frame's `req` if it is usable (string or integer), else None."""
    req = obj.get("req")
    if type(req) is str and len(req) <= MAX_ID_CHARS:
        return req
    if type(req) is int and -MAX_SEQ <= req <= MAX_SEQ:
        return req
    return None


def parse_client_frame(text: str | bytes) -> tuple[Req, ClientFrame]:
    """Decode and validate one client frame.

    Raises a MessageAIError whose `req` attribute carries the frame's `req` when
    it could be read, so the error frame can name it.
    """
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"frame is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise BadRequest(f"frame must be a JSON object, got {json_name(obj)}")
    return frame_from_object(obj)


def frame_from_object(obj: dict[str, Any]) -> tuple[Req, ClientFrame]:
    """Validate a decoded frame object (also used by REST for its message bodies)."""
    req = read_req(obj)
    try:
        if "req" in obj and req is None:
            raise BadRequest("req: must be a string of at most 128 characters or an integer")
        kind = obj.get("type")
        if type(kind) is not str:
            raise BadRequest("type: required string field missing")
        cls = CLIENT_FRAMES.get(kind)
        if cls is None:
            raise UnknownType(f"unknown frame type {kind[:64]!r}")
        try:
            frame = converter.structure(obj, cls)
        except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
            raise BadRequest(f"{kind}: {_describe(exc)}") from None
        frame = _check_ranges(frame)
    except (BadRequest, UnknownType) as exc:
        exc.req = req
        raise
    return req, frame


def _check_ranges(frame: ClientFrame) -> ClientFrame:
    """The value rules of the frame's fields (after the types); returns the frame,
    normalised where the protocol says so (mentions deduplicated)."""
    if isinstance(frame, (Ping, Search)):
        return frame
    _check_id("conversation_id", frame.conversation_id)
    if isinstance(frame, SendMessage):
        _check_id("client_id", frame.client_id)
        for media_id in frame.attachments:
            _check_id("attachments[]", media_id)
        _check_seq("reply_to", frame.reply_to)
        if frame.mentions:
            mentions = check_mentions(frame.mentions)
            if mentions != frame.mentions:
                frame = attrs.evolve(frame, mentions=mentions)
    elif isinstance(frame, GetHistory):
        _check_seq("after_seq", frame.after_seq)
        _check_seq("before_seq", frame.before_seq)
        if frame.limit < 1:
            raise BadRequest("limit: must be at least 1")
    elif isinstance(frame, MarkRead):
        _check_seq("seq", frame.seq)
    elif isinstance(frame, (EditMessage, DeleteMessage, React)):
        _check_seq("seq", frame.seq)
        if isinstance(frame, React):
            check_emoji(frame.emoji)
    elif isinstance(frame, GetChanges):
        _check_seq("after_rev", frame.after_rev)
        if frame.limit < 1:
            raise BadRequest("limit: must be at least 1")
    return frame


def check_mentions(mentions: list[str]) -> list[str]:
    """`mentions` deduplicated (first occurrence kept), or BadRequest if a value is not
    an id or more than MAX_MENTIONS remain. Whether they are members is the actor's."""
    unique = list(dict.fromkeys(mentions))
    if len(unique) > MAX_MENTIONS:
        raise BadRequest(f"mentions: at most {MAX_MENTIONS} distinct users")
    for user_id in unique:
        _check_id("mentions[]", user_id)
    return unique


def check_emoji(emoji: str) -> None:
    """PROTOCOL.md v1.1: 1 to 32 bytes of UTF-8, no white space, no control character.
    Anything else (`:+1:`, a ZWJ sequence, a flag) is an emoji."""
    try:
        size = len(emoji.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
        raise BadRequest("emoji: must be valid UTF-8") from None
    if not 1 <= size <= MAX_EMOJI_BYTES:
        raise BadRequest(f"emoji: must be 1 to {MAX_EMOJI_BYTES} bytes of UTF-8")
    for char in emoji:
        if char.isspace() or unicodedata.category(char) == "Cc":
            raise BadRequest("emoji: must not contain white space or control characters")


def structure_record(obj: object, cls: type[T]) -> T:
    """Validate a decoded JSON object as the record `cls` (a `model` class) with the
    wire's strict types, or raise ValueError naming the field. Extra keys are allowed
    (a newer server may add some). Called by the client SDK on what the server sends."""
    if type(obj) is not dict:
        raise ValueError(f"expected object, got {json_name(obj)}")
    try:
        return converter.structure(obj, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        raise ValueError(_describe(exc)) from None


def check_message_content(
    body: str, attachments: list[str], max_chars: int, max_attachments: int
) -> None:
    """The body and attachment rules shared by the WebSocket and REST send paths. A
    message with at least one attachment may have an empty body (v1.1: captionless
    files); one without must have text."""
    length = len(body.strip())
    if length == 0 and not attachments:
        raise BadRequest("body: must not be empty (unless the message has attachments)")
    if length > max_chars:
        raise TooLarge(f"body: at most {max_chars} characters")
    if len(attachments) > max_attachments:
        raise TooLarge(f"attachments: at most {max_attachments}")


def check_edit_body(body: str, max_chars: int) -> None:
    """An `edit_message` body: the body rules of `send_message` (a message keeps its
    attachments through an edit, but an edit never empties the body)."""
    check_message_content(body, [], max_chars, 0)


def history_limit(limit: int) -> int:
    return min(limit, HISTORY_MAX_LIMIT)


def changes_limit(limit: int) -> int:
    return min(limit, CHANGES_MAX_LIMIT)


# ---------------------------------------------------------------- server frames


@attrs.frozen
class Subscribed:
    conversation_id: str
    last_seq: int
    read_cursors: dict[str, int]
    online: list[str]
    req: Req = None


@attrs.frozen
class Ok:
    req: Req = None


@attrs.frozen
class Pong:
    req: Req = None


@attrs.frozen
class Ack:
    client_id: str
    message: Message
    duplicate: bool
    req: Req = None


@attrs.frozen
class History:
    conversation_id: str
    messages: list[Message]
    has_more: bool
    req: Req = None


@attrs.frozen
class NewMessage:
    message: Message


@attrs.frozen
class Updated:
    """v1.1: the answer to `edit_message`, `delete_message` and `react`."""

    message: Message
    req: Req = None


@attrs.frozen
class Changes:
    """v1.1: the answer to `get_changes`, ascending by rev."""

    conversation_id: str
    messages: list[Message]
    last_rev: int
    has_more: bool
    req: Req = None


@attrs.frozen
class MessageUpdated:
    """v1.1: a message changed (edit, delete, reaction); to the other subscribers."""

    message: Message


@attrs.frozen
class MessageRead:
    conversation_id: str
    user_id: str
    seq: int


@attrs.frozen
class PresenceUpdate:
    user_id: str
    status: str
    last_seen_at: int


@attrs.frozen
class TypingUpdate:
    conversation_id: str
    user_id: str
    typing: bool


@attrs.frozen
class Unsubscribed:
    conversation_id: str
    reason: str


@attrs.frozen
class ConversationAdded:
    """Extension: the receiving user was made a member of `conversation`."""

    conversation: Conversation


@attrs.frozen
class Error:
    code: str
    message: str
    # Extension, `rate_limited` only: when a retry will succeed. Left out when None.
    retry_after_ms: int | None = None
    req: Req = None


# search: one hit of `search_results` (PROTOCOL.md v1.1 "Search").
@attrs.frozen
class SearchResult:
    conversation_id: str
    message: Message
    snippet: str
    highlights: list[list[int]]
    score: float


@attrs.frozen
class SearchResults:
    mode: str
    results: list[SearchResult]
    indexing: bool
    # Extension: some of the caller's conversations were not searched (more than
    # `search.max_files_per_query` files to open). Left out when False.
    truncated: bool = False
    req: Req = None


# ai: the assistant's frames (PROTOCOL.md v1.1 "AI over a conversation").
@attrs.frozen
class AiSettingsChanged:
    conversation_id: str
    enabled: bool
    proactive: bool
    changed_by: str | None


@attrs.frozen
class AiDelta:
    text: str
    req: Req = None


@attrs.frozen
class AiAnswer:
    answer: str
    citations: list[int]
    cached: bool
    req: Req = None


ServerFrame: TypeAlias = (
    Subscribed
    | Ok
    | Pong
    | Ack
    | History
    | NewMessage
    | MessageRead
    | PresenceUpdate
    | TypingUpdate
    | Unsubscribed
    | Error
    | ConversationAdded
    | Updated
    | Changes
    | MessageUpdated
    | SearchResults
    | AiSettingsChanged
    | AiDelta
    | AiAnswer
)


SERVER_FRAMES: dict[type, str] = {
    Subscribed: "subscribed",
    Ok: "ok",
    Pong: "pong",
    Ack: "ack",
    History: "history",
    NewMessage: "new_message",
    MessageRead: "message_read",
    PresenceUpdate: "presence_update",
    TypingUpdate: "typing",
    Unsubscribed: "unsubscribed",
    Error: "error",
    ConversationAdded: "conversation_added",
    Updated: "updated",
    Changes: "changes",
    MessageUpdated: "message_updated",
    SearchResults: "search_results",
    AiSettingsChanged: "ai_settings",
    AiDelta: "ai_delta",
    AiAnswer: "ai_answer",
}


def _register_server_frame(cls: type, tag: str) -> None:
    """Unstructure `cls` with `"type": tag` first, leaving out `req` (and `error`'s
    `retry_after_ms`) when it is None."""
    fn: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(
        cls,
        converter,
        req=override(omit_if_default=True),
        retry_after_ms=override(omit_if_default=True),
    )

    def unstructure(frame: Any) -> dict[str, Any]:
        return {"type": tag, **fn(frame)}

    converter.register_unstructure_hook(cls, unstructure)


for _cls, _tag in SERVER_FRAMES.items():
    _register_server_frame(_cls, _tag)


def _register_search_results() -> None:
    # search: also leaves out `truncated` when False (an extension, rarely set).
    fn: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(
        SearchResults,
        converter,
        req=override(omit_if_default=True),
        truncated=override(omit_if_default=True),
    )
    converter.register_unstructure_hook(
        SearchResults, lambda frame: {"type": "search_results", **fn(frame)}
    )


_register_search_results()


def _message_dict(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "conversation_id": m.conversation_id,
        "seq": m.seq,
        "sender_id": m.sender_id,
        "client_id": m.client_id,
        "body": m.body,
        "attachments": m.attachments,
        "created_at": m.created_at,
        "reply_to": m.reply_to,
        "mentions": m.mentions,
        "edited_at": m.edited_at,
        "deleted_at": m.deleted_at,
        "reactions": m.reactions,
        "rev": m.rev,
    }


def _encode_ack(frame: Ack) -> dict[str, Any]:
    out = {
        "type": "ack",
        "client_id": frame.client_id,
        "message": _message_dict(frame.message),
        "duplicate": frame.duplicate,
    }
    if frame.req is not None:
        out["req"] = frame.req
    return out


def _encode_new_message(frame: NewMessage) -> dict[str, Any]:
    return {"type": "new_message", "message": _message_dict(frame.message)}


def _encode_updated(frame: Updated) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "updated", "message": _message_dict(frame.message)}
    if frame.req is not None:
        out["req"] = frame.req
    return out


def _encode_message_updated(frame: MessageUpdated) -> dict[str, Any]:
    return {"type": "message_updated", "message": _message_dict(frame.message)}


def _encode_changes(frame: Changes) -> dict[str, Any]:
    # Catch-up pages carry up to 200 messages: the converter took 0.9 ms a page.
    out: dict[str, Any] = {
        "type": "changes",
        "conversation_id": frame.conversation_id,
        "messages": [_message_dict(m) for m in frame.messages],
        "last_rev": frame.last_rev,
        "has_more": frame.has_more,
    }
    if frame.req is not None:
        out["req"] = frame.req
    return out


# The frames of every message and every change to one (measured: the converter takes
# about 13 µs a frame, these about 3); tests check they match the converter byte for byte.
_FAST_ENCODERS: dict[type, Callable[[Any], dict[str, Any]]] = {
    Ack: _encode_ack,
    NewMessage: _encode_new_message,
    Updated: _encode_updated,
    MessageUpdated: _encode_message_updated,
    Changes: _encode_changes,
}


def encode(frame: ServerFrame) -> str:
    """The frame as WebSocket text. Call once per frame and share the result."""
    fast = _FAST_ENCODERS.get(type(frame))
    if fast is not None:
        return orjson.dumps(fast(frame)).decode()
    return orjson.dumps(converter.unstructure(frame)).decode()


def dumps(value: Any) -> bytes:
    """JSON bytes for REST bodies (attrs objects unstructured by the same converter)."""
    return orjson.dumps(converter.unstructure(value))
