"""SQL for the assistant's part of one conversation's own file: its AI switch, its AI
log, and the reads the assistant makes of its messages (live messages only).

Called only inside the conversation's actor (through `conversations.commands.Ai`), so
the switch and the log are ordered with the conversation's messages.
"""

from __future__ import annotations

import apsw
import attrs
import orjson

from messageai.model import Message
from messageai.store import conversation as sql

# The log's page: newest first, at most this many entries per answer.
MAX_LOG_PAGE = 500


def migration(conn: apsw.Connection) -> None:
    # IF NOT EXISTS: the step may land before or after other branches' steps in
    # `conversation.MIGRATIONS` without harm.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS ai_settings(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            enabled INTEGER NOT NULL,
            proactive INTEGER NOT NULL,
            changed_by TEXT,
            changed_at INTEGER
        );
        -- One row per request sent to the endpoint with this conversation's content.
        CREATE TABLE IF NOT EXISTS ai_log(
            id INTEGER PRIMARY KEY,
            at INTEGER NOT NULL,
            user_id TEXT,
            action TEXT NOT NULL,
            seqs TEXT NOT NULL
        );
        """
    )


@attrs.frozen
class Settings:
    enabled: bool = False
    proactive: bool = False
    changed_by: str | None = None
    changed_at: int | None = None


@attrs.frozen
class LogEntry:
    at: int
    user_id: str | None
    action: str
    seqs: list[int]


def settings(conn: apsw.Connection) -> Settings:
    row = conn.execute(
        "SELECT enabled, proactive, changed_by, changed_at FROM ai_settings WHERE id = 1"
    ).fetchone()
    if row is None:
        return Settings()
    enabled, proactive, changed_by, changed_at = row
    return Settings(bool(enabled), bool(proactive), changed_by, changed_at)


def set_settings(conn: apsw.Connection, value: Settings) -> None:
    conn.execute(
        "INSERT INTO ai_settings(id, enabled, proactive, changed_by, changed_at)"
        " VALUES (1, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET enabled = excluded.enabled,"
        " proactive = excluded.proactive, changed_by = excluded.changed_by,"
        " changed_at = excluded.changed_at",
        (int(value.enabled), int(value.proactive), value.changed_by, value.changed_at),
    )


def add_log(conn: apsw.Connection, entry: LogEntry) -> None:
    conn.execute(
        "INSERT INTO ai_log(at, user_id, action, seqs) VALUES (?, ?, ?, ?)",
        (entry.at, entry.user_id, entry.action, orjson.dumps(entry.seqs).decode()),
    )


def log(conn: apsw.Connection, limit: int) -> list[LogEntry]:
    rows = conn.execute(
        "SELECT at, user_id, action, seqs FROM ai_log ORDER BY id DESC LIMIT ?", (limit,)
    )
    return [LogEntry(at, user_id, action, orjson.loads(seqs)) for at, user_id, action, seqs in rows]


def read_cursor(conn: apsw.Connection, user_id: str) -> int:
    value = conn.execute("SELECT seq FROM read_cursors WHERE user_id = ?", (user_id,)).get
    return int(value) if isinstance(value, int) else 0


def live(conn: apsw.Connection, conversation_id: str, seqs: list[int]) -> list[Message]:
    """The messages of these seqs that exist and are not deleted, ascending."""
    if not seqs:
        return []
    found = sql.messages_by_seq(conn, conversation_id, sorted(set(seqs)))
    return [m for _, m in sorted(found.items()) if m.deleted_at is None]


def live_range(
    conn: apsw.Connection, conversation_id: str, low: int, high: int, limit: int
) -> list[Message]:
    """Live messages with low <= seq <= high, the first `limit` of them, ascending."""
    messages, _ = sql.history(
        conn, conversation_id, after_seq=low - 1, before_seq=high + 1, limit=limit * 2 + 10
    )
    return [m for m in messages if m.deleted_at is None][:limit]


def recent(conn: apsw.Connection, conversation_id: str, limit: int) -> list[Message]:
    """The newest `limit` live messages, ascending."""
    messages, _ = sql.history(
        conn, conversation_id, after_seq=None, before_seq=None, limit=limit * 2 + 10
    )
    return [m for m in messages if m.deleted_at is None][-limit:]


def unread(conn: apsw.Connection, conversation_id: str, user_id: str, limit: int) -> list[Message]:
    """What `unread_count` counts for `user_id` (messages of others above the caller's
    read cursor, tombstones left out): the newest `limit` of them, ascending."""
    cursor = read_cursor(conn, user_id)
    rows = conn.execute(
        f"SELECT {sql.COLUMNS} FROM messages WHERE seq > ? AND sender_id != ?"
        " AND deleted_at IS NULL ORDER BY seq DESC LIMIT ?",
        (cursor, user_id, limit),
    ).fetchall()
    return list(reversed(sql.rows_to_messages(conn, conversation_id, rows)))
