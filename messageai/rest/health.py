"""`GET /healthz`: the liveness probe, answered without a token. Mounted by `rest.mount`."""

from __future__ import annotations

from messageai.edge.asgi import Request, Response


async def healthz(request: Request) -> Response:
    return Response(200, {"status": "ok"})
