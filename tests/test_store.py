"""The conversation store's SQL on real SQLite files: plain synchronous tests."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from messageai.model import Message
from messageai.sqlite import Migration, SchemaTooNew, apply_best_practice, migrate, open_db
from messageai.store import conversation as sql


def _db(tmp_path: Path, migrations: list[Migration] | None = None) -> apsw.Connection:
    conn = open_db(tmp_path / "c.sqlite3", "NORMAL")
    migrate(conn, migrations if migrations is not None else sql.MIGRATIONS)
    return conn


def _insert(
    conn: apsw.Connection, seq: int, sender: str, client_id: str | None = None
) -> Message | None:
    message = Message(
        id=f"m_{seq}",
        conversation_id="c_1",
        seq=seq,
        sender_id=sender,
        client_id=client_id or f"k{seq}",
        body=f"b{seq}",
        attachments=[],
        created_at=seq,
    )
    with conn:
        original = sql.insert_message(conn, message)
    return original


def test_insert_then_resend_returns_the_original_and_stores_nothing(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    assert _insert(conn, 1, "u_a", "same") is None
    original = _insert(conn, 2, "u_a", "same")
    assert original is not None and original.seq == 1 and original.body == "b1"
    assert _insert(conn, 2, "u_b", "same") is None  # another sender's client id is its own
    assert sql.last_seq(conn) == 2


@pytest.mark.parametrize("cursor", [0, 1, 3, 5, 6, 9])
def test_unread_count_counts_others_messages_above_the_cursor(tmp_path: Path, cursor: int) -> None:
    conn = _db(tmp_path)
    senders = ["u_a", "u_me", "u_b", "u_me", "u_me", "u_a", "u_b", "u_me", "u_a"]
    for seq, sender in enumerate(senders, start=1):
        _insert(conn, seq, sender)
    expected = sum(1 for seq, s in enumerate(senders, start=1) if seq > cursor and s != "u_me")
    assert sql.unread_count(conn, "u_me", cursor, len(senders)) == expected


def test_version_1_database_gains_the_sender_index_and_keeps_its_messages(tmp_path: Path) -> None:
    conn = _db(tmp_path, sql.MIGRATIONS[:1])
    # The version-1 statement: today's insert names columns a version-1 file lacks.
    conn.execute(
        "INSERT INTO messages(seq, id, sender_id, client_id, body, attachments, created_at)"
        " VALUES (1, 'm_1', 'u_a', 'k1', 'b1', '[]', 1)"
    )
    assert conn.execute("PRAGMA user_version").get == 1
    migrate(conn, sql.MIGRATIONS)
    assert conn.execute("PRAGMA user_version").get == len(sql.MIGRATIONS)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "messages_sender_seq" in names
    assert sql.unread_count(conn, "u_b", 0, 1) == 1
    # Running the migrations again changes nothing.
    migrate(conn, sql.MIGRATIONS)
    assert sql.last_seq(conn) == 1


def test_a_database_newer_than_this_server_is_refused(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    newer = len(sql.MIGRATIONS) + 1
    conn.execute(f"PRAGMA user_version = {newer}")
    with pytest.raises(SchemaTooNew, match=f"c.sqlite3: schema version {newer} is newer"):
        migrate(conn, sql.MIGRATIONS)
    assert conn.execute("PRAGMA user_version").get == newer  # left untouched


def test_open_db_gives_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "c.sqlite3", "NORMAL")
    try:
        assert conn.execute("PRAGMA journal_mode").get == "wal"
        assert conn.execute("PRAGMA foreign_keys").get == 1
        assert conn.execute("PRAGMA busy_timeout").get > 0
        assert conn.execute("PRAGMA synchronous").get == 1  # NORMAL
    finally:
        conn.close()


def test_apply_best_practice_installs_its_hook_once() -> None:
    apply_best_practice()
    hooks = len(apsw.connection_hooks)
    apply_best_practice()
    apply_best_practice()
    assert len(apsw.connection_hooks) == hooks


def _plan(conn: apsw.Connection, query: str, params: tuple[object, ...]) -> str:
    return " | ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + query, params))


def test_get_changes_last_rev_and_unread_tombstones_use_their_indexes(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    for seq in range(1, 50):
        _insert(conn, seq, "u_a" if seq % 2 else "u_b")
    # The statements the store runs, as it runs them: each a SEARCH of an index.
    changes = _plan(
        conn,
        f"SELECT {sql._COLUMNS} FROM messages WHERE {sql._REV} > ? ORDER BY {sql._REV} LIMIT ?",
        (10, 5),
    )
    assert "SEARCH messages USING INDEX messages_rev" in changes, changes
    assert "TEMP B-TREE" not in changes, changes
    last = _plan(conn, f"SELECT {sql._REV} FROM messages ORDER BY {sql._REV} DESC LIMIT 1", ())
    assert "SCAN messages USING COVERING INDEX messages_rev" in last, last  # one step back
    tombstones = _plan(
        conn,
        "SELECT count(*) FROM messages INDEXED BY messages_tombstones"
        " WHERE deleted_at IS NOT NULL AND seq > ? AND sender_id != ?",
        (3, "u_a"),
    )
    assert "messages_tombstones" in tombstones, tombstones


def test_rev_is_stored_only_where_it_differs_from_seq(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    _insert(conn, 1, "u_a")
    with conn:
        sql.insert_message(
            conn,
            Message(
                id="m_2",
                conversation_id="c_1",
                seq=2,
                sender_id="u_a",
                client_id="k2",
                body="b",
                attachments=[],
                created_at=2,
                rev=5,
            ),
        )
    assert conn.execute("SELECT seq, rev FROM messages ORDER BY seq").fetchall() == [
        (1, None),
        (2, 5),
    ]
    assert sql.last_rev(conn) == 5
    assert [(m.seq, m.rev) for m in sql.changes(conn, "c_1", 0, 10)[0]] == [(1, 1), (2, 5)]
