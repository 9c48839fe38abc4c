"""Who is online: open WebSocket connections counted per user.

Sessions call `connected`/`disconnected`; a user's first connection and last
disconnection each send one `presence_update` to every connection subscribed
to a conversation the user belongs to (each such connection gets it once).
Actors ask `is_online` to fill `subscribed.online`.
"""

from __future__ import annotations

from messageai.auth import now_ms
from messageai.commands import Peer
from messageai.directory import Directory
from messageai.protocol import PresenceUpdate, encode
from messageai.registry import Registry


class Presence:
    def __init__(self, directory: Directory) -> None:
        self._directory = directory
        self._connections: dict[str, int] = {}
        self.registry: Registry | None = None

    def is_online(self, user_id: str) -> bool:
        return user_id in self._connections

    def connected(self, peer: Peer) -> None:
        count = self._connections.get(peer.user_id, 0)
        self._connections[peer.user_id] = count + 1
        if count == 0:
            self._announce(peer.user_id, "online")

    def disconnected(self, peer: Peer) -> None:
        count = self._connections.get(peer.user_id, 0) - 1
        if count > 0:
            self._connections[peer.user_id] = count
            return
        self._connections.pop(peer.user_id, None)
        self._announce(peer.user_id, "offline")

    def connection_count(self, user_id: str) -> int:
        return self._connections.get(user_id, 0)

    def _announce(self, user_id: str, status: str) -> None:
        if self.registry is None:
            return
        peers = self.registry.subscribers_of(self._directory.conversation_ids_of(user_id))
        if not peers:
            return
        text = encode(PresenceUpdate(user_id=user_id, status=status, last_seen_at=now_ms()))
        for peer in peers:
            peer.push(text)
