"""Durability and erasure of v1.1 changes, against real server processes and files:
kill -9 during a pipelined burst of edits and reactions keeps every acknowledged change
and leaves nothing half-done; a deleted message's content is returned by no route and
is gone from the conversation file's bytes and its WAL.

Not covered here: the keyword index (engineer "search"'s FTS5 table with its own
secure-delete), which this branch only calls through `store/search.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw
import httpx
import orjson
import pytest
import trio
import trio_websocket

from messageai.store.paths import conversation_path
from tests.helpers import Harness, ServerProcess, connect_ws

WINDOW = 256
MESSAGES = 1200


async def _pipeline(
    port: int, token: str, frames: list[dict[str, Any]], answers: dict[int, dict[str, Any]]
) -> None:
    """Send `frames` (each with `req` = its index) with at most WINDOW unanswered;
    record each answer by req until every frame is answered or the server dies."""
    window = trio.Semaphore(WINDOW)
    try:
        async with connect_ws(port, query=f"?access_token={token}") as ws:

            async def pump() -> None:
                for req, frame in enumerate(frames):
                    await window.acquire()
                    await ws.send_message(orjson.dumps({**frame, "req": req}).decode())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                while len(answers) < len(frames):
                    frame = orjson.loads(await ws.get_message())
                    if "req" in frame:
                        answers[frame["req"]] = frame
                        window.release()
                nursery.cancel_scope.cancel()
    except* (
        trio_websocket.ConnectionClosed,
        trio_websocket.HandshakeError,
        OSError,
        trio.BrokenResourceError,
    ):
        pass  # the server died under us: that is the point


async def _all_changes(port: int, token: str, cid: str) -> tuple[list[dict[str, Any]], int]:
    messages: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        after = 0
        while True:
            r = await http.get(
                f"/v1/conversations/{cid}/changes",
                params={"after_rev": after, "limit": 200},
                headers={"Authorization": f"Bearer {token}"},
            )
            page = r.json()
            messages.extend(page["messages"])
            if not page["has_more"]:
                return messages, page["last_rev"]
            after = page["messages"][-1]["rev"]


@pytest.mark.slow
async def test_kill_9_mid_burst_of_edits_and_reactions_keeps_every_acked_change(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config_file = ServerProcess.write_config(tmp_path / "messageai.toml")
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            proc = ServerProcess(data, config_file)
            port = await proc.start(nursery)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                r = await http.post(
                    "/v1/auth/register", json={"username": "ada", "password": "password1"}
                )
                token, ada = r.json()["token"], r.json()["user"]["id"]
                r = await http.post(
                    "/v1/auth/register", json={"username": "bob", "password": "password1"}
                )
                bob = r.json()["user"]["id"]
                r = await http.post(
                    "/v1/conversations",
                    json={"kind": "direct", "member_ids": [bob]},
                    headers={"Authorization": f"Bearer {token}"},
                )
                cid = r.json()["id"]
            sends = [
                {
                    "type": "send_message",
                    "conversation_id": cid,
                    "client_id": f"k{i}",
                    "body": f"orig {i + 1}",
                }
                for i in range(MESSAGES)
            ]
            sent: dict[int, dict[str, Any]] = {}
            await _pipeline(port, token, sends, sent)
            assert all(sent[i]["type"] == "ack" for i in range(MESSAGES))
            burst: list[dict[str, Any]] = []
            for seq in range(1, MESSAGES + 1):
                burst.append(
                    {
                        "type": "edit_message",
                        "conversation_id": cid,
                        "seq": seq,
                        "body": f"edited {seq}",
                    }
                )
                burst.append(
                    {
                        "type": "react",
                        "conversation_id": cid,
                        "seq": seq,
                        "emoji": ":+1:",
                        "on": True,
                    }
                )
            answers: dict[int, dict[str, Any]] = {}

            async def killer() -> None:
                while len(answers) < 300:
                    await trio.sleep(0.001)
                proc.kill()

            nursery.start_soon(killer)
            await _pipeline(port, token, burst, answers)
            assert await proc.wait() == -9
        assert 300 <= len(answers) < len(burst), "the kill must land mid-burst"
        assert all(frame["type"] == "updated" for frame in answers.values())

        async with trio.open_nursery() as nursery:
            proc = ServerProcess(data, config_file)
            port = await proc.start(nursery)
            messages, last_rev = await _all_changes(port, token, cid)
            proc.terminate()
            assert await proc.wait() == 0

    by_seq = {m["seq"]: m for m in messages}
    assert sorted(by_seq) == list(range(1, MESSAGES + 1))
    # Every acknowledged change is there, as acknowledged (or changed further since).
    for req, frame in answers.items():
        seq, acked = burst[req]["seq"], frame["message"]
        now = by_seq[seq]
        if burst[req]["type"] == "edit_message":
            assert now["body"] == f"edited {seq}" and now["edited_at"] == acked["edited_at"]
        else:
            assert now["reactions"] == {":+1:": [ada]}
        assert now["rev"] >= acked["rev"]
    # Nothing half-done: each message is wholly edited or not, reacted or not, and its
    # edit history agrees with its body.
    conn = apsw.Connection(str(conversation_path(data, cid)), flags=apsw.SQLITE_OPEN_READONLY)
    history: dict[int, str] = {
        int(seq): str(body) for seq, body in conn.execute("SELECT seq, body FROM edits")
    }
    assert conn.execute("SELECT count(*) FROM edits").get == len(history)
    conn.close()
    committed = 0
    for seq, m in by_seq.items():
        if m["body"] == f"edited {seq}":
            assert m["edited_at"] is not None and history[seq] == f"orig {seq}"
            committed += 1
        else:
            assert m["body"] == f"orig {seq}" and m["edited_at"] is None and seq not in history
        assert m["reactions"] in ({}, {":+1:": [ada]})
        committed += bool(m["reactions"])
    # rev stayed gapless across the crash: one per committed change, all distinct.
    assert last_rev == MESSAGES + committed
    revs = [m["rev"] for m in messages]
    assert revs == sorted(set(revs)) and max(revs) == last_rev


MARKERS = [b"ZQXJ-alpha-original", b"ZQXJ-beta-edited", b"ZQXJ-gamma-final"]


async def test_a_deleted_message_is_gone_from_every_route_the_file_and_its_wal(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    url = f"/v1/conversations/{cid}"
    async with h.ws(ada) as a:
        await a.send_message(cid, "a message that stays")
        await a.send_message(cid, MARKERS[0].decode() + " " + "padding " * 200)
        for body in MARKERS[1:]:
            r = await a.request("edit_message", conversation_id=cid, seq=2, body=body.decode())
            assert r["type"] == "updated"
        await a.request("react", conversation_id=cid, seq=2, emoji="ZQXJ-emoji", on=True)
        await a.send_message(cid, "after it")
        deleted = await a.request("delete_message", conversation_id=cid, seq=2)
        assert deleted["type"] == "updated" and deleted["message"]["body"] == ""
        # Every route that returns message content.
        texts: list[object] = [
            (await a.request("get_history", conversation_id=cid))["messages"],
            (await a.request("get_changes", conversation_id=cid, after_rev=0))["messages"],
        ]
    for path in [
        f"{url}/messages",
        f"{url}/changes?after_rev=0",
        f"{url}/messages/2/edits",
        url,
        "/v1/conversations",
    ]:
        got = await h.http.get(path, headers=h.auth(bob))
        assert got.status_code == 200, path
        texts.append(got.text)
    for text in texts:
        assert b"ZQXJ" not in orjson.dumps(text)
    # The bytes: the file and its WAL as they are on disk now, the server still running
    # (the delete's answer came after the WAL was checkpointed and truncated).
    stored, wal = _file_and_wal(conversation_path(h.server.config.data_dir, cid))
    assert b"a message that stays" in stored + wal  # the check can see bodies at all
    for blob in [stored, wal]:
        for marker in [*MARKERS, b"ZQXJ"]:
            assert marker not in blob


def _file_and_wal(path: Path) -> tuple[bytes, bytes]:
    wal = Path(str(path) + "-wal")
    return path.read_bytes(), wal.read_bytes() if wal.exists() else b""
