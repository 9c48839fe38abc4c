"""`/v1/media`: uploads (streamed to disk by `services.media`, never held in memory)
and downloads (with HTTP ranges). Thin: the work is in `services.media`. Mounted
by `rest.mount`.
"""

from __future__ import annotations

from messageai.edge.asgi import Request, Response, Router
from messageai.rest.params import require_user
from messageai.services.media import Media


class MediaFiles:
    def __init__(self, media: Media) -> None:
        self._media = media

    def routes(self, router: Router) -> None:
        # The upload reads its body itself, streaming it to disk (never all in memory).
        router.add("POST", "/v1/media", self.upload_media, stream=True)
        router.add("GET", "/v1/media/{media_id}", self.get_media)

    async def upload_media(self, request: Request) -> Response:
        user = require_user(request)
        assert request.receive is not None  # a streaming route
        record = await self._media.upload(user.id, request.headers, request.receive)
        return Response(
            201,
            {
                "id": record.id,
                "content_type": record.content_type,
                "size": record.size,
                "sha256": record.sha256,
            },
        )

    async def get_media(self, request: Request) -> Response:
        user = require_user(request)
        return await self._media.download(
            user.id, request.params["media_id"], request.headers.get("range")
        )
