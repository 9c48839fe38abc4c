"""SQL for Expo push: device tokens and the tickets awaiting a receipt, in the directory
database; plus the one read of a conversation file the badge needs.

Called only by `messageai.services.push.Push` (and its REST handlers through it).
"""

from __future__ import annotations

import apsw


def upsert_token(
    conn: apsw.Connection, token: str, user_id: str, platform: str | None, now: int
) -> None:
    """Register a device token; a device that signs into another account moves to it."""
    conn.execute(
        "INSERT INTO push_tokens(token, user_id, platform, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(token) DO UPDATE SET user_id = excluded.user_id,"
        " platform = excluded.platform, created_at = excluded.created_at",
        (token, user_id, platform, now),
    )


def delete_token(conn: apsw.Connection, token: str, user_id: str | None = None) -> bool:
    """Remove a token (only the given user's when `user_id`); True if one was removed."""
    if user_id is None:
        conn.execute("DELETE FROM push_tokens WHERE token = ?", (token,))
    else:
        conn.execute("DELETE FROM push_tokens WHERE token = ? AND user_id = ?", (token, user_id))
    return conn.changes() > 0


def tokens_of(conn: apsw.Connection, user_id: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT token FROM push_tokens WHERE user_id = ? ORDER BY created_at", (user_id,)
        )
    ]


def insert_tickets(conn: apsw.Connection, tickets: list[tuple[str, str]], now: int) -> None:
    """Record (ticket id, token) pairs whose receipts are fetched later."""
    conn.executemany(
        "INSERT OR IGNORE INTO push_tickets(id, token, created_at) VALUES (?, ?, ?)",
        [(ticket, token, now) for ticket, token in tickets],
    )


def due_tickets(conn: apsw.Connection, created_before: int, limit: int) -> list[tuple[str, str]]:
    return [
        (row[0], row[1])
        for row in conn.execute(
            "SELECT id, token FROM push_tickets WHERE created_at <= ? ORDER BY created_at LIMIT ?",
            (created_before, limit),
        )
    ]


def delete_tickets(conn: apsw.Connection, ticket_ids: list[str]) -> None:
    conn.executemany("DELETE FROM push_tickets WHERE id = ?", [(t,) for t in ticket_ids])


def delete_tickets_before(conn: apsw.Connection, created_before: int) -> None:
    conn.execute("DELETE FROM push_tickets WHERE created_at < ?", (created_before,))


def ticket_count(conn: apsw.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM push_tickets").get)


def unread_in_conversation(conn: apsw.Connection, user_id: str, cap: int) -> int:
    """On a conversation's own database: messages from others above the user's read
    cursor, counting at most `cap` (the badge's cost stays bounded)."""
    value = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM messages WHERE seq >"
        " coalesce((SELECT seq FROM read_cursors WHERE user_id = ?1), 0)"
        " AND sender_id <> ?1 LIMIT ?2)",
        (user_id, cap),
    ).get
    return int(value)
