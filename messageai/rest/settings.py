"""`GET /v1/settings`: what a client must know of this server before anyone signs in (how
people sign in, the limits a client checks before sending, whether the AI answers), with
no token. Only what is safe to publish: a Clerk publishable key is public by design;
secrets, key files and addresses of the server's own services never appear. Mounted by
`rest.mount`; the app reads it on its server and sign-in screens.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from messageai.config import Config
from messageai.edge.asgi import Request, Response, Router


def _version() -> str:
    # Not `messageai.__version__`: a `messageai/` config folder in the current directory
    # shadows the package's `__init__` under `python -m` (see `cli._version`).
    try:
        return metadata.version("messageai")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def public_settings(config: Config) -> dict[str, Any]:
    """The settings document, built once from the config at start-up."""
    auth, clerk, limits = config.auth, config.clerk, config.limits
    clerk_mode = auth.mode == "clerk"
    published_clerk = None
    if clerk_mode and clerk.publishable_key:
        published_clerk = {
            "publishable_key": clerk.publishable_key,
            "frontend_api": clerk.frontend_api,
        }
    return {
        "auth": {
            "mode": auth.mode,
            # Local accounts are made by register; in Clerk mode at Clerk, never here.
            "registration_open": auth.allow_registration and not clerk_mode,
            "clerk": published_clerk,
        },
        "limits": {
            "max_body_chars": limits.max_body_chars,
            "max_attachments": limits.max_attachments,
            "max_upload_bytes": limits.max_upload_bytes,
            "upload_types": list(config.media.allowed_types),
            "max_group_members": limits.max_group_members,
            "max_reactions_per_message": limits.max_reactions_per_message,
            "max_frame_bytes": limits.max_frame_bytes,
            "max_request_body_bytes": config.server.max_request_body_bytes,
        },
        "ai": {"available": bool(config.ai.base_url)},
        "version": _version(),
    }


class Settings:
    def __init__(self, config: Config) -> None:
        self._document = public_settings(config)

    def routes(self, router: Router) -> None:
        router.add("GET", "/v1/settings", self.get)

    async def get(self, request: Request) -> Response:
        # Like every JSON answer, `no-store`: a restarted server's new config is seen at once.
        return Response(200, self._document)
