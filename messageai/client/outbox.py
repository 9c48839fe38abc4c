"""The outbox: my sends, edits, deletes and reactions, queued in ONE order, as SQL.

`sdk.Client` enqueues (`edit`, `delete`, `react`; sends go in with
`store.add_outgoing`); `sync.Syncer` takes `ready` batches, marks them
`attempted` before writing them to a connection and `done` when answered.
Rules (issue 10): an entry names its message by the local row, so an edit of a
message still queued names it by its client_id until its seq is known, and it
travels after the send; a delete of a queued message that no connection has
carried yet removes the message and its entries, and sends nothing (one that
may have reached the server is resent with its client_id, then deleted). Until
the server answers, `store` lays each change over the message; a refused one
is dropped here, which rolls it back.
"""

from __future__ import annotations

import apsw
import attrs

from messageai.client import store
from messageai.sqlite import transaction


@attrs.frozen
class Entry:
    pos: int
    kind: str  # send, edit, delete, react
    local_id: int
    body: str | None
    emoji: str | None
    on: bool
    # The message as it is stored (the server's state, no overlay): its seq once known.
    message: store.LocalMessage


def _entry(conn: apsw.Connection, row: tuple[object, ...]) -> Entry | None:
    pos, kind, local_id, body, emoji, on = row
    assert isinstance(local_id, int)
    found = conn.execute(
        f"SELECT {store._MSG_COLUMNS} FROM messages WHERE local_id = ?", (local_id,)
    ).fetchone()
    if found is None:  # pragma: no cover - ON DELETE CASCADE removes such entries
        return None
    return Entry(
        pos=int(pos),  # type: ignore[call-overload]
        kind=str(kind),
        local_id=local_id,
        body=body if isinstance(body, str) else None,
        emoji=emoji if isinstance(emoji, str) else None,
        on=bool(on),
        message=store._message(found),
    )


def entries(conn: apsw.Connection, limit: int) -> list[Entry]:
    """The oldest `limit` entries, in the order they were made."""
    rows = conn.execute(
        'SELECT pos, kind, local_id, body, emoji, "on" FROM outbox ORDER BY pos LIMIT ?', (limit,)
    ).fetchall()
    return [e for e in (_entry(conn, row) for row in rows) if e is not None]


def changes_of(conn: apsw.Connection, local_id: int) -> list[Entry]:
    """The edits, deletes and reactions queued for one message, in order."""
    rows = conn.execute(
        'SELECT pos, kind, local_id, body, emoji, "on" FROM outbox'
        " WHERE local_id = ? AND kind != 'send' ORDER BY pos",
        (local_id,),
    ).fetchall()
    return [e for e in (_entry(conn, row) for row in rows) if e is not None]


def ready(conn: apsw.Connection, limit: int) -> list[Entry]:
    """The next entries that can travel now, in order: up to the first change whose
    message has no seq yet (it waits for its send's ack)."""
    out = []
    for entry in entries(conn, limit):
        if entry.kind != "send" and entry.message.seq is None:
            break
        out.append(entry)
    return out


def blocked_head(conn: apsw.Connection) -> Entry | None:
    """The first entry, if it is a change that cannot travel and has no send before it
    (its message was refused or never queued): the syncer drops it as refused."""
    first = entries(conn, 1)
    head = first[0] if first else None
    if head is not None and head.kind != "send" and head.message.seq is None:
        return head if head.message.status != "sending" else None
    return None


def mark_attempted(conn: apsw.Connection, positions: list[int]) -> None:
    """Before the frames are written: from now on the server may have them."""
    with transaction(conn):
        for pos in positions:
            conn.execute("UPDATE outbox SET attempted = 1 WHERE pos = ?", (pos,))


def done(conn: apsw.Connection, pos: int) -> None:
    """Answered (or refused): the entry leaves the outbox."""
    conn.execute("DELETE FROM outbox WHERE pos = ?", (pos,))


def enqueue(
    conn: apsw.Connection,
    kind: str,
    local_id: int,
    now_ms: int,
    *,
    body: str | None = None,
    emoji: str | None = None,
    on: bool = True,
) -> None:
    conn.execute(
        'INSERT INTO outbox(kind, local_id, body, emoji, "on", made_at) VALUES (?, ?, ?, ?, ?, ?)',
        (kind, local_id, body, emoji, int(on), now_ms),
    )


def unsent(conn: apsw.Connection, local_id: int) -> bool:
    """A message of mine that no server can have: queued and never written to a
    connection, or refused for good."""
    row = conn.execute("SELECT status FROM messages WHERE local_id = ?", (local_id,)).fetchone()
    if row is None or row[0] not in ("sending", "failed"):
        return False
    attempted = conn.execute(
        "SELECT 1 FROM outbox WHERE local_id = ? AND kind = 'send' AND attempted = 1",
        (local_id,),
    ).fetchone()
    return attempted is None


def remove_message(conn: apsw.Connection, local_id: int) -> None:
    """A delete of an unsent message: it and its entries go, nothing is sent."""
    conn.execute("DELETE FROM messages WHERE local_id = ?", (local_id,))


def edit_unsent(conn: apsw.Connection, local_id: int, body: str) -> None:
    """An edit of a refused message (`failed`, not queued): its text changes here; a
    `/retry` sends the new text."""
    conn.execute(
        "UPDATE messages SET body = ? WHERE local_id = ? AND status = 'failed'", (body, local_id)
    )
