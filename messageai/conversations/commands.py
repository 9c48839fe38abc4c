"""What sessions and REST handlers hand to a conversation actor, and how answers come back.

A `Command` carries a client frame (or an internal request) with the caller's
identity. A WebSocket caller gets its answer pushed to its session's outbound
queue; a REST or internal caller awaits a `Waiter`. The result records below are
what the actor's storage phase computes per command and what `Registry.call`
returns, so both ends are checked by mypy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeAlias, TypeVar, cast

import apsw
import attrs
import trio

from messageai.errors import MessageAIError
from messageai.model import Message
from messageai.protocol import (
    DeleteMessage,
    EditMessage,
    GetChanges,
    GetHistory,
    MarkRead,
    React,
    Req,
    SendMessage,
    Subscribe,
    Typing,
    Unsubscribe,
)

if TYPE_CHECKING:
    from messageai.protocol import ServerFrame

T = TypeVar("T")


class Peer(Protocol):
    """A connection that can receive frames (the WebSocket session).

    The actor tells it when a subscription starts (the actor accepted a
    `subscribe`; the peer answers False if it has ended meanwhile, and is not kept)
    and when it ends (`unsubscribe`, removal from the group, the actor's crash), so
    the peer's own view of its subscriptions follows the actor's and nothing else.
    """

    user_id: str

    def push(self, text: str) -> None: ...

    def push_frame(self, frame: ServerFrame) -> None: ...

    def subscription_started(self, conversation_id: str) -> bool: ...

    def subscription_ended(self, conversation_id: str) -> None: ...

    def flush(self) -> None: ...


# The peers pushed to while an actor answers a batch (`answering`), or None.
_pushed: list[Peer] | None = None


def defer_flush(peer: Peer) -> bool:
    """Called by a peer's `push` for the first frame it queues: True if an actor is
    answering a batch now and will call `peer.flush()` when it has answered all of
    it (so the peer writes once, after every frame of the batch is queued)."""
    if _pushed is None:
        return False
    _pushed.append(peer)
    return True


def answering() -> list[Peer] | None:
    """Start collecting the peers pushed to (an actor's phase 2, which never awaits);
    returns what `answered` needs (None if an outer caller collects already)."""
    global _pushed
    if _pushed is not None:
        return None
    _pushed = []
    return _pushed


def answered(pushed: list[Peer] | None) -> None:
    """End `answering`: every peer pushed to writes what it queued. Always called,
    in a `finally`, so that no frame stays queued unwritten."""
    global _pushed
    if pushed is None:
        return
    _pushed = None
    for peer in pushed:
        peer.flush()


@attrs.frozen
class Summary:
    """Internal: the conversation's list entry for the command's user (last message,
    last seq, that user's unread count); answered with a `ConversationSummary`."""


@attrs.frozen
class Edits:
    """Internal (REST): the edit history of message `seq`; answered with `EditHistory`."""

    seq: int


@attrs.frozen(eq=False)
class Ai(Generic[T]):
    """Internal (messageai/ai): `work(conn, user_id)` run in the actor's storage phase,
    so the assistant's reads and writes of this file (its switch, its log, the
    messages it sends) are ordered with the conversation's messages. `writes`: in the
    batch's transaction. `announce`: a frame to every subscribed connection made from
    the result after the commit (None from it: nothing to say). Answers the result."""

    work: Callable[[apsw.Connection, str], T]
    writes: bool = False
    announce: Callable[[T], ServerFrame | None] | None = None
    # A background job's (no user): the member check is the caller's, not the actor's.
    internal: bool = False


@attrs.frozen
class MembersChanged:
    """Internal: the directory changed the member list; `removed` lose access at once."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


# What an actor is asked to do. `ping` is not here: sessions answer it themselves.
Operation: TypeAlias = (
    Subscribe
    | Unsubscribe
    | SendMessage
    | GetHistory
    | MarkRead
    | Typing
    | Summary
    | MembersChanged
    | EditMessage
    | DeleteMessage
    | React
    | GetChanges
    | Edits
    | Ai[Any]
)

# ------------------------------------------------------------ results
# One small record per command on the send path: plain slotted classes, not frozen
# (a frozen attrs __init__ costs about twice as much, measured), never mutated.


@attrs.define(weakref_slot=False)
class Stored:
    """A send committed now: `message` is new."""

    message: Message
    duplicate: ClassVar[bool] = False


@attrs.define(weakref_slot=False)
class Duplicate:
    """A resend (same sender and client_id): `message` is the original, nothing new stored."""

    message: Message
    duplicate: ClassVar[bool] = True


@attrs.define(weakref_slot=False)
class CursorMoved:
    """The caller's read cursor moved forward to `seq`."""

    seq: int


@attrs.define(weakref_slot=False)
class CursorUnchanged:
    """The read cursor stayed at `seq` (already there or past it)."""

    seq: int


@attrs.define(weakref_slot=False)
class Page:
    """One page of history, ascending by seq."""

    messages: list[Message]
    has_more: bool


@attrs.define(weakref_slot=False)
class Unread:
    """How many messages the caller has not read."""

    count: int


@attrs.define(weakref_slot=False)
class Changed:
    """An edit, delete or reaction committed now: `message` as it is after it, with
    the change's new rev. For a delete, `released`: the media ids of its attachments
    that no other live message of the conversation references any more."""

    message: Message
    released: list[str] = attrs.Factory(list)
    changed: ClassVar[bool] = True


@attrs.define(weakref_slot=False)
class Unchanged:
    """An edit, delete or reaction that changed nothing (PROTOCOL.md v1.1: no rev, no
    frame to others): `message` as it is."""

    message: Message
    changed: ClassVar[bool] = False


@attrs.define(weakref_slot=False)
class ChangesPage:
    """One page of `get_changes`, ascending by rev."""

    messages: list[Message]
    last_rev: int
    has_more: bool


@attrs.define(weakref_slot=False)
class EditHistory:
    """The earlier bodies of a message and when each was replaced, oldest first."""

    edits: list[tuple[str, int]]


@attrs.define(weakref_slot=False)
class AiDone:
    """What an `Ai` command's work returned."""

    value: object


@attrs.define(weakref_slot=False)
class Refused:
    """The storage phase turned the command down; nothing changed."""

    error: MessageAIError


# One per command of a batch, from the storage phase; None: the command needs no storage.
StorageResult: TypeAlias = (
    Stored
    | Duplicate
    | CursorMoved
    | CursorUnchanged
    | Page
    | Unread
    | Changed
    | Unchanged
    | ChangesPage
    | EditHistory
    | AiDone
    | Refused
    | None
)
Sent: TypeAlias = Stored | Duplicate
Change: TypeAlias = Changed | Unchanged


@attrs.define(weakref_slot=False)
class ConversationSummary:
    """The answer to `Summary`: what a conversation list shows for one user."""

    last_seq: int
    last_message: Message | None
    unread_count: int
    last_rev: int


class Waiter(Generic[T]):
    """A one-shot answer slot for a caller that awaits the actor (REST, internal)."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: T | None = None
        self._error: MessageAIError | None = None

    def set(self, value: T) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: MessageAIError) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> T:
        """Wait for the answer. Cancelling the wait leaves the command to run to completion."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        # Set by `set`, the only way `_done` is set without an error (T may be None).
        return cast(T, self._value)


@attrs.define(slots=True)
class Command:
    op: Operation
    user_id: str
    req: Req = None
    peer: Peer | None = None
    # The actor sets what `Registry.call`'s overload for `op` promises.
    waiter: Waiter[Any] | None = None
    # Set once the command got its one answer (a frame, a waiter value, an error).
    answered: bool = False
    # A send that phase 0 found bad (a mention of a non-member): refused in phase 1
    # unless it is a resend of a stored message, which gets its original ack.
    refusal: MessageAIError | None = None
    # The server's own (the assistant's bot posting): the caller checked consent, so
    # the actor skips the member check.
    internal: bool = False
    # A send's precondition, read in the batch's transaction just before the insert
    # (the assistant's switch, for a bot post): an error refuses it, as `refusal` does.
    guard: Callable[[apsw.Connection], MessageAIError | None] | None = None
    # `time.perf_counter()` when the registry took it: the start of its ack latency.
    received: float = 0.0
