"""The user bus: a user's own frames (not a conversation's) to their connections on
every node, over one Redis channel (docs/SCALE.md §6).

`conversation_added` and `conversation_updated` (`rest/announce.py`, through
`Presence.tell`) and the closes of a deleted account or a revoked token
(`Presence.close_sessions`) are published with the user's id and the sending node's;
every other node delivers them to its own connections of that user (`Presence.peers_of`;
one channel for all users: a subscription per connected user would churn on every
connect and disconnect). Made and run by `messageai.cluster.presence`, whose Redis
subscription hands it the channel's messages (`received`).

Bounded both ways: what waits to be published and what waits to be delivered are
channels of `backlog` messages each; one more is dropped, counted (`dropped_out`,
`dropped_in`) and logged, never queued. A dropped frame costs that user the live
update only: the conversation list, fetched on reconnect or sync, has the change.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import coredis
import trio

from messageai.cluster.lease import REDIS_DOWN
from messageai.errors import CLOSE_POLICY
from messageai.live.presence import Presence

log = logging.getLogger(__name__)

# Messages waiting to be published, and waiting to be delivered here: a burst of
# announcements (a channel of a few thousand members changed) passes; a node that
# stays behind for longer drops rather than grows.
BACKLOG = 4096


class UserBus:
    """One node's end of the user bus. `tell` and `close` are called on the event loop
    (never wait); `publish` and `deliver` are the tasks that empty their channels."""

    def __init__(
        self,
        redis: coredis.Redis[str],
        node_id: str,
        presence: Presence,
        *,
        channel: str = "messageai:user",
        backlog: int = BACKLOG,
    ) -> None:
        self.channel = channel
        self.dropped_out = 0
        self.dropped_in = 0
        self._redis = redis
        self._node = node_id
        self._presence = presence
        self._out_send, self._out_receive = trio.open_memory_channel[str](backlog)
        self._in_send, self._in_receive = trio.open_memory_channel[dict[str, Any]](backlog)

    def tell(self, user_id: str, text: str) -> None:
        self._publish({"node": self._node, "user": user_id, "text": text})

    def close(self, user_id: str, reason: str, token_hash: bytes | None) -> None:
        self._publish(
            {
                "node": self._node,
                "user": user_id,
                "close": reason,
                "token_hash": token_hash.hex() if token_hash is not None else None,
            }
        )

    def _publish(self, message: dict[str, Any]) -> None:
        try:
            self._out_send.send_nowait(json.dumps(message, separators=(",", ":")))
        except trio.WouldBlock:
            self.dropped_out += 1
            _log_drop("published", self.dropped_out)

    def received(self, data: str) -> None:
        """One message of the channel, from the subscription's reader (never waits)."""
        try:
            message = json.loads(data)
            ours = message["node"] == self._node
            if not isinstance(message["user"], str):
                raise TypeError("user")
            token = message.get("token_hash")
            if token is not None:
                message["token_hash"] = bytes.fromhex(token)
        except (ValueError, KeyError, TypeError):
            log.warning("user bus: a message that is not ours to read, ignored")
            return
        if ours:
            return  # delivered here before it was published
        if not self._presence.connection_count(message["user"]):
            return  # nobody of theirs here: most messages, for most nodes
        try:
            self._in_send.send_nowait(message)
        except trio.WouldBlock:
            self.dropped_in += 1
            _log_drop("delivered", self.dropped_in)

    async def publish(self) -> None:
        """Publish what `tell` and `close` queued, in order, until cancelled. Redis
        unreachable: that message is dropped (counted) and the next one tried."""
        async with self._out_receive:
            async for text in self._out_receive:
                try:
                    await self._redis.publish(self.channel, text)
                except REDIS_DOWN:
                    self.dropped_out += 1
                    _log_drop("published (Redis unreachable)", self.dropped_out)

    async def deliver(self) -> None:
        """Give this node's connections what the other nodes published, until cancelled.
        Each push is the session's own bounded `send_nowait`, so this never waits on a
        connection."""
        async with self._in_receive:
            async for message in self._in_receive:
                user_id = message["user"]
                text = message.get("text")
                if isinstance(text, str):
                    for peer in self._presence.peers_of(user_id):
                        peer.push(text)
                    continue
                reason = message.get("close")
                if isinstance(reason, str):
                    token_hash = message.get("token_hash")
                    self._presence.close_local(user_id, CLOSE_POLICY, reason, token_hash)


def _log_drop(what: str, count: int) -> None:
    # The first drop of a run and every thousandth after: a node that stays behind
    # says so without a line per frame.
    if count % 1000 == 1:
        log.warning("user bus: a frame not %s, the node is behind (%d dropped so far)", what, count)
