"""Backups that lose nothing (`messageai backup|verify|restore`, `messageai.ops.backup`):
taken from a real server while clients send, every message acked before the backup
began is in it with its seq, the media too; `verify` finds damage and names the file;
`restore` refuses a live or non-empty data directory and a damaged backup, and a
server started on the restored directory serves the history."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import apsw
import pytest
import trio

from messageai.ops import backup
from messageai.services.directory import DIRECTORY_FILE
from messageai.store.paths import conversation_path
from tests.helpers import Account, Harness, harness, make_config, run_messageai

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)


def _messages(data_dir: Path, cid: str) -> dict[int, str]:
    conn = apsw.Connection(str(conversation_path(data_dir, cid)), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return dict(conn.execute("SELECT seq, body FROM messages"))
    finally:
        conn.close()


async def _load(
    h: Harness,
    senders: list[tuple[Account, str]],
    acked: list[tuple[str, int, str]],
    stop: trio.Event,
) -> None:
    """One sender per (account, conversation), each waiting for its ack, until `stop`."""

    async def sender(account: Account, cid: str) -> None:
        async with h.ws(account) as ws:
            n = 0
            while not stop.is_set():
                body = f"{account.username} in {cid}: message {n}"
                answer = await ws.send_message(cid, body)
                assert answer["type"] == "ack", answer
                acked.append((cid, answer["message"]["seq"], body))
                n += 1

    async with trio.open_nursery() as nursery:
        for account, cid in senders:
            nursery.start_soon(sender, account, cid)


async def test_a_backup_under_load_holds_every_message_acked_before_it_began(
    tmp_path: Path,
) -> None:
    data, dest, restored = tmp_path / "data", tmp_path / "backup", tmp_path / "restored"
    with trio.fail_after(120):
        async with harness(make_config(data)) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cids = [await h.group(ada, bob, title=f"room {i}") for i in range(3)]
            r = await h.http.post(
                "/v1/media", content=PNG, headers={**h.auth(ada), "Content-Type": "image/png"}
            )
            media = r.json()
            r = await h.http.post(
                f"/v1/conversations/{cids[0]}/messages",
                json={
                    "client_id": uuid.uuid4().hex,
                    "body": "the plan",
                    "attachments": [media["id"]],
                },
                headers=h.auth(ada),
            )
            assert r.status_code == 201, r.text
            acked: list[tuple[str, int, str]] = [(cids[0], 1, "the plan")]
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                senders = [(who, cid) for cid in cids for who in (ada, bob)]
                nursery.start_soon(_load, h, senders, acked, stop)
                while len(acked) < 60:
                    await trio.sleep(0.01)
                before = list(acked)
                await trio.to_thread.run_sync(backup.backup, data, dest, lambda _t: None)
                after = len(acked)
                stop.set()
            assert after > len(before)  # the clients went on while it ran
    report = backup.verify(dest)
    assert report.problems == [] and report.checked >= 6
    backup.restore(dest, restored, lambda _t: None)
    for cid in cids:
        in_backup = _messages(restored, cid)
        for acked_cid, seq, body in before:
            if acked_cid == cid:
                assert in_backup.get(seq) == body, (cid, seq)
        # One order, no gaps: what the backup holds is a prefix of what was acked.
        assert sorted(in_backup) == list(range(1, len(in_backup) + 1))
    # A server on the restored directory serves it all, the upload included.
    with trio.fail_after(60):
        async with harness(make_config(restored)) as h:
            auth = h.auth(ada)  # the tokens are in the directory's copy too
            r = await h.http.get(f"/v1/conversations/{cids[0]}/messages", headers=auth)
            assert r.status_code == 200 and r.json()["messages"][0]["body"] == "the plan"
            r = await h.http.get(f"/v1/media/{media['id']}", headers=auth)
            assert r.status_code == 200 and r.content == PNG


async def _small_backup(tmp_path: Path) -> tuple[Path, Path, str]:
    data, dest = tmp_path / "data", tmp_path / "backup"
    async with harness(make_config(data)) as h:
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.direct(ada, bob)
        async with h.ws(ada) as ws:
            for n in range(5):
                assert (await ws.send_message(cid, f"hello {n}"))["type"] == "ack"
        await h.http.post(
            "/v1/media", content=PNG, headers={**h.auth(ada), "Content-Type": "image/png"}
        )
        await trio.to_thread.run_sync(backup.backup, data, dest, lambda _t: None)
    return data, dest, cid


async def test_verify_finds_damage_and_names_the_file(tmp_path: Path) -> None:
    _, dest, cid = await _small_backup(tmp_path)
    assert backup.verify(dest).problems == []
    conversation = conversation_path(dest, cid)
    raw = bytearray(conversation.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    conversation.write_bytes(bytes(raw))
    [media] = [p for p in (dest / "media").rglob("*") if p.is_file()]
    media.unlink()
    problems = backup.verify(dest).problems
    rel = conversation.relative_to(dest).as_posix()
    assert f"{rel}: its checksum differs from the manifest's" in problems
    assert f"{media.relative_to(dest).as_posix()}: missing" in problems
    (dest / backup.MANIFEST).unlink()
    with pytest.raises(backup.BackupError, match="not a complete backup"):
        backup.verify(dest)


async def test_restore_refuses_a_data_directory_in_use_and_a_damaged_backup(
    tmp_path: Path,
) -> None:
    data, dest, cid = await _small_backup(tmp_path)
    before = (data / DIRECTORY_FILE).read_bytes()
    with pytest.raises(backup.BackupError, match="not empty"):
        backup.restore(dest, data, lambda _t: None)
    assert (data / DIRECTORY_FILE).read_bytes() == before
    with pytest.raises(backup.BackupError, match="exists and is not an empty folder"):
        backup.backup(data, dest, lambda _t: None)
    conversation_path(dest, cid).write_bytes(b"not a database")
    target = tmp_path / "new"
    with pytest.raises(backup.BackupError, match="does not verify"):
        backup.restore(dest, target, lambda _t: None)
    assert not target.exists()


async def test_the_commands_back_up_verify_and_restore(tmp_path: Path) -> None:
    data, _, cid = await _small_backup(tmp_path)

    made = await run_messageai("backup", str(tmp_path / "b2"), "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    # The conversation, the jobs file and the directory; the upload.
    assert "backed up 3 databases and 1 media files" in made.stdout, made.stdout
    checked = await run_messageai("verify", str(tmp_path / "b2"))
    assert checked.returncode == 0 and "files verified" in checked.stdout, checked.stderr
    conversation_path(tmp_path / "b2", cid).write_bytes(b"x")
    bad = await run_messageai("verify", str(tmp_path / "b2"))
    assert bad.returncode == 1 and "the manifest says" in bad.stderr, bad.stderr
    refused = await run_messageai(
        "restore", str(tmp_path / "b2"), "--data-dir", str(tmp_path / "r")
    )
    assert refused.returncode == 1 and "does not verify" in refused.stderr
    assert not (tmp_path / "r").exists()


async def test_check_finds_damage_in_a_live_data_directory(tmp_path: Path) -> None:
    data, _dest, cid = await _small_backup(tmp_path)
    from messageai.ops.check import check

    assert check(data).problems == []
    done = await run_messageai("check", "--data-dir", str(data))
    assert done.returncode == 0 and "files verified" in done.stdout, done.stderr
    [blob] = [p for p in (data / "media").glob("??/*") if p.is_file()]
    blob.write_bytes(b"not the upload")
    stray = data / "conversations" / "zz" / "c_strayzz.sqlite3"
    stray.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(conversation_path(data, cid), stray)
    problems = check(data).problems
    assert f"{blob.relative_to(data)}: its content is not its checksum" in problems
    assert "conversations/zz/c_strayzz.sqlite3: no conversation of this id" in problems
    done = await run_messageai("check", "--data-dir", str(data))
    assert done.returncode == 1 and "2 problems" in done.stderr, done.stderr
