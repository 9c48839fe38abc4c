"""The v1.1 directory migration on a database written by the release before it
(`tests/fixtures/directory-v4.sqlite3`, see tests/fixtures/README.md): every user,
token, conversation, membership, media record and push token is kept, `general`
is made and every existing person joins it, and the server then serves the old
accounts (their passwords and tokens) as before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import apsw
import trio

from messageai.services.directory import DIRECTORY_FILE, open_directory_db
from messageai.store import directory as sql
from tests.helpers import harness, make_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "directory-v4.sqlite3"

TABLES = ["users", "tokens", "memberships", "media", "media_refs", "push_tokens", "direct_pairs"]


def _rows(conn: apsw.Connection, table: str) -> set[tuple[object, ...]]:
    return set(conn.execute(f"SELECT * FROM {table}").fetchall())


def _fixture_copy(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(FIXTURE, data / DIRECTORY_FILE)
    return data


def test_the_migration_keeps_every_record_and_adds_general(tmp_path: Path) -> None:
    data = _fixture_copy(tmp_path)
    before = apsw.Connection(str(data / DIRECTORY_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    assert before.execute("PRAGMA user_version").get == 4
    old = {table: _rows(before, table) for table in TABLES}
    old_conversations = _rows(before, "conversations")
    before.close()

    conn = open_directory_db(data, "NORMAL")
    assert conn.execute("PRAGMA user_version").get == len(sql.MIGRATIONS)
    assert conn.execute("PRAGMA foreign_keys").get == 1
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    # Rows of the old tables, with the new columns at their defaults.
    users = conn.execute(
        "SELECT id, username, display_name, password_hash, created_at, deleted_at, bot FROM users"
    ).fetchall()
    assert {row[:6] for row in users} == old["users"]
    assert {row[6] for row in users} == {0}
    media = conn.execute(
        "SELECT id, owner_id, sha256, content_type, size, created_at, filename FROM media"
    ).fetchall()
    assert {row[:6] for row in media} == old["media"]
    assert {row[6] for row in media} == {None}
    for table in ["tokens", "media_refs", "push_tokens", "direct_pairs"]:
        assert _rows(conn, table) == old[table], table
    assert old["memberships"] <= _rows(conn, "memberships")

    kept = conn.execute(
        "SELECT id, kind, title, creator_id, created_at FROM conversations"
        " WHERE id IN ('c_direct', 'c_group')"
    ).fetchall()
    assert set(kept) == old_conversations
    assert sql.member_count(conn, "c_group") == 4
    assert sql.member_count(conn, "c_direct") == 2
    assert sql.conversation(conn, "c_group") is not None

    # general: a channel without creator, joined by every user but the Clerk tombstone.
    (general,) = sql.auto_join_ids(conn)
    record = sql.conversation(conn, general)
    assert record is not None
    assert (record.kind, record.title, record.creator_id, record.topic) == (
        "channel",
        "general",
        None,
        None,
    )
    assert set(sql.member_ids(conn, general)) == {"u_ada", "u_bob", "u_cy", "user_clerk1"}
    assert sql.member_count(conn, general) == 4
    new_memberships = _rows(conn, "memberships") - old["memberships"]
    assert {row[0] for row in new_memberships} == {general}
    conn.close()

    # Opening again changes nothing: one general, the same rows.
    again = open_directory_db(data, "NORMAL")
    assert sql.auto_join_ids(again) == [general]
    assert len(again.execute("SELECT * FROM memberships").fetchall()) == 10
    again.close()


async def test_the_server_serves_the_old_accounts_after_the_migration(tmp_path: Path) -> None:
    data = _fixture_copy(tmp_path)
    with trio.fail_after(30):
        async with harness(make_config(data)) as h:
            # An old token still works; an old password still signs in.
            old = {"Authorization": "Bearer token-ada"}
            r = await h.http.get("/v1/me", headers=old)
            assert r.status_code == 200, r.text
            assert r.json() == {
                "id": "u_ada",
                "username": "ada",
                "display_name": "Ada",
                "created_at": 1764150000000,
                "bot": False,
            }
            r = await h.http.post(
                "/v1/auth/login", json={"username": "bob", "password": "password1"}
            )
            assert r.status_code == 200, r.text
            r = await h.http.get("/v1/conversations", headers=old)
            assert r.status_code == 200, r.text
            by_id = {c["id"]: c for c in r.json()["conversations"]}
            assert {c["kind"] for c in by_id.values()} == {"direct", "group", "channel"}
            assert by_id["c_group"]["title"] == "Team"
            assert by_id["c_group"]["topic"] is None
            assert sorted(by_id["c_group"]["member_ids"]) == sorted(
                ["u_bob", "u_ada", "u_cy", "user_clerk1"]
            )
            (general,) = [c for c in by_id.values() if c["kind"] == "channel"]
            assert general["title"] == "general"
            # The attachment of the old group is still readable by its members' rules:
            # md_1 is referenced by c_group; its bytes were never in the fixture.
            r = await h.http.get("/v1/media/md_2", headers=old)
            assert r.status_code == 404
            # A new user joins general at once, as the old ones did in the migration.
            new = await h.account("newcomer")
            r = await h.http.get(f"/v1/conversations/{general['id']}", headers=h.auth(new))
            assert r.status_code == 200, r.text
            assert new.id in r.json()["member_ids"]
