"""SQL for the assistant's part of one conversation's own file: its AI switch and its AI
log (the reads it makes of the messages are `store.conversation`'s `live_*` functions).

Called only inside the conversation's actor (through `conversations.commands.Ai`), so
the switch and the log are ordered with the conversation's messages.
"""

from __future__ import annotations

import apsw
import attrs
import orjson

# The log's page: newest first, at most this many entries per answer.
MAX_LOG_PAGE = 500
# Entries a conversation's log keeps: each new one past it drops the oldest (one
# indexed delete). At one request a minute, about a week; the page shows 500 at most.
MAX_LOG_ROWS = 10_000


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
    conn.execute("DELETE FROM ai_log WHERE id <= ?", (conn.last_insert_rowid() - MAX_LOG_ROWS,))


def log(conn: apsw.Connection, limit: int) -> list[LogEntry]:
    rows = conn.execute(
        "SELECT at, user_id, action, seqs FROM ai_log ORDER BY id DESC LIMIT ?", (limit,)
    )
    return [LogEntry(at, user_id, action, orjson.loads(seqs)) for at, user_id, action, seqs in rows]
