"""Durability: restarts keep everything, kill -9 loses no acked message, resends store
nothing twice, shutdown is graceful. (Actor and registry lifecycle: test_actor.py,
test_registry.py.)"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio_websocket

from tests.helpers import ServerProcess, connect_ws, harness, make_config


async def test_restart_keeps_messages_cursors_and_idempotency(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    async with harness(config) as h:
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.direct(ada, bob)
        async with h.ws(ada) as a:
            first = await a.send_message(cid, "before restart", client_id="keep")
            await a.request("mark_read", conversation_id=cid, seq=1)
    async with harness(config) as h2:
        async with h2.ws(ada) as a:
            sub = await a.request("subscribe", conversation_id=cid)
            assert sub["last_seq"] == 1 and sub["read_cursors"] == {ada.id: 1}
            again = await a.send_message(cid, "before restart", client_id="keep")
            assert again["duplicate"] is True and again["message"] == first["message"]
            nxt = await a.send_message(cid, "after restart")
            assert nxt["message"]["seq"] == 2
        r = await h2.http.post(
            f"/v1/conversations/{cid}/messages",
            json={"client_id": "keep", "body": "x"},
            headers=h2.auth(ada),
        )
        assert r.status_code == 200 and r.json() == first["message"]


async def test_graceful_shutdown_closes_websockets_with_1001(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    async with harness(config) as h:
        ada = await h.account()
        async with h.ws(ada) as a:
            assert (await a.request("ping"))["type"] == "pong"
            h.server.shutdown()
            with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as closed:
                while True:
                    await a.conn.get_message()
            reason = closed.value.reason
            assert reason is not None
            assert reason.code == 1001


# ------------------------------------------------------------------ kill -9

WINDOW = 256


async def _send_burst(
    port: int, token: str, cid: str, client_ids: list[str], acked: dict[str, dict[str, Any]]
) -> None:
    """Pipeline every client id (a window of WINDOW in flight, as real clients keep, so
    the server never has to drop this connection for reading too slowly); record acks
    until the server dies."""
    window = trio.Semaphore(WINDOW)
    try:
        async with connect_ws(port, query=f"?access_token={token}") as ws:

            async def pump() -> None:
                for client_id in client_ids:
                    await window.acquire()
                    await ws.send_message(
                        f'{{"type":"send_message","conversation_id":"{cid}","client_id":"{client_id}","body":"b {client_id}","req":"{client_id}"}}'
                    )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                while len(acked) < len(client_ids):
                    frame = orjson.loads(await ws.get_message())
                    if frame["type"] == "ack":
                        acked[frame["client_id"]] = frame["message"]
                        window.release()
                nursery.cancel_scope.cancel()
    except* (
        trio_websocket.ConnectionClosed,
        trio_websocket.HandshakeError,
        OSError,
        trio.BrokenResourceError,
    ):
        pass  # the server died under us: that is the point


@pytest.mark.slow
async def test_kill_9_mid_burst_loses_no_acked_message_and_resend_stores_nothing_twice(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config_file = ServerProcess.write_config(tmp_path / "messageai.toml")
    client_ids = [uuid.uuid4().hex for _ in range(3000)]
    acked: dict[str, dict[str, Any]] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            proc = ServerProcess(data, config_file)
            port = await proc.start(nursery)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                r = await http.post(
                    "/v1/auth/register", json={"username": "ada", "password": "password1"}
                )
                token = r.json()["token"]
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

            async def killer() -> None:
                while len(acked) < 300:
                    await trio.sleep(0.001)
                proc.kill()

            nursery.start_soon(killer)
            await _send_burst(port, token, cid, client_ids, acked)
            assert await proc.wait() == -9
        assert 300 <= len(acked) < len(client_ids), "the kill must land mid-burst"

        async with trio.open_nursery() as nursery:
            proc = ServerProcess(data, config_file)
            port = await proc.start(nursery)
            stored = await _history(port, token, cid)
            by_client = {m["client_id"]: m for m in stored}
            # Nothing acked is lost, and it kept its seq and id.
            for client_id, message in acked.items():
                assert by_client.get(client_id) == message
            # A gapless order survived the crash.
            assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
            # Resend the whole queue: acked ones come back as duplicates, nothing twice.
            resent: dict[str, dict[str, Any]] = {}
            await _send_burst(port, token, cid, client_ids, resent)
            assert len(resent) == len(client_ids)
            for client_id, message in acked.items():
                assert resent[client_id] == message
            final = await _history(port, token, cid)
            assert len(final) == len(client_ids)
            assert len({m["client_id"] for m in final}) == len(client_ids)
            proc.terminate()
            assert await proc.wait() == 0


async def _history(port: int, token: str, cid: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        after = 0
        while True:
            r = await http.get(
                f"/v1/conversations/{cid}/messages",
                params={"after_seq": after, "limit": 200},
                headers={"Authorization": f"Bearer {token}"},
            )
            page = r.json()
            messages.extend(page["messages"])
            if not page["has_more"]:
                return messages
            after = page["messages"][-1]["seq"]
