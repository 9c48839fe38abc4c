"""`messageai conversation restore ID --from BACKUP` beside a running server (its admin
channel, `services.admin`; the file work is `ops.restore_one`): the conversation goes
back to its state in the backup while another conversation keeps chatting, its seqs
and revs never go back, its subscribers stay subscribed and hear what changed, and a
client catching up with `get_changes` from the rev it held gets a consistent view. A
damaged backup is refused and changes nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from messageai.ops import backup, channel
from messageai.services import admin
from messageai.store.paths import conversation_path
from tests.helpers import Harness, harness, make_config, run_messageai


async def _changes(h: Harness, who: Any, cid: str, after_rev: int) -> list[dict[str, Any]]:
    r = await h.http.get(
        f"/v1/conversations/{cid}/changes",
        params={"after_rev": after_rev, "limit": 200},
        headers=h.auth(who),
    )
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages


async def test_restore_while_another_conversation_keeps_chatting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, dest = tmp_path / "data", tmp_path / "backup"
    with trio.fail_after(60):
        async with harness(make_config(data)) as h:
            ada, bob, cy, di = [await h.account(n) for n in ("ada", "bob", "cyd", "dia")]
            cid = await h.group(ada, bob)
            other = await h.group(cy, di)
            for body in ("one", "two", "three"):
                await h.post(ada, cid, body)
            await trio.to_thread.run_sync(backup.backup, data, dest, lambda _t: None)
            # After the backup: an edit, a delete, two new messages.
            auth = h.auth(ada)
            r = await h.http.patch(
                f"/v1/conversations/{cid}/messages/1", json={"body": "one, edited"}, headers=auth
            )
            assert r.status_code == 200
            assert (
                await h.http.delete(f"/v1/conversations/{cid}/messages/2", headers=auth)
            ).status_code == 200
            await h.post(ada, cid, "four")
            await h.post(ada, cid, "five")
            before = (await h.http.get(f"/v1/conversations/{cid}", headers=h.auth(bob))).json()
            assert (before["last_seq"], before["last_rev"]) == (5, 7)

            acked: list[int] = []
            errors: list[dict[str, Any]] = []
            stop = trio.Event()

            async def chat() -> None:
                async with h.ws(cy) as ws:
                    while not stop.is_set():
                        answer = await ws.send_message(other, f"still here {len(acked)}")
                        if answer["type"] == "ack":
                            acked.append(answer["message"]["seq"])
                        else:
                            errors.append(answer)
                        await trio.sleep(0.01)

            async with h.ws(bob) as watch, trio.open_nursery() as nursery:
                assert (await watch.request("subscribe", conversation_id=cid))[
                    "type"
                ] == "subscribed"
                nursery.start_soon(chat)
                await trio.sleep(0.2)
                during = len(acked)
                done = await run_messageai(
                    "conversation", "restore", cid, "--from", str(dest), "--data-dir", str(data)
                )
                assert done.returncode == 0, done.stderr
                assert "2 messages changed back, 2 newer messages kept as tombstones" in done.stdout
                await trio.sleep(0.2)
                stop.set()
                # The subscriber hears every change, in rev order, with revs above 7.
                updated = [await watch.next_event("message_updated") for _ in range(4)]
                states = {u["message"]["seq"]: u["message"] for u in updated}
                revs = [u["message"]["rev"] for u in updated]
                assert revs == sorted(revs) and min(revs) > 7
                assert states[1]["body"] == "one" and states[1]["edited_at"] is None
                assert states[2]["body"] == "two" and states[2]["deleted_at"] is None
                assert states[4]["deleted_at"] is not None and states[4]["body"] == ""
                assert states[5]["deleted_at"] is not None
                # Still subscribed: the next message reaches it, with the next seq.
                seq = await h.post(ada, cid, "six")
                assert seq == 6
                assert (await watch.next_event("new_message"))["message"]["seq"] == 6
            assert errors == [] and len(acked) > during + 3  # it chatted throughout

            # A client that held rev 7 catches up to the restored state.
            changed = await _changes(h, bob, cid, 7)
            assert [m["seq"] for m in changed] == [1, 2, 4, 5, 6]
            r = await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(bob))
            bodies = [(m["seq"], m["body"]) for m in r.json()["messages"]]
            assert bodies == [(1, "one"), (2, "two"), (3, "three"), (4, ""), (5, ""), (6, "six")]
            r = await h.http.get("/v1/search", params={"q": "two"}, headers=h.auth(bob))
            assert [x["message"]["seq"] for x in r.json()["results"]] == [2]

            # Past the push limit, the subscribers are closed (1012) to catch up themselves.
            monkeypatch.setattr(admin, "RESTORE_PUSH_LIMIT", 2)
            request = {
                "command": "conversation_restore",
                "conversation_id": cid,
                "backup": str(dest),
            }
            async with h.ws(bob) as watch:
                await watch.request("subscribe", conversation_id=cid)
                said = await trio.to_thread.run_sync(channel.request, data, request)
                assert "3 newer messages kept as tombstones" in said
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await watch.next_event("message_updated")
                assert closed.value.reason is not None and closed.value.reason.code == 1012
            assert [m["seq"] for m in await _changes(h, bob, cid, 12)] == [1, 2, 4, 5, 6]

            # A damaged backup: refused before anything stops, and nothing changes.
            copy = dest / conversation_path(Path(), cid)
            raw = bytearray(copy.read_bytes())
            raw[-100] ^= 0xFF
            copy.write_bytes(bytes(raw))
            request = {
                "command": "conversation_restore",
                "conversation_id": cid,
                "backup": str(dest),
            }
            with pytest.raises(channel.ChannelError, match="checksum differs"):
                await trio.to_thread.run_sync(channel.request, data, request)
            assert await h.post(ada, cid, "seven") == 7  # seqs never went back


async def test_without_a_server_delete_restore_and_user_delete(tmp_path: Path) -> None:
    """No server: `conversation delete`, then `restore` puts the row, the members, the
    file and the upload back; `user delete` (messages kept) anonymises the sender; a
    server started after serves all of it."""
    data, dest = tmp_path / "data", tmp_path / "backup"
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(500)
    with trio.fail_after(60):
        async with harness(make_config(data)) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cid = await h.group(ada, bob)
            media = (await h.post_upload(ada, cid, "a picture", png, "image/png"))["id"]
        await trio.to_thread.run_sync(backup.backup, data, dest, lambda _t: None)
        done = await run_messageai("conversation", "delete", cid, "--data-dir", str(data))
        assert done.returncode == 0, done.stderr
        assert "1 uploads only it used erased" in done.stdout
        assert not conversation_path(data, cid).exists()
        done = await run_messageai(
            "conversation", "restore", cid, "--from", str(dest), "--data-dir", str(data)
        )
        assert done.returncode == 0, done.stderr
        assert "directory row and members put back" in done.stdout
        done = await run_messageai("user", "delete", "ada", "--data-dir", str(data))
        assert done.returncode == 0, done.stderr
        assert "left 2 groups and channels; messages kept" in done.stdout
        async with harness(make_config(data)) as h:
            login = await h.http.post(
                "/v1/auth/login", json={"username": "bob", "password": "password1"}
            )
            auth = {"Authorization": f"Bearer {login.json()['token']}"}
            r = await h.http.get(f"/v1/conversations/{cid}/messages", headers=auth)
            [message] = r.json()["messages"]
            assert message["body"] == "a picture" and message["sender_id"] == ada.id
            r = await h.http.get(f"/v1/media/{media}", headers=auth)
            assert r.status_code == 200 and r.content == png  # an upload of a kept message
            r = await h.http.get(f"/v1/users/{ada.id}", headers=auth)
            assert r.json()["display_name"] == "Deleted user"
            r = await h.http.get(f"/v1/conversations/{cid}", headers=auth)
            assert r.json()["member_ids"] == [bob.id]
