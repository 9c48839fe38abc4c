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

`s3=` (an `S3StandIn`, `tests/s3_server.py`) is the replica mode instead (§7b): each
node its own data directory (`data-a`, `data-b`...), the conversations' files
replicated to a bucket of the stand-in. The directory database is still one file
here: the first node's, reached from the other data directories through a symlink
`directory.sqlite3` (SQLite resolves it, so its WAL and index are the one file's too).
On one host, so a test only.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import trio

from messageai.cluster.s3 import S3
from messageai.services.directory import DIRECTORY_FILE
from tests.helpers import Account, Harness, ServerProcess, run_messageai
from tests.redis_server import RedisServer, redis_server
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3StandIn

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

    @property
    def data_dir(self) -> Path:
        return self.process.data_dir

    async def drain(self) -> None:
        """`messageai node drain` of this node; it handed one conversation over."""
        drained = await run_messageai(
            "node",
            "drain",
            "--config",
            str(self.process.config_file),
            "--data-dir",
            str(self.data_dir),
        )
        assert drained.returncode == 0, drained.stderr
        assert "1 conversations handed over" in drained.stdout


@attrs.define
class Cluster:
    redis: RedisServer
    # The first node's (the only one, but for the replica mode).
    data_dir: Path
    nodes: list[ClusterNode]
    nursery: trio.Nursery
    # The replica mode's bucket (S3-compatible), or "" (a shared data directory).
    bucket: str = ""

    async def restart(self, node: ClusterNode) -> int:
        """Start `node` again (after a kill, once its process is gone); its new port."""
        return await node.process.start(self.nursery)

    def node(self, node_id: str) -> ClusterNode:
        return next(node for node in self.nodes if node.node_id == node_id)

    def other(self, node_id: str) -> ClusterNode:
        """The first node that is not `node_id`."""
        return next(node for node in self.nodes if node.node_id != node_id)

    async def placed(self, conversation_id: str, who: Account) -> str:
        """Have the conversation placed (`who` subscribes through the first node, then
        leaves); the node that took its lease."""
        for _ in range(10):
            async with self.nodes[0].harness.ws(who) as probe:
                subscribed = await probe.request("subscribe", conversation_id=conversation_id)
                assert subscribed["type"] == "subscribed", subscribed
                owner = await self.owner(conversation_id)
            if owner is not None:
                return owner
            # The short test lease ran out between the answer and the read (a loaded
            # machine late to renew it): the next command places it again.
            await trio.sleep(0.1)
        raise AssertionError(f"{conversation_id} was never placed")

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


def replica_config(endpoint: str, bucket: str, secret_key: Path) -> str:
    """The `[cluster]` lines of the replica mode (the stand-in's credentials)."""
    return (
        f"s3_endpoint = {endpoint!r}\ns3_bucket = {bucket!r}\n"
        f"s3_access_key_id = {ACCESS_KEY!r}\ns3_secret_key_file = {str(secret_key)!r}\n"
    )


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
    tmp_path: Path,
    count: int,
    *,
    lease_ttl: float = LEASE_TTL_SECONDS,
    extra: str = "",
    s3: S3StandIn | None = None,
    via: str = "",
) -> AsyncIterator[Cluster]:
    """Redis and `count` nodes on one data directory (or, with `s3`, each on its own,
    replicating to a new bucket; `via`: the nodes reach the store there, a `Stall`,
    with a 1 s timeout), until the block ends; `extra` is added to each node's config."""
    data_dir = tmp_path / "data"
    bucket = ""
    if s3 is not None:
        bucket = f"cluster-{secrets.token_hex(6)}"
        store = S3(s3.endpoint, bucket, access_key=ACCESS_KEY, secret_key=SECRET_KEY)
        with contextlib.closing(store):
            store.create_bucket()
        secret_key = tmp_path / "s3-secret"
        secret_key.write_text(SECRET_KEY + "\n")
        extra += replica_config(via or s3.endpoint, bucket, secret_key)
        if via:
            extra += "s3_timeout_seconds = 1.0\n"
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
                    own_dir = data_dir
                    if s3 is not None:
                        own_dir = tmp_path / f"data-{node_id}"
                        if index == 0:
                            data_dir = own_dir
                        else:
                            own_dir.mkdir()
                            (own_dir / DIRECTORY_FILE).symlink_to(data_dir / DIRECTORY_FILE)
                    process = ServerProcess(own_dir, config)
                    port = await process.start(nursery)
                    address = _Address(port)
                    http = await stack.enter_async_context(
                        httpx.AsyncClient(base_url=address.url, timeout=10)
                    )
                    nodes.append(ClusterNode(node_id, process, Harness(address, http)))  # type: ignore[arg-type]
                yield Cluster(redis, data_dir, nodes, nursery, bucket)
        finally:
            for node in nodes:
                if node.process.process is not None and node.process.process.returncode is None:
                    node.process.terminate()
            with trio.move_on_after(10):
                for node in nodes:
                    if node.process.process is not None:
                        await node.process.wait()
            nursery.cancel_scope.cancel()
