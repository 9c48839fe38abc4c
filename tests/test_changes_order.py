"""`rev` order under load, against the real server: three clients pipeline sends, edits
and reactions into one group at once while two readers watch. Every connection sees
the conversation's frames (and a writer its own answers among them) in `rev` order,
the two readers see the same order, and `rev` is gapless."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import trio

from tests.helpers import WS, Harness

SETUP = 5  # messages each writer sends (and waits for) before the burst
BURST = 40  # rounds per writer of: one send, one edit, one reaction


async def test_concurrent_pipelined_changes_keep_one_gapless_rev_order(h: Harness) -> None:
    writers = [await h.account(f"writer{i}") for i in range(3)]
    readers = [await h.account(f"reader{i}") for i in range(2)]
    cid = await h.group(writers[0], *writers[1:], *readers)
    total = 3 * SETUP + 3 * BURST * 3
    seen: dict[str, list[tuple[str, int, int]]] = {}

    async def read(name: str, ws: WS, expect: int) -> None:
        # Every frame with a message: fan-out for readers; answers and fan-out for writers.
        got = seen.setdefault(name, [])
        while len(got) < expect:
            frame = await ws.recv(timeout=20)
            if frame["type"] in ("new_message", "message_updated", "ack", "updated"):
                message = frame["message"]
                got.append((frame["type"], message["seq"], message["rev"]))

    async def write(index: int, ws: WS, own: list[int], done: trio.Event) -> None:
        rng = random.Random(index)
        reqs = itertools.count(1000)
        frames: list[dict[str, Any]] = []
        for k in range(BURST):
            frames.append(
                {
                    "type": "send_message",
                    "conversation_id": cid,
                    "client_id": f"w{index}-{k}",
                    "body": f"burst {index}.{k}",
                }
            )
            frames.append(
                {
                    "type": "edit_message",
                    "conversation_id": cid,
                    "seq": own[k % len(own)],
                    "body": f"edit {index}.{k}",
                }
            )
            frames.append(
                {
                    "type": "react",
                    "conversation_id": cid,
                    "seq": rng.randint(1, 3 * SETUP),
                    "emoji": f"w{index}k{k}",
                    "on": True,
                }
            )
        for frame in frames:
            await ws.send(orjson.dumps({**frame, "req": next(reqs)}).decode())
        await done.wait()

    async with (
        h.ws(writers[0]) as w0,
        h.ws(writers[1]) as w1,
        h.ws(writers[2]) as w2,
        h.ws(readers[0]) as r0,
        h.ws(readers[1]) as r1,
    ):
        sockets = [w0, w1, w2]
        for ws in [*sockets, r0, r1]:
            assert (await ws.request("subscribe", conversation_id=cid))["type"] == "subscribed"
        own: list[list[int]] = [[], [], []]
        for i in range(SETUP):
            for index, ws in enumerate(sockets):
                ack = await ws.send_message(cid, f"setup {index}.{i}")
                own[index].append(ack["message"]["seq"])
        # The setup's frames already arrived at the writers (as events) and readers.
        for index, ws in enumerate(sockets):
            first = [
                (f["type"], f["message"]["seq"], f["message"]["rev"])
                for f in ws.events
                if f["type"] == "new_message"
            ]
            ws.events.clear()
            seen[f"w{index}"] = first
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            nursery.start_soon(read, "r0", r0, total)
            nursery.start_soon(read, "r1", r1, total)
            for index, ws in enumerate(sockets):
                nursery.start_soon(write, index, ws, own[index], done)
            async with trio.open_nursery() as readers_of_writers:
                for index, ws in enumerate(sockets):
                    # A writer gets its own setup acks through `request` (not counted
                    # here), so it expects every frame but those.
                    readers_of_writers.start_soon(read, f"w{index}", ws, total - SETUP)
            done.set()

    revs = [rev for _type, _seq, rev in seen["r0"]]
    assert revs == list(range(1, total + 1)), "rev is gapless and in order for a reader"
    assert seen["r0"] == seen["r1"], "both readers see the same order"
    for index in range(3):
        writer_revs = [rev for _type, _seq, rev in seen[f"w{index}"]]
        setup_own = set(own[index])
        # A writer sees every change but its own setup sends (answered by `request`).
        assert writer_revs == [r for r in range(1, total + 1) if r not in setup_own]
    # The stored state agrees with the last frame of each message.
    r = await h.http.get(
        f"/v1/conversations/{cid}/changes?after_rev=0&limit=200", headers=h.auth(readers[0])
    )
    page = r.json()
    assert page["last_rev"] == total and not page["has_more"]
    latest = {seq: rev for _type, seq, rev in seen["r0"]}
    assert {m["seq"]: m["rev"] for m in page["messages"]} == latest
    assert [m["rev"] for m in page["messages"]] == sorted(latest.values())
