"""What crosses a node link besides frames: an operation and its answer, as JSON objects.

A session's command and a REST call for a conversation owned elsewhere travel as the
operation's class name and its attrs fields (`dump_op`/`load_op`); the owner's answer
to a call comes back the same way (`dump_value`/`load_value`) or as an error code and
message (`dump_error`/`load_error`). Only the operations and answers listed here
cross; the rest (the assistant's `Ai` work, a bot post's guard: code, not data) are
refused with `NotForwardable` and must run on the owner. Called by `cluster.link`.
"""

from __future__ import annotations

from typing import Any, get_args

import cattrs

from messageai.conversations.commands import (
    Changed,
    ChangesPage,
    ConversationSummary,
    Duplicate,
    EditHistory,
    Operation,
    Page,
    Stored,
    Unchanged,
)
from messageai.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Internal,
    MessageAIError,
    NotFound,
    TooLarge,
    Unavailable,
)
from messageai.protocol import Subscribed

_converter = cattrs.Converter()

# Every operation but the assistant's `Ai` (a generic alias in the union, not a class):
# the protocol's client frames and the registry's own (`Summary`, `MembersChanged`...).
OPS: dict[str, type] = {cls.__name__: cls for cls in get_args(Operation) if isinstance(cls, type)}
_VALUES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Stored,
        Duplicate,
        Changed,
        Unchanged,
        Page,
        ChangesPage,
        EditHistory,
        ConversationSummary,
        Subscribed,
    )
}
# The errors an actor answers with, by wire code (the rest arrive as `internal`).
_ERRORS: dict[str, type[MessageAIError]] = {
    cls.code: cls
    for cls in (BadRequest, Forbidden, NotFound, Conflict, TooLarge, Unavailable, Internal)
}


class NotForwardable(Unavailable):
    """An operation that carries code (the assistant's work, a guard) cannot go to
    another node: it must run where the conversation's owner is."""


def dump_op(op: Operation) -> list[Any]:
    name = type(op).__name__
    if name not in OPS:
        raise NotForwardable(f"{name} runs only on the conversation's owner node")
    return [name, _converter.unstructure(op)]


def load_op(data: list[Any]) -> Operation:
    """ValueError for anything but a dumped operation (a link is trusted, not a client,
    but a bug must not pass for a command)."""
    name, fields = data
    cls = OPS.get(name)
    if cls is None:
        raise ValueError(f"not an operation: {name!r}")
    op: Operation = _converter.structure(fields, cls)
    return op


def dump_value(value: object) -> list[Any]:
    if value is None or isinstance(value, (int, str)):
        return ["", value]
    name = type(value).__name__
    if name not in _VALUES:
        raise NotForwardable(f"an answer of type {name} cannot cross a node link")
    return [name, _converter.unstructure(value)]


def load_value(data: list[Any]) -> object:
    name, fields = data
    if name == "":
        return fields
    return _converter.structure(fields, _VALUES[name])


def dump_error(error: MessageAIError) -> list[str]:
    # NotOwner's `link_code`: a client sees `unavailable`, the other node a moved lease.
    return [getattr(error, "link_code", error.code), error.message]


def load_error(data: list[str]) -> MessageAIError:
    code, message = data
    if code == "not_owner":  # still moving after the one retry: the client retries
        return Unavailable(message)
    return _ERRORS.get(code, Internal)(message)
