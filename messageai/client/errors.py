"""Errors the SDK raises, translated at the boundary from httpx, httpx-ws and server answers.

    ClientError
    ├── NotSignedIn          no account in the store, or its session ended: sign in again
    ├── Unreachable          the server could not be reached or the connection dropped
    ├── ProtocolViolation    the server answered something PROTOCOL.md does not allow
    └── ServerError          the server answered with an error code (`code`, `status`)
        ├── AuthError        `unauthorized` (or a close 1008): bad credentials or a revoked token
        └── Forbidden        `forbidden`: e.g. no longer a member of the conversation

Raised by `api`, `link`, `sync` and `sdk`; the commands turn them into one line
on stderr and a non-zero exit status.
"""

from __future__ import annotations

# Error codes that mean "this request will never succeed": a queued message that
# gets one is marked `failed` instead of being retried forever.
PERMANENT_CODES = frozenset(
    {"bad_request", "unknown_type", "forbidden", "not_found", "conflict", "too_large"}
)


class ClientError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotSignedIn(ClientError):
    pass


class Unreachable(ClientError):
    pass


class ProtocolViolation(ClientError):
    pass


class ServerError(ClientError):
    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.detail = message
        self.status = status

    @property
    def permanent(self) -> bool:
        return self.code in PERMANENT_CODES


class AuthError(ServerError):
    pass


class Forbidden(ServerError):
    pass


_CLASSES: dict[str, type[ServerError]] = {"unauthorized": AuthError, "forbidden": Forbidden}


def server_error(code: str, message: str, status: int | None = None) -> ServerError:
    return _CLASSES.get(code, ServerError)(code, message, status)
