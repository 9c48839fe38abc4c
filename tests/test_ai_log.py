"""The AI log's bound in a conversation's file (`store.ai`): past `MAX_LOG_ROWS`
entries each new one drops the oldest, and the newest are the ones shown."""

from __future__ import annotations

from pathlib import Path

from messageai.sqlite import migrate, open_db, transaction
from messageai.store import ai, conversation


def test_the_log_keeps_its_newest_entries_only(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "c.sqlite3", "OFF")
    try:
        migrate(conn, conversation.MIGRATIONS)
        with transaction(conn):
            for n in range(ai.MAX_LOG_ROWS + 25):
                ai.add_log(conn, ai.LogEntry(n, None, "ask", [n]))
        assert conn.execute("SELECT count(*) FROM ai_log").get == ai.MAX_LOG_ROWS
        newest = ai.log(conn, 2)
        assert [e.at for e in newest] == [ai.MAX_LOG_ROWS + 24, ai.MAX_LOG_ROWS + 23]
        assert conn.execute("SELECT min(at) FROM ai_log").get == 25
    finally:
        conn.close()
