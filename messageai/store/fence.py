"""SQL of a conversation file's `fence` row: which owner's epoch may commit to it.

Cluster mode only (docs/SCALE.md §4): `messageai.cluster.fence` claims a file for a
new owner (`claim`, its own transaction) and the actor checks every commit against it
(`check`, inside the commit's transaction). A single-node server never calls these,
so its files never get the table.
"""

from __future__ import annotations

import apsw
import attrs

from messageai.errors import Unavailable
from messageai.store import conversation


class Fenced(Unavailable):
    """A commit or a claim by an owner whose epoch is not (or no longer) the file's.
    Raised inside the transaction, which then rolls back: nothing of it is stored or
    acked, and the client's resend goes to the current owner."""


@attrs.frozen
class FenceRow:
    epoch: int
    # The conversation's last rev when this epoch claimed the file: every message
    # whose rev is above it was committed under this epoch.
    since_rev: int
    node: str
    claimed_at: int


_CREATE = """
CREATE TABLE IF NOT EXISTS fence(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL,
    since_rev INTEGER NOT NULL,
    node TEXT NOT NULL,
    claimed_at INTEGER NOT NULL
)
"""


def current(conn: apsw.Connection) -> FenceRow | None:
    """The file's fence row, or None (never claimed: no table, or no row)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'fence'"
    ).fetchone()
    if exists is None:
        return None
    row = conn.execute("SELECT epoch, since_rev, node, claimed_at FROM fence").fetchone()
    if row is None:
        return None
    epoch, since_rev, node, claimed_at = row
    return FenceRow(int(epoch), int(since_rev), str(node), int(claimed_at))


def claim(conn: apsw.Connection, epoch: int, node: str, now: int) -> FenceRow:
    """Make `epoch` the file's, in the caller's write transaction (BEGIN IMMEDIATE: a
    commit of the previous owner is then wholly before or wholly after this). Raises
    Fenced if the file already has this epoch or a higher one. The conversation's
    tables must exist (the caller migrated the file)."""
    conn.execute(_CREATE)
    held = conn.execute("SELECT epoch FROM fence").get
    if held is not None and int(held) >= epoch:
        raise Fenced(f"epoch {epoch} is stale: the file was claimed at epoch {held}")
    row = FenceRow(epoch, conversation.last_rev(conn), node, now)
    conn.execute(
        "INSERT INTO fence(id, epoch, since_rev, node, claimed_at) VALUES (1, ?, ?, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET epoch = excluded.epoch,"
        " since_rev = excluded.since_rev, node = excluded.node,"
        " claimed_at = excluded.claimed_at",
        (row.epoch, row.since_rev, row.node, row.claimed_at),
    )
    return row


def check(conn: apsw.Connection, epoch: int) -> None:
    """Raise Fenced unless the file's epoch is `epoch`. Inside the commit's transaction,
    which holds the write lock: no claim can come between this and the COMMIT."""
    try:
        held = conn.execute("SELECT epoch FROM fence").get
    except apsw.SQLError as exc:  # no table: never claimed, so nobody may commit
        raise Fenced(f"epoch {epoch}: the file was never claimed") from exc
    if held != epoch:
        raise Fenced(f"epoch {epoch} is stale: the file is at epoch {held}")
