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

Cluster mode (docs/SCALE.md §6) sets `cluster` (`messageai.cluster.presence`, which
this module never imports): "online" is then "online on any node", the announcements
come from the cluster's transitions (`went`), and a user's frames and closes reach
their connections on the other nodes too. Without it (single-node mode) nothing else
changes.
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


class Cluster(Protocol):
    """What cluster mode plugs into `Presence` (`messageai.cluster.presence`)."""

    def is_online(self, user_id: str) -> bool:
        """Online on any node, as this node last heard (no round trip)."""
        ...

    def count_changed(self, user_id: str) -> None:
        """This node's count of the user's connections changed (`connection_count`)."""
        ...

    def tell(self, user_id: str, text: str) -> None:
        """The user's frame `text` to their connections on the other nodes."""
        ...

    def close(self, user_id: str, reason: str, token_hash: bytes | None) -> None:
        """Close the user's connections on the other nodes (those opened with the token
        whose hash is `token_hash`, if given), as `close_sessions` does here."""
        ...


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
        self.cluster: Cluster | None = None

    def is_online(self, user_id: str) -> bool:
        if user_id in self._peers:
            return True
        return self.cluster is not None and self.cluster.is_online(user_id)

    def connected(self, peer: Connection) -> None:
        peers = self._peers.setdefault(peer.user_id, set())
        peers.add(peer)
        if self.cluster is not None:
            # The node whose count moved the user's total off 0 publishes it (`went`).
            self.cluster.count_changed(peer.user_id)
        elif len(peers) == 1:
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
        if self.cluster is not None:
            self.cluster.count_changed(peer.user_id)
        elif not peers:
            conversation_ids = self._directory.conversation_ids_of(peer.user_id)
            if self._went_offline is not None:
                self._went_offline(peer.user_id, conversation_ids)
            self._announce(peer.user_id, "offline", conversation_ids)

    def went(self, user_id: str, status: str) -> None:
        """Cluster mode: the user's total over all nodes went off 0 (`"online"`) or to
        0 (`"offline"`); tell this node's subscribers as a local change would."""
        conversation_ids = self._directory.conversation_ids_of(user_id)
        if status == "offline" and self._went_offline is not None:
            self._went_offline(user_id, conversation_ids)
        self._announce(user_id, status, conversation_ids)

    def tell(self, user_id: str, text: str) -> None:
        """A frame of the user's own (not a conversation's) to all their connections:
        this node's, and the other nodes' in cluster mode."""
        for peer in self.peers_of(user_id):
            peer.push(text)
        if self.cluster is not None:
            self.cluster.tell(user_id, text)

    def close_sessions(
        self, user_id: str, code: int, reason: str, token_hash: bytes | None = None
    ) -> int:
        """Close the user's connections (only those opened with the token whose hash is
        `token_hash`, if given) with `code`, without waiting; on the other nodes too in
        cluster mode. Returns how many were closed here."""
        if self.cluster is not None:
            self.cluster.close(user_id, reason, token_hash)
        return self.close_local(user_id, code, reason, token_hash)

    def close_local(
        self, user_id: str, code: int, reason: str, token_hash: bytes | None = None
    ) -> int:
        """`close_sessions` on this node only (what the cluster's user bus calls)."""
        closing = [
            peer
            for peer in self.peers_of(user_id)
            if token_hash is None or peer.token_hash == token_hash
        ]
        for peer in closing:
            peer.close(code, reason)
        return len(closing)

    def users_online(self) -> int:
        """Users with at least one open connection (for `/metrics`)."""
        return len(self._peers)

    def connections_open(self) -> int:
        """Open WebSocket connections, all users (for `/metrics`)."""
        return sum(len(peers) for peers in self._peers.values())

    def connection_count(self, user_id: str) -> int:
        return len(self._peers.get(user_id, ()))

    def user_ids(self) -> list[str]:
        """The users with an open connection here."""
        return list(self._peers)

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
