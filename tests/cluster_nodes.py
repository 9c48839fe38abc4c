"""Several `messageai serve` processes forming one cluster, for the cluster tests.

`cluster_of(tmp_path, n)` starts a real `redis-server` (`tests/redis_server.py`) and `n`
real server processes on 127.0.0.1:0 sharing one data directory (docs/SCALE.md §7a),
each with `[cluster]` on, its own node id (`a`, `b`, `c`...) and a short lease TTL, so
a killed owner's conversations move within about two seconds. Each node comes with a
`Harness` (REST and WebSocket helpers) on its own port. Nodes start one after the
other: the first makes the data directory and the directory database. `restart(node)`
starts a killed node again (on a new port: its `harness` keeps the old one; use
`process.port`). `scripts/chaos --cluster` (tests/cluster_chaos.py) and
`./scripts/bench --cluster` (bench/cluster.py) run on the same machinery.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import trio

from tests.helpers import Account, Harness, ServerProcess
from tests.redis_server import RedisServer, redis_server

LEASE_TTL_SECONDS = 1.5
LEASE_MARGIN_SECONDS = 0.3


@attrs.define
class _Address:
    """What `Harness` needs of a server: its port and URL."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@attrs.define
class ClusterNode:
    node_id: str
    process: ServerProcess
    harness: Harness


@attrs.define
class Cluster:
    redis: RedisServer
    data_dir: Path
    nodes: list[ClusterNode]
    nursery: trio.Nursery

    async def restart(self, node: ClusterNode) -> int:
        """Start `node` again (after a kill, once its process is gone); its new port."""
        return await node.process.start(self.nursery)

    def node(self, node_id: str) -> ClusterNode:
        return next(node for node in self.nodes if node.node_id == node_id)

    async def placed(self, conversation_id: str, who: Account) -> str:
        """Have the conversation placed (`who` subscribes through the first node, then
        leaves); the node that took its lease."""
        async with self.nodes[0].harness.ws(who) as probe:
            subscribed = await probe.request("subscribe", conversation_id=conversation_id)
            assert subscribed["type"] == "subscribed", subscribed
        owner = await self.owner(conversation_id)
        assert owner is not None
        return owner

    async def direct(self) -> tuple[Account, Account, str, str]:
        """Ada and bob (made on the first node), their direct conversation, its owner."""
        first = self.nodes[0].harness
        ada, bob = await first.account("ada"), await first.account("bob")
        cid = await first.direct(ada, bob)
        return ada, bob, cid, await self.placed(cid, ada)

    async def owner(self, conversation_id: str) -> str | None:
        """The node holding the conversation's lease now, as Redis says."""
        async with self.redis.client() as redis:
            value = await redis.get(f"messageai:{{{conversation_id}}}:lease")
        return value.rpartition(":")[0] if value else None


def cluster_config(
    path: Path,
    node_id: str,
    redis: RedisServer,
    secret: Path,
    lease_ttl: float = LEASE_TTL_SECONDS,
    extra: str = "",
) -> Path:
    """A node's config file: `[cluster]` on, a lease of `lease_ttl` seconds (its margin
    a fifth of it), then `extra`."""
    margin = LEASE_MARGIN_SECONDS * lease_ttl / LEASE_TTL_SECONDS
    return ServerProcess.write_config(
        path,
        f"[cluster]\nenabled = true\nnode_id = {node_id!r}\n"
        f'redis_url = "redis://{redis.host}:{redis.port}/0"\n'
        'link_listen = "127.0.0.1:0"\nlink_advertise = "127.0.0.1:0"\n'
        f"lease_ttl_seconds = {lease_ttl}\nlease_margin_seconds = {margin:.3f}\n"
        f"node_ttl_seconds = {lease_ttl}\n"
        f"link_secret_file = {str(secret)!r}\n" + extra,
    )


@contextlib.asynccontextmanager
async def cluster_of(
    tmp_path: Path, count: int, *, lease_ttl: float = LEASE_TTL_SECONDS, extra: str = ""
) -> AsyncIterator[Cluster]:
    """Redis and `count` nodes on one data directory, until the block ends; `extra` is
    added to each node's config."""
    data_dir = tmp_path / "data"
    async with redis_server(tmp_path / "redis") as redis, trio.open_nursery() as nursery:
        nodes: list[ClusterNode] = []
        secret = tmp_path / "link-secret"
        secret.write_text(secrets.token_hex(16) + "\n")
        try:
            async with contextlib.AsyncExitStack() as stack:
                for index in range(count):
                    node_id = "abcdefgh"[index]
                    path = tmp_path / f"node-{node_id}.toml"
                    config = cluster_config(path, node_id, redis, secret, lease_ttl, extra)
                    process = ServerProcess(data_dir, config)
                    port = await process.start(nursery)
                    address = _Address(port)
                    http = await stack.enter_async_context(
                        httpx.AsyncClient(base_url=address.url, timeout=10)
                    )
                    nodes.append(ClusterNode(node_id, process, Harness(address, http)))  # type: ignore[arg-type]
                yield Cluster(redis, data_dir, nodes, nursery)
        finally:
            for node in nodes:
                if node.process.process is not None and node.process.process.returncode is None:
                    node.process.terminate()
            with trio.move_on_after(10):
                for node in nodes:
                    if node.process.process is not None:
                        await node.process.wait()
            nursery.cancel_scope.cancel()
