"""SQL for Expo push: device tokens and the tickets awaiting a receipt, in the directory
database. Called only by `messageai.services.push.Push`, through the directory's
connections (`Directory.read` inline, `Directory.write` on its write thread).
"""

from __future__ import annotations

from messageai.store.db import Db


def upsert_token(conn: Db, token: str, user_id: str, platform: str | None, now: int) -> None:
    """Register a device token; a device that signs into another account moves to it."""
    conn.execute(
        "INSERT INTO push_tokens(token, user_id, platform, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(token) DO UPDATE SET user_id = excluded.user_id,"
        " platform = excluded.platform, created_at = excluded.created_at",
        (token, user_id, platform, now),
    )


def delete_token(conn: Db, token: str, user_id: str | None = None) -> bool:
    """Remove a token (only the given user's when `user_id`); True if one was removed."""
    if user_id is None:
        conn.execute("DELETE FROM push_tokens WHERE token = ?", (token,))
    else:
        conn.execute("DELETE FROM push_tokens WHERE token = ? AND user_id = ?", (token, user_id))
    return conn.changes() > 0


def tokens_of(conn: Db, user_id: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT token FROM push_tokens WHERE user_id = ? ORDER BY created_at", (user_id,)
        )
    ]


def member_tokens(conn: Db, conversation_id: str) -> list[tuple[str, str]]:
    """(user id, token) for every device of every member of the conversation: one
    query (the membership key, then each member's tokens by `push_tokens_user`)
    instead of one per member."""
    return [
        (row[0], row[1])
        for row in conn.execute(
            "SELECT m.user_id, t.token FROM memberships m"
            " JOIN push_tokens t ON t.user_id = m.user_id"
            " WHERE m.conversation_id = ? ORDER BY m.joined_at, m.user_id, t.created_at",
            (conversation_id,),
        )
    ]


def insert_tickets(conn: Db, tickets: list[tuple[str, str]], now: int) -> None:
    """Record (ticket id, token) pairs whose receipts are fetched later."""
    conn.executemany(
        "INSERT INTO push_tickets(id, token, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [(ticket, token, now) for ticket, token in tickets],
    )


def due_tickets(conn: Db, created_before: int, limit: int) -> list[tuple[str, str]]:
    return [
        (row[0], row[1])
        for row in conn.execute(
            "SELECT id, token FROM push_tickets WHERE created_at <= ? ORDER BY created_at LIMIT ?",
            (created_before, limit),
        )
    ]


def delete_tickets(conn: Db, ticket_ids: list[str]) -> None:
    conn.executemany("DELETE FROM push_tickets WHERE id = ?", [(t,) for t in ticket_ids])


def delete_tickets_before(conn: Db, created_before: int) -> None:
    conn.execute("DELETE FROM push_tickets WHERE created_at < ?", (created_before,))


def record_tickets(conn: Db, tickets: list[tuple[str, str]], dead: list[str], now: int) -> None:
    """After a send: remember the tickets, forget the tokens Expo called dead."""
    insert_tickets(conn, tickets, now)
    for token in dead:
        delete_token(conn, token)


def settle_tickets(conn: Db, done: list[str], dead: list[str], forget_before: int) -> None:
    """After reading receipts: forget the settled tickets and those too old to get
    one, and the tokens the receipts called dead."""
    delete_tickets(conn, done)
    delete_tickets_before(conn, forget_before)
    for token in dead:
        delete_token(conn, token)
