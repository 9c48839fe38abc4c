"""`/v1/conversations/{id}/ai…` (PROTOCOL.md v1.1 "AI over a conversation"): the
switch, ask, catch-up and the log, each a thin door onto `ai.assistant.Assistant`
(which the WebSocket's `ai_ask` also uses). Mounted by `rest.mount`.
"""

from __future__ import annotations

from typing import Any

from messageai.ai.assistant import LOG_DEFAULT_LIMIT, Assistant
from messageai.edge.asgi import Request, Response, Router
from messageai.rest.params import int_param, require_user
from messageai.store.ai import Settings


def _settings(value: Settings) -> dict[str, Any]:
    return {
        "enabled": value.enabled,
        "proactive": value.proactive,
        "changed_by": value.changed_by,
        "changed_at": value.changed_at,
    }


class AiRoutes:
    def __init__(self, assistant: Assistant) -> None:
        self._assistant = assistant

    def routes(self, router: Router) -> None:
        base = "/v1/conversations/{conversation_id}/ai"
        router.add("GET", base, self.get_settings)
        router.add("PUT", base, self.put_settings)
        router.add("POST", base + "/ask", self.ask)
        router.add("POST", base + "/catch-up", self.catch_up)
        router.add("GET", base + "/log", self.log)

    async def get_settings(self, request: Request) -> Response:
        user = require_user(request)
        value = await self._assistant.settings(user.id, request.params["conversation_id"])
        return Response(200, _settings(value))

    async def put_settings(self, request: Request) -> Response:
        user = require_user(request)
        body = request.json()
        value = await self._assistant.put_settings(
            user.id, request.params["conversation_id"], body.get("enabled"), body.get("proactive")
        )
        return Response(200, _settings(value))

    async def ask(self, request: Request) -> Response:
        user = require_user(request)
        answer = await self._assistant.ask(
            user.id, request.params["conversation_id"], request.json().get("question")
        )
        return Response(
            200,
            {"answer": answer.answer, "citations": answer.citations, "cached": answer.cached},
        )

    async def catch_up(self, request: Request) -> Response:
        user = require_user(request)
        if request.body:
            request.json()  # a body, if any, must be a JSON object
        done = await self._assistant.catch_up(user.id, request.params["conversation_id"])
        return Response(
            200,
            {
                "summary": done.summary,
                "citations": done.citations,
                "from_seq": done.from_seq,
                "to_seq": done.to_seq,
            },
        )

    async def log(self, request: Request) -> Response:
        user = require_user(request)
        limit = int_param(request.query, "limit", LOG_DEFAULT_LIMIT, minimum=1)
        entries = await self._assistant.log_entries(
            user.id, request.params["conversation_id"], limit
        )
        return Response(
            200,
            {
                "entries": [
                    {"at": e.at, "user_id": e.user_id, "action": e.action, "seqs": e.seqs}
                    for e in entries
                ]
            },
        )
