"""Who is online: the open WebSocket connections of each user.

Sessions call `connected`/`disconnected`; a user's first connection and last
disconnection each send one `presence_update` to every connection subscribed
to a conversation the user belongs to (each such connection gets it once; who is
subscribed comes from the `subscribers_of` callable the server passes in, the
registry's). A user's last disconnection also goes to `went_offline` with their
conversation ids (the server passes the registry's `typist_gone`: typing ends with the
typist's last connection), before the presence frame. Actors ask `is_online` to fill
`subscribed.online`; REST handlers and the push service use `peers_of` to reach (or
skip) a user's devices; the server uses `peers_of` and `everyone` to close connections
(a deleted account, a revoked token, shutdown).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from messageai.conversations.commands import Peer
from messageai.model import now_ms
from messageai.protocol import PresenceUpdate, encode
from messageai.services.directory import Directory


class Connection(Peer, Protocol):
    """A peer the server can also close (the WebSocket session). `token_hash` is the
    hash of the bearer token it was opened with, so revoking a token reaches it."""

    token_hash: bytes

    def close(self, code: int, reason: str) -> None: ...


class Presence:
    def __init__(
        self,
        directory: Directory,
        subscribers_of: Callable[[list[str]], set[Peer]],
        went_offline: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self._directory = directory
        self._subscribers_of = subscribers_of
        self._went_offline = went_offline
        self._peers: dict[str, set[Connection]] = {}

    def is_online(self, user_id: str) -> bool:
        return user_id in self._peers

    def connected(self, peer: Connection) -> None:
        peers = self._peers.setdefault(peer.user_id, set())
        peers.add(peer)
        if len(peers) == 1:
            self._announce(
                peer.user_id, "online", self._directory.conversation_ids_of(peer.user_id)
            )

    def disconnected(self, peer: Connection) -> None:
        peers = self._peers.get(peer.user_id)
        if peers is None:
            return
        peers.discard(peer)
        if not peers:
            del self._peers[peer.user_id]
            conversation_ids = self._directory.conversation_ids_of(peer.user_id)
            if self._went_offline is not None:
                self._went_offline(peer.user_id, conversation_ids)
            self._announce(peer.user_id, "offline", conversation_ids)

    def users_online(self) -> int:
        """Users with at least one open connection (for `/metrics`)."""
        return len(self._peers)

    def connections_open(self) -> int:
        """Open WebSocket connections, all users (for `/metrics`)."""
        return sum(len(peers) for peers in self._peers.values())

    def connection_count(self, user_id: str) -> int:
        return len(self._peers.get(user_id, ()))

    def peers_of(self, user_id: str) -> list[Connection]:
        """The user's open connections (a copy: callers may close them while iterating)."""
        return list(self._peers.get(user_id, ()))

    def everyone(self) -> list[Connection]:
        """Every open connection (a copy, as `peers_of`)."""
        return [peer for peers in self._peers.values() for peer in peers]

    def _announce(self, user_id: str, status: str, conversation_ids: list[str]) -> None:
        peers = self._subscribers_of(conversation_ids)
        if not peers:
            return
        text = encode(PresenceUpdate(user_id=user_id, status=status, last_seen_at=now_ms()))
        for peer in peers:
            peer.push(text)
