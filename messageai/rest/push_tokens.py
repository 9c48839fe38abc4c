"""`/v1/push-tokens`: a device's Expo push token, added and removed. Thin: the work
is in `services.push`. Mounted by `rest.mount`.
"""

from __future__ import annotations

from messageai.edge.asgi import Request, Response, Router
from messageai.rest.params import require_user
from messageai.services.push import Push


class PushTokens:
    def __init__(self, push: Push) -> None:
        self._push = push

    def routes(self, router: Router) -> None:
        router.add("POST", "/v1/push-tokens", self.add_push_token)
        router.add("DELETE", "/v1/push-tokens/{token}", self.remove_push_token)

    async def add_push_token(self, request: Request) -> Response:
        user = require_user(request)
        body = request.json()
        token = await self._push.register(user.id, body.get("token"), body.get("platform"))
        return Response(201, {"token": token, "platform": body.get("platform")})

    async def remove_push_token(self, request: Request) -> Response:
        user = require_user(request)
        await self._push.unregister(user.id, request.params["token"])
        return Response(204)
