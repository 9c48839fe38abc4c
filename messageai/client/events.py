"""What the SDK tells UIs: change events, and the bounded streams that carry them.

`Events.emit` is called by the sync engine and `sdk.Client` right after the
local store changed; it never waits. Each subscriber (`Client.events()`) has its
own bounded buffer: a subscriber that falls behind loses the buffered events and
gets one `Overflowed` instead, which means "re-read the store" (the store is
the source of truth, so nothing is lost but the detail of what changed).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Literal, TypeAlias

import anyio
import attrs

from messageai.client.store import LocalMessage

DEFAULT_BUFFER = 1024


@attrs.frozen
class MessageAdded:
    message: LocalMessage


@attrs.frozen
class MessageUpdated:
    """A stored message changed: acked (`sent`), `read`, `failed`, edited, deleted, its
    reactions (anyone's, mine optimistically), or a change of mine confirmed."""

    message: LocalMessage


@attrs.frozen
class MessageRemoved:
    """A message of mine that never reached the server was deleted: it is gone from the
    store (`local_id` names the row it had)."""

    conversation_id: str
    local_id: int


@attrs.frozen
class ChangeRefused:
    """The server refused my edit, delete or reaction (`action`) for good: it is rolled
    back, and `message` is as the server has it. `error` is the server's code: text."""

    message: LocalMessage
    action: str
    error: str


@attrs.frozen
class StoreChanged:
    """The store holds messages of this conversation that no `MessageAdded` announced:
    another process sharing the store (a `tail --follow` beside `messageai chat`)
    merged them first. Re-read the conversation from the store."""

    conversation_id: str


@attrs.frozen
class ReadReceipt:
    conversation_id: str
    user_id: str
    seq: int


@attrs.frozen
class PresenceChanged:
    user_id: str
    online: bool
    last_seen_at: int | None


@attrs.frozen
class TypingChanged:
    conversation_id: str
    user_id: str
    typing: bool


@attrs.frozen
class ConversationsChanged:
    """Conversations were added, renamed (or their topic set: `conversation_updated`),
    or access to one ended (`left`: removed from
    the group, or the server answered `forbidden`; the conversation's `active` is then
    False in the store)."""

    conversation_ids: tuple[str, ...]
    left: bool = False


ConnectionState: TypeAlias = Literal["connecting", "online", "offline", "signed_out"]


@attrs.frozen
class ConnectionChanged:
    state: ConnectionState
    error: str | None = None
    retry_in_seconds: float | None = None


@attrs.frozen
class AiSettingsChanged:
    """A conversation's AI switch as the server announced it (`ai_settings`, sent to
    every subscribed connection, the changer's own included), or as a `PUT` or `GET`
    answered it: `Client.ai_settings_known` holds it from then on."""

    conversation_id: str
    enabled: bool
    proactive: bool
    changed_by: str | None


@attrs.frozen
class Overflowed:
    """This subscriber fell behind and `dropped` events were discarded: re-read the store."""

    dropped: int


Event: TypeAlias = (
    MessageAdded
    | MessageUpdated
    | MessageRemoved
    | ChangeRefused
    | StoreChanged
    | ReadReceipt
    | PresenceChanged
    | TypingChanged
    | ConversationsChanged
    | ConnectionChanged
    | AiSettingsChanged
    | Overflowed
)


class EventStream:
    """One subscriber's bounded queue of events; an async iterator and context manager."""

    def __init__(self, owner: Events, size: int) -> None:
        if size < 1:
            raise ValueError("an event stream needs room for at least one event")
        self._owner = owner
        self._size = size
        self._queue: deque[Event] = deque()
        self._wake = anyio.Event()
        self._closed = False

    def put(self, event: Event) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._size:
            first = self._queue[0]
            dropped = len(self._queue) + (first.dropped - 1 if isinstance(first, Overflowed) else 0)
            self._queue.clear()
            self._queue.append(Overflowed(dropped=dropped + 1))
        else:
            self._queue.append(event)
        self._wake.set()

    async def receive(self) -> Event:
        """The next event. Raises anyio.EndOfStream once the stream is closed and drained."""
        while not self._queue:
            if self._closed:
                raise anyio.EndOfStream
            await self._wake.wait()
            self._wake = anyio.Event()
        return self._queue.popleft()

    def close(self) -> None:
        self._closed = True
        self._owner._streams.discard(self)
        self._wake.set()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Events:
    """Fans events out to every open stream, without waiting."""

    def __init__(self) -> None:
        self._streams: set[EventStream] = set()

    def subscribe(self, size: int = DEFAULT_BUFFER) -> EventStream:
        stream = EventStream(self, size)
        self._streams.add(stream)
        return stream

    def emit(self, event: Event) -> None:
        for stream in list(self._streams):
            stream.put(event)

    def close(self) -> None:
        for stream in list(self._streams):
            stream.close()
