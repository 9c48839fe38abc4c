"""SQL for Clerk mode in the directory database: Clerk users, tombstones, webhook message ids.

Called only by `messageai.services.directory.Directory`, inside its write transactions
or on its read connection. The tables come from the `_clerk_identities` migration.
"""

from __future__ import annotations

from messageai.model import ClerkProfile, User
from messageai.store.db import NO_LIMIT, Db
from messageai.store.directory import USER_COLUMNS, join_auto_channels, user_from_row

DELETED_DISPLAY_NAME = "Deleted user"


_USER = USER_COLUMNS


def user_state(conn: Db, user_id: str) -> tuple[User, bool] | None:
    """(user, gone) for `user_id`, or None when there is no such row; gone: deleted,
    or disabled by `messageai user disable`."""
    row = conn.execute(
        f"SELECT {_USER}, coalesce(deleted_at, disabled_at) FROM users WHERE id = ?", (user_id,)
    ).fetchone()
    if row is None:
        return None
    return user_from_row(row), row[-1] is not None


def _set_username(conn: Db, user_id: str, wanted: str | None) -> None:
    # Clerk's username when it is free here, else the (unique) Clerk id. Checked in the
    # statement: a taken name is expected, not a failed statement for SQLite's error
    # log, nor an aborted PostgreSQL transaction.
    for name in (wanted, user_id):
        if name is None:
            continue
        conn.execute(
            "UPDATE users SET username = ?1 WHERE id = ?2"
            " AND NOT EXISTS (SELECT 1 FROM users WHERE username = ?1 AND id != ?2)",
            (name, user_id),
        )
        if conn.changes():
            return


def insert_if_absent(conn: Db, profile: ClerkProfile) -> tuple[User, bool]:
    """Create the user on first sight; return (user, deleted) as stored afterwards."""
    found = user_state(conn, profile.id)
    if found is not None:
        return found
    conn.execute(
        "INSERT INTO users(id, username, display_name, password_hash, created_at)"
        " VALUES (?, ?, ?, NULL, ?)",
        (profile.id, profile.id, profile.display_name, profile.created_at),
    )
    _set_username(conn, profile.id, profile.username)
    join_auto_channels(conn, profile.id, profile.created_at)
    found = user_state(conn, profile.id)
    assert found is not None
    return found


def upsert(conn: Db, profile: ClerkProfile) -> bool:
    """Create or update a user from `user.created` / `user.updated`.

    A deleted user stays deleted (Clerk never reuses an id; an update that
    arrives after the deletion is stale). False when nothing was applied.
    """
    found = user_state(conn, profile.id)
    if found is not None and found[1]:
        return False
    if found is None:
        insert_if_absent(conn, profile)
        return True
    conn.execute(
        "UPDATE users SET display_name = ? WHERE id = ?", (profile.display_name, profile.id)
    )
    if found[0].username != profile.username:
        _set_username(conn, profile.id, profile.username)
    return True


def mark_deleted(conn: Db, user_id: str, now: int) -> None:
    """Keep a tombstone (so the id can never sign in again) with the profile erased."""
    if user_state(conn, user_id) is None:
        conn.execute(
            "INSERT INTO users(id, username, display_name, password_hash, created_at, deleted_at)"
            " VALUES (?, ?, ?, NULL, ?, ?)",
            (user_id, user_id, DELETED_DISPLAY_NAME, now, now),
        )
        return
    conn.execute(
        "UPDATE users SET display_name = ?, password_hash = NULL,"
        " deleted_at = coalesce(deleted_at, ?) WHERE id = ?",
        (DELETED_DISPLAY_NAME, now, user_id),
    )
    _set_username(conn, user_id, None)
    conn.execute("DELETE FROM tokens WHERE user_id = ?", (user_id,))


def claim_webhook_message(conn: Db, message_id: str, now: int, keep_ms: int, max_rows: int) -> bool:
    """Record a webhook message id; False when it was already recorded.

    Ids older than `keep_ms` are forgotten first, and the table never holds
    more than `max_rows` (the oldest go), so it stays bounded under any load.
    """
    conn.execute("DELETE FROM webhook_messages WHERE received_at < ?", (now - keep_ms,))
    conn.execute(
        "INSERT INTO webhook_messages(id, received_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (message_id, now),
    )
    if conn.changes() == 0:
        return False
    conn.execute(
        "DELETE FROM webhook_messages WHERE id IN (SELECT id FROM webhook_messages"
        " ORDER BY received_at DESC, id LIMIT ? OFFSET ?)",
        (NO_LIMIT, max_rows),
    )
    return True
