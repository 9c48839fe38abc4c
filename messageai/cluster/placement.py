"""Where a conversation without an owner should go: rendezvous hashing over live nodes.

A preference, never the authority (that is the lease, `cluster.lease`): the node a
request arrives at forwards a conversation nobody holds to the node this names, and
that node takes the lease (docs/SCALE.md §3). Highest-random-weight hashing moves only
the conversations of a node that joins or leaves, and every node computes the same
answer from the same set of live nodes with no coordination. Called by `cluster.node`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(node_id: str, conversation_id: str) -> int:
    """The node's score for the conversation: 64 bits of BLAKE2b over both ids."""
    digest = hashlib.blake2b(f"{node_id}\x00{conversation_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preferred(conversation_id: str, node_ids: Iterable[str]) -> str:
    """The live node with the highest weight for the conversation (ties: the greater
    id, so every node agrees). ValueError for no nodes."""
    return max(node_ids, key=lambda node_id: (weight(node_id, conversation_id), node_id))
