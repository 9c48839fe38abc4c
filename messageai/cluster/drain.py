"""`messageai node drain`: hand this node's conversations to the other nodes (SCALE.md §9).

Called by the server for a `node_drain` request on the node's own admin channel
(`admin-<node id>.sock`, `ops.channel`). The node first leaves the live set and stops
taking leases (`Node.withdraw`), so new conversations go elsewhere; then, one at a
time, each conversation it owns is taken out of service (`Registry.stopped`: the
actor finishes the batch in its commit thread, and what is queued is answered
`unavailable`, safe to resend), its lease is released (compare-and-delete, so the
next owner need not wait for the TTL), and the connections that were subscribed are
closed with 1013, local ones here and other nodes' through their links: the clients
reconnect, resubscribe on the new owner and catch up from their seq. Commands that
arrive meanwhile are routed to the new owner. The node keeps serving its
connections until it is stopped.
"""

from __future__ import annotations

import logging

from messageai.cluster.link import RemotePeer
from messageai.cluster.node import Node
from messageai.conversations.registry import Registry
from messageai.errors import CLOSE_TRY_AGAIN_LATER

log = logging.getLogger(__name__)


async def drain(node: Node, registry: Registry) -> str:
    """Drain `node`; what to print."""
    await node.withdraw()
    moved = 0
    for conversation_id in node.held_ids():
        async with registry.stopped(conversation_id) as subscribers:
            if node.holds(conversation_id):  # a lease whose actor had not started
                node.retired(conversation_id)
            await node.released(conversation_id)
        for peer in subscribers:
            if isinstance(peer, RemotePeer):
                peer.lost()
            else:
                close = getattr(peer, "close", None)
                if close is not None:
                    close(CLOSE_TRY_AGAIN_LATER, "conversation moved: reconnect")
        moved += 1
    log.info("node %s drained: %d conversations handed over", node.node_id, moved)
    return f"node {node.node_id} drained: {moved} conversations handed over"
