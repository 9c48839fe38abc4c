"""Errors a client can be told about, mapped to protocol codes and HTTP statuses in one place.

    MessageAIError            code        HTTP
    ├── BadRequest            bad_request  400
    ├── UnknownType           unknown_type 400
    ├── Unauthorized          unauthorized 401
    ├── Forbidden             forbidden    403
    ├── NotFound              not_found    404
    ├── Conflict              conflict     409
    ├── TooLarge              too_large    413
    ├── RateLimited           rate_limited 429
    ├── Unavailable           unavailable  503
    └── Internal              internal     500

Raised by the protocol parser, the directory, actors and REST handlers; turned
into `error` frames by the WebSocket session and into JSON bodies by the ASGI app.
"""

from __future__ import annotations


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


class Internal(MessageAIError):
    code, status = "internal", 500


# WebSocket close codes (RFC 6455 and PROTOCOL.md "Flow control").
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
