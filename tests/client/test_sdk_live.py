"""The SDK against the real server: optimistic sends, statuses, read state, two devices.

Rules: a real server on 127.0.0.1:0 per test (the `h` fixture, with its absolute
deadline), real store files under tmp_path, no sleeps: every wait is for an
SDK event or a server frame.
"""

from __future__ import annotations

from pathlib import Path

from messageai.client.events import MessageAdded, MessageUpdated
from tests.client.support import bodies, live, mine, sign_in, until
from tests.helpers import Harness


async def test_send_goes_sending_then_sent_then_read_in_a_direct_conversation(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        async with client.events() as events:
            sent = await client.send(cid, "hello bob")
            # Step 2: stored as `sending` before any I/O, with a client id and no server identity.
            assert sent.status == "sending" and sent.seq is None and sent.id is None
            assert client.message(cid, sent.client_id) == sent
            seen = []
            async for event in events:
                if isinstance(event, (MessageAdded, MessageUpdated)):
                    seen.append((type(event).__name__, event.message.status))
                    if event.message.status == "sent":
                        break
            new = await b.next_event("new_message")
            assert new["message"]["client_id"] == sent.client_id
            assert await b.request("mark_read", conversation_id=cid, seq=new["message"]["seq"]) == {
                "type": "ok",
                "req": 2,
            }
            async for event in events:
                if isinstance(event, MessageUpdated):
                    seen.append((type(event).__name__, event.message.status))
                    if event.message.status == "read":
                        break
        assert seen == [
            ("MessageAdded", "sending"),
            ("MessageUpdated", "sent"),
            ("MessageUpdated", "read"),
        ]
        final = client.message(cid, sent.client_id)
        assert final is not None
        assert (final.status, final.seq, final.id) == ("read", 1, new["message"]["id"])
        assert client.read_by(final) == [bob.id]


async def test_group_keeps_read_state_per_member(h: Harness, tmp_path: Path) -> None:
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    cid = await h.group(ada, bob, cat)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b, h.ws(cat) as c:
        message = await client.send(cid, "team, hi")
        await until(client, lambda: mine(client, cid, message.client_id).status == "sent")
        await b.request("mark_read", conversation_id=cid, seq=1)

        def read_by_now() -> list[str]:
            current = client.message(cid, message.client_id)
            return client.read_by(current) if current is not None else []

        await until(client, lambda: read_by_now() == [bob.id])
        # Read by 1 of 2: not yet `read`.
        assert mine(client, cid, message.client_id).status == "sent"
        await c.request("mark_read", conversation_id=cid, seq=1)
        await until(client, lambda: mine(client, cid, message.client_id).status == "read")
        assert client.read_by(mine(client, cid, message.client_id)) == sorted([bob.id, cat.id])


async def test_two_devices_of_one_user_stay_in_step(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    phone = await sign_in(h.url, "ada", tmp_path / "phone")
    laptop = await sign_in(h.url, "ada", tmp_path / "laptop")
    async with phone, laptop, live(phone, laptop), h.ws(bob) as b:
        mine = await phone.send(cid, "from my phone")
        await until(laptop, lambda: bodies(laptop, cid) == ["from my phone"])
        on_laptop = laptop.messages(cid)[0]
        assert (on_laptop.client_id, on_laptop.sender_id, on_laptop.status) == (
            mine.client_id,
            ada.id,
            "sent",
        )
        await b.send_message(cid, "from bob")
        await until(phone, lambda: bodies(phone, cid) == ["from my phone", "from bob"])
        await until(laptop, lambda: bodies(laptop, cid) == ["from my phone", "from bob"])
        assert [c.unread_count for c in laptop.conversations()] == [1]
        await phone.mark_read(cid)
        # The laptop hears about the phone's read cursor and its unread count follows.
        await until(laptop, lambda: laptop.conversations()[0].unread_count == 0)
        assert phone.conversations()[0].unread_count == 0
