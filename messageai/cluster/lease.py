"""Conversation leases in Redis, each with an epoch: who owns a conversation now.

A node acquires a conversation's lease (`Leases.acquire`), keeps it with `Leases.keep`
(renewing every third of the TTL) and gives it back with `release`; the epoch that
came with it is what the conversation's file is claimed and fenced with
(`messageai.cluster.fence`, docs/SCALE.md §3-4). Every change is one Lua script, so
acquire (`SET NX PX` after raising the epoch counter), renew (compare-and-extend) and
release (compare-and-delete) are atomic in Redis, and a lease that expired and went
to another node is never extended or deleted by its old holder.

`Lease.held()` is the holder's own view, from the monotonic clock and no round trip:
true until `sent + ttl * (1 - drift) - margin`, `sent` being when the acquire or the
last successful renewal left. Redis starts the TTL later than that, so the holder
stops believing before Redis lets anyone else in (clock rates within `drift`). It is
read from the commit's worker thread: a float written by the event loop, no lock.

Cluster mode only; nothing of the single-node server imports this (`coredis` is the
optional extra `cluster`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import attrs
import coredis
import coredis.exceptions
import trio

log = logging.getLogger(__name__)

# KEYS: lease, epoch counter. ARGV: node, ttl ms, floor (the highest epoch the caller
# has seen in the conversation's storage; 0 for none). Answers {1, epoch} when the
# caller got the lease, {0, "<node>:<epoch>"} when someone holds it.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local epoch = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if epoch <= floor then
    epoch = floor + 1
    redis.call('SET', KEYS[2], epoch)
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. epoch, 'NX', 'PX', ARGV[2])
return {1, epoch}
"""
# KEYS: lease. ARGV: "<node>:<epoch>", ttl ms. 1 if extended, 0 if not ours any more.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: lease. ARGV: "<node>:<epoch>". 1 if deleted, 0 if not ours any more.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# What a lost connection to Redis looks like through coredis (and the OS).
REDIS_DOWN = (coredis.exceptions.ConnectionError, TimeoutError, OSError)


@attrs.frozen
class Holder:
    """Who holds a lease, as Redis has it."""

    node: str
    epoch: int


def parse_holder(value: str) -> Holder:
    node, _, epoch = value.rpartition(":")
    return Holder(node, int(epoch))


@attrs.define(eq=False)
class Lease:
    """One held lease. `held()` may be called from any thread."""

    conversation_id: str
    node: str
    epoch: int
    # time.monotonic() past which the holder must not commit (see the module).
    valid_until: float

    @property
    def value(self) -> str:
        return f"{self.node}:{self.epoch}"

    def held(self) -> bool:
        return time.monotonic() < self.valid_until

    def remaining(self) -> float:
        """Seconds of local validity left (negative once lost)."""
        return self.valid_until - time.monotonic()


class Leases:
    """One node's leases in one Redis (`redis`: a client with `decode_responses=True`,
    whose lifetime the caller owns).

    `ttl_seconds` is the lease's life in Redis; `drift` (a fraction) and
    `margin_seconds` are taken off it for the holder's own view. `prefix` namespaces the
    keys (`<prefix>{<conversation id>}:lease` and `:epoch`: one hash slot per
    conversation, so the scripts also run on Redis Cluster)."""

    def __init__(
        self,
        redis: coredis.Redis[str],
        node: str,
        *,
        ttl_seconds: float = 10.0,
        drift: float = 0.01,
        margin_seconds: float = 0.5,
        prefix: str = "messageai:",
    ) -> None:
        if ":" in node or not node:
            raise ValueError("a node id is non-empty and has no ':'")
        if not 0 <= drift < 1 or margin_seconds < 0:
            raise ValueError("drift is in [0, 1) and margin_seconds >= 0")
        if ttl_seconds * (1 - drift) - margin_seconds <= 0:
            raise ValueError("ttl_seconds leaves no validity after drift and margin")
        self.node = node
        self.ttl_seconds = ttl_seconds
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self._valid_for = ttl_seconds * (1 - drift) - margin_seconds
        self._prefix = prefix
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._redis = redis

    def _key(self, conversation_id: str, what: str) -> str:
        return f"{self._prefix}{{{conversation_id}}}:{what}"

    async def acquire(self, conversation_id: str, *, floor: int = 0) -> Lease | Holder:
        """Take the conversation's lease if nobody holds it: a `Lease` with an epoch above
        every earlier one and above `floor`; else the `Holder`. Raises one of
        `REDIS_DOWN` if Redis cannot be reached (the caller owns the timeout)."""
        sent = time.monotonic()
        keys = [self._key(conversation_id, "lease"), self._key(conversation_id, "epoch")]
        answer: Any = await self._acquire(keys, [self.node, self._ttl_ms, max(0, floor)])
        got, value = answer
        if int(got) != 1:
            return parse_holder(str(value))
        return Lease(conversation_id, self.node, int(value), sent + self._valid_for)

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease if it is still ours (True), and its local validity with it.
        False: it expired and someone else may have it; `lease.held()` is then false
        for good. Raises one of `REDIS_DOWN` as `acquire`."""
        sent = time.monotonic()
        extended: Any = await self._renew(
            [self._key(lease.conversation_id, "lease")], [lease.value, self._ttl_ms]
        )
        if int(extended) == 1:
            lease.valid_until = max(lease.valid_until, sent + self._valid_for)
            return True
        lease.valid_until = float("-inf")
        return False

    async def release(self, lease: Lease) -> bool:
        """Give the lease back now (the next owner need not wait for its TTL); False if it
        was not ours any more. The holder stops believing first, whatever Redis says."""
        lease.valid_until = float("-inf")
        deleted: Any = await self._release(
            [self._key(lease.conversation_id, "lease")], [lease.value]
        )
        return int(deleted) == 1

    async def holder(self, conversation_id: str) -> Holder | None:
        """Who holds the lease now, or None."""
        value = await self._redis.get(self._key(conversation_id, "lease"))
        return parse_holder(value) if value is not None else None

    async def keep(self, lease: Lease) -> None:
        """Renew `lease` every third of the TTL for as long as it is ours; return as soon
        as it is lost (refused by Redis, or its local validity ran out while Redis could
        not be reached). A caller runs the lease's work under a cancel scope that this
        returning cancels. Cancellation stops the renewals and nothing else (release is
        the caller's)."""
        interval = self.ttl_seconds / 3
        while True:
            await trio.sleep(interval)
            # Each attempt gets no longer than the validity left; a failed one is retried
            # until then (a short network blip costs nothing).
            while True:
                left = lease.remaining()
                if left <= 0:
                    log.warning(
                        "lease %s (epoch %d): Redis unreachable until it ran out",
                        lease.conversation_id,
                        lease.epoch,
                    )
                    return
                with trio.move_on_after(left):
                    try:
                        if not await self.renew(lease):
                            log.warning(
                                "lease %s (epoch %d) was lost", lease.conversation_id, lease.epoch
                            )
                            return
                        break
                    except REDIS_DOWN:
                        # Not fatal yet: the lease is valid until `left` runs out.
                        await trio.sleep(min(interval / 4, max(0.0, lease.remaining())))
