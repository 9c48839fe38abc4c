"""What sessions and REST handlers hand to a conversation actor, and how answers come back.

A `Command` carries a client frame (or an internal request) with the caller's
identity. A WebSocket caller gets its answer pushed to its session's outbound
queue; a REST or internal caller awaits a `Waiter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from messageai.errors import MessageAIError
from messageai.protocol import ClientFrame, Req

if TYPE_CHECKING:
    from messageai.protocol import ServerFrame


class Peer(Protocol):
    """A connection that can receive frames (the WebSocket session)."""

    user_id: str

    def push(self, text: str) -> None: ...

    def push_frame(self, frame: ServerFrame) -> None: ...

    def subscription_ended(self, conversation_id: str) -> None: ...


@attrs.frozen
class Summary:
    """Internal: the conversation's list entry for `user_id`."""


@attrs.frozen
class MembersChanged:
    """Internal: the directory changed the member list; `removed` lose access at once."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


Operation = ClientFrame | Summary | MembersChanged


class Waiter:
    """A one-shot answer slot for a caller that awaits the actor (REST, internal)."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: Any = None
        self._error: MessageAIError | None = None

    def set(self, value: Any) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: MessageAIError) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> Any:
        """Wait for the answer. Cancelling the wait leaves the command to run to completion."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


@attrs.define(slots=True)
class Command:
    op: Operation
    user_id: str
    req: Req = None
    peer: Peer | None = None
    waiter: Waiter | None = None
    # Set once the command got its one answer (a frame, a waiter value, an error).
    answered: bool = False
