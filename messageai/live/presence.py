"""Who is online: the open WebSocket connections of each user.

Sessions call `connected`/`disconnected`; a user's first connection and last
disconnection each send one `presence_update` to every connection subscribed
to a conversation the user belongs to (each such connection gets it once).
Actors ask `is_online` to fill `subscribed.online`; REST handlers and the push
service use `peers_of` to reach (or skip) a user's devices.
"""

from __future__ import annotations

from messageai.conversations.commands import Peer
from messageai.conversations.registry import Registry
from messageai.model import now_ms
from messageai.protocol import PresenceUpdate, encode
from messageai.services.directory import Directory


class Presence:
    def __init__(self, directory: Directory) -> None:
        self._directory = directory
        self._peers: dict[str, set[Peer]] = {}
        self.registry: Registry | None = None

    def is_online(self, user_id: str) -> bool:
        return user_id in self._peers

    def connected(self, peer: Peer) -> None:
        peers = self._peers.setdefault(peer.user_id, set())
        peers.add(peer)
        if len(peers) == 1:
            self._announce(peer.user_id, "online")

    def disconnected(self, peer: Peer) -> None:
        peers = self._peers.get(peer.user_id)
        if peers is None:
            return
        peers.discard(peer)
        if not peers:
            del self._peers[peer.user_id]
            self._announce(peer.user_id, "offline")

    def connection_count(self, user_id: str) -> int:
        return len(self._peers.get(user_id, ()))

    def peers_of(self, user_id: str) -> list[Peer]:
        """The user's open connections (a copy: callers may close them while iterating)."""
        return list(self._peers.get(user_id, ()))

    def _announce(self, user_id: str, status: str) -> None:
        if self.registry is None:
            return
        peers = self.registry.subscribers_of(self._directory.conversation_ids_of(user_id))
        if not peers:
            return
        text = encode(PresenceUpdate(user_id=user_id, status=status, last_seen_at=now_ms()))
        for peer in peers:
            peer.push(text)
