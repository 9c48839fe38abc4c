"""One conversation as one portable file (`messageai conversation export|import`,
`messageai.ops.conversation_file`): exported from a running server with its history,
edits, reactions, mentions, read cursors, members' public profiles and uploads, and
none of the assistant's data; imported into a second running server where people are
matched by username or made as placeholders, ids rewritten, and the conversation is
readable there; bad files are refused and change nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio

from messageai.ops import conversation_file
from messageai.services.directory import DIRECTORY_FILE
from tests.helpers import Account, Harness, assert_error, harness, make_config, run_messageai

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(4000)


async def _post(h: Harness, who: Account, cid: str, **body: Any) -> dict[str, Any]:
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": uuid.uuid4().hex, **body},
        headers=h.auth(who),
    )
    assert r.status_code == 201, r.text
    message: dict[str, Any] = r.json()
    return message


async def _exported(h: Harness, tmp_path: Path) -> tuple[Path, str, dict[str, Account]]:
    ada, bob, cyd = await h.account("ada"), await h.account("bob"), await h.account("cyd")
    cid = await h.group(ada, bob, cyd, title="launch")
    r = await h.http.post(
        "/v1/media", content=PNG, headers={**h.auth(ada), "Content-Type": "image/png"}
    )
    media = r.json()["id"]
    await _post(h, ada, cid, body="the plan, attached", attachments=[media])
    await _post(h, bob, cid, body="looks good @cyd", mentions=[cyd.id], reply_to=1)
    async with h.ws(cyd) as ws:
        assert (await ws.request("react", conversation_id=cid, seq=1, emoji="👍", on=True))[
            "type"
        ] == "updated"
        assert (await ws.request("edit_message", conversation_id=cid, seq=1, body="x"))[
            "type"
        ] == "error"  # not the sender's
        assert (await ws.request("mark_read", conversation_id=cid, seq=2))["type"] == "ok"
    async with h.ws(ada) as ws:
        edited = await ws.request("edit_message", conversation_id=cid, seq=1, body="the plan v2")
        assert edited["type"] == "updated"
    r = await h.http.put(f"/v1/conversations/{cid}/ai", json={"enabled": True}, headers=h.auth(ada))
    assert r.status_code == 200
    file = tmp_path / "launch.sqlite3"
    data = h.server.config.data_dir
    summary = await trio.to_thread.run_sync(
        lambda: conversation_file.export(data, cid, file, media=True)
    )
    assert (summary.messages, summary.users, summary.media) == (2, 3, 1)
    return file, cid, {"ada": ada, "bob": bob, "cyd": cyd}


async def test_export_then_import_into_another_server(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with harness(make_config(tmp_path / "a")) as a:
            file, cid, people = await _exported(a, tmp_path)
        conn = apsw.Connection(str(file), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema")}
            assert {"export_info", "export_users", "export_media", "messages"} <= tables
            assert conn.execute("SELECT count(*) FROM ai_settings").get == 0  # consent stays
            profiles = set(conn.execute("SELECT username, member FROM export_users"))
            assert profiles == {("ada", 1), ("bob", 1), ("cyd", 1)}
        finally:
            conn.close()
        raw = file.read_bytes()
        for account in people.values():
            assert account.token.encode() not in raw
        assert b"scrypt" not in raw  # no password hashes
        async with harness(make_config(tmp_path / "b")) as b:
            bob_here = await b.account("bob")  # the same person, another id here
            assert bob_here.id != people["bob"].id
            data = b.server.config.data_dir
            summary = await trio.to_thread.run_sync(
                lambda: conversation_file.import_file(data, file)
            )
            assert summary.conversation_id == cid and summary.created_users == ("ada", "cyd")
            r = await b.http.get(f"/v1/conversations/{cid}/messages", headers=b.auth(bob_here))
            assert r.status_code == 200, r.text
            first, second = r.json()["messages"]
            assert first["body"] == "the plan v2" and first["edited_at"] is not None
            assert second["sender_id"] == bob_here.id and second["reply_to"] == 1
            cyd_here = second["mentions"][0]
            assert cyd_here != bob_here.id and first["reactions"] == {"👍": [cyd_here]}
            r = await b.http.get(f"/v1/media/{first['attachments'][0]}", headers=b.auth(bob_here))
            assert r.status_code == 200 and r.content == PNG
            r = await b.http.get(
                f"/v1/conversations/{cid}/messages/1/edits", headers=b.auth(bob_here)
            )
            assert r.status_code == 200 and "the plan, attached" in r.text
            r = await b.http.get("/v1/conversations", headers=b.auth(bob_here))
            [conv] = [c for c in r.json()["conversations"] if c["id"] == cid]
            assert conv["title"] == "launch" and len(conv["member_ids"]) == 3
            r = await b.http.get(f"/v1/users/{cyd_here}", headers=b.auth(bob_here))
            assert r.json()["username"] == "cyd"
            # A second import of the same file: a new conversation, the same people.
            again = await trio.to_thread.run_sync(lambda: conversation_file.import_file(data, file))
            assert again.conversation_id != cid and again.created_users == ()
            r = await b.http.get(
                f"/v1/conversations/{again.conversation_id}/messages", headers=b.auth(bob_here)
            )
            assert len(r.json()["messages"]) == 2


async def test_bad_files_are_refused_and_change_nothing(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with harness(make_config(tmp_path / "b")) as b:
            await b.account("bob")
            data = b.server.config.data_dir
        before = (data / DIRECTORY_FILE).read_bytes()
        junk = tmp_path / "junk.sqlite3"
        junk.write_bytes(b"this is not a database at all" * 100)
        plain = tmp_path / "plain.sqlite3"
        conn = apsw.Connection(str(plain))
        conn.execute("CREATE TABLE messages(seq INTEGER PRIMARY KEY)")
        conn.close()
        for file, match in ((junk, "not a"), (plain, "not a MessageAI conversation export")):
            with pytest.raises(conversation_file.TransferError, match=match):
                conversation_file.import_file(data, file)
        assert (data / DIRECTORY_FILE).read_bytes() == before
        assert not (data / "conversations").exists() or not any(
            (data / "conversations").rglob("*.sqlite3")
        )


async def test_the_commands_export_and_import(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with harness(make_config(tmp_path / "a")) as a:
            ada, bob = await a.account("ada"), await a.account("bob")
            cid = await a.direct(ada, bob)
            await _post(a, ada, cid, body="hello")

            def cli(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [sys.executable, "-m", "messageai", *args],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )

            out = tmp_path / "dm.sqlite3"
            data = str(a.server.config.data_dir)
            made = await trio.to_thread.run_sync(
                lambda: cli("conversation", "export", cid, str(out), "--data-dir", data)
            )
            assert made.returncode == 0, made.stderr
            assert f"exported {cid}: 1 messages, 2 people, 0 uploads" in made.stdout
            again = await trio.to_thread.run_sync(
                lambda: cli("conversation", "export", cid, str(out), "--data-dir", data)
            )
            assert again.returncode == 1 and "exists already" in again.stderr
        other = str(tmp_path / "b")
        took = cli("conversation", "import", str(out), "--data-dir", other)
        assert took.returncode == 0, took.stderr
        assert "new placeholder accounts: ada, bob" in took.stdout, took.stdout
        # A direct conversation is one per pair: the same file again is refused.
        twice = cli("conversation", "import", str(out), "--data-dir", other)
        assert twice.returncode == 1 and "direct conversation here already" in twice.stderr


async def test_a_member_downloads_the_conversation_as_that_file(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with harness(make_config(tmp_path / "a")) as a:
            ada, bob, eve = await a.account("ada"), await a.account("bob"), await a.account("eve")
            cid = await a.direct(ada, bob)
            await _post(a, ada, cid, body="for the archive")
            url = f"/v1/conversations/{cid}/export"
            r = await a.http.get(url, headers=a.auth(bob))
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "application/vnd.sqlite3"
            assert r.headers["content-disposition"] == f'attachment; filename="{cid}.sqlite3"'
            assert int(r.headers["content-length"]) == len(r.content)
            assert_error(await a.http.get(url, headers=a.auth(eve)), 403, "forbidden")
            assert_error(
                await a.http.get("/v1/conversations/c_nope/export", headers=a.auth(bob)),
                404,
                "not_found",
            )
            assert_error(
                await a.http.get(url + "?media=yes", headers=a.auth(bob)), 400, "bad_request"
            )
            assert_error(await a.http.get(url), 401, "unauthorized")
            # Nothing is left behind under the data directory.
            assert not any((a.server.config.data_dir / "tmp-exports").iterdir())
        file = tmp_path / "mine.sqlite3"
        file.write_bytes(r.content)
        summary = conversation_file.import_file(tmp_path / "b", file)
        assert (summary.messages, summary.created_users) == (1, ("ada", "bob"))


async def test_conversation_list_and_show_describe_the_data_directory(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with harness(make_config(tmp_path / "a")) as a:
            ada, bob = await a.account("ada"), await a.account("bob")
            cid = await a.group(ada, bob, title="launch")
            await a.post(ada, cid, "one")
            await a.post(bob, cid, "two")
            data = str(a.server.config.data_dir)
            listed = await run_messageai("conversation", "list", "--data-dir", data)
            assert listed.returncode == 0, listed.stderr
            assert f"{cid}\tgroup\t2 members\t2 messages\tlaunch" in listed.stdout.splitlines()
            shown = await run_messageai("conversation", "show", cid, "--data-dir", data)
            assert shown.returncode == 0, shown.stderr
            assert f"  {ada.id}\tada (creator)" in shown.stdout.splitlines()
            assert "2 messages" in shown.stdout
            missing = await run_messageai("conversation", "show", "c_nope", "--data-dir", data)
            assert missing.returncode == 1 and "no conversation 'c_nope'" in missing.stderr
