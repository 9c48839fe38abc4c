"""Joining the cluster at start-up: the node and its links, wired into the registry,
and presence and the user bus (`cluster.presence`) wired into `Presence`.

Called by `Server._run` when `cluster.enabled`, in the actor nursery (so the node
outlives every connection and ends with the actors); the only place the server
imports `messageai.cluster` from, so a single-node server never loads coredis.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import trio

from messageai.cluster.link import Links
from messageai.cluster.node import PREFIX, Node
from messageai.cluster.presence import ClusterPresence, run_cluster_presence
from messageai.cluster.storage import open_storage
from messageai.config import Config, read_secret
from messageai.conversations.registry import Registry
from messageai.live.presence import Presence


async def start_node(
    config: Config, registry: Registry, presence: Presence, nursery: trio.Nursery
) -> tuple[Node, ClusterPresence]:
    """Start this node (its storage checked, Redis, its registration, the link
    listener) and its links, and hand both to the registry; then presence across nodes
    (its counts need the node's key in Redis, so it starts after the registration).
    Returns once both run, before the server accepts a connection."""
    cluster = config.cluster
    secret = read_secret(
        "cluster",
        "link_secret_file",
        cluster.link_secret_file,
        "link_secret_env",
        cluster.link_secret_env,
    )
    assert secret is not None  # required in cluster mode (ClusterConfig)
    storage = await open_storage(config)
    nursery.start_soon(_close_at_exit, storage.close)
    node = Node(config)
    node.storage = storage
    node.exists = registry.exists
    links = Links(config, node, registry, secret)
    await nursery.start(links.run)
    await nursery.start(node.run, links.serve)
    registry.node, registry.links = node, links
    assert node.redis is not None  # set by `node.run` before it reports started
    across: ClusterPresence = await nursery.start(
        functools.partial(
            run_cluster_presence,
            node.redis,
            config.cluster.node_id,
            presence,
            prefix=PREFIX,
            node_key_prefix=f"{PREFIX}node:",
        )
    )
    return node, across


async def _close_at_exit(close: Callable[[], None]) -> None:
    # The store's client lives as long as the actors (the nursery's last task).
    try:
        await trio.sleep_forever()
    finally:
        close()
