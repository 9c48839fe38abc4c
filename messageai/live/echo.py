"""For tests only: a session that sends every message back, for Autobahn|Testsuite.

`server.Server(config, echo_websockets=True)` serves every WebSocket with it, after
the same handshake (Origin, token, connection cap) and with the same writer, queue
bounds, keepalive and frame limit as a chat session; only what is done with a
message differs. Never on in a served configuration: no config key enables it.
"""

from __future__ import annotations

from messageai.edge.wsframes import binary_frame, text_frame
from messageai.live.session import Session


class EchoSession(Session):
    async def _received(self, data: str | bytes) -> None:
        if self._close_code is not None:
            return
        self._frames_in += 1
        self._enqueue(text_frame(data) if isinstance(data, str) else binary_frame(data))
