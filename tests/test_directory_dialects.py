"""The directory's SQL where SQLite and PostgreSQL differ, run on both (`directory_db`:
a real file, a real PostgreSQL): channel titles (ASCII case ignored, unique, browse
order), member counts kept by triggers, Clerk's username fallback, the bounded webhook
ids, the media quota and references, push tokens and tickets, the AI budget upsert,
the retention plan. Then, on PostgreSQL only, what SQLite's single writer gave for
free and two nodes writing at once must not break: a username taken once, a direct
conversation made once, the member cap, serialization failures retried; a whole
server on PostgreSQL that keeps everything across a restart; the CLI on it; start-up
refusing an unreachable database or a newer schema.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio

from messageai.config import Config, DirectoryConfig
from messageai.errors import BadRequest, Conflict, StartupError, Unavailable
from messageai.model import ClerkProfile, ConversationRecord, MediaRecord, User
from messageai.services.directory import Directory, open_postgres_directory
from messageai.sqlite import SchemaTooNew
from messageai.store import clerk as clerk_sql
from messageai.store import directory as sql
from messageai.store import media as media_sql
from messageai.store import push as push_sql
from messageai.store.db import Db, transaction
from tests.helpers import harness, make_config
from tests.postgres_server import PostgresServer
from tests.redis_server import free_port

MESSAGEAI = Path(sys.executable).parent / "messageai"


def _users(conn: Db, *names: str) -> list[User]:
    users = [User(f"u_{name}", name, name.title(), i) for i, name in enumerate(names)]
    with transaction(conn):
        for user in users:
            assert sql.insert_user(conn, user, None)
    return users


def _channel(conn: Db, title: str, creator: str, n: int) -> ConversationRecord:
    record = ConversationRecord(f"c_{n}", "channel", title, creator, n)
    with transaction(conn):
        assert not sql.channel_title_taken(conn, title)
        sql.insert_conversation(conn, record, [creator], n)
    return record


def test_channel_titles_ignore_ascii_case_only_and_browse_by_size(directory_db: Db) -> None:
    conn = directory_db
    ada, bob, cy = _users(conn, "ada", "bob", "cy")
    ops = _channel(conn, "Ops", ada.id, 1)
    _channel(conn, "École", ada.id, 2)
    assert sql.channel_title_taken(conn, "OPS") and sql.channel_title_taken(conn, "ops")
    assert not sql.channel_title_taken(conn, "OPS", except_id=ops.id)
    assert sql.channel_title_taken(conn, "École") and not sql.channel_title_taken(conn, "école")
    with transaction(conn):
        sql.add_members(conn, ops.id, [bob.id, cy.id, bob.id], 5)  # bob twice: once
    assert sql.member_count(conn, ops.id) == 3
    assert sql.member_ids(conn, ops.id) == [ada.id, bob.id, cy.id]
    # every user joined `general` on insert, so it leads; then by size, then by title
    names = [(r.title, n) for r, n in sql.channels(conn, "", 10)]
    assert names == [("general", 3), ("Ops", 3), ("École", 1)]
    assert [r.title for r, _ in sql.channels(conn, "o", 10)] == ["Ops"]
    assert [r.title for r, _ in sql.channels(conn, "É", 10)] == ["École"]
    assert sql.channels(conn, "é", 10) == []
    with transaction(conn):
        assert sql.remove_member(conn, ops.id, bob.id)
        assert not sql.remove_member(conn, ops.id, bob.id)
    assert sql.member_count(conn, ops.id) == 2
    with transaction(conn):
        after = sql.update_conversation(
            conn, ops.id, "Ops team", "on call", set_title=True, set_topic=True
        )
    assert after is not None and (after.title, after.topic) == ("Ops team", "on call")


def test_direct_pairs_ai_budget_retention_and_tokens(directory_db: Db) -> None:
    conn = directory_db
    ada, bob = _users(conn, "ada", "bob")
    record = ConversationRecord("c_d", "direct", None, bob.id, 1)
    with transaction(conn):
        sql.insert_conversation(conn, record, [ada.id, bob.id], 1)
        sql.insert_direct_pair(conn, bob.id, ada.id, record.id)
    assert sql.direct_conversation_id(conn, ada.id, bob.id) == record.id
    assert sql.conversation(conn, record.id) == record
    (general,) = sql.auto_join_ids(conn)
    assert [r.id for r in sql.conversations_of(conn, ada.id)] == sorted([general, record.id])
    assert sql.conversation_for_member(conn, record.id, ada.id) == (record, True)
    assert sql.conversation_for_member(conn, record.id, "u_nobody") == (record, False)
    assert sql.conversation_for_member(conn, "c_nope", ada.id) == (None, False)
    with transaction(conn):
        sql.add_ai_spent(conn, ada.id, 10, 5)
        sql.add_ai_spent(conn, ada.id, 10, 7)
        sql.add_ai_spent(conn, bob.id, 9, 4)
        sql.add_ai_spent(conn, bob.id, 10, 1)  # a new day starts from zero
    assert sql.ai_spent_on(conn, 10) == {ada.id: 12, bob.id: 1}
    with transaction(conn):
        assert sql.set_retention_days(conn, record.id, 2.5)
        assert not sql.set_retention_days(conn, "c_nope", 1.0)
        sql.set_retention_mark(conn, record.id, 0, 40)
        sql.set_retention_mark(conn, record.id, 0, 99)  # not 0 any more: nothing
    assert sql.retention_days_of(conn, record.id) == 2.5
    assert sql.retention_plan(conn, 0.0) == [(record.id, 2.5, 40)]
    with transaction(conn):
        for i, expires in enumerate((5, 50, 500)):
            sql.insert_token(conn, bytes([i]) * 32, ada.id, 0, expires)
    assert sql.user_by_token(conn, b"\x01" * 32, 10) == ada
    assert sql.user_by_token(conn, b"\x00" * 32, 10) is None  # expired
    with transaction(conn):
        revoked = sql.set_password(conn, ada.id, "new", b"\x02" * 32)
        sql.set_disabled(conn, bob.id, 7)
    assert sorted(revoked) == [b"\x00" * 32, b"\x01" * 32]
    assert sql.password_hash_of(conn, ada.id) == "new" and sql.is_disabled(conn, bob.id)
    with transaction(conn):
        bot = sql.bot_user(conn, "ada", "Assistant", 3)  # a person is "ada": ada-bot
        assert sql.bot_user(conn, "other", "Other", 4) == bot
    assert (bot.username, bot.bot) == ("ada-bot", True)


def test_clerk_names_fall_back_and_webhook_ids_stay_bounded(directory_db: Db) -> None:
    conn = directory_db
    _users(conn, "taken")
    with transaction(conn):
        user, gone = clerk_sql.insert_if_absent(conn, ClerkProfile("user_1", "taken", "T", 1))
        clerk_sql.upsert(conn, ClerkProfile("user_2", "free", "F", 2))
    assert (user.username, gone) == ("user_1", False)  # "taken" is taken: the Clerk id
    assert sql.user_by_id(conn, "user_2") is not None
    with transaction(conn):
        clerk_sql.upsert(conn, ClerkProfile("user_1", "mine", "T", 1))
        clerk_sql.mark_deleted(conn, "user_2", 5)
        clerk_sql.mark_deleted(conn, "user_3", 5)  # never seen: a tombstone
    assert clerk_sql.user_state(conn, "user_1") == (User("user_1", "mine", "T", 1), False)
    state = clerk_sql.user_state(conn, "user_2")
    assert state is not None and state[1] and state[0].username == "user_2"
    with transaction(conn):
        claims = [
            clerk_sql.claim_webhook_message(conn, f"msg_{i}", 100 + i, 1000, 3) for i in range(5)
        ]
        again = clerk_sql.claim_webhook_message(conn, "msg_4", 200, 1000, 3)
    assert claims == [True] * 5 and not again
    kept = [row[0] for row in conn.execute("SELECT id FROM webhook_messages ORDER BY id")]
    assert kept == ["msg_2", "msg_3", "msg_4"]


def test_media_quota_and_refs_and_push_tokens(directory_db: Db) -> None:
    conn = directory_db
    ada, bob = _users(conn, "ada", "bob")
    group = ConversationRecord("c_g", "group", "G", ada.id, 1)
    with transaction(conn):
        sql.insert_conversation(conn, group, [ada.id], 1)
    assert media_sql.used_bytes(conn, ada.id) == 0
    one = MediaRecord("m_1", ada.id, "a" * 64, "image/png", 600, 1, "one.png")
    two = MediaRecord("m_2", ada.id, "b" * 64, "image/png", 600, 2, None)
    with transaction(conn):
        assert media_sql.insert_within_quota(conn, one, 1000)
        assert not media_sql.insert_within_quota(conn, two, 1000)
    assert media_sql.used_bytes(conn, ada.id) == 600
    assert media_sql.readable(conn, "m_1", bob.id) is None
    with transaction(conn):
        media_sql.add_refs(conn, group.id, ["m_1", "m_1", "m_gone"])
        media_sql.add_refs(conn, group.id, ["m_1"])
        sql.add_members(conn, group.id, [bob.id], 2)
    assert media_sql.readable(conn, "m_1", bob.id) == one
    assert media_sql.unreferenced_before(conn, 10, 5) == []
    with transaction(conn):
        push_sql.upsert_token(conn, "tok", ada.id, "ios", 1)
        push_sql.upsert_token(conn, "tok", bob.id, None, 2)  # the device moved to bob
        push_sql.insert_tickets(conn, [("t1", "tok"), ("t1", "tok")], 3)
    assert push_sql.tokens_of(conn, ada.id) == []
    assert push_sql.member_tokens(conn, group.id) == [(bob.id, "tok")]
    assert push_sql.due_tickets(conn, 3, 10) == [("t1", "tok")]
    with transaction(conn):
        assert not push_sql.delete_token(conn, "tok", ada.id)
        assert push_sql.delete_token(conn, "tok", bob.id)


# ---------------------------------------------------------------- two nodes at once


def _server_config(data: Path, directory: DirectoryConfig, **sections: object) -> Config:
    return make_config(
        data,
        directory={"url": directory.url, "password_file": directory.password_file},
        **sections,  # type: ignore[arg-type]
    )


def _node(tmp_path: Path, name: str, directory: DirectoryConfig, **sections: object) -> Directory:
    return Directory(_server_config(tmp_path / name, directory, **sections))


async def test_two_nodes_racing_take_a_username_once_and_a_direct_once(
    tmp_path: Path, postgres_directory: DirectoryConfig
) -> None:
    """Two Directory instances (two nodes, each with its own write thread) on one
    PostgreSQL: the same name registered on both at once is taken once, and a direct
    conversation opened from both ends at once is made once."""
    a, b = (_node(tmp_path, n, postgres_directory) for n in ("a", "b"))
    try:
        with trio.fail_after(30):

            async def register(node: Directory, name: str, results: list[object]) -> None:
                try:
                    results.append((await node.register(name, "password1", None))[0])
                except Exception as exc:
                    results.append(exc)

            for round_ in range(5):
                results: list[object] = []
                async with trio.open_nursery() as nursery:
                    for node in (a, b, a, b):
                        nursery.start_soon(register, node, f"same{round_}", results)
                users = [r for r in results if isinstance(r, User)]
                assert len(users) == 1, results
                assert all(isinstance(r, Conflict) for r in results if r not in users), results
            x, _ = await a.register("xavier", "password1", None)
            y, _ = await b.register("yolanda", "password1", None)
            made: list[tuple[ConversationRecord, bool]] = []

            async def open_direct(node: Directory, caller: str, other: str) -> None:
                made.append(await node.open_direct(caller, other))

            async with trio.open_nursery() as nursery:
                for i in range(6):
                    node, caller, other = (a, x.id, y.id) if i % 2 else (b, y.id, x.id)
                    nursery.start_soon(open_direct, node, caller, other)
            assert len({record.id for record, _ in made}) == 1
            assert sum(created for _, created in made) == 1
    finally:
        a.close()
        b.close()


async def test_two_nodes_adding_members_at_once_never_pass_the_cap(
    tmp_path: Path, postgres_directory: DirectoryConfig
) -> None:
    """The cap is a count then an insert: at READ COMMITTED two nodes would both see
    room for one more; SERIALIZABLE (retried) lets exactly the room in."""
    limits = {"max_group_members": 4}
    a, b = (_node(tmp_path, n, postgres_directory, limits=limits) for n in ("a", "b"))
    try:
        with trio.fail_after(30):
            owner, _ = await a.register("owner", "password1", None)
            others = [(await a.register(f"member{i}", "password1", None))[0] for i in range(6)]
            group = await a.create_group(owner.id, "G", [])
            refused: list[BadRequest] = []

            async def add(node: Directory, user: User) -> None:
                try:
                    await node.add_members(group.id, [user.id])
                except BadRequest as exc:
                    refused.append(exc)

            async with trio.open_nursery() as nursery:
                for i, user in enumerate(others):
                    nursery.start_soon(add, (a, b)[i % 2], user)
            assert len(a.member_ids(group.id)) == 4
            assert b.member_count(group.id) == 4
            assert len(refused) == 3
    finally:
        a.close()
        b.close()


async def test_a_lost_serialization_race_is_retried_not_failed(
    tmp_path: Path, postgres_directory: DirectoryConfig
) -> None:
    """Many writes of one row from two nodes at once (each login adds a token and
    every new user bumps `general`'s member count): all succeed, none is lost."""
    a, b = (_node(tmp_path, n, postgres_directory) for n in ("a", "b"))
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i in range(16):
                    nursery.start_soon(
                        a.register if i % 2 else b.register, f"user{i}", "password1", None
                    )
            general = a.read(sql.auto_join_ids)[0]
            assert a.member_count(general) == 16
            assert len(b.member_ids(general)) == 16
    finally:
        a.close()
        b.close()


async def test_a_server_on_postgresql_keeps_everything_across_a_restart(
    tmp_path: Path, postgres_directory: DirectoryConfig
) -> None:
    """Register, log in, make a group, send a message; restart the server on the same
    PostgreSQL (and data directory, for the conversation files): all still there, and
    no directory.sqlite3 was made."""
    data = tmp_path / "data"
    config = _server_config(data, postgres_directory)
    with trio.fail_after(60):
        async with harness(config) as h:
            ada = await h.account("ada")
            bob = await h.account("bob")
            r = await h.http.post(
                "/v1/auth/login", json={"username": "bob", "password": "password1"}
            )
            assert r.status_code == 200, r.text
            group = await h.group(ada, bob, title="Launch")
            seq = await h.post(ada, group, "hello from PostgreSQL")
            assert (await h.http.get("/readyz")).status_code == 200
        async with harness(config) as h:
            r = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "password1"}
            )
            assert r.status_code == 200, r.text
            token = r.json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            listed = (await h.http.get("/v1/conversations", headers=headers)).json()
            assert [c["title"] for c in listed["conversations"] if c["id"] == group] == ["Launch"]
            r = await h.http.get(f"/v1/conversations/{group}/messages", headers=headers)
            assert r.status_code == 200, r.text
            bodies = [(m["seq"], m["body"]) for m in r.json()["messages"]]
            assert (seq, "hello from PostgreSQL") in bodies
            assert (await h.http.get("/v1/me", headers=h.auth(bob))).status_code == 200
    assert not (data / "directory.sqlite3").exists()


async def test_the_cli_works_on_the_postgresql_directory_or_says_what_to_use(
    tmp_path: Path, postgres_directory: DirectoryConfig
) -> None:
    """`user add|disable` run on PostgreSQL (named by environment
    variables, as a deployment would); `backup` and, without a running server,
    `user delete` refuse, saying what to use; a server on it signs the user in."""
    data = tmp_path / "data"
    env = {
        **os.environ,
        "MESSAGEAI_DIRECTORY__URL": postgres_directory.url,
        "MESSAGEAI_DIRECTORY__PASSWORD_FILE": postgres_directory.password_file,
    }
    secret = tmp_path / "pw.txt"
    secret.write_text("correct horse\n")

    async def cli(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(30):
            return await trio.run_process(
                [str(MESSAGEAI), *map(str, args), "--data-dir", str(data)],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    added = await cli("user", "add", "ada", "--password-file", secret)
    assert added.returncode == 0, added.stderr
    assert b"in the PostgreSQL directory postgresql://" in added.stdout
    assert (await cli("user", "add", "bob", "--password-file", secret)).returncode == 0
    disabled = await cli("user", "disable", "bob")
    assert disabled.returncode == 0 and b"bob disabled" in disabled.stdout, disabled.stderr
    backup = await cli("backup", tmp_path / "backup")
    assert backup.returncode == 1 and b"pg_dump" in backup.stderr, backup.stderr
    assert not (tmp_path / "backup").exists()
    delete = await cli("user", "delete", "ada")
    assert delete.returncode == 1 and b"start the server" in delete.stderr, delete.stderr
    assert not (data / "directory.sqlite3").exists()
    config = _server_config(data, postgres_directory)
    with trio.fail_after(30):
        async with harness(config) as h:
            for name, status in (("ada", 200), ("bob", 403)):
                r = await h.http.post(
                    "/v1/auth/login", json={"username": name, "password": "correct horse"}
                )
                assert r.status_code == status, r.text


def test_an_unreachable_postgresql_stops_start_up_naming_the_key(
    tmp_path: Path, postgres_directory: DirectoryConfig
) -> None:
    """A wrong port: StartupError naming `directory.url`; a password file that is not
    there: naming `directory.password_file`. Neither message holds the password."""
    port = postgres_directory.url.split("@127.0.0.1:")[1].split("/")[0]
    closed = postgres_directory.url.replace(f":{port}/", f":{free_port('127.0.0.1')}/", 1)
    with pytest.raises(StartupError) as info:
        _node(tmp_path, "a", attrs.evolve(postgres_directory, url=closed))
    assert "directory.url" in str(info.value) and "unreachable" in str(info.value)
    missing = attrs.evolve(postgres_directory, password_file=str(tmp_path / "nope"))
    with pytest.raises(StartupError) as info:
        _node(tmp_path, "b", missing)
    assert "directory.password_file" in str(info.value)
    secret = Path(postgres_directory.password_file).read_text().strip()
    assert secret not in str(info.value)


def test_a_postgresql_directory_of_a_newer_schema_is_refused_untouched(
    postgres_directory: DirectoryConfig,
) -> None:
    conn = open_postgres_directory(postgres_directory, serializable=False)
    try:
        # Opened again: migrated already, nothing to do.
        open_postgres_directory(postgres_directory, serializable=False).close()
        conn.execute("UPDATE messageai_schema SET version = 99")
        with pytest.raises(SchemaTooNew, match="PostgreSQL directory: schema version 99"):
            open_postgres_directory(postgres_directory, serializable=False)
        assert conn.execute("SELECT version FROM messageai_schema").get == 99
        assert conn.execute("SELECT count(*) FROM conversations").get == 1  # only general
    finally:
        conn.close()


async def test_connections_postgresql_dropped_are_replaced(
    tmp_path: Path, postgres_server: PostgresServer, postgres_directory: DirectoryConfig
) -> None:
    """Every connection of a node cut by the server (as a PostgreSQL restart does): a
    read is run again on a new connection and succeeds; a write answers `unavailable`
    once (it may have failed in its commit, so it is not run again blindly), and the
    next write works."""
    node = _node(tmp_path, "a", postgres_directory)
    try:
        with trio.fail_after(30):
            ada, _ = await node.register("ada", "password1", None)
            database = postgres_directory.url.rsplit("/", 1)[1]

            def cut() -> None:
                with postgres_server.admin() as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = %s AND pid <> pg_backend_pid()",
                        (database,),
                    )

            cut()
            assert node.user(ada.id) == ada  # on the loop's connection
            assert await node.lookup_user(ada.id) == ada  # on a read thread's
            with pytest.raises(Unavailable):
                await node.set_display_name(ada.id, "Ada")
            assert (await node.set_display_name(ada.id, "Ada")).display_name == "Ada"
    finally:
        node.close()
