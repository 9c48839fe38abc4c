"""The SDK and protocol v1.1: edits, deletes and reactions, optimistic and queued in the
one outbox with sends, in order; catch-up with `get_changes`; refusals rolled back.

Rules: the real server on 127.0.0.1:0 (`h`), real stores under tmp_path, a loopback
proxy (tests/client/netproxy.py) for lost answers; "offline" is a client that is not
running (or a cut proxy); waits are on SDK events, under the `h` fixture's deadline.
A second device is a second SDK on another store.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from messageai.client import Client, ClientError
from messageai.client.events import ChangeRefused, MessageRemoved, MessageUpdated
from messageai.client.store import LocalMessage
from tests.client.netproxy import Proxy
from tests.client.support import FAST, live, mine, sign_in, until
from tests.helpers import Account, Harness


async def server_messages(h: Harness, who: Account, cid: str) -> list[dict[str, Any]]:
    r = await h.http.get(
        f"/v1/conversations/{cid}/messages", params={"after_seq": 0}, headers=h.auth(who)
    )
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages


def state(m: LocalMessage) -> tuple[Any, ...]:
    """What a user sees of a message, for comparing two devices."""
    return (m.seq, m.body, m.edited_at is not None, m.deleted, m.reactions, m.reply_to)


def server_state(m: dict[str, Any]) -> tuple[Any, ...]:
    return (
        m["seq"], m["body"], m["edited_at"] is not None, m["deleted_at"] is not None,
        m["reactions"], m["reply_to"],
    )  # fmt: skip


@contextlib.asynccontextmanager
async def proxied(h: Harness) -> AsyncIterator[Proxy]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(h.server.port or 0).run)
        yield proxy
        nursery.cancel_scope.cancel()


async def test_changes_of_a_queued_message_travel_after_it_and_survive_a_restart(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with await sign_in(h.url, "ada", tmp_path / "ada") as client:
        await client.sync()
        # Offline (not running): a send, its edit and a reaction, and a second send that
        # is deleted before it ever left.
        first = await client.send(cid, "helo")
        await client.edit(first, "hello")
        await client.react(first, "👍")
        second = await client.send(cid, "oops")
        assert await client.delete(second) is None  # never sent: gone, nothing queued
        assert client.message(cid, second.client_id) is None
        shown = client.messages(cid)
        assert [(m.body, m.pending, m.reactions) for m in shown] == [
            ("hello", True, {"👍": [ada.id]})
        ]
        assert client.outbox_size() == 3  # send, edit, react
    # The client restarts: the queue and what it shows are kept.
    async with Client.open(tmp_path / "ada", settings=FAST) as client:
        assert [m.body for m in client.messages(cid)] == ["hello"]
        assert client.outbox_size() == 3
        async with live(client):
            await until(client, lambda: client.outbox_size() == 0)
        local = mine(client, cid, first.client_id)
        assert (local.seq, local.body, local.pending, local.status) == (1, "hello", False, "sent")
        assert local.reactions == {"👍": [ada.id]} and local.edited_at is not None
        assert local.rev == 3  # created, edited, reacted: in that order
    stored = await server_messages(h, bob, cid)
    assert [server_state(m) for m in stored] == [(1, "hello", True, False, {"👍": [ada.id]}, None)]
    # Bob's device is in step after one sync.
    async with await sign_in(h.url, "bob", tmp_path / "bob") as other:
        await other.sync()
        assert [state(m) for m in other.messages(cid)] == [state(local)]


async def test_offline_edit_delete_react_of_sent_messages_reach_the_other_device_live(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    other = await sign_in(h.url, "bob", tmp_path / "bob")
    async with other:
        async with live(client):
            sent = [await client.send(cid, f"message {i}") for i in (1, 2, 3)]
            await until(client, lambda: client.outbox_size() == 0)
        sent = [mine(client, cid, m.client_id) for m in sent]
        async with live(other):
            await until(other, lambda: len(other.messages(cid)) == 3)
            # Ada is offline (not running) and changes all three.
            await client.edit(sent[0], "message one, fixed")
            await client.delete(sent[1])
            await client.react(sent[2], "🎉")
            await client.react(sent[2], ":+1:")
            await client.react(sent[2], "🎉", on=False)
            assert [m.pending for m in client.messages(cid)] == [True, True, True]
            assert client.outbox_size() == 5
            # Ada's client restarts before it reconnects: the changes are kept.
            await client.aclose()
            client = Client.open(tmp_path / "ada", settings=FAST)
            assert [m.pending for m in client.messages(cid)] == [True, True, True]
            async with live(client):
                await until(client, lambda: client.outbox_size() == 0)
                await until(
                    other,
                    lambda: (
                        [state(m) for m in other.messages(cid)]
                        == [state(m) for m in client.messages(cid)]
                    ),
                )
        shown = client.messages(cid)
        await client.aclose()
        assert [(m.body, m.deleted, m.reactions) for m in shown] == [
            ("message one, fixed", False, {}),
            ("", True, {}),
            ("message 3", False, {":+1:": [ada.id]}),
        ]
        assert not any(m.pending for m in shown)
    stored = await server_messages(h, bob, cid)
    assert [server_state(m) for m in stored] == [state(m) for m in shown]


async def test_a_deleted_queued_message_is_never_sent(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with await sign_in(h.url, "ada", tmp_path / "ada") as client:
        await client.sync()
        kept = await client.send(cid, "kept")
        gone = await client.send(cid, "never to be seen")
        edited = await client.send(cid, "typo")
        await client.edit(edited, "no typo")
        removed: list[MessageRemoved] = []
        async with client.events() as events:
            assert await client.delete(gone) is None
            assert await client.delete(edited) is None  # its queued edit goes with it
            while len(removed) < 2:
                event = await events.receive()
                if isinstance(event, MessageRemoved):
                    removed.append(event)
        assert {e.local_id for e in removed} == {gone.local_id, edited.local_id}
        assert client.outbox_size() == 1
        report = await client.sync()
        assert [m.client_id for m in report.delivered] == [kept.client_id]
    assert [m["body"] for m in await server_messages(h, bob, cid)] == ["kept"]


async def test_a_delete_of_a_send_that_may_have_arrived_travels_after_it(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with proxied(h) as proxy:
        client = await sign_in(proxy.url, "ada", tmp_path / "ada")
        async with client, live(client):
            proxy.blackhole()  # the server gets the send; its ack is lost
            sent = await client.send(cid, "sent, but did it arrive?")
            with trio.fail_after(10):
                while not (await server_messages(h, bob, cid)):
                    await trio.sleep(0.05)  # polling the server, not timing the client
            proxy.cut()
            await until(client, lambda: client.state == "offline")
            # The server may have it: deleting it queues a delete after the resend.
            shown = await client.delete(client.message(cid, sent.client_id) or sent)
            assert shown is not None and shown.deleted and shown.pending
            assert client.outbox_size() == 2
            proxy.restore()
            client.reconnect_now()
            await until(client, lambda: client.outbox_size() == 0)
            local = mine(client, cid, sent.client_id)
            assert (local.seq, local.deleted, local.pending) == (1, True, False)
    stored = await server_messages(h, bob, cid)
    assert [(m["seq"], m["body"], m["deleted_at"] is not None) for m in stored] == [(1, "", True)]


async def test_refused_changes_are_rolled_back_and_say_why(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with h.ws(bob) as b:
        theirs = (await b.send_message(cid, "bob's words"))["message"]
        gone = (await b.send_message(cid, "soon deleted"))["message"]
        client = await sign_in(h.url, "ada", tmp_path / "ada")
        async with client:
            await client.sync()
            target = client.message_by_seq(cid, theirs["seq"])
            assert target is not None
            # Refused before anything is queued: only the sender edits.
            try:
                await client.edit(target, "ada's words")
            except ClientError as exc:
                assert "only its sender" in exc.message
            else:
                raise AssertionError("editing someone else's message was queued")
            # Queued, shown at once, refused by the server: not a group's creator.
            shown = await client.delete(target)
            assert shown is not None and shown.deleted and shown.pending
            doomed = client.message_by_seq(cid, gone["seq"])
            assert doomed is not None
            shown = await client.react(doomed, "👀")
            assert shown.reactions == {"👀": [ada.id]}
            # Meanwhile bob deletes his message: the reaction will be a `conflict`.
            await b.request("delete_message", conversation_id=cid, seq=gone["seq"])
            refusals: list[ChangeRefused] = []
            async with client.events() as events:
                report = await client.sync()
                while len(refusals) < 2:
                    event = await events.receive()
                    if isinstance(event, ChangeRefused):
                        refusals.append(event)
            assert [(r.action, r.error.split(":")[0]) for r in refusals] == [
                ("delete", "forbidden"),
                ("react", "conflict"),
            ]
            assert [r.action for r in report.refused] == ["delete", "react"]
            assert client.outbox_size() == 0
            back = client.message_by_seq(cid, theirs["seq"])
            assert back is not None and (back.body, back.deleted, back.pending) == (
                "bob's words",
                False,
                False,
            )
            tomb = client.message_by_seq(cid, gone["seq"])
            assert tomb is not None and (tomb.deleted, tomb.reactions, tomb.pending) == (
                True,
                {},
                False,
            )
            assert refusals[0].message.body == "bob's words"


async def test_catch_up_brings_changes_made_while_away_with_get_changes(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with await sign_in(h.url, "ada", tmp_path / "ada") as client, h.ws(bob) as b:
        for i in range(1, 4):
            await b.send_message(cid, f"b{i}")
        await client.sync()
        assert client.messages(cid)[0].rev == 1
        # Ada is away: bob edits an old message, deletes one, a reaction, a reply.
        await b.request("edit_message", conversation_id=cid, seq=1, body="b1 again")
        await b.request("delete_message", conversation_id=cid, seq=2)
        await b.request("react", conversation_id=cid, seq=3, emoji="🔥", on=True)
        await b.request(
            "send_message", conversation_id=cid, client_id="r", body="re", reply_to=3,
            mentions=[ada.id],
        )  # fmt: skip
        report = await client.sync()
        assert report.fetched == 1  # one new message; the rest are changes
        shown = client.messages(cid)
        assert [state(m) for m in shown] == [
            server_state(m) for m in await server_messages(h, ada, cid)
        ]
        assert shown[3].mentions == [ada.id] and shown[3].reply_to == 3
        convs = (await h.http.get("/v1/conversations", headers=h.auth(ada))).json()
        assert client.last_rev(cid) == convs["conversations"][0]["last_rev"] == 7


async def test_live_changes_are_applied_and_announced(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        seq = (await b.send_message(cid, "first draft"))["message"]["seq"]
        await until(client, lambda: bool(client.messages(cid)))
        async with client.events() as events:
            await b.request("edit_message", conversation_id=cid, seq=seq, body="final")
            while True:
                event = await events.receive()
                if isinstance(event, MessageUpdated) and event.message.body == "final":
                    break
        assert client.messages(cid)[0].edited_at is not None
        # My own change while online goes through the same outbox and is confirmed.
        target = client.message_by_seq(cid, seq)
        assert target is not None
        await client.react(target, "✅")
        await until(client, lambda: client.outbox_size() == 0)
        assert client.messages(cid)[0].reactions == {"✅": [ada.id]}
        assert not client.messages(cid)[0].pending
        # Un-reacting, with a reaction of bob's arriving meanwhile: both end up right.
        await client.react(client.messages(cid)[0], "✅", on=False)
        await b.request("react", conversation_id=cid, seq=seq, emoji="✅", on=True)
        await until(
            client,
            lambda: (
                client.outbox_size() == 0 and client.messages(cid)[0].reactions == {"✅": [bob.id]}
            ),
        )


async def test_an_edit_while_its_send_is_in_flight_is_sent_after_the_ack(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with proxied(h) as proxy:
        client = await sign_in(proxy.url, "ada", tmp_path / "ada")
        async with client, live(client):
            proxy.hold()  # answers wait: the send is in flight, no seq yet
            sent = await client.send(cid, "draft")
            await client.edit(sent, "second draft")
            await client.edit(sent, "third draft")
            assert client.message(cid, sent.client_id) is not None
            assert mine(client, cid, sent.client_id).body == "third draft"
            proxy.release()
            await until(client, lambda: client.outbox_size() == 0)
            local = mine(client, cid, sent.client_id)
            assert (local.body, local.rev, local.pending) == ("third draft", 3, False)
    stored = await server_messages(h, bob, cid)
    assert [(m["body"], m["rev"]) for m in stored] == [("third draft", 3)]
    r = await h.http.get(f"/v1/conversations/{cid}/messages/1/edits", headers=h.auth(bob))
    assert [e["body"] for e in r.json()["edits"]] == ["draft", "second draft"]


async def test_replies_and_mentions_are_sent_with_the_message(h: Harness, tmp_path: Path) -> None:
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    group = await h.group(ada, bob, cat)
    outsider = await h.account("dan")
    async with await sign_in(h.url, "ada", tmp_path / "ada") as client:
        await client.sync()
        await client.find_users("dan")  # known to the store, but not a member
        first = await client.send(group, "plans?")
        await client.sync()
        seq = mine(client, group, first.client_id).seq
        assert seq is not None
        body = "@bob and @cat: friday? (not @dan, not @nobody)"
        mentions = client.mentions_in(group, body)
        assert mentions == [bob.id, cat.id]
        await client.send(group, body, reply_to=seq, mentions=mentions)
        try:
            await client.send(group, "x", reply_to=99)
        except ClientError as exc:
            assert "no message #99" in exc.message
        else:
            raise AssertionError("a reply to an unknown message was queued")
        await client.sync()
    stored = await server_messages(h, bob, group)
    assert [(m["reply_to"], m["mentions"]) for m in stored] == [
        (None, []),
        (seq, [bob.id, cat.id]),
    ]
    assert outsider.id not in stored[1]["mentions"]


async def test_a_refused_send_takes_its_queued_changes_with_it(h: Harness, tmp_path: Path) -> None:
    ada, bob, dan = await h.account("ada"), await h.account("bob"), await h.account("dan")
    cid = await h.direct(ada, bob)
    async with await sign_in(h.url, "ada", tmp_path / "ada") as client:
        await client.sync()
        # Dan is not a member: the server refuses the send (bad_request).
        doomed = await client.send(cid, "hi @dan", mentions=[dan.id])
        await client.edit(doomed, "hi @dan!")
        await client.react(doomed, "👋")
        fine = await client.send(cid, "this one goes")
        report = await client.sync()
        assert [m.client_id for m in report.failed] == [doomed.client_id]
        assert [r.action for r in report.refused] == ["edit", "react"]
        assert all("not delivered" in r.error for r in report.refused)
        assert [m.client_id for m in report.delivered] == [fine.client_id]
        assert client.outbox_size() == 0
        failed = mine(client, cid, doomed.client_id)
        assert (failed.status, failed.body, failed.reactions) == ("failed", "hi @dan", {})
