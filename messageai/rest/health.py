"""`GET /healthz` (liveness: the process answers) and `GET /readyz` (readiness: the
data directory takes a write and the directory database answers), both without a
token. Mounted by `rest.mount`; a load balancer or `HEALTHCHECK` polls them.
"""

from __future__ import annotations

import os
from pathlib import Path

import apsw
import trio

from messageai.edge.asgi import Request, Response
from messageai.errors import Unavailable
from messageai.model import new_id
from messageai.services.directory import Directory
from messageai.store.db import Db
from messageai.threads import blocking

# Longest a readiness check may take before it counts as failed: a disk that hangs
# must make the probe fail, not hang with it.
READY_TIMEOUT_SECONDS = 5.0


async def healthz(request: Request) -> Response:
    return Response(200, {"status": "ok"})


def _touch(data_dir: Path) -> None:
    """Create, write, fsync and remove a small file in the data directory."""
    path = data_dir / f".readyz-{new_id('')}"
    try:
        with open(path, "wb") as file:
            file.write(b"ok")
            file.flush()
            os.fsync(file.fileno())
    finally:
        path.unlink(missing_ok=True)


def _select_one(conn: Db) -> None:
    conn.execute("SELECT 1 FROM conversations LIMIT 1").fetchall()


class Readiness:
    def __init__(self, data_dir: Path, directory: Directory) -> None:
        self._data_dir = data_dir
        self._directory = directory

    async def readyz(self, request: Request) -> Response:
        """200 `{"status": "ready"}`, or 503 `{"status": "unready", "reason"}` naming
        the first check that failed (each within READY_TIMEOUT_SECONDS)."""
        reason = await self._check()
        if reason is None:
            return Response(200, {"status": "ready"})
        return Response(503, {"status": "unready", "reason": reason})

    async def _check(self) -> str | None:
        with trio.move_on_after(READY_TIMEOUT_SECONDS):
            try:
                await blocking(_touch, self._data_dir)
            except OSError as exc:
                return f"the data directory is not writable ({exc.strerror or type(exc).__name__})"
            try:
                await self._directory.fetch(_select_one)
                # Through its write thread too: a writer stuck on the disk is unready.
                await self._directory.write(_select_one)
            except (apsw.Error, Unavailable) as exc:
                return f"the directory database does not answer ({type(exc).__name__})"
            return None
        return f"a check took longer than {READY_TIMEOUT_SECONDS:g} s"
