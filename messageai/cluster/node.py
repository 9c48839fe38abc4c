"""This process as a node of a cluster: its Redis, its liveness, and which conversations
it owns (docs/SCALE.md §3-5).

Made by the server when `cluster.enabled` (`Server._run`), run in the actor nursery
(`run`), and asked by the registry before it starts an actor or routes a command:
`owner(id)` answers None when this node holds the conversation's lease (acquired now
if nobody held it and placement prefers this node), or the id of the node that owns
it, whose link (`cluster.link`) then carries the command. The registry's
check-then-act stays await-free: the lease is acquired here, before the registry's
check, and `fence(id)` hands the held lease to the actor it then creates (with
`replica(id)`, where `storage` restored the file from S3: `cluster.storage`). The actor
runs under `owning` (its lease renewed; losing it cancels the actor) and `retired`
gives the lease back when it ends.

Liveness: `<prefix>node:<id>` holds the node's link address with a TTL
(`cluster.node_ttl_seconds`), refreshed every third of it; the same loop reads the
other nodes' keys, the live set placement hashes over. Hooks for the other cluster
parts: `redis` (the coredis client, decoded strings) and `node_id`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import coredis
import trio

from messageai.cluster import placement
from messageai.cluster.fence import Fence
from messageai.cluster.lease import REDIS_DOWN, Holder, Lease, Leases
from messageai.cluster.replica import Replica, ReplicaLost
from messageai.cluster.storage import Storage
from messageai.config import Config, split_address
from messageai.errors import NotFound, Unavailable
from messageai.store.fence import Fenced

if TYPE_CHECKING:
    from messageai.cluster.link import Links

log = logging.getLogger(__name__)

PREFIX = "messageai:"
# How long one Redis round trip of the routing path may take before the command gets
# `unavailable` (a lease acquired is only good for its TTL anyway).
REDIS_TIMEOUT_SECONDS = 2.0
# Owners of conversations held elsewhere that a node remembers at most.
MAX_CACHED_OWNERS = 100_000
# How long a forgotten lease of this node's previous life (same id, before a restart)
# may take to give back.
RELEASE_TIMEOUT_SECONDS = 1.0


class NotOwner(Unavailable):
    """This node does not own the conversation (its lease is another node's): the
    caller drops its cached owner and asks again. Clients see `unavailable` (its
    code); only the node links tell it apart, by `link_code`."""

    link_code = "not_owner"


class Node:
    """One node's view of the cluster; see the module."""

    def __init__(self, config: Config) -> None:
        cluster = config.cluster
        self.node_id = cluster.node_id
        self._config = config
        self.redis: coredis.Redis[str] | None = None
        self.leases: Leases | None = None
        # node id -> link address of every live node (this one included), from Redis.
        self.nodes: dict[str, str] = {}
        self.address = ""
        # Leases this node holds, by conversation id (an actor runs or is about to).
        self._held: dict[str, Lease] = {}
        # Conversations being acquired or given back now: later callers wait for it.
        self._busy: dict[str, trio.Event] = {}
        # The owner last seen for a conversation held elsewhere (dropped on not_owner).
        self._owners: dict[str, str] = {}
        # Leases given up while the node stops, for `_leave` to release.
        self._stopping: list[Lease] = []
        # The renewal task of each held lease whose actor runs (`keep`).
        self._keepers: dict[str, trio.CancelScope] = {}
        # Whether a conversation exists (the directory; set by `cluster.startup`): an
        # unknown id never gets a lease or a file.
        self.exists: Callable[[str], bool] = lambda _conversation_id: True
        self._nursery: trio.Nursery | None = None
        self.links: Links | None = None
        # `node drain` (cluster.drain): no new lease, out of the live set.
        self.draining = False
        # Where a taken conversation's file comes from (cluster.storage; set by
        # `cluster.startup`), and the replica of each held one (replica mode).
        self.storage = Storage(config)
        self._replicas: dict[str, Replica] = {}
        # What stops each running actor (`keep`): a lost replica stops it too.
        self._stops: dict[str, Callable[[], None]] = {}

    # ------------------------------------------------------------ lifecycle

    async def run(
        self,
        serve_link: Callable[[trio.SocketStream], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect to Redis, listen for node links (each served by `serve_link`),
        register this node, and keep it registered until cancelled; then give back
        every lease and the registration (shielded, briefly)."""
        cluster = self._config.cluster
        redis: coredis.Redis[str] = coredis.Redis.from_url(
            cluster.redis_url,
            decode_responses=True,
            connect_timeout=REDIS_TIMEOUT_SECONDS,
            stream_timeout=REDIS_TIMEOUT_SECONDS,
        )
        host, port = split_address(cluster.link_listen)
        listeners = await trio.open_tcp_listeners(port, host=host)
        try:
            async with redis:
                self.redis = redis
                self.leases = Leases(
                    redis,
                    self.node_id,
                    ttl_seconds=cluster.lease_ttl_seconds,
                    drift=cluster.lease_drift,
                    margin_seconds=cluster.lease_margin_seconds,
                    prefix=PREFIX,
                )
                bound = listeners[0].socket.getsockname()[1]
                ad_host, ad_port = split_address(cluster.link_advertise)
                self.address = f"{ad_host}:{ad_port or bound}"
                with trio.fail_after(REDIS_TIMEOUT_SECONDS * 2):
                    await self._heartbeat()
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        nursery.start_soon(trio.serve_listeners, serve_link, listeners)
                        nursery.start_soon(self._heartbeats)
                        log.info("cluster node %s up, link at %s", self.node_id, self.address)
                        task_status.started()
                        await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT_SECONDS):
                        await self._leave()
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _leave(self) -> None:
        assert self.leases is not None and self.redis is not None
        for lease in [*self._held.values(), *self._stopping]:
            try:
                await self.leases.release(lease)
            except REDIS_DOWN:
                break
        self._held.clear()
        with contextlib.suppress(*REDIS_DOWN):
            await self.redis.delete([f"{PREFIX}node:{self.node_id}"])

    async def _heartbeat(self) -> None:
        assert self.redis is not None
        ttl_ms = max(1, round(self._config.cluster.node_ttl_seconds * 1000))
        own = f"{PREFIX}node:{self.node_id}"
        if self.draining:
            await self.redis.delete([own])
        else:
            await self.redis.set(own, self.address, px=ttl_ms)
        keys = [key async for key in self.redis.scan_iter(match=f"{PREFIX}node:*")]
        addresses = await self.redis.mget(keys) if keys else []
        self.nodes = {
            key[len(PREFIX) + len("node:") :]: address
            for key, address in zip(keys, addresses, strict=True)
            if address is not None
        }
        if not self.draining:
            self.nodes[self.node_id] = self.address
        else:
            self.nodes.pop(self.node_id, None)

    async def _heartbeats(self) -> None:
        interval = self._config.cluster.node_ttl_seconds / 3
        while True:
            await trio.sleep(interval)
            try:
                with trio.fail_after(interval):
                    await self._heartbeat()
            except (*REDIS_DOWN, trio.TooSlowError):
                log.warning("cluster node %s: Redis did not take the heartbeat", self.node_id)

    # ------------------------------------------------------------ ownership

    def holds(self, conversation_id: str) -> bool:
        return conversation_id in self._held

    def held_ids(self) -> list[str]:
        return list(self._held)

    def fence(self, conversation_id: str) -> Fence:
        """The fence of the lease this node holds for the conversation (the registry,
        creating its actor). Unavailable if it holds none: the actor must not start."""
        lease = self._held.get(conversation_id)
        if lease is None or not lease.held():
            raise Unavailable("this node does not own the conversation now; please retry")
        replica = self._replicas.get(conversation_id)
        if replica is None:
            return Fence(lease.epoch, lease.held)
        return Fence(lease.epoch, lambda: lease.held() and replica.healthy)

    def replica(self, conversation_id: str) -> Replica | None:
        """The replica the actor of a held conversation ships its commits to (None in
        the shared-directory mode)."""
        return self._replicas.get(conversation_id)

    async def current_owner(self, conversation_id: str) -> str | None:
        """Who holds the conversation's lease now (this node's id included), or None;
        never takes it. Raises Unavailable when Redis cannot be reached."""
        if conversation_id in self._held:
            return self.node_id
        assert self.leases is not None
        try:
            with trio.fail_after(REDIS_TIMEOUT_SECONDS):
                holder = await self.leases.holder(conversation_id)
        except (*REDIS_DOWN, trio.TooSlowError) as exc:
            raise Unavailable("the cluster's Redis is unreachable; please retry") from exc
        return holder.node if holder is not None else None

    def forget_owner(self, conversation_id: str, node_id: str) -> None:
        """A link to `node_id` said not_owner or broke: ask Redis next time."""
        if self._owners.get(conversation_id) == node_id:
            del self._owners[conversation_id]

    async def owner(self, conversation_id: str, *, forwarded: bool = False) -> str | None:
        """None if this node owns the conversation (its lease held now, taken if need
        be), else the owner's node id. `forwarded`: the command came over a link, so it
        is never sent on again by preference; a lease held elsewhere raises NotOwner.
        Raises Unavailable when Redis cannot be reached."""
        while True:
            lease = self._held.get(conversation_id)
            if lease is not None:
                if lease.held():
                    return None
                if conversation_id in self._keepers:
                    # Its actor is being stopped (`keep` saw the loss); then `retired`.
                    raise Unavailable("this node is giving the conversation up; please retry")
                # Taken, but no actor ever started with it: it ran out unused.
                del self._held[conversation_id]
                self._replicas.pop(conversation_id, None)
            busy = self._busy.get(conversation_id)
            if busy is not None:
                await busy.wait()
                continue
            cached = self._owners.get(conversation_id)
            if cached is not None and not forwarded and cached in self.nodes:
                return cached
            busy = self._busy[conversation_id] = trio.Event()
            try:
                found = await self._find_or_take(conversation_id, forwarded)
            finally:
                del self._busy[conversation_id]
                busy.set()
            if found is None or found != self.node_id:
                return found

    async def _find_or_take(self, conversation_id: str, forwarded: bool) -> str | None:
        assert self.leases is not None
        try:
            with trio.fail_after(REDIS_TIMEOUT_SECONDS):
                holder = await self.leases.holder(conversation_id)
                if holder is None and not forwarded:
                    choice = placement.preferred(conversation_id, self._candidates())
                    if choice != self.node_id:
                        return choice
                if holder is None and self.draining:
                    raise NotOwner(f"node {self.node_id} is draining")
            if holder is None:
                return await self._take(conversation_id)
        except (*REDIS_DOWN, trio.TooSlowError) as exc:
            raise Unavailable("the cluster's Redis is unreachable; please retry") from exc
        return await self._held_elsewhere(conversation_id, holder, forwarded)

    def _candidates(self) -> list[str]:
        """The live nodes placement may choose (a draining node is not one)."""
        if not self.draining:
            return list(self.nodes) or [self.node_id]
        others = [node_id for node_id in self.nodes if node_id != self.node_id]
        if not others:
            raise Unavailable("this node is draining and no other node is up; please retry")
        return others

    async def withdraw(self) -> None:
        """Stop taking leases and leave the live set (`node drain`, first step)."""
        self.draining = True
        with trio.move_on_after(REDIS_TIMEOUT_SECONDS), contextlib.suppress(*REDIS_DOWN):
            await self._heartbeat()

    async def released(self, conversation_id: str) -> None:
        """Wait until a retired conversation's lease has been given back."""
        busy = self._busy.get(conversation_id)
        if busy is not None:
            await busy.wait()

    async def take(self, conversation_id: str) -> str | None:
        """Take the lease whatever placement prefers (the preferred node did not
        answer): None when taken, else the holder's id."""
        if self.draining:
            raise Unavailable("the conversation's node does not answer; please retry")
        busy = self._busy.get(conversation_id)
        if busy is not None:
            await busy.wait()
            return None if conversation_id in self._held else await self.owner(conversation_id)
        if conversation_id in self._held:
            return None
        busy = self._busy[conversation_id] = trio.Event()
        try:
            return await self._take(conversation_id)
        except (*REDIS_DOWN, trio.TooSlowError) as exc:
            raise Unavailable("the cluster's Redis is unreachable; please retry") from exc
        finally:
            del self._busy[conversation_id]
            busy.set()

    async def _held_elsewhere(self, conversation_id: str, holder: Holder, forwarded: bool) -> str:
        assert self.leases is not None
        if holder.node == self.node_id:
            # This node's previous life (a restart with the same id) held it: nobody
            # serves it, so give it back now rather than wait for its TTL.
            stale = Lease(conversation_id, holder.node, holder.epoch, float("-inf"))
            with trio.move_on_after(RELEASE_TIMEOUT_SECONDS):
                await self.leases.release(stale)
            return self.node_id  # `owner` asks again
        if forwarded:
            raise NotOwner(f"conversation {conversation_id} is owned by node {holder.node}")
        self._remember(conversation_id, holder.node)
        return holder.node

    def _remember(self, conversation_id: str, node_id: str) -> None:
        if len(self._owners) >= MAX_CACHED_OWNERS:
            # A cache: the oldest half goes (those still in use are asked for again).
            for old in list(self._owners)[: MAX_CACHED_OWNERS // 2]:
                del self._owners[old]
        self._owners[conversation_id] = node_id

    async def _take(self, conversation_id: str) -> str | None:
        # Acquire with the file's epoch as the floor, then claim the file for it, all
        # before any actor exists (docs/SCALE.md §3-4); the file comes from `storage`
        # (the shared directory, or restored from the replica: §7), outside the Redis
        # deadline. Callers map REDIS_DOWN and TooSlowError to Unavailable.
        assert self.leases is not None
        if not self.exists(conversation_id):
            raise NotFound("no such conversation")
        prepared = await self.storage.prepare(conversation_id)
        with trio.fail_after(REDIS_TIMEOUT_SECONDS):
            got = await self.leases.acquire(conversation_id, floor=prepared.floor)
        if isinstance(got, Holder):
            self._remember(conversation_id, got.node)
            return got.node
        token, epoch = trio.lowlevel.current_trio_token(), got.epoch

        def lost() -> None:  # from the commit's thread
            token.run_sync_soon(self._replica_lost, conversation_id, epoch)

        try:
            replica = await self.storage.claim(
                conversation_id, prepared, got.epoch, self.node_id, lost
            )
        except (Fenced, ReplicaLost) as exc:
            with trio.move_on_after(RELEASE_TIMEOUT_SECONDS):
                await self.leases.release(got)
            raise Unavailable(f"conversation {conversation_id}: {exc}; please retry") from exc
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT_SECONDS):
                await self.leases.release(got)
            raise
        self._owners.pop(conversation_id, None)
        self._held[conversation_id] = got
        if replica is not None:
            self._replicas[conversation_id] = replica
        log.info("conversation %s: owned here at epoch %d", conversation_id, got.epoch)
        return None

    def keep(self, conversation_id: str, actor_scope: trio.CancelScope) -> None:
        """Renew the conversation's lease while its actor runs (the registry's
        supervisor, as it starts it); the lease's loss cancels `actor_scope`, before
        the actor's next commit (which the fence would refuse anyway). `retired`
        stops the renewals. A task of the node's own: the actor's retire stays
        await-free up to its supervisor closing its channel."""
        lease = self._held.get(conversation_id)
        if lease is None or self.leases is None or self._nursery is None:
            actor_scope.cancel()
            return
        leases = self.leases
        keeper = self._keepers[conversation_id] = trio.CancelScope()
        self._stops[conversation_id] = actor_scope.cancel

        async def keep() -> None:
            with keeper:
                await leases.keep(lease)
                log.warning(
                    "conversation %s: lease lost at epoch %d; its actor stops",
                    conversation_id,
                    lease.epoch,
                )
                actor_scope.cancel()

        self._nursery.start_soon(keep, name=f"lease {conversation_id}")

    def _replica_lost(self, conversation_id: str, epoch: int) -> None:
        # The replica's `on_lost`, on the loop: its actor stops (then `retired` gives
        # the lease back); the local file is never served again (docs/SCALE.md §7).
        # Only that epoch's actor: a later owner here is not stopped by a late call.
        lease = self._held.get(conversation_id)
        stop = self._stops.get(conversation_id)
        if lease is not None and lease.epoch == epoch and stop is not None:
            log.warning("conversation %s: replica lost; its actor stops", conversation_id)
            stop()

    def retired(self, conversation_id: str) -> None:
        """The conversation's actor ended (idle, lost lease, shutdown): give its lease
        back now, so the next owner need not wait for the TTL. Commands meanwhile wait
        in `owner` until the release is done."""
        keeper = self._keepers.pop(conversation_id, None)
        if keeper is not None:
            keeper.cancel()
        self._stops.pop(conversation_id, None)
        replica = self._replicas.pop(conversation_id, None)
        lease = self._held.pop(conversation_id, None)
        if lease is None or self.leases is None or self._nursery is None:
            return
        lease.valid_until = float("-inf")  # no commit of this epoch from here on
        busy = self._busy.setdefault(conversation_id, trio.Event())
        leases = self.leases

        async def release() -> None:
            try:
                with trio.move_on_after(RELEASE_TIMEOUT_SECONDS):
                    await leases.release(lease)
            except REDIS_DOWN:
                pass  # it expires on its own
            finally:
                if self._busy.get(conversation_id) is busy:
                    del self._busy[conversation_id]
                busy.set()
            if replica is not None:
                await self.storage.prune(replica)

        try:
            self._nursery.start_soon(release, name=f"release {conversation_id}")
        except RuntimeError:
            # The node is stopping (its nursery closed): `_leave` releases it, if it has
            # not run yet; else the lease runs out on its own.
            self._stopping.append(lease)
            if self._busy.get(conversation_id) is busy:
                del self._busy[conversation_id]
            busy.set()
