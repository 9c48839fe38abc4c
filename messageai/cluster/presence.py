"""Presence across nodes: who is online on any node, kept in Redis (docs/SCALE.md §6).

Per user a hash `<prefix>presence:<user>` of node id -> that node's open connections of
the user, changed only by one script that also keeps the set of users online anywhere
(`presence-online`), each node's users (`presence-users:<node>`) and the nodes that
wrote counts (`presence-nodes`). The script publishes, on channel `<prefix>presence`,
`+<user>` when its change moved the user's total from 0 and `-<user>` when it moved it
to 0: so exactly one node announces each transition, and Redis orders the transitions
as it ran the changes.

Every node keeps the set of users online anywhere, filled from `presence-online` when
it subscribes and then kept by the transitions in their order, so
`Presence.is_online` (the actors' `subscribed.online`, push's decision) stays a set
lookup that never waits on Redis; each transition becomes `Presence.went`, the
`presence_update` (and `typist_gone`) a local change makes in single-node mode.

Writes are absolute ("node N has 3 of U's connections"), coalesced per user and
retried while Redis is unreachable, so a lost reply or a retry is harmless. A dead
node's counts (its `node:<id>` key, kept by the node runtime, gone) are removed by the
first survivor whose sweep notices, in one script that publishes the transitions;
a node taken for dead that was not (a stall, a partition) writes its counts again
once its key is back.
When the subscription comes back (a network blip, a Redis restart that lost
everything) this node re-writes its counts, adds who is online now, and after
`settle_seconds` (time for the other nodes to re-write theirs) takes the full set,
announcing who went offline meanwhile. Leaving (cancellation) removes this node's
counts.

`run_cluster_presence` is what the server's cluster wiring starts, beside the user
bus (`messageai.cluster.userbus`, on the same subscription). Cluster mode only: nothing
of the single-node server imports this.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from typing import Any

import coredis
import coredis.exceptions
import coredis.retry
import trio

from messageai.cluster.lease import REDIS_DOWN
from messageai.cluster.userbus import UserBus
from messageai.live.presence import Presence

log = logging.getLogger(__name__)

# How often a node looks for dead nodes' counts: a dead node's users show online for
# its `node:<id>` TTL plus up to this long.
SWEEP_SECONDS = 2.0
# After the subscription came back, how long the other nodes get to re-write their
# counts (their own reconnect, at most RECONNECT_MAX_SECONDS apart) before this node
# takes Redis's set as the whole truth.
SETTLE_SECONDS = 5.0
RECONNECT_MAX_SECONDS = 2.0
# Users per script call: a recount of many users is a few calls, none long enough to
# hold Redis up (each user is a few hash operations).
WRITE_BATCH = 200

# KEYS: online set, this node's users, the nodes set, then one hash per user.
# ARGV: node, channel, then user and count pairs. Sets each user's count of this node
# (0 deletes it), publishes the transitions, and returns each user's new total.
_SET_COUNTS = """
local totals = {}
for i = 4, #KEYS do
    local user = ARGV[2 * (i - 4) + 3]
    local count = tonumber(ARGV[2 * (i - 4) + 4])
    local before = 0
    for _, n in ipairs(redis.call('HVALS', KEYS[i])) do before = before + tonumber(n) end
    local old = tonumber(redis.call('HGET', KEYS[i], ARGV[1]) or '0')
    if count > 0 then
        redis.call('HSET', KEYS[i], ARGV[1], count)
        redis.call('SADD', KEYS[2], user)
    else
        redis.call('HDEL', KEYS[i], ARGV[1])
        redis.call('SREM', KEYS[2], user)
    end
    local after = before - old + count
    if before == 0 and after > 0 then
        redis.call('SADD', KEYS[1], user)
        redis.call('PUBLISH', ARGV[2], '+' .. user)
    elseif before > 0 and after == 0 then
        redis.call('SREM', KEYS[1], user)
        redis.call('PUBLISH', ARGV[2], '-' .. user)
    end
    totals[#totals + 1] = after
end
redis.call('SADD', KEYS[3], ARGV[1])
return totals
"""
# KEYS: the node's `node:<id>` key, its users, the nodes set, the online set.
# ARGV: node, channel, hash key prefix, "1" to do nothing while the node is alive.
# Removes all the node's counts, publishing who went offline (and, for a node taken
# for dead, `!<node>`: should it be alive after all, it hears it and recounts);
# returns how many went offline (-1: the node is alive).
_REMOVE_NODE = """
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local gone = 0
for _, user in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local key = ARGV[3] .. user
    if redis.call('HDEL', key, ARGV[1]) == 1 and redis.call('EXISTS', key) == 0 then
        redis.call('SREM', KEYS[4], user)
        redis.call('PUBLISH', ARGV[2], '-' .. user)
        gone = gone + 1
    end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
if ARGV[4] == '1' then redis.call('PUBLISH', ARGV[2], '!' .. ARGV[1]) end
return gone
"""


class ClusterPresence:
    """One node's share of the cluster's presence: what `Presence.cluster` is set to
    (`is_online`, `count_changed`, `tell`, `close`; all on the event loop, none waits),
    and the tasks `run_cluster_presence` runs (`write`, `sweep`, `received`)."""

    def __init__(
        self,
        redis: coredis.Redis[str],
        node_id: str,
        presence: Presence,
        bus: UserBus,
        *,
        prefix: str,
        node_key_prefix: str,
        sweep_seconds: float,
    ) -> None:
        if not node_id or ":" in node_id:
            raise ValueError("a node id is non-empty and has no ':'")
        self.node = node_id
        self.channel = f"{prefix}presence"
        self.transitions = 0
        self._redis = redis
        self._presence = presence
        # The user bus on the same subscription (its drop counters are for /metrics).
        self.bus = bus
        self._hash_prefix = f"{prefix}presence:"
        self._online_key = f"{prefix}presence-online"
        self._nodes_key = f"{prefix}presence-nodes"
        self._users_prefix = f"{prefix}presence-users:"
        self._node_key_prefix = node_key_prefix
        self._sweep_seconds = sweep_seconds
        self._set_counts = redis.register_script(_SET_COUNTS)
        self._remove_node = redis.register_script(_REMOVE_NODE)
        self._online: set[str] = set()
        # Users whose count here changed since it was last written (coalesced: the
        # writer reads the count when it writes, so this is at most one per user).
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        # A survivor removed this node's counts (`!<node>` heard): recount once our
        # key is back.
        self._removed = False

    # ------------------------------------------------------------ for Presence

    def is_online(self, user_id: str) -> bool:
        return user_id in self._online

    def count_changed(self, user_id: str) -> None:
        self._dirty.add(user_id)
        self._wake.set()

    def tell(self, user_id: str, text: str) -> None:
        self.bus.tell(user_id, text)

    def close(self, user_id: str, reason: str, token_hash: bytes | None) -> None:
        self.bus.close(user_id, reason, token_hash)

    def users_online(self) -> int:
        """Users online on any node, as this node knows."""
        return len(self._online)

    # ------------------------------------------------------------ transitions

    def received(self, data: str) -> None:
        """One message of the channel, in Redis's order: a transition (`+user`,
        `-user`) or a node's counts removed by a survivor (`!node`)."""
        name = data[1:]
        if data.startswith("+"):
            self._went(name, online=True)
        elif data.startswith("-"):
            self._went(name, online=False)
        elif data.startswith("!"):
            if name == self.node:
                # Taken for dead (our key expired: a stall, a partition from Redis).
                # The sweep writes our counts again once our key is back, not before:
                # the survivors would remove them again.
                self._removed = True
        else:
            log.warning("presence: a message that is not a transition, ignored")

    def _went(self, user_id: str, *, online: bool) -> None:
        # Idempotent: a resync or a recount may repeat what this node already has.
        if online == (user_id in self._online):
            return
        if online:
            self._online.add(user_id)
        else:
            self._online.discard(user_id)
        self.transitions += 1
        self._presence.went(user_id, "online" if online else "offline")

    async def resync(self, *, full: bool) -> None:
        """Take the users online anywhere from Redis: add those missing here and, if
        `full`, remove those Redis no longer has (not those connected here: their count
        is on its way). Called in the subscription's order, so the transitions after
        it apply on top. Raises one of `REDIS_DOWN`."""
        now = set(await self._redis.smembers(self._online_key))
        for user_id in sorted(now - self._online):
            self._went(user_id, online=True)
        if full:
            for user_id in sorted(self._online - now):
                if not self._presence.connection_count(user_id):
                    self._went(user_id, online=False)

    async def recount(self) -> None:
        """Write this node's counts again: every user connected here, and every user
        Redis has a count of ours for (stale ones go to 0)."""
        self._dirty.update(self._presence.user_ids())
        # Redis unreachable: the local ones are queued; the writer retries until it is back.
        with contextlib.suppress(*REDIS_DOWN):
            self._dirty.update(await self._redis.smembers(self._users_prefix + self.node))
        self._wake.set()

    # ------------------------------------------------------------ the tasks

    async def write(self) -> None:
        """Write the changed counts until cancelled; while Redis is unreachable, retry
        with backoff (the counts stay queued, one entry per user)."""
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._dirty:
                users = list(itertools.islice(self._dirty, WRITE_BATCH))
                self._dirty.difference_update(users)
                try:
                    await self._write(users)
                    backoff = 0.05
                except REDIS_DOWN:
                    self._dirty.update(users)
                    log.warning("presence: Redis unreachable, counts retried in %.2fs", backoff)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)

    async def _write(self, users: list[str]) -> None:
        keys = [self._online_key, self._users_prefix + self.node, self._nodes_key]
        args: list[str | int] = [self.node, self.channel]
        for user_id in users:
            keys.append(self._hash_prefix + user_id)
            args += [user_id, self._presence.connection_count(user_id)]
        await self._set_counts(keys, args)

    async def sweep(self) -> None:
        """Every `sweep_seconds` until cancelled: `sweep_once`, Redis errors logged."""
        while True:
            await trio.sleep(self._sweep_seconds)
            try:
                await self.sweep_once()
            except REDIS_DOWN as exc:
                # The text, not the exception: a kept log record would keep the failed
                # connection (and its traceback) alive with it.
                log.warning("presence: sweep skipped, Redis unreachable (%s)", str(exc))

    async def sweep_once(self) -> int:
        """Remove the counts of every node whose `node:<id>` key is gone; returns how
        many users went offline by it. And if this node's own counts were removed (it
        was taken for dead) and its key is back, write them again."""
        if self._removed and await self._redis.exists([self._node_key_prefix + self.node]):
            self._removed = False
            log.warning("presence: this node's counts were removed; writing them again")
            await self.recount()
        nodes = set(await self._redis.smembers(self._nodes_key))
        gone = 0
        for node in sorted(nodes - {self.node}):
            if await self._redis.exists([self._node_key_prefix + node]):
                continue
            removed = await self._remove(node, only_if_dead=True)
            if removed >= 0:
                log.info("presence: node %s is gone, %d users with it", node, removed)
                gone += removed
        return gone

    async def leave(self) -> int:
        """Remove this node's counts (it is stopping); returns how many went offline."""
        return await self._remove(self.node, only_if_dead=False)

    async def _remove(self, node: str, *, only_if_dead: bool) -> int:
        keys = [
            self._node_key_prefix + node,
            self._users_prefix + node,
            self._nodes_key,
            self._online_key,
        ]
        args = [node, self.channel, self._hash_prefix, "1" if only_if_dead else "0"]
        answer: Any = await self._remove_node(keys, args)
        return int(answer)


def _retry_forever() -> coredis.retry.RetryPolicy:
    # coredis's default gives up on the third timeout and backs off to 16 s; a node
    # keeps its subscription for as long as it runs, and comes back within seconds.
    return coredis.retry.CompositeRetryPolicy(
        coredis.retry.ExponentialBackoffRetryPolicy(
            (coredis.exceptions.ConnectionError,),
            retries=None,
            base_delay=0.05,
            max_delay=RECONNECT_MAX_SECONDS,
            jitter=True,
        ),
        coredis.retry.ConstantRetryPolicy((TimeoutError,), retries=None, delay=0.1),
    )


async def run_cluster_presence(
    redis: coredis.Redis[str],
    node_id: str,
    presence: Presence,
    *,
    prefix: str = "messageai:",
    node_key_prefix: str = "messageai:node:",
    sweep_seconds: float = SWEEP_SECONDS,
    settle_seconds: float = SETTLE_SECONDS,
    task_status: trio.TaskStatus[ClusterPresence] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run this node's presence and user bus in Redis until cancelled: subscribe, take
    who is online, set `presence.cluster`, write this node's counts, then follow the
    channels. `task_status` gets the `ClusterPresence` once `presence.cluster` is set
    (start it before the server accepts connections). `redis` is a client with
    `decode_responses=True` whose lifetime the caller owns; `node_key_prefix + node_id`
    is the key the node runtime keeps alive while this node lives.

    At start, raises one of `REDIS_DOWN` if Redis cannot be reached, and
    `RuntimeError` if this node's key is missing: the survivors' sweep would take the
    node for dead and remove its counts every few seconds. Later, Redis unreachable:
    counts and frames wait or drop as their owners say, the subscription reconnects by
    itself, and the resync above follows. Cancellation
    removes this node's counts (shielded, at most a second) and unsets
    `presence.cluster`."""
    bus = UserBus(redis, node_id, presence, channel=f"{prefix}user")
    cluster = ClusterPresence(
        redis,
        node_id,
        presence,
        bus,
        prefix=prefix,
        node_key_prefix=node_key_prefix,
        sweep_seconds=sweep_seconds,
    )
    pubsub = redis.pubsub(channels=[cluster.channel, bus.channel], retry_policy=_retry_forever())
    if not await redis.exists([node_key_prefix + node_id]):
        raise RuntimeError(
            f"no {node_key_prefix + node_id} in Redis: the node runtime keeps it, and"
            " starts before presence"
        )
    async with pubsub, trio.open_nursery() as nursery:
        await cluster.resync(full=True)
        presence.cluster = cluster
        try:
            await cluster.recount()
            nursery.start_soon(cluster.write)
            nursery.start_soon(cluster.sweep)
            nursery.start_soon(bus.publish)
            nursery.start_soon(bus.deliver)
            task_status.started(cluster)
            await _follow(pubsub, cluster, bus, settle_seconds)
        finally:
            presence.cluster = None
            # Redis unreachable: the survivors' sweep removes them once our key expires.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(1.0),
                contextlib.suppress(*REDIS_DOWN),
            ):
                await cluster.leave()


async def _follow(
    pubsub: Any, cluster: ClusterPresence, bus: UserBus, settle_seconds: float
) -> None:
    """Hand the subscription's messages to their owners, in order, until cancelled.
    Each is O(1) work here (presence announcements are pushes; the bus's are queued),
    so coredis's own buffer stays drained; a resubscription (the connection came back)
    resyncs in this same order."""
    subscribed = False
    settle_at = math.inf
    while True:
        message = None
        with trio.move_on_at(settle_at):
            message = await pubsub.get_message()
        if message is None:
            if trio.current_time() >= settle_at:
                settle_at = math.inf
                try:
                    await cluster.resync(full=True)
                except REDIS_DOWN:
                    settle_at = trio.current_time() + settle_seconds
            continue
        kind, channel = message["type"], message["channel"]
        if kind == "message" and channel == cluster.channel:
            cluster.received(str(message["data"]))
        elif kind == "message" and channel == bus.channel:
            bus.received(str(message["data"]))
        elif kind == "subscribe" and channel == cluster.channel:
            if subscribed:
                # The connection came back: Redis may have restarted empty, and this
                # node missed what was published meanwhile.
                log.warning("presence: resubscribed to Redis; recounting")
                await cluster.recount()
                with contextlib.suppress(*REDIS_DOWN):  # the full resync below retries
                    await cluster.resync(full=False)
                settle_at = trio.current_time() + settle_seconds
            subscribed = True
