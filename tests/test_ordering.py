"""Total order per conversation: pipelined bursts from several senders give every
reader the same gapless `seq` order, acks included."""

from __future__ import annotations

import trio

from tests.helpers import WS, Account, Harness

SENDERS = 3
PER_SENDER = 150


async def _burst(ws: WS, cid: str, tag: str) -> None:
    for i in range(PER_SENDER):
        await ws.send(
            {
                "type": "send_message",
                "conversation_id": cid,
                "client_id": f"{tag}-{i}",
                "body": f"{tag} {i}",
                "req": f"{tag}-{i}",
            }
        )


async def _collect(ws: WS, expected: int, seen: list[tuple[int, str]]) -> None:
    while len(seen) < expected:
        frame = await ws.recv(10)
        if frame["type"] == "ack" or frame["type"] == "new_message":
            seen.append((frame["message"]["seq"], frame["message"]["id"]))


async def test_pipelined_bursts_from_several_senders_give_one_gapless_order(h: Harness) -> None:
    accounts = [await h.account(f"sender{i}") for i in range(SENDERS)]
    reader = await h.account("reader")
    cid = await h.group(accounts[0], *accounts[1:], reader)
    total = SENDERS * PER_SENDER
    async with h.ws(reader) as r1, h.ws(reader) as r2:
        await r1.request("subscribe", conversation_id=cid)
        await r2.request("subscribe", conversation_id=cid)
        conns: list[WS] = []
        seen: dict[int, list[tuple[int, str]]] = {}
        async with trio.open_nursery() as connections:
            for account in accounts:
                ws = await connections.start(_open, h, account)
                await ws.request("subscribe", conversation_id=cid)
                conns.append(ws)
            async with trio.open_nursery() as nursery:
                for i, ws in enumerate([*conns, r1, r2]):
                    seen[i] = []
                    nursery.start_soon(_collect, ws, total, seen[i])
                for i, ws in enumerate(conns):
                    nursery.start_soon(_burst, ws, cid, f"s{i}")
            connections.cancel_scope.cancel()
        orders = list(seen.values())
        # Each connection saw every message once, in seq order, with no gap...
        for order in orders:
            assert [seq for seq, _ in order] == list(range(1, total + 1))
        # ...and every connection agrees on which message has which seq.
        assert all(order == orders[0] for order in orders)
        page = await r1.request("get_history", conversation_id=cid, after_seq=0, limit=200)
        assert [(m["seq"], m["id"]) for m in page["messages"]] == orders[0][:200]


async def _open(h: Harness, account: Account, *, task_status: trio.TaskStatus[WS]) -> None:
    async with h.ws(account) as ws:
        task_status.started(ws)
        await trio.sleep_forever()
