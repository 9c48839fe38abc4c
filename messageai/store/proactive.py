"""SQL for proactive scheduling in one conversation's own file: how far the
assistant has read the conversation's scheduling talk, and when it last posted.

Called only inside the conversation's actor (through `conversations.commands.Ai` and
the bot post's guard), by `ai.proactive`. One row: `handled_seq`, the newest seq a
scheduling discussion has been read through (a discussion is never read twice: a
trigger at or below it is done), and `posted_at`, when the last scheduling message
was posted (at most one an hour).
"""

from __future__ import annotations

import apsw


def migration(conn: apsw.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS proactive_state(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            handled_seq INTEGER NOT NULL,
            posted_at INTEGER
        )
        """
    )


def state(conn: apsw.Connection) -> tuple[int, int | None]:
    """(handled_seq, posted_at); (0, None) before the first discussion."""
    row = conn.execute("SELECT handled_seq, posted_at FROM proactive_state WHERE id = 1").fetchone()
    if row is None:
        return 0, None
    handled, posted_at = row
    return int(handled), posted_at


def mark_handled(conn: apsw.Connection, seq: int, posted_at: int | None) -> None:
    """The talk through `seq` is read; `posted_at`: a post was made then (None keeps
    the previous post's time). Never moves `handled_seq` back."""
    conn.execute(
        "INSERT INTO proactive_state(id, handled_seq, posted_at) VALUES (1, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET handled_seq = max(handled_seq, excluded.handled_seq),"
        " posted_at = coalesce(excluded.posted_at, posted_at)",
        (seq, posted_at),
    )
