"""Parameter parsing shared by the REST handlers: the caller's user, JSON arrays of ids,
and the integer query parameters. Each helper raises `Unauthorized` or `BadRequest` with
a message naming the parameter; called by every `rest/` resource module.
"""

from __future__ import annotations

from typing import Any

import cattrs

from messageai.edge.asgi import Request
from messageai.errors import BadRequest, Unauthorized
from messageai.model import User
from messageai.protocol import MAX_SEQ, converter


def require_user(request: Request) -> User:
    """The authenticated caller, or Unauthorized. The ASGI app resolved the bearer
    token with the identity.Authenticator before the handler ran."""
    user = request.user
    if user is None:
        raise Unauthorized("a valid bearer token is required")
    return user


def string_list(value: Any, name: str) -> list[str]:
    """`value` as a list of strings without duplicates (first occurrence kept)."""
    try:
        items = converter.structure(value, list[str])
    except (cattrs.BaseValidationError, TypeError) as exc:
        raise BadRequest(f"{name}: must be an array of user ids ({exc})") from None
    return list(dict.fromkeys(items))


def int_param(query: dict[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    """A non-negative integer query parameter (at most MAX_SEQ); `default` when absent."""
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


def seq_param(query: dict[str, str], name: str) -> int | None:
    """A sequence-number query parameter, or None when absent."""
    if query.get(name) in (None, ""):
        return None
    return int_param(query, name, 0)
