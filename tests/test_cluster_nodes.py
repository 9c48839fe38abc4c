"""Several server processes form one server (docs/SCALE.md §3-5): a client on any node
reaches any conversation, through the node links, with one order, one copy of each
resend and receipts across nodes; a REST membership change on a node that does not own
the conversation reaches the owner's actor; a killed owner's conversation moves to a
survivor once its lease expires, at a higher epoch, and nothing acked is lost.

Real `redis-server`, real `messageai serve` processes sharing one data directory on
127.0.0.1 (`tests/cluster_nodes.py`); skipped, saying why, without redis-server.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio_websocket

from messageai.cluster.codec import dump_op
from messageai.protocol import SendMessage
from messageai.sqlite import open_db
from messageai.store import fence as fence_sql
from messageai.store.paths import conversation_path
from tests.cluster_nodes import Cluster, cluster_of
from tests.helpers import WS, Account, Harness

DEADLINE = 60


@pytest.mark.slow
async def test_a_direct_conversation_across_two_nodes(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_of(tmp_path, 2) as cluster:
            a, b = cluster.nodes[0].harness, cluster.nodes[1].harness
            ada, bob = await a.account("ada"), await b.account("bob")
            async with b.ws(bob) as on_b:
                # A user's own frames reach their connections on every node (the user
                # bus): ada makes the conversation on a, bob on b hears of it, once
                # a knows bob is online (a moment after he connected: until then a
                # tells nobody, and his client's list on connect has it anyway).
                await _users_online(a, 1)
                cid = await a.direct(ada, bob)
                added = await on_b.next_event("conversation_added")
                assert added["conversation"]["id"] == cid, added
                async with a.ws(ada) as on_a, b.ws(ada) as ada_on_b:
                    # Presence across nodes: each sees the other online, wherever they are.
                    for ws, other in ((on_a, bob), (on_b, ada)):
                        subscribed = await ws.request("subscribe", conversation_id=cid)
                        assert subscribed["type"] == "subscribed", subscribed
                        assert other.id in subscribed["online"], subscribed
                    await _users_online(a, 2)
                    owner = await cluster.owner(cid)
                    assert owner in ("a", "b")
                    # Live delivery both ways, one order.
                    seqs = []
                    for n in range(3):
                        ack = await on_a.send_message(cid, f"a{n}", client_id=f"a{n}")
                        assert ack["type"] == "ack" and not ack["duplicate"], ack
                        seqs.append(ack["message"]["seq"])
                        ack = await on_b.send_message(cid, f"b{n}", client_id=f"b{n}")
                        assert ack["type"] == "ack", ack
                        seqs.append(ack["message"]["seq"])
                    assert seqs == list(range(1, 7))
                    heard_b = [(await on_b.next_event("new_message"))["message"] for _ in range(3)]
                    heard_a = [(await on_a.next_event("new_message"))["message"] for _ in range(3)]
                    assert [m["body"] for m in heard_b] == ["a0", "a1", "a2"]
                    assert [m["body"] for m in heard_a] == ["b0", "b1", "b2"]
                    assert [m["seq"] for m in heard_a] == [2, 4, 6]
                    # The sender's own connection gets no new_message for its own send.
                    await on_a.assert_quiet(0.3)
                    # Idempotency across nodes: ada resends a0 through node b: the original.
                    again = await ada_on_b.send_message(cid, "a0", client_id="a0")
                    assert again["type"] == "ack" and again["duplicate"], again
                    assert again["message"]["seq"] == 1
                    # Receipts: bob reads on b, ada hears it on a.
                    ok = await on_b.request("mark_read", conversation_id=cid, seq=5)
                    assert ok["type"] == "ok", ok
                    read = await on_a.next_event("message_read")
                    assert (read["user_id"], read["seq"]) == (bob.id, 5)
                    # An unknown conversation gets not_found, and neither a lease nor a file.
                    unknown = await on_b.request("subscribe", conversation_id="c_unknown")
                    assert unknown["code"] == "not_found", unknown
                    assert await cluster.owner("c_unknown") is None
                    assert not conversation_path(cluster.data_dir, "c_unknown").exists()
                    # A link that does not show the cluster's secret is closed unheard: a
                    # forged command (bob's id, in ada's conversation) stores nothing.
                    await _forge(cluster, owner or "a", bob.id, cid)
                    # History over REST on both nodes, whichever owns it: one copy each.
                    for harness, who in ((a, bob), (b, ada)):
                        r = await harness.http.get(
                            f"/v1/conversations/{cid}/messages", headers=harness.auth(who)
                        )
                        assert r.status_code == 200, r.text
                        bodies = [m["body"] for m in r.json()["messages"]]
                        assert bodies == ["a0", "b0", "a1", "b1", "a2", "b2"]


@pytest.mark.slow
async def test_a_membership_change_on_another_node_reaches_the_owner(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_of(tmp_path, 2) as cluster:
            first = cluster.nodes[0].harness
            ada, bob, cat = [await first.account(name) for name in ("ada", "bob", "cat")]
            cid = await first.group(ada, bob)
            # The owner is whichever node takes the lease; ada and bob are on it.
            owner_id = await cluster.placed(cid, ada)
            owner = cluster.node(owner_id).harness
            other = next(n.harness for n in cluster.nodes if n.node_id != owner_id)
            async with owner.ws(ada) as ada_ws, owner.ws(bob) as bob_ws, other.ws(cat) as cat_ws:
                for ws in (ada_ws, bob_ws):
                    assert (await ws.request("subscribe", conversation_id=cid))["type"] == (
                        "subscribed"
                    )
                refused = await cat_ws.send_message(cid, "let me in")
                assert refused["code"] == "forbidden", refused
                r = await other.http.post(
                    f"/v1/conversations/{cid}/members",
                    json={"user_ids": [cat.id]},
                    headers=other.auth(ada),
                )
                assert r.status_code == 200, r.text
                # The owner's actor knows cat now (its members are in memory).
                ack = await cat_ws.send_message(cid, "hello all")
                assert ack["type"] == "ack", ack
                assert (await ada_ws.next_event("new_message"))["message"]["body"] == "hello all"
                # A removal made on the other node ends bob's subscription on the owner.
                r = await other.http.delete(
                    f"/v1/conversations/{cid}/members/{bob.id}", headers=other.auth(ada)
                )
                assert r.status_code == 204, r.text
                ended = await bob_ws.next_event("unsubscribed")
                assert ended["reason"] == "removed"
                refused = await bob_ws.send_message(cid, "still here?")
                assert refused["code"] == "forbidden", refused


@pytest.mark.slow
async def test_a_killed_owner_s_conversation_moves_and_keeps_every_ack(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_of(tmp_path, 3) as cluster, contextlib.AsyncExitStack() as stack:
            ada, bob, cid, owner_id = await cluster.direct()
            client = next(n for n in cluster.nodes if n.node_id != owner_id).harness
            ws = [await stack.enter_async_context(client.ws(ada))]
            # Bob listens on the same node, subscribed through its link to the owner.
            bob_ws = await stack.enter_async_context(client.ws(bob))
            assert (await bob_ws.request("subscribe", conversation_id=cid))["type"] == "subscribed"
            acked: dict[str, int] = {}
            for n in range(10):
                ack = await _send_until_acked(client, ada, cid, f"m{n}", ws, stack)
                acked[f"m{n}"] = ack["message"]["seq"]
            epoch_before = _file_epoch(cluster, cid)
            heard = [(await bob_ws.next_event("new_message"))["message"]["seq"] for _ in range(10)]
            assert heard == list(range(1, 11))
            cluster.node(owner_id).process.kill()
            await cluster.node(owner_id).process.wait()
            # The link that carried bob's subscription broke: his connection is closed
            # with 1013, so that his client reconnects, resubscribes and catches up.
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await bob_ws.next_event("new_message")
            reason = closed.value.reason
            assert reason is not None and reason.code == 1013, reason
            for n in range(10, 20):
                ack = await _send_until_acked(client, ada, cid, f"m{n}", ws, stack)
                acked[f"m{n}"] = ack["message"]["seq"]
            # A resend of a message acked by the dead owner: the original, not a copy.
            again = await _send_until_acked(client, ada, cid, "m3", ws, stack)
            assert again["duplicate"] and again["message"]["seq"] == acked["m3"], again
            new_owner = await cluster.owner(cid)
            assert new_owner not in (None, owner_id)
            assert _file_epoch(cluster, cid) > epoch_before
            r = await client.http.get(f"/v1/conversations/{cid}/messages", headers=client.auth(bob))
            assert r.status_code == 200, r.text
            stored = {m["client_id"]: m["seq"] for m in r.json()["messages"]}
            assert len(r.json()["messages"]) == len(stored) == 20
            assert stored == acked
            assert sorted(stored.values()) == list(range(1, 21))
            # Bob catches up from the seq he had, on the new owner, through his node.
            async with client.ws(bob) as again_ws:
                subscribed = await again_ws.request("subscribe", conversation_id=cid)
                assert subscribed["last_seq"] == 20, subscribed
                page = await again_ws.request("get_history", conversation_id=cid, after_seq=10)
                assert [m["client_id"] for m in page["messages"]] == [
                    f"m{n}" for n in range(10, 20)
                ]


@pytest.mark.slow
async def test_node_drain_hands_the_conversations_over(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_of(tmp_path, 2) as cluster, contextlib.AsyncExitStack() as stack:
            ada, bob, cid, owner_id = await cluster.direct()
            owner = cluster.node(owner_id)
            other = next(n for n in cluster.nodes if n.node_id != owner_id)
            epoch_before = _file_epoch(cluster, cid)
            local = await stack.enter_async_context(owner.harness.ws(bob))
            remote = await stack.enter_async_context(other.harness.ws(ada))
            for listener in (local, remote):
                subscribed = await listener.request("subscribe", conversation_id=cid)
                assert subscribed["type"] == "subscribed"
            assert (await remote.send_message(cid, "before", client_id="m0"))["type"] == "ack"
            assert (await local.next_event("new_message"))["message"]["client_id"] == "m0"
            await owner.drain()
            # Released at once (no TTL to wait for); the next command places it.
            assert await cluster.owner(cid) is None
            # Both subscribed connections were closed with 1013, to catch up elsewhere.
            for listener in (local, remote):
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await listener.next_event("new_message")
                reason = closed.value.reason
                assert reason is not None and reason.code == 1013, reason
            # The drained node still serves its clients, through the new owner.
            ws = [await stack.enter_async_context(owner.harness.ws(bob))]
            ack = await _send_until_acked(owner.harness, bob, cid, "m1", ws, stack)
            assert ack["message"]["seq"] == 2 and not ack["duplicate"]
            assert await cluster.owner(cid) == other.node_id
            assert _file_epoch(cluster, cid) > epoch_before


async def _users_online(harness: Harness, count: int) -> None:
    """Until the node's /metrics counts `count` users online anywhere."""
    while True:
        scrape = await harness.http.get("/metrics")
        if f"messageai_cluster_users_online {count:.1f}" in scrape.text:
            return
        await trio.sleep(0.05)


async def _send_until_acked(
    harness: Harness, who: Account, cid: str, client_id: str, ws: list[WS], stack: Any
) -> dict[str, Any]:
    """Send (and resend, with the same client_id) until acked; reconnects if closed."""
    while True:
        try:
            answer = await ws[0].send_message(cid, client_id, client_id=client_id)
        except (trio_websocket.ConnectionClosed, trio.TooSlowError):
            ws[0] = await stack.enter_async_context(harness.ws(who))
            continue
        if answer["type"] == "ack":
            return answer
        assert answer["code"] == "unavailable", answer
        await trio.sleep(0.1)


async def _forge(cluster: Cluster, node_id: str, user_id: str, cid: str) -> None:
    async with cluster.redis.client() as redis:
        address = await redis.get(f"messageai:node:{node_id}")
    assert address is not None
    host, _, port = address.rpartition(":")
    hello = {"k": "hello", "n": "intruder", "a": "not the secret"}
    forged = {
        "k": "cmd",
        "s": 1,
        "u": user_id,
        "c": cid,
        "o": dump_op(SendMessage(cid, "forged", "forged")),
    }
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        frames = [orjson.dumps(obj) for obj in (hello, forged)]
        # Closed, nothing answered: an end of stream, or a reset (closed with the
        # forged frame unread).
        with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(b"".join(len(f).to_bytes(4, "big") + f for f in frames))
            assert await stream.receive_some(100) == b""


def _file_epoch(cluster: Cluster, cid: str) -> int:
    conn = open_db(conversation_path(cluster.data_dir, cid), "FULL", create=False)
    try:
        row = fence_sql.current(conn)
    finally:
        conn.close()
    assert row is not None
    return row.epoch


async def test_a_single_node_server_loads_nothing_of_the_cluster() -> None:
    code = (
        "import sys, messageai.server, messageai.cli\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('coredis', 'messageai.cluster')))\n"
        "print(loaded)\n"
    )
    done = await trio.run_process([sys.executable, "-c", code], capture_stdout=True)
    assert done.stdout.decode().strip() == "[]"
