"""`GET /v1/conversations/{id}/export`: a member downloads the conversation as one
self-contained SQLite file for their own archive (`ops.conversation_file.export`: its
messages, edit history, read cursors and the public profiles of the people in it;
its uploads too with `?media=true`). Mounted by `rest.mount`.

The file is made in a blocking worker thread (`VACUUM INTO` reads a snapshot; the
actor goes on writing) under the data directory, opened, and unlinked before the
first byte is sent, so it never outlives the download. At most `MAX_RUNNING` exports
run at once; more are `rate_limited`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from messageai.edge.asgi import Request, Response, Router, StreamingResponse
from messageai.errors import BadRequest, Forbidden, NotFound, RateLimited
from messageai.model import new_id
from messageai.ops import conversation_file
from messageai.rest.params import require_user
from messageai.services.directory import Directory
from messageai.threads import blocking

MAX_RUNNING = 2
CHUNK = 256 * 1024
MAX_CONVERSATION_ID = 64


class ConversationExport:
    def __init__(self, data_dir: Path, directory: Directory) -> None:
        self._data_dir = data_dir
        self._directory = directory
        self._tmp = data_dir / "tmp-exports"
        self._running = 0

    def routes(self, router: Router) -> None:
        router.add("GET", "/v1/conversations/{conversation_id}/export", self.export)

    async def export(self, request: Request) -> Response:
        user = require_user(request)
        media = request.query.get("media", "false")
        if media not in ("true", "false"):
            raise BadRequest('media: "true" or "false"')
        cid = request.params["conversation_id"]
        record, member = (
            await self._directory.conversation_for_member(cid, user.id)
            if len(cid) <= MAX_CONVERSATION_ID
            else (None, False)
        )
        if record is None:
            raise NotFound("no such conversation")
        if not member:
            raise Forbidden("you are not a member of this conversation")
        if self._running >= MAX_RUNNING:
            raise RateLimited("exports are being made; try again shortly", retry_after_seconds=5)
        self._running += 1
        try:
            file = await blocking(self._make, cid, media == "true")
        finally:
            self._running -= 1
        size = os.fstat(file.fileno()).st_size
        headers = [
            (b"content-type", b"application/vnd.sqlite3"),
            (b"content-length", str(size).encode()),
            (b"content-disposition", f'attachment; filename="{cid}.sqlite3"'.encode()),
            (b"cache-control", b"no-store"),
        ]
        return StreamingResponse(200, _chunks(file), headers)

    def _make(self, cid: str, media: bool) -> IO[bytes]:
        self._tmp.mkdir(exist_ok=True)
        path = self._tmp / f"{new_id('x_')}.sqlite3"
        try:
            conversation_file.export(self._data_dir, cid, path, media=media)
            return path.open("rb")
        finally:
            path.unlink(missing_ok=True)  # the open file keeps its bytes until closed


async def _chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await blocking(file.read, CHUNK):
            yield chunk
    finally:
        file.close()
