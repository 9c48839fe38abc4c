"""Errors a client can be told about, mapped to protocol codes and HTTP statuses in one place.

    MessageAIError              code         HTTP
    ├── BadRequest              bad_request  400
    │   ├── MethodNotAllowed    bad_request  405  (+ Allow)
    │   ├── RequestTimeout      bad_request  408  (body too slow; connection closed)
    │   ├── UnsupportedMediaType bad_request 415
    │   ├── UpgradeRequired     bad_request  426  (+ Upgrade: websocket)
    │   └── RangeNotSatisfiable bad_request  416  (+ Content-Range: bytes */size)
    ├── UnknownType             unknown_type 400
    ├── Unauthorized            unauthorized 401
    ├── Forbidden               forbidden    403
    ├── NotFound                not_found    404
    ├── Conflict                conflict     409
    ├── TooLarge                too_large    413
    │   ├── UriTooLong          too_large    414  (front door; connection closed)
    │   └── HeadersTooLarge     too_large    431  (front door; connection closed)
    ├── RateLimited             rate_limited 429  (+ Retry-After, retry_after_ms)
    ├── Unavailable             unavailable  503
    └── Internal                internal     500

The codes are PROTOCOL.md's closed list (v1.1 adds none), so the finer HTTP
statuses share the code of their parent. Raised by the protocol parser, the directory, actors and
REST handlers; turned into `error` frames by the WebSocket session and into JSON
bodies by `error_body` (the ASGI app, the front door, the WebSocket handshake).
The HTTP headers an error carries are added in one place, `edge.asgi.error_headers`.

`StartupError` stands apart: no client ever sees it. The server and the admin CLI
raise it when this machine refuses what they were given (a port in use, a data
directory that is a file); `messageai` prints its message and exits 1.
"""

from __future__ import annotations

from typing import Any


class MessageAIError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # The `req` of the frame that caused it, when one could be read.
        self.req: str | int | None = None


class BadRequest(MessageAIError):
    code, status = "bad_request", 400


class MethodNotAllowed(BadRequest):
    status = 405

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(f"method not allowed; use {', '.join(allowed)}")
        self.allowed = allowed


class RequestTimeout(BadRequest):
    status = 408


class UnsupportedMediaType(BadRequest):
    status = 415


class UpgradeRequired(BadRequest):
    """A plain GET of the WebSocket URL (curl, a browser tab): it needs an upgrade."""

    status = 426


class RangeNotSatisfiable(BadRequest):
    status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        # The file's size, for `Content-Range: bytes */size`.
        self.size = size


class UnknownType(MessageAIError):
    code, status = "unknown_type", 400


class Unauthorized(MessageAIError):
    code, status = "unauthorized", 401


class Forbidden(MessageAIError):
    code, status = "forbidden", 403


class NotFound(MessageAIError):
    code, status = "not_found", 404


class Conflict(MessageAIError):
    code, status = "conflict", 409


class TooLarge(MessageAIError):
    code, status = "too_large", 413


class UriTooLong(TooLarge):
    status = 414


class HeadersTooLarge(TooLarge):
    status = 431


class RateLimited(MessageAIError):
    code, status = "rate_limited", 429

    def __init__(self, message: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    @property
    def retry_after_ms(self) -> int:
        return retry_after_ms(self.retry_after_seconds)


def retry_after_ms(seconds: float) -> int:
    """The `retry_after_ms` extension field: whole milliseconds, rounded up, so that
    retrying after this long succeeds. Used by REST and WebSocket alike."""
    return max(1, int(seconds * 1000) + 1)


class Unavailable(MessageAIError):
    code, status = "unavailable", 503

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        # When the cause said how long to wait (an AI endpoint's 429): `retry_after_ms`.
        self.retry_after_seconds = retry_after_seconds


class Internal(MessageAIError):
    code, status = "internal", 500


class StartupError(Exception):
    """The server or the CLI cannot start with what it was given on this machine; the
    message names the port or the path and says what is wrong with it."""


def error_fields(exc: MessageAIError) -> dict[str, Any]:
    """`code`, `message` and, for RateLimited, `retry_after_ms`: the fields a REST
    error object and a WebSocket `error` frame share."""
    fields: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if isinstance(exc, RateLimited):
        # The extension field of PROTOCOL.md, the same on both doors.
        fields["retry_after_ms"] = exc.retry_after_ms
    elif isinstance(exc, Unavailable) and exc.retry_after_seconds is not None:
        fields["retry_after_ms"] = retry_after_ms(exc.retry_after_seconds)
    return fields


def error_body(exc: MessageAIError) -> dict[str, Any]:
    """The REST error body of PROTOCOL.md: `{"error": {"code", "message", ...}}`."""
    return {"error": error_fields(exc)}


# WebSocket close codes (RFC 6455 and PROTOCOL.md "Flow control").
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
