"""Flow control: a connection that stops reading is closed with 1013 and loses nothing
it cannot get back; everyone else keeps their pace."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio_websocket

from tests.helpers import harness, make_config

MESSAGES = 600
BODY = "z" * 15000  # large frames fill the socket buffers quickly


async def test_reader_that_stops_reading_is_closed_with_1013_and_resyncs(tmp_path: Path) -> None:
    # A small queue, and batches small enough that a healthy reader never overflows it.
    config = make_config(
        tmp_path / "data", limits={"outbound_queue_frames": 64}, conversations={"max_batch": 16}
    )
    with trio.fail_after(60):
        async with harness(config) as h:
            ada, bob, carol = (
                await h.account("ada"),
                await h.account("bob"),
                await h.account("carol"),
            )
            cid = await h.group(ada, bob, carol)
            async with h.ws(ada) as sender, h.ws(bob) as slow, h.ws(carol) as fast:
                await slow.request("subscribe", conversation_id=cid)
                await fast.request("subscribe", conversation_id=cid)
                fast_seqs: list[int] = []

                async def read_fast() -> None:
                    while len(fast_seqs) < MESSAGES:
                        frame = await fast.recv(20)
                        if frame["type"] == "new_message":
                            fast_seqs.append(frame["message"]["seq"])

                # The sender keeps a window of messages in flight, as real clients do.
                window = trio.Semaphore(16)

                async def send_all() -> None:
                    for i in range(MESSAGES):
                        await window.acquire()
                        await sender.send(
                            {
                                "type": "send_message",
                                "conversation_id": cid,
                                "client_id": f"m{i}",
                                "body": BODY,
                                "req": i,
                            }
                        )

                async def read_acks() -> None:
                    acks = 0
                    while acks < MESSAGES:
                        if (await sender.recv(20))["type"] == "ack":
                            acks += 1
                            window.release()

                # `slow` reads nothing while the burst goes by.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_fast)
                    nursery.start_soon(send_all)
                    nursery.start_soon(read_acks)
                # The fast reader got everything, in order.
                assert fast_seqs == list(range(1, MESSAGES + 1))
                # The slow one now reads what reached it: a gapless prefix, then 1013.
                slow_seqs: list[int] = []
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    while True:
                        frame = await slow.recv(10)
                        if frame["type"] == "new_message":
                            slow_seqs.append(frame["message"]["seq"])
                reason = closed.value.reason
                assert reason is not None
                assert reason.code == 1013
                assert slow_seqs == list(range(1, len(slow_seqs) + 1))
                assert len(slow_seqs) < MESSAGES
            # It comes back and resyncs from its last seq with nothing lost.
            async with h.ws(bob) as again:
                page = await again.request(
                    "get_history",
                    conversation_id=cid,
                    after_seq=slow_seqs[-1] if slow_seqs else 0,
                    limit=50,
                )
                assert page["messages"][0]["seq"] == (slow_seqs[-1] if slow_seqs else 0) + 1


async def test_outbound_queue_budget_counts_utf8_bytes_not_characters(tmp_path: Path) -> None:
    # One `history` frame of 20 bodies of 5,000 characters: about 104,000 characters
    # either way, but 104 kB of ASCII or 304 kB of "€" (3 bytes each). The budget is
    # 200,000 bytes: the ASCII page fits, the "€" page alone overflows it (1013).
    config = make_config(tmp_path / "data", limits={"outbound_queue_bytes": 200_000})
    with trio.fail_after(60):
        async with harness(config) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            ascii_cid, euro_cid = await h.direct(ada, bob), await h.group(ada, bob)
            async with h.ws(ada) as a:
                for _ in range(20):
                    assert (await a.send_message(ascii_cid, "z" * 5000))["type"] == "ack"
                    assert (await a.send_message(euro_cid, "€" * 5000))["type"] == "ack"
            async with h.ws(bob) as b:
                page = await b.request("get_history", conversation_id=ascii_cid, limit=20)
                assert len(page["messages"]) == 20
                await b.send(
                    {"type": "get_history", "conversation_id": euro_cid, "limit": 20, "req": 1}
                )
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    while True:
                        frame = await b.recv(10)
                        assert frame["type"] != "history", "304 kB went into a 200 kB budget"
                reason = closed.value.reason
                assert reason is not None
                assert reason.code == 1013
