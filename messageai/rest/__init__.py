"""REST handlers of PROTOCOL.md, one module per resource: `accounts` (register, login,
logout, me, password, users), `conversations` (conversations, members, messages),
`channels` (v1.1: browse, join, title and topic), `media`, `push_tokens`, `search`,
`export` (a conversation as one file), `health` (`/healthz`, `/readyz`), `metrics`
(`/metrics`), `settings` (the public `/v1/settings`) and, in Clerk mode,
`clerk_webhooks`; `params` parses their input; `announce` builds the conversation
objects and frames members' connections are told; `webapp` serves the web app at `/`
(mounted last: every REST route wins over it).

`mount` puts every resource on the router; called once by `server.Server.run`.
"""

from __future__ import annotations

from collections.abc import Callable

from messageai.ai.action_item_board import ActionItemBoard
from messageai.ai.assistant import Assistant
from messageai.config import Config
from messageai.conversations.registry import Registry
from messageai.edge.asgi import Request, Response, Router
from messageai.errors import UpgradeRequired
from messageai.jobs import Jobs
from messageai.live.guard import Guard
from messageai.live.presence import Presence
from messageai.rest.accounts import Accounts
from messageai.rest.action_items import ActionItemRoutes
from messageai.rest.ai import AiRoutes
from messageai.rest.channels import Channels
from messageai.rest.clerk_webhooks import ClerkWebhooks
from messageai.rest.conversations import Conversations
from messageai.rest.export import ConversationExport
from messageai.rest.health import Readiness, healthz
from messageai.rest.media import MediaFiles
from messageai.rest.metrics import MetricsRoute, ServerCollector, load_token
from messageai.rest.push_tokens import PushTokens
from messageai.rest.search import SearchRoutes
from messageai.rest.settings import Settings
from messageai.rest.webapp import WebApp
from messageai.services.directory import Directory
from messageai.services.media import Media
from messageai.services.push import Push
from messageai.services.search import Search


def mount(
    router: Router,
    config: Config,
    directory: Directory,
    registry: Registry,
    presence: Presence,
    media: Media,
    push: Push,
    guard: Guard,
    close_user_sessions: Callable[[str], object],
    close_token_sessions: Callable[[str, bytes], object],
    search: Search,
    assistant: Assistant | None = None,
    action_items: ActionItemBoard | None = None,
    jobs: Jobs | None = None,
) -> None:
    """Route every REST resource; the Clerk webhook only in Clerk mode with a secret.
    `close_user_sessions` and `close_token_sessions` are the server's: they close a
    deleted user's WebSockets, and those of a revoked token."""
    router.add("GET", "/healthz", healthz)
    router.add("GET", "/readyz", Readiness(config.data_dir, directory).readyz)
    if config.metrics.enabled:
        collector = ServerCollector(presence, registry, push, jobs, media.root)
        MetricsRoute(collector, load_token(config.metrics)).routes(router)
    router.add("GET", "/v1/ws", websocket_needed)
    Settings(config).routes(router)
    Accounts(directory, close_token_sessions).routes(router)
    Conversations(
        directory, registry, presence, guard, max_body_chars=config.limits.max_body_chars
    ).routes(router)
    Channels(directory, registry, presence).routes(router)
    MediaFiles(media).routes(router)
    PushTokens(push).routes(router)
    SearchRoutes(search).routes(router)
    ConversationExport(config.data_dir, directory).routes(router)
    if assistant is not None:
        AiRoutes(assistant).routes(router)
    if action_items is not None:
        ActionItemRoutes(action_items).routes(router)
    if config.auth.mode == "clerk" and config.clerk.webhook_secret:
        ClerkWebhooks(config.clerk, directory, close_user_sessions).routes(router)
    # In Clerk mode the app loads clerk-js from, and talks to, the Frontend API.
    clerk_origin = config.clerk.frontend_api if config.auth.mode == "clerk" else ""
    WebApp(clerk_origin=clerk_origin).routes(router)  # last: every other path wins


async def websocket_needed(request: Request) -> Response:
    """`GET /v1/ws` that reached REST: the front door hands every real upgrade to the
    WebSocket side, so this request lacks `Upgrade: websocket` (curl, a browser tab)."""
    raise UpgradeRequired(
        "this is the WebSocket endpoint: connect with a WebSocket client"
        " (Upgrade: websocket); the REST API is under /v1/"
    )
