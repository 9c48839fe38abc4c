"""End-to-end basics: a message goes from one WebSocket to another through the server."""

from __future__ import annotations

from tests.helpers import Harness


async def test_message_reaches_other_member_and_is_acked_with_seq(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with h.ws(ada) as a, h.ws(bob) as b:
        sub = await b.request("subscribe", conversation_id=cid)
        assert sub["type"] == "subscribed" and sub["last_seq"] == 0
        assert sorted(sub["online"]) == sorted([ada.id, bob.id])
        ack = await a.send_message(cid, "hello")
        assert ack["type"] == "ack" and ack["duplicate"] is False
        assert ack["message"]["seq"] == 1 and ack["message"]["body"] == "hello"
        new = await b.next_event("new_message")
        assert new["message"] == ack["message"]
