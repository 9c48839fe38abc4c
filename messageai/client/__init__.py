"""The MessageAI client: a local-first SDK (`Client`), a terminal client and one-shot commands.

Modules: `store` (all SQL), `accounts` (where databases live), `api` (REST),
`link` (one WebSocket), `sync` (the engine), `events` (what UIs hear), `sdk`
(the `Client`, with the assistant's routes), `commands` and `chat` (the `messageai`
subcommands), `chat_ai` (the chat's `/ask`, `/catchup`, `/todo`, `/ai`).
"""

from messageai.client.errors import (
    AuthError,
    ClientError,
    NotSignedIn,
    ProtocolViolation,
    ServerError,
    Unreachable,
)
from messageai.client.sdk import Client
from messageai.client.store import LocalConversation, LocalMessage
from messageai.client.sync import Settings, SyncReport

__all__ = [
    "AuthError",
    "Client",
    "ClientError",
    "LocalConversation",
    "LocalMessage",
    "NotSignedIn",
    "ProtocolViolation",
    "ServerError",
    "Settings",
    "SyncReport",
    "Unreachable",
]
