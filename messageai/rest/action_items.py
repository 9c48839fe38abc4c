"""`/v1/conversations/{id}/ai/action-items` (PROTOCOL.md v1.1 "AI over a conversation"):
list a conversation's action items and set one's status, a thin door onto
`ai.action_item_board.ActionItemBoard`. Mounted by `rest.mount`.
"""

from __future__ import annotations

from typing import Any

from messageai.ai.action_item_board import ActionItemBoard
from messageai.edge.asgi import Request, Response, Router
from messageai.rest.params import require_user
from messageai.store.action_items import ActionItem


def item_json(item: ActionItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "text": item.text,
        "owner_id": item.owner_id,
        "due": item.due,
        "source_seqs": list(item.source_seqs),
        "status": item.status,
    }


class ActionItemRoutes:
    def __init__(self, board: ActionItemBoard) -> None:
        self._board = board

    def routes(self, router: Router) -> None:
        base = "/v1/conversations/{conversation_id}/ai/action-items"
        router.add("GET", base, self.list_items)
        router.add("PATCH", base + "/{item_id}", self.patch_item)

    async def list_items(self, request: Request) -> Response:
        user = require_user(request)
        found = await self._board.items(user.id, request.params["conversation_id"])
        return Response(200, {"items": [item_json(i) for i in found]})

    async def patch_item(self, request: Request) -> Response:
        user = require_user(request)
        status = request.json().get("status")
        item = await self._board.set_status(
            user.id, request.params["conversation_id"], request.params["item_id"], status
        )
        return Response(200, item_json(item))
