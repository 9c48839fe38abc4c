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
the way the actor does, and in a real server (as the file of a group created there:
its old senders are not members, the messages and cursors are all kept).
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


def _replace_with_fixture(path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    shutil.copyfile(FIXTURE, path)


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


def test_fixture_is_a_release_1_file(tmp_path: Path) -> None:
    # A copy: even a read-only open of a WAL file leaves -shm/-wal files beside it.
    conn = apsw.Connection(str(_copy(tmp_path)), flags=apsw.SQLITE_OPEN_READONLY)
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


def test_migrated_file_has_rev_equal_to_seq_and_takes_new_writes(tmp_path: Path) -> None:
    from messageai.model import Message
    from messageai.sqlite import transaction

    conn = open_db(_copy(tmp_path), "NORMAL")
    migrate(conn, sql.MIGRATIONS)
    messages, _ = sql.history(conn, "c_1", after_seq=0, before_seq=None, limit=200)
    assert all(m.rev == m.seq for m in messages)
    assert all(
        (m.reply_to, m.mentions, m.edited_at, m.deleted_at, m.reactions)
        == (None, [], None, None, {})
        for m in messages
    )
    assert sql.last_rev(conn) == 40
    # Catch-up by rev over the old messages is catch-up by seq.
    page, more = sql.changes(conn, "c_1", 35, 100)
    assert [m.seq for m in page] == [36, 37, 38, 39, 40] and not more
    with transaction(conn):
        new = Message(
            id="m_new",
            conversation_id="c_1",
            seq=41,
            sender_id=USERS["ada"],
            client_id="after-migration",
            body="new",
            attachments=[],
            created_at=1,
            reply_to=40,
            mentions=[USERS["bob"]],
        )
        assert sql.insert_message(conn, new) is None
        sql.edit(conn, 2, "message 1 from bob: héllo ✓", "fixed", 2, 42)
        sql.add_reaction(conn, 4, ":+1:", USERS["cyd"], 43)
    assert sql.last_rev(conn) == 43
    page, _ = sql.changes(conn, "c_1", 40, 100)
    assert [(m.seq, m.rev) for m in page] == [(41, 41), (2, 42), (4, 43)]
    assert page[0].mentions == [USERS["bob"]] and page[0].reply_to == 40
    assert page[1].body == "fixed" and sql.edits(conn, 2) == [("message 1 from bob: héllo ✓", 2)]
    assert page[2].reactions == {":+1:": [USERS["cyd"]]} and page[2].attachments == MEDIA[4]
    conn.close()


async def test_the_real_server_serves_and_changes_a_migrated_release_1_file(
    tmp_path: Path,
) -> None:
    import trio

    from messageai.store.paths import conversation_path
    from tests.helpers import harness, make_config

    config = make_config(tmp_path / "data")
    with trio.fail_after(60):
        async with harness(config) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cid = await h.group(ada, bob)
        # The server stopped: its new conversation's file becomes the release-1 file.
        _replace_with_fixture(conversation_path(config.data_dir, cid))
        async with harness(config) as h:
            headers = {"Authorization": f"Bearer {ada.token}"}
            r = await h.http.get(
                f"/v1/conversations/{cid}/messages?after_seq=0&limit=200", headers=headers
            )
            messages = r.json()["messages"]
            assert [m["seq"] for m in messages] == list(range(1, 41))
            assert [m["rev"] for m in messages] == list(range(1, 41))
            assert messages[3]["attachments"] == MEDIA[4]
            r = await h.http.get(f"/v1/conversations/{cid}", headers=headers)
            assert r.json()["last_seq"] == 40 and r.json()["last_rev"] == 40
            async with h.ws(ada) as a:
                sub = await a.request("subscribe", conversation_id=cid)
                assert sub["read_cursors"] == {
                    USERS["ada"]: 30,
                    USERS["bob"]: 40,
                    USERS["cyd"]: 12,
                }
                sent = await a.send_message(cid, "after the upgrade")
                assert (sent["message"]["seq"], sent["message"]["rev"]) == (41, 41)
                reacted = await a.request("react", conversation_id=cid, seq=4, emoji="👍", on=True)
                assert reacted["message"]["rev"] == 42
                assert reacted["message"]["attachments"] == MEDIA[4]
                # The group's creator may delete an old message of a sender long gone.
                deleted = await a.request("delete_message", conversation_id=cid, seq=2)
                assert deleted["message"]["body"] == "" and deleted["message"]["rev"] == 43
                changes = await a.request("get_changes", conversation_id=cid, after_rev=38)
                assert [(m["seq"], m["rev"]) for m in changes["messages"]] == [
                    (39, 39),
                    (40, 40),
                    (41, 41),
                    (4, 42),
                    (2, 43),
                ]
