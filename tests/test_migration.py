"""Schema migration of a conversation file written by the previous release.

`tests/fixtures/conversation-release1.sqlite` was written by MessageAI at commit
b6f86ac (main before issue 10, schema version 2), by the real server run through
`tests.helpers.harness`: users ada, bob and cyd in a group "Release one"; 40 messages
sent over WebSocket in turn by ada, bob, cyd (client ids `cl-0` … `cl-39`, bodies
`message {i} from {username}: héllo ✓`), seq 4 (ada) and seq 17 (bob) each with one
uploaded PNG attached, `cl-20` resent once (a duplicate, nothing stored), then read
cursors ada 30, bob 40, cyd 12; then the file was checkpointed
(`PRAGMA wal_checkpoint(TRUNCATE)`) and VACUUMed, so it is one small file.

These tests copy it to `tmp_path` (the fixture itself is never written) and open it
the way the actor does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import apsw
import orjson

from messageai.sqlite import migrate, open_db
from messageai.store import conversation as sql

FIXTURE = Path(__file__).parent / "fixtures" / "conversation-release1.sqlite"
USERS = {
    "ada": "u_mYLBKiNPKpUlKClr",
    "bob": "u_dBJ6zjiE5ewVJ3sc",
    "cyd": "u_0ctgLPrbc_yCR7zc",
}
MEDIA = {4: ["md_JZ1Ty5zVJqrOnKpm"], 17: ["md_qp6OKUUDJhef8Pnv"]}


def _copy(tmp_path: Path) -> Path:
    path = tmp_path / "c.sqlite3"
    shutil.copyfile(FIXTURE, path)
    return path


def _raw_rows(path: Path) -> list[tuple[object, ...]]:
    # Read with the release's own column list, before anything migrates the copy.
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute(
            "SELECT seq, id, sender_id, client_id, body, attachments, created_at"
            " FROM messages ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def test_fixture_is_a_release_1_file() -> None:
    conn = apsw.Connection(str(FIXTURE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA user_version").get == 2
    finally:
        conn.close()


def test_migrating_the_release_1_file_keeps_every_message_and_cursor(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    before = _raw_rows(path)
    assert len(before) == 40
    conn = open_db(path, "NORMAL")
    migrate(conn, sql.MIGRATIONS)
    assert conn.execute("PRAGMA user_version").get == len(sql.MIGRATIONS)
    messages, has_more = sql.history(conn, "c_1", after_seq=0, before_seq=None, limit=200)
    assert not has_more
    assert [m.seq for m in messages] == list(range(1, 41))
    names = ["ada", "bob", "cyd"]
    for m, row in zip(messages, before, strict=True):
        seq, id_, sender_id, client_id, body, attachments, created_at = row
        assert seq == m.seq
        i = m.seq - 1
        assert (m.id, m.sender_id, m.client_id, m.body, m.created_at) == (
            id_,
            sender_id,
            client_id,
            body,
            created_at,
        )
        assert m.sender_id == USERS[names[i % 3]]
        assert m.client_id == f"cl-{i}"
        assert m.body == f"message {i} from {names[i % 3]}: héllo ✓"
        assert m.attachments == orjson.loads(str(attachments)) == MEDIA.get(m.seq, [])
    assert sql.read_cursors(conn) == {USERS["ada"]: 30, USERS["bob"]: 40, USERS["cyd"]: 12}
    assert sql.last_seq(conn) == 40
    latest = sql.latest_message(conn, "c_1")
    assert latest is not None and latest.seq == 40
    # The resend of cl-20 stored nothing: the original is what the client id finds.
    original = sql.find_by_client_id(conn, "c_1", USERS["cyd"], "cl-20")
    assert original is not None and original.seq == 21
    # Unread counts as the previous release counted them.
    assert sql.unread_count(conn, USERS["cyd"], 12, 40) == 28 - sum(
        1 for seq in range(13, 41) if (seq - 1) % 3 == 2
    )
    conn.close()
