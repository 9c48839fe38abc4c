"""`POST /v1/webhooks/clerk`: Svix-signed user events from Clerk, each applied once.

Mounted by the server in Clerk mode when `clerk.webhook_secret` is set. The
signature is checked over the raw body before the body is parsed: HMAC-SHA256
of `{svix-id}.{svix-timestamp}.{body}` with the secret from `whsec_…`, compared
in constant time with every `v1,` entry of `svix-signature`, and the timestamp
must be within five minutes of the server's clock. `user.created` and
`user.updated` upsert the user; `user.deleted` keeps a tombstone, so the user's
tokens stop working, and closes their open WebSockets. Other event types are
acknowledged and ignored (Svix would otherwise retry them for a day).

Our own verifier rather than the `svix`/`standardwebhooks` package: it is
twenty lines, reads Clerk's `svix-*` headers, and refuses malformed headers
with a clear 401 instead of an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

from messageai.config import ClerkConfig
from messageai.edge.asgi import Request, Response, Router
from messageai.errors import BadRequest, Unauthorized
from messageai.identity.clerk import profile_from
from messageai.protocol import MAX_ID_CHARS
from messageai.services.directory import Directory

TOLERANCE_SECONDS = 5 * 60
MAX_MESSAGE_ID_CHARS = 256
# Clerk sends one or two entries (during a secret rotation); more is not a signature.
MAX_SIGNATURES = 8
USER_EVENTS = ("user.created", "user.updated", "user.deleted")


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_…` secret (validated by the config)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def verify_signature(key: bytes, headers: Mapping[str, str], body: bytes, now: float) -> str:
    """Check a Svix signature; return the message id (`svix-id`) or raise Unauthorized.

    `headers` has lower-case names. Every `v1,` entry is compared with
    `hmac.compare_digest`; entries of other versions are skipped.
    """
    message_id = headers.get("svix-id", "")
    timestamp = headers.get("svix-timestamp", "")
    signatures = headers.get("svix-signature", "")
    if not (message_id and timestamp and signatures):
        raise Unauthorized("svix-id, svix-timestamp and svix-signature headers are required")
    if len(message_id) > MAX_MESSAGE_ID_CHARS or not message_id.isprintable():
        raise Unauthorized("svix-id is not a message id")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise Unauthorized("svix-timestamp must be whole seconds since the epoch")
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        raise Unauthorized("svix-timestamp is more than 5 minutes from the server's clock")
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    matched = False
    for entry in signatures.split(" ")[:MAX_SIGNATURES]:
        version, _, value = entry.partition(",")
        if version != "v1":
            continue
        try:
            candidate = base64.b64decode(value, validate=True)
        except binascii.Error:
            continue
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise Unauthorized("no valid signature for this body")
    return message_id


class ClerkWebhooks:
    """The webhook endpoint; `on_user_deleted(user_id)` closes the user's connections."""

    def __init__(
        self,
        config: ClerkConfig,
        directory: Directory,
        on_user_deleted: Callable[[str], object],
    ) -> None:
        self._key = secret_key(config.webhook_secret)
        self._directory = directory
        self._on_user_deleted = on_user_deleted

    def routes(self, router: Router) -> None:
        router.add("POST", "/v1/webhooks/clerk", self.receive)

    async def receive(self, request: Request) -> Response:
        message_id = verify_signature(self._key, request.headers, request.body, time.time())
        event = request.json()
        kind = event.get("type")
        if kind not in USER_EVENTS:
            return Response(200, {"status": "ignored"})
        data = event.get("data")
        if not isinstance(data, dict):
            raise BadRequest("data: must be an object")
        user_id = data.get("id")
        if not isinstance(user_id, str) or not 1 <= len(user_id) <= MAX_ID_CHARS:
            raise BadRequest(f"data.id: must be a user id of 1 to {MAX_ID_CHARS} characters")
        if kind == "user.deleted":
            applied = await self._directory.apply_clerk_event(message_id, None, user_id)
            if applied:
                self._on_user_deleted(user_id)
        else:
            profile = profile_from(
                user_id, _str(data, "username"), _full_name(data), data.get("created_at")
            )
            applied = await self._directory.apply_clerk_event(message_id, profile, None)
        return Response(200, {"status": "applied" if applied else "duplicate"})


def _str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) else None


def _full_name(data: dict[str, Any]) -> str | None:
    parts = [_str(data, "first_name") or "", _str(data, "last_name") or ""]
    return " ".join(part for part in parts if part) or None
