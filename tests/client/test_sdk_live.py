"""The SDK against the real server: optimistic sends, statuses, read state, two devices.

Rules: a real server on 127.0.0.1:0 per test (the `h` fixture, with its absolute
deadline), real store files under tmp_path, no sleeps: every wait is for an
SDK event or a server frame.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from messageai.client import ServerError
from messageai.client.accounts import current_path
from messageai.client.errors import Forbidden
from messageai.client.events import ConversationsChanged, MessageAdded, MessageUpdated
from messageai.client.store import open_store, set_active
from messageai.sqlite import transaction
from tests.client.support import FAST, bodies, leave_channels, live, mine, sign_in, until
from tests.helpers import Harness

# Bug 1's waits: far below the poll interval of the clients (FAST: an hour), so only
# the server's `conversation_added` frame can meet them.
LIVE_SECONDS = 10
assert FAST.refresh_seconds > 100 * LIVE_SECONDS


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
    await leave_channels(h, ada)  # no `general`: this test counts
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


async def test_a_new_direct_conversation_and_its_first_message_reach_the_other_client_live(
    h: Harness, tmp_path: Path
) -> None:
    await h.account("ada"), await h.account("bob")
    ada = await sign_in(h.url, "ada", tmp_path / "ada")
    bob = await sign_in(h.url, "bob", tmp_path / "bob")
    async with ada, bob, live(ada, bob), bob.events() as events:
        with trio.fail_after(LIVE_SECONDS):
            cid = await ada.create_direct("bob")
            first = await ada.send(cid, "hello bob")  # before bob can have subscribed
            async for event in events:
                if isinstance(event, ConversationsChanged) and cid in event.conversation_ids:
                    break
            assert sorted(bob.member_ids(cid)) == sorted([ada.me, bob.me])
            await until(bob, lambda: bodies(bob, cid) == ["hello bob"], LIVE_SECONDS)
            # ... and bob is subscribed: the next one arrives live.
            await until(ada, lambda: mine(ada, cid, first.client_id).status == "sent")
            await ada.send(cid, "still there?")
            await until(bob, lambda: bodies(bob, cid) == ["hello bob", "still there?"])
        assert bob.user_name(ada.me) == "ada"


async def test_removed_from_a_group_it_is_inactive_and_mark_read_and_send_are_forbidden(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    cid = await h.group(ada, bob, cat)
    client = await sign_in(h.url, "bob", tmp_path / "bob")
    async with client, live(client), h.ws(ada) as a:
        await a.send_message(cid, "bye, bob")
        await until(client, lambda: bodies(client, cid) == ["bye, bob"])
        r = await h.http.delete(f"/v1/conversations/{cid}/members/{bob.id}", headers=h.auth(ada))
        assert r.status_code == 204
        # The server's `unsubscribed` (reason `removed`) sets the local flag.
        await until(client, lambda: not client.conversations()[0].active)
        conv = client.conversation(cid)
        assert conv is not None and not conv.active
        with pytest.raises(Forbidden):
            await client.mark_read(cid)
        with pytest.raises(Forbidden):
            await client.send(cid, "let me back in")
        assert client.outbox_size() == 0 and bodies(client, cid) == ["bye, bob"]
        # A store that has not heard of the removal yet: the server's `forbidden`
        # answer is the same clear error, and sets the flag.
        other = open_store(current_path(tmp_path / "bob"))  # as another process would
        with transaction(other):
            set_active(other, cid, True)
        other.close()
        async with client.events() as events:
            with pytest.raises(Forbidden) as raised:
                await client.mark_read(cid)
            assert isinstance(raised.value, ServerError) and raised.value.code == "forbidden"
            assert not client.conversations()[0].active
            with trio.fail_after(LIVE_SECONDS):
                async for event in events:
                    if isinstance(event, ConversationsChanged) and event.left:
                        break
        # Typing into it sends nothing (and raises nothing).
        await client.set_typing(cid, True)
        await client.set_typing(cid, False)


async def test_re_added_to_a_group_it_is_active_again_and_live(h: Harness, tmp_path: Path) -> None:
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    cid = await h.group(ada, bob, cat)
    client = await sign_in(h.url, "bob", tmp_path / "bob")
    async with client, live(client), h.ws(ada) as a:
        r = await h.http.delete(f"/v1/conversations/{cid}/members/{bob.id}", headers=h.auth(ada))
        assert r.status_code == 204
        await until(client, lambda: not client.conversations()[0].active)
        r = await h.http.post(
            f"/v1/conversations/{cid}/members", json={"user_ids": [bob.id]}, headers=h.auth(ada)
        )
        assert r.status_code == 200
        await until(client, lambda: client.conversations()[0].active, LIVE_SECONDS)
        await a.send_message(cid, "welcome back")
        await until(client, lambda: bodies(client, cid) == ["welcome back"], LIVE_SECONDS)


async def test_replying_marks_what_i_replied_to_read_here_and_on_the_server(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        await b.send_message(cid, "one")
        await b.send_message(cid, "two")
        await until(client, lambda: client.conversations()[0].unread_count == 2)
        reply = await client.send(cid, "a reply")
        # At once, locally: what I replied to is read, and my own message never counts.
        assert client.conversations()[0].unread_count == 0
        read = await b.next_event("message_read")
        assert (read["user_id"], read["seq"]) == (ada.id, 2)
        new = await b.next_event("new_message")
        assert new["message"]["client_id"] == reply.client_id
        await until(client, lambda: mine(client, cid, reply.client_id).status == "sent")
        assert client.conversations()[0].unread_count == 0
    r = await h.http.get("/v1/conversations", headers=h.auth(ada))
    assert r.json()["conversations"][0]["unread_count"] == 0


async def test_a_reply_written_offline_moves_the_read_cursor_when_it_is_delivered(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, h.ws(bob) as b:
        await b.send_message(cid, "are you there?")
        await client.sync()
        assert client.conversations()[0].unread_count == 1
        await client.send(cid, "yes, now I am")  # offline: queued with the read mark
        assert client.conversations()[0].unread_count == 0
        report = await client.sync()
        assert [m.body for m in report.delivered] == ["yes, now I am"]
    r = await h.http.get("/v1/conversations", headers=h.auth(ada))
    assert r.json()["conversations"][0]["unread_count"] == 0
