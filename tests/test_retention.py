"""Retention (`[retention] days`, `services.retention`): on a real server, messages
older than the limit become tombstones through the delete's own path: members'
connections hear `message_updated`, the bodies leave the file and the search index,
attachments are released; newer messages stay."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import apsw
import trio

from messageai.store.paths import conversation_path
from tests.helpers import harness, make_config

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
# 0.00006 days is 5.2 s: the first messages age past it while the test waits, and the
# one sent after they expired stays young for the rest of the test.
RETENTION = {"days": 0.00006, "sweep_interval_seconds": 0.2, "conversations_per_second": 1000}


async def test_old_messages_become_tombstones_everywhere(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(60):
        async with harness(make_config(data, retention=RETENTION)) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cid = await h.group(ada, bob)
            r = await h.http.post(
                "/v1/media", content=PNG, headers={**h.auth(ada), "Content-Type": "image/png"}
            )
            media = r.json()["id"]
            r = await h.http.post(
                f"/v1/conversations/{cid}/messages",
                json={"client_id": uuid.uuid4().hex, "body": "zebra plans", "attachments": [media]},
                headers=h.auth(ada),
            )
            assert r.status_code == 201
            await h.post(bob, cid, "zebra reply")
            async with h.ws(bob) as ws:
                assert (await ws.request("subscribe", conversation_id=cid))["type"] == "subscribed"
                gone = [await ws.next_event("message_updated", timeout=20) for _ in range(2)]
                fresh = await h.post(ada, cid, "still here")
                await ws.next_event("new_message")
            assert sorted(m["message"]["seq"] for m in gone) == [1, 2]
            assert all(m["message"]["deleted_at"] is not None for m in gone)
            r = await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(bob))
            bodies = {m["seq"]: m["body"] for m in r.json()["messages"]}
            assert bodies[1] == "" and bodies[2] == "" and bodies[fresh] == "still here"
            r = await h.http.get(f"/v1/media/{media}", headers=h.auth(bob))
            assert r.status_code in (403, 404)  # released: members lose it
            r = await h.http.get(
                "/v1/search", params={"q": "zebra", "mode": "keyword"}, headers=h.auth(bob)
            )
            assert r.json()["results"] == []
    raw = conversation_path(data, cid).read_bytes()
    assert b"zebra plans" not in raw and b"zebra reply" not in raw
    conn = apsw.Connection(str(conversation_path(data, cid)))
    try:
        assert conn.execute("SELECT count(*) FROM messages WHERE deleted_at IS NULL").get == 1
    finally:
        conn.close()
