"""`GET /v1/search` (PROTOCOL.md v1.1 "Search"): the query parameters, then
`services.search.Search`, which the WebSocket's `search` frame also uses. Mounted by
`rest.mount`.
"""

from __future__ import annotations

from typing import Any

from messageai.edge.asgi import Request, Response, Router
from messageai.errors import BadRequest
from messageai.protocol import converter
from messageai.rest.params import require_user
from messageai.services.search import Search


class SearchRoutes:
    def __init__(self, search: Search) -> None:
        self._search = search

    def routes(self, router: Router) -> None:
        router.add("GET", "/v1/search", self.search)

    async def search(self, request: Request) -> Response:
        user = require_user(request)
        query = request.query
        limit: int | None = None
        raw = query.get("limit")
        if raw is not None:
            # A sign is allowed so that "-1" is "below 1", as the contract says.
            digits = raw[1:] if raw[:1] in "+-" else raw
            if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
                raise BadRequest("limit: must be an integer")
            limit = int(raw)
        answer = await self._search.search(
            user.id, query.get("q"), query.get("conversation_id"), limit, query.get("mode")
        )
        body: dict[str, Any] = converter.unstructure(answer)
        body.pop("type", None)
        return Response(200, body)
