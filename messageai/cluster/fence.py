"""The epoch fence of a conversation's file, as a cluster node uses it.

A node that acquired a conversation's lease claims the file (`claim_file`, before the
actor opens it and loads its state) and gives the actor a `Fence`; the actor calls
`Fence.check` inside every commit's transaction, just before the COMMIT
(`ConversationActor._store_committed`). A stale owner's batch then rolls back and
nothing of it is acked (docs/SCALE.md §4). `file_epoch` reads the epoch a file was
last claimed with: the floor for the next acquire, should Redis have lost its counter.
Blocking functions: run them in a worker thread. The single-node server uses none of
this (its actors get `fence=None`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import apsw

from messageai.model import now_ms
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import conversation
from messageai.store import fence as sql
from messageai.store.fence import Fenced, FenceRow

__all__ = ["Fence", "FenceRow", "Fenced", "claim_file", "file_epoch"]


class Fence:
    """What one actor's commits are checked against: its lease (`held`, the lease's
    local view, safe to call from the commit's thread) and its epoch in the file."""

    def __init__(self, epoch: int, held: Callable[[], bool]) -> None:
        self.epoch = epoch
        self._held = held

    def check(self, conn: apsw.Connection) -> None:
        """Raise Fenced unless the lease is still held and the file is still at this
        epoch. Called inside the commit's write transaction."""
        if not self._held():
            raise Fenced(f"epoch {self.epoch}: the lease was lost")
        sql.check(conn, self.epoch)


def claim_file(path: Path, synchronous: str, epoch: int, node: str) -> FenceRow:
    """Claim the conversation file at `path` for `epoch` (created and migrated if need
    be), in one write transaction; raises Fenced if it was claimed at this epoch or a
    later one. Blocking."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = open_db(path, synchronous)
    try:
        migrate(conn, conversation.MIGRATIONS)
        with transaction(conn):
            return sql.claim(conn, epoch, node, now_ms())
    finally:
        conn.close()


def file_epoch(path: Path) -> int:
    """The epoch the file was last claimed with (0: no file, or never claimed). Blocking."""
    if not path.exists():
        return 0
    conn = open_db(path, "FULL", create=False)
    try:
        row = sql.current(conn)
    finally:
        conn.close()
    return row.epoch if row is not None else 0
