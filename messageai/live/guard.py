"""Abuse limits that span connections: per-user message rate, connections per user, Origin.

One `Guard` belongs to the server. `server._websocket` asks it at the handshake
(`origin_allowed`, `connect`/`disconnect`); each session asks `take` before routing a
`send_message`. All in memory, synchronous, no `await`: check-then-act cannot race.
Memory is bounded by the users connected now plus those who left within the time
their bucket takes to refill (`_prune` drops the rest, on connect, not per frame).
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from messageai.config import Config
from messageai.counters import COUNTS


class _User:
    """One user's open connections and message bucket."""

    __slots__ = ("connections", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.connections = 0
        self.tokens = tokens
        self.stamp = stamp


class Guard:
    def __init__(self, config: Config) -> None:
        self._rate = config.limits.messages_per_second
        self._burst = float(config.limits.message_burst)
        self._max_connections = config.limits.max_connections_per_user
        self._origins = frozenset(o.lower() for o in config.server.allowed_origins)
        self._any_origin = "*" in self._origins
        self._users: dict[str, _User] = {}
        # Prune once the map holds this many more users than are connected.
        self._slack = 1024

    # ------------------------------------------------------------ message rate

    def take(self, user_id: str) -> float:
        """Spend one message from `user_id`'s bucket: 0.0 if allowed, else the seconds
        until one is available (nothing is spent then). A few float operations."""
        user = self._users.get(user_id)
        now = trio.current_time()
        if user is None:
            user = self._users[user_id] = _User(self._burst, now)
        tokens = min(self._burst, user.tokens + (now - user.stamp) * self._rate)
        user.stamp = now
        if tokens >= 1.0:
            user.tokens = tokens - 1.0
            return 0.0
        user.tokens = tokens
        COUNTS.rate_limited["messages"] += 1
        return (1.0 - tokens) / self._rate

    # ------------------------------------------------------------ connections

    def connect(self, user_id: str) -> bool:
        """Count a new connection for `user_id`; False (and nothing counted) past the cap."""
        user = self._users.get(user_id)
        if user is None:
            if len(self._users) > self._slack:
                self._prune()
            user = self._users[user_id] = _User(self._burst, trio.current_time())
        if user.connections >= self._max_connections:
            COUNTS.rate_limited["connections"] += 1
            return False
        user.connections += 1
        return True

    def disconnect(self, user_id: str) -> None:
        user = self._users.get(user_id)
        if user is not None and user.connections > 0:
            user.connections -= 1

    def _prune(self) -> None:
        # A user with no connection whose bucket has refilled carries no state worth keeping.
        now = trio.current_time()
        full = [
            user_id
            for user_id, user in self._users.items()
            if user.connections == 0
            and user.tokens + (now - user.stamp) * self._rate >= self._burst
        ]
        for user_id in full:
            del self._users[user_id]
        self._slack = max(1024, 2 * len(self._users))

    # ------------------------------------------------------------ origin

    def origin_allowed(self, headers: Iterable[tuple[bytes, bytes]], host: str | None) -> bool:
        """No Origin (not a browser), a listed one, or this server's own (`host`, the
        request's Host header)."""
        origin = None
        for name, value in headers:
            if name.lower() == b"origin":
                origin = value.decode("latin-1").strip().lower()
        if origin is None or self._any_origin or origin in self._origins:
            return True
        host = host.strip().lower() if host else None
        return host is not None and origin in (f"http://{host}", f"https://{host}")
