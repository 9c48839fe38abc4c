"""`/v1/media`: uploads (streamed to disk by `services.media`, never held in memory),
downloads (with HTTP ranges) and, v1.1 extension, `GET /v1/media/{id}/info` (the media
object without the bytes). `services.media` does the work and returns data;
this module builds the HTTP: statuses (201, 200, 206), the headers that keep a
browser from running what it fetched, `content-disposition`, and the range
headers (a 416 is `RangeNotSatisfiable`, whose Content-Range the ASGI app adds).
Mounted by `rest.mount`.
"""

from __future__ import annotations

from urllib.parse import quote

from messageai.edge.asgi import Request, Response, Router, StreamingResponse
from messageai.errors import NotFound
from messageai.model import MediaRecord
from messageai.rest.params import require_user
from messageai.services.media import Download, Media, playable

# Shown inline by browsers without running anything; everything else is a download.
INLINE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/heic", "text/plain"}
)


class MediaFiles:
    def __init__(self, media: Media) -> None:
        self._media = media

    def routes(self, router: Router) -> None:
        # The upload reads its body itself, streaming it to disk (never all in memory).
        router.add("POST", "/v1/media", self.upload_media, stream=True)
        router.add("GET", "/v1/media/{media_id}", self.get_media)
        router.add("GET", "/v1/media/{media_id}/info", self.get_media_info)

    async def upload_media(self, request: Request) -> Response:
        user = require_user(request)
        assert request.receive is not None  # a streaming route
        record = await self._media.upload(
            user.id, request.headers, request.receive, request.query.get("filename")
        )
        return Response(201, media_object(record))

    async def get_media_info(self, request: Request) -> Response:
        """The media object (name, type, size) for whoever may download it, so a client
        can show an attachment before fetching its bytes; the same 404 otherwise."""
        user = require_user(request)
        record = await self._media.readable(user.id, request.params["media_id"])
        if record is None:
            raise NotFound("no such media")
        return Response(200, media_object(record))

    async def get_media(self, request: Request) -> Response:
        """404 unless readable; the stored type with `nosniff` and a sandboxing CSP;
        `attachment` for anything a browser could run; ranges for audio and video."""
        user = require_user(request)
        download = await self._media.download(
            user.id, request.params["media_id"], request.headers.get("range")
        )
        return StreamingResponse(
            200 if download.byte_range is None else 206, download.chunks, download_headers(download)
        )


def media_object(record: MediaRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "content_type": record.content_type,
        "size": record.size,
        "sha256": record.sha256,
        "filename": record.filename,
    }


def content_disposition(disposition: str, filename: str) -> str:
    """RFC 6266: `filename*` with the name in UTF-8, percent-encoded (RFC 8187), and a
    plain `filename=` fallback for old clients in which anything but printable ASCII,
    quotes, backslashes and `%` (which some decode) is `_`."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in filename)
    encoded = quote(filename, safe="!#$&+-.^_`|~")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def download_headers(download: Download) -> list[tuple[bytes, bytes]]:
    record = download.record
    content_type = record.content_type
    shown = f"{content_type}; charset=utf-8" if content_type == "text/plain" else content_type
    headers = [
        (b"content-type", shown.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", b"default-src 'none'; sandbox"),
        (b"cache-control", b"private, no-cache"),
    ]
    # Types a browser shows without running anything stay inline (with their name
    # when they have one); everything else is a download.
    inline = content_type in INLINE_TYPES or playable(content_type)
    if record.filename is not None:
        disposition = content_disposition("inline" if inline else "attachment", record.filename)
        headers.append((b"content-disposition", disposition.encode("ascii")))
    elif not inline:
        headers.append((b"content-disposition", f'attachment; filename="{record.id}"'.encode()))
    if playable(content_type):
        headers.append((b"accept-ranges", b"bytes"))
    wanted = download.byte_range
    if wanted is not None:
        content_range = f"bytes {wanted.start}-{wanted.end}/{record.size}"
        headers.append((b"content-range", content_range.encode()))
    headers.append((b"content-length", str(download.length).encode()))
    return headers
