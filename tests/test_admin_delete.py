"""`messageai conversation delete` and `messageai user delete` beside a running server
(its admin channel, `services.admin`; the SQL and files, `ops.removal`): members still
connected hear `unsubscribed` `deleted`, and what was deleted is gone everywhere it was
kept (the file, the directory, uploads, search); a deleted user is signed out at once,
anonymised, out of their groups, their name free, and with `--erase-messages` their
messages are tombstones and their uploads gone. The data directory's lock keeps a
second server off it. (Without a server: `tests/test_conversation_restore.py`.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from messageai.errors import StartupError
from messageai.ops import channel
from messageai.server import Server
from messageai.services.media import blob_path
from messageai.store.paths import conversation_path
from tests.helpers import Account, Harness, connect_ws, harness, make_config, run_messageai

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(800)


async def _attach(h: Harness, who: Account, cid: str, body: str) -> dict[str, Any]:
    return await h.post_upload(who, cid, body, PNG, "image/png")


async def test_delete_a_conversation_while_its_members_are_connected(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(40):
        async with harness(make_config(data)) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cid = await h.group(ada, bob)
            kept = await h.group(ada, bob, title="Kept")
            media = await _attach(h, ada, cid, "walrus plans")
            await h.post(bob, kept, "walrus elsewhere")
            blob = blob_path(data / "media", media["sha256"])
            assert blob.is_file() and conversation_path(data, cid).is_file()
            # The admin channel is the owner's only.
            mode = (data / channel.SOCKET).stat().st_mode & 0o777
            assert mode == 0o600
            async with h.ws(bob) as subscribed, h.ws(ada) as idle:
                frame = await subscribed.request("subscribe", conversation_id=cid)
                assert frame["type"] == "subscribed"
                done = await run_messageai("conversation", "delete", cid, "--data-dir", str(data))
                assert done.returncode == 0, done.stderr
                assert "1 uploads only it used erased" in done.stdout
                gone = await subscribed.next_event("unsubscribed")
                assert gone == {"type": "unsubscribed", "conversation_id": cid, "reason": "deleted"}
                assert (await idle.next_event("unsubscribed"))["reason"] == "deleted"
                frame = await subscribed.request("subscribe", conversation_id=cid)
                assert frame["type"] == "error" and frame["code"] == "not_found"
                # The other conversation goes on, on the same connection.
                frame = await subscribed.send_message(kept, "still here")
                assert frame["type"] == "ack"
            r = await h.http.get(f"/v1/conversations/{cid}", headers=h.auth(ada))
            assert r.status_code == 404
            assert (
                await h.http.get(f"/v1/media/{media['id']}", headers=h.auth(ada))
            ).status_code == 404
            r = await h.http.get("/v1/search", params={"q": "walrus"}, headers=h.auth(bob))
            assert [x["conversation_id"] for x in r.json()["results"]] == [kept]
            r = await h.http.get("/v1/conversations", headers=h.auth(bob))
            assert cid not in [c["id"] for c in r.json()["conversations"]]
            # Again, over the channel itself: refused, naming it.
            with pytest.raises(channel.ChannelError, match="no conversation"):
                await trio.to_thread.run_sync(
                    channel.request,
                    data,
                    {"command": "conversation_delete", "conversation_id": cid},
                )
            # A second server on the same data directory refuses to start.
            with pytest.raises(StartupError, match=r"server\.lock"):
                await Server(make_config(data)).run()
    path = conversation_path(data, cid)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(cid)]
    assert not blob.exists()


async def test_delete_a_user_signs_them_out_and_erases_what_they_sent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(40):
        async with harness(make_config(data)) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            group = await h.group(bob, ada)
            direct = await h.direct(ada, bob)
            await h.post(ada, group, "narwhal secret")
            await h.post(bob, group, "narwhal reply")
            media = await _attach(h, ada, direct, "narwhal photo")
            r = await h.http.post(
                "/v1/push-tokens",
                json={"token": "ExponentPushToken[adaphone]"},
                headers=h.auth(ada),
            )
            assert r.status_code == 201
            async with trio.open_nursery() as nursery, h.ws(bob) as watch:
                await watch.request("subscribe", conversation_id=group)
                codes: list[int | None] = []

                async def connected() -> None:
                    assert h.server.port is not None
                    async with connect_ws(h.server.port, token=ada.token) as ws:
                        try:
                            while True:
                                await ws.get_message()
                        except trio_websocket.ConnectionClosed as closed:
                            codes.append(closed.reason.code if closed.reason else None)

                nursery.start_soon(connected)
                await trio.sleep(0.3)
                done = await run_messageai(
                    "user", "delete", "ada", "--erase-messages", "--data-dir", str(data)
                )
                assert done.returncode == 0, done.stderr
                assert "left 2 groups and channels; 2 messages erased" in done.stdout
                erased = await watch.next_event("message_updated")
                assert erased["message"]["seq"] == 1 and erased["message"]["deleted_at"]
            assert codes == [1008]  # at once, not at the next keepalive
            assert (await h.http.get("/v1/me", headers=h.auth(ada))).status_code == 401
            r = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "password1"}
            )
            assert r.status_code == 401
            profile = (await h.http.get(f"/v1/users/{ada.id}", headers=h.auth(bob))).json()
            assert profile["display_name"] == "Deleted user" and profile["username"] == ada.id
            r = await h.http.get(f"/v1/conversations/{group}", headers=h.auth(bob))
            assert ada.id not in r.json()["member_ids"]
            r = await h.http.get(f"/v1/conversations/{group}/messages", headers=h.auth(bob))
            assert [m["body"] for m in r.json()["messages"]] == ["", "narwhal reply"]
            r = await h.http.get(f"/v1/conversations/{direct}/messages", headers=h.auth(bob))
            assert [m["body"] for m in r.json()["messages"]] == [""]  # the direct one stays
            r = await h.http.get("/v1/search", params={"q": "narwhal"}, headers=h.auth(bob))
            assert [x["message"]["body"] for x in r.json()["results"]] == ["narwhal reply"]
            assert (
                await h.http.get(f"/v1/media/{media['id']}", headers=h.auth(bob))
            ).status_code == 404
            assert not blob_path(data / "media", media["sha256"]).exists()
            # The name is free again: a new account, a new id.
            again = await h.account("ada")
            assert again.id != ada.id
    for cid in (group, direct):
        raw = conversation_path(data, cid).read_bytes()
        assert b"narwhal secret" not in raw and b"narwhal photo" not in raw
    import apsw

    conn = apsw.Connection(str(data / "directory.sqlite3"))
    try:
        assert conn.execute("SELECT count(*) FROM push_tokens").get == 0
        assert conn.execute("SELECT count(*) FROM tokens WHERE user_id = ?", (ada.id,)).get == 0
    finally:
        conn.close()
