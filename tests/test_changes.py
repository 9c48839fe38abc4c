"""PROTOCOL.md v1.1 "Messages change" over WebSocket, against the real server: edits,
deletes, reactions, replies, mentions, `get_changes`, `rev`, `message_updated`, the
order of checks and every refusal. (REST: test_changes_rest.py; kill -9 and erasure:
test_changes_durability.py.)"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import WS, Account, Harness, harness, make_config


async def _group(h: Harness) -> tuple[Account, Account, Account, str]:
    ada, bob, cyd = await h.account("ada"), await h.account("bob"), await h.account("cyd")
    return ada, bob, cyd, await h.group(ada, bob, cyd)


async def _send(ws: WS, cid: str, body: str) -> dict[str, Any]:
    ack = await ws.send_message(cid, body)
    assert ack["type"] == "ack", ack
    message: dict[str, Any] = ack["message"]
    return message


def _error(frame: dict[str, Any], code: str) -> None:
    assert frame["type"] == "error" and frame["code"] == code, frame


# ---------------------------------------------------------------- edit


async def test_edit_answers_updated_and_the_others_get_message_updated(h: Harness) -> None:
    ada, bob, _cyd, cid = await _group(h)
    async with h.ws(ada) as a, h.ws(ada) as a2, h.ws(bob) as b:
        for ws in (a, a2, b):
            assert (await ws.request("subscribe", conversation_id=cid))["type"] == "subscribed"
        sent = await _send(a, cid, "helo")
        assert sent["rev"] == sent["seq"] == 1
        assert (sent["reply_to"], sent["mentions"], sent["reactions"]) == (None, [], {})
        await b.next_event("new_message")
        await a2.next_event("new_message")
        updated = await a.request("edit_message", conversation_id=cid, seq=1, body="  hello \n")
        assert updated["type"] == "updated", updated
        message = updated["message"]
        assert message["body"] == "hello"  # stored trimmed
        assert message["rev"] == 2 and message["seq"] == 1
        assert isinstance(message["edited_at"], int) and message["deleted_at"] is None
        # Every other subscriber, the editor's other device included, gets the change;
        # the editor's own connection gets only its answer.
        assert (await b.next_event("message_updated"))["message"] == message
        assert (await a2.next_event("message_updated"))["message"] == message
        assert not [f for f in a.events if f["type"] == "message_updated"]
        await a.assert_quiet()
        r = await h.http.get(f"/v1/conversations/{cid}/messages/1/edits", headers=h.auth(bob))
        assert r.status_code == 200
        assert r.json() == {"edits": [{"body": "helo", "edited_at": message["edited_at"]}]}
        r = await h.http.get(f"/v1/conversations/{cid}", headers=h.auth(bob))
        assert r.json()["last_rev"] == 2 and r.json()["last_message"] == message


async def test_edit_to_the_same_body_changes_nothing(h: Harness) -> None:
    ada, bob, _cyd, cid = await _group(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        sent = await _send(a, cid, "same")
        await b.next_event("new_message")
        again = await a.request("edit_message", conversation_id=cid, seq=1, body=" same  ")
        assert again["type"] == "updated" and again["message"] == sent
        await b.assert_quiet()
        nxt = await _send(a, cid, "next")
        assert nxt["rev"] == 2  # no rev was taken by the edit that changed nothing
    r = await h.http.get(f"/v1/conversations/{cid}/messages/1/edits", headers=h.auth(ada))
    assert r.json() == {"edits": []}


async def test_edit_refusals_in_protocol_order(h: Harness) -> None:
    ada, bob, _cyd, cid = await _group(h)
    eve = await h.account("eve")
    async with h.ws(ada) as a, h.ws(bob) as b, h.ws(eve) as e:
        await _send(a, cid, "ada's")
        await _send(a, cid, "to delete")
        assert (await a.request("delete_message", conversation_id=cid, seq=2))["type"] == "updated"

        async def edit(ws: WS, **fields: Any) -> dict[str, Any]:
            return await ws.request("edit_message", **{"conversation_id": cid, **fields})

        # Someone else's message.
        _error(await edit(b, seq=1, body="mine now"), "forbidden")
        # A tombstone: the sender gets conflict, anyone else forbidden (who before state).
        _error(await edit(a, seq=2, body="back"), "conflict")
        _error(await edit(b, seq=2, body="back"), "forbidden")
        # No such message.
        _error(await edit(a, seq=99, body="x"), "not_found")
        # Not a member; an unknown conversation.
        _error(await edit(e, seq=1, body="x"), "forbidden")
        _error(
            await a.request("edit_message", conversation_id="c_nope", seq=1, body="x"), "not_found"
        )
        # The fields come first: a blank or over-long body beats every other check.
        _error(await edit(a, seq=1, body="   "), "bad_request")
        _error(await edit(e, seq=99, body=""), "bad_request")
        _error(
            await a.request("edit_message", conversation_id="c_nope", seq=1, body=" "),
            "bad_request",
        )
        _error(await edit(a, seq=1, body="x" * 16001), "too_large")
        _error(await edit(b, seq=1, body="x" * 16001), "too_large")
        # Nothing of that changed anything.
        changes = await a.request("get_changes", conversation_id=cid, after_rev=0)
        assert changes["last_rev"] == 3
        assert [m["body"] for m in changes["messages"]] == ["ada's", ""]


# ---------------------------------------------------------------- delete


async def test_delete_makes_a_tombstone_that_keeps_seq_id_reply_to_and_edited_at(
    h: Harness,
) -> None:
    ada, bob, _cyd, cid = await _group(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        await _send(a, cid, "first")
        reply = await a.request(
            "send_message",
            conversation_id=cid,
            client_id="r",
            body="a reply",
            reply_to=1,
            mentions=[bob.id, bob.id, ada.id],
        )
        assert reply["message"]["reply_to"] == 1
        assert reply["message"]["mentions"] == [bob.id, ada.id]  # deduplicated, in order
        assert (await b.request("react", conversation_id=cid, seq=2, emoji="👍", on=True))[
            "type"
        ] == "updated"
        edited = await a.request("edit_message", conversation_id=cid, seq=2, body="the reply")
        deleted = await a.request("delete_message", conversation_id=cid, seq=2)
        assert deleted["type"] == "updated"
        tomb = deleted["message"]
        assert tomb["id"] == reply["message"]["id"] and tomb["seq"] == 2
        assert (tomb["body"], tomb["attachments"], tomb["mentions"], tomb["reactions"]) == (
            "",
            [],
            [],
            {},
        )
        assert isinstance(tomb["deleted_at"], int)
        assert tomb["reply_to"] == 1 and tomb["edited_at"] == edited["message"]["edited_at"]
        assert tomb["rev"] == 5
        b.events.clear()
        got = await b.next_event("message_updated")
        while got["message"]["rev"] != 5:
            got = await b.next_event("message_updated")
        assert got["message"] == tomb
        # Deleting it again returns it and changes nothing.
        again = await a.request("delete_message", conversation_id=cid, seq=2)
        assert again["message"] == tomb
        await b.assert_quiet()
        # A reply to the deleted message keeps its reply_to... and replying to a
        # tombstone is refused.
        _error(
            await a.request(
                "send_message", conversation_id=cid, client_id="x", body="re", reply_to=2
            ),
            "bad_request",
        )
    r = await h.http.get(f"/v1/conversations/{cid}/messages/2/edits", headers=h.auth(ada))
    assert r.json() == {"edits": []}
    r = await h.http.get(f"/v1/conversations/{cid}", headers=h.auth(bob))
    conversation = r.json()
    # last_message is the highest seq, tombstone or not; the tombstone is not unread.
    assert conversation["last_message"] == tomb
    assert conversation["unread_count"] == 1 and conversation["last_rev"] == 5


async def test_delete_by_sender_or_group_creator_only(h: Harness) -> None:
    ada, bob, cyd, cid = await _group(h)
    direct = await h.direct(bob, cyd)
    async with h.ws(ada) as a, h.ws(bob) as b, h.ws(cyd) as c:
        await _send(b, cid, "bob 1")
        await _send(b, cid, "bob 2")
        await _send(c, cid, "cyd 3")
        # A member who is neither the sender nor the creator.
        _error(await c.request("delete_message", conversation_id=cid, seq=1), "forbidden")
        # The group's creator may delete anyone's message; the sender their own.
        assert (await a.request("delete_message", conversation_id=cid, seq=1))["message"][
            "deleted_at"
        ]
        assert (await b.request("delete_message", conversation_id=cid, seq=2))["message"][
            "deleted_at"
        ]
        # A non-sender deleting a tombstone: forbidden (who comes before the state).
        _error(await c.request("delete_message", conversation_id=cid, seq=2), "forbidden")
        _error(await c.request("delete_message", conversation_id=cid, seq=9), "not_found")
        # In a direct conversation nobody but the sender may delete.
        await _send(b, direct, "direct")
        _error(await c.request("delete_message", conversation_id=direct, seq=1), "forbidden")
        # cyd's own message survived all of it.
        changes = await c.request("get_changes", conversation_id=cid, after_rev=0)
        assert [(m["seq"], m["body"]) for m in changes["messages"]] == [
            (3, "cyd 3"),
            (1, ""),
            (2, ""),
        ]


async def test_unread_count_leaves_out_others_tombstones(h: Harness) -> None:
    ada, bob, cyd, cid = await _group(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        for i in range(4):
            await _send(a, cid, f"a{i}")
        await _send(b, cid, "b")
        await a.request("delete_message", conversation_id=cid, seq=2)
        await b.request("delete_message", conversation_id=cid, seq=5)

    async def unread(who: Account) -> int:
        r = await h.http.get(f"/v1/conversations/{cid}", headers=h.auth(who))
        count: int = r.json()["unread_count"]
        return count

    assert await unread(cyd) == 3
    assert await unread(bob) == 3
    assert await unread(ada) == 0


# ---------------------------------------------------------------- react


async def test_reactions_are_idempotent_ordered_and_removed_keys_disappear(h: Harness) -> None:
    ada, bob, cyd, cid = await _group(h)
    async with h.ws(ada) as a, h.ws(bob) as b, h.ws(cyd) as c:
        await c.request("subscribe", conversation_id=cid)
        await _send(a, cid, "react to me")

        async def react(ws: WS, emoji: str, on: bool = True) -> dict[str, Any]:
            frame = await ws.request("react", conversation_id=cid, seq=1, emoji=emoji, on=on)
            assert frame["type"] == "updated", frame
            message: dict[str, Any] = frame["message"]
            return message

        m = await react(b, "👍")
        assert m["reactions"] == {"👍": [bob.id]} and m["rev"] == 2
        m = await react(a, ":+1:")
        m = await react(a, "👍")
        assert m["reactions"] == {"👍": [bob.id, ada.id], ":+1:": [ada.id]} and m["rev"] == 4
        # Adding twice, removing what one has not: nothing changes, no rev, no frame.
        assert await react(b, "👍") == m
        assert await react(c, "👍", on=False) == m
        frames = [await c.next_event("message_updated") for _ in range(3)]
        assert [f["message"]["rev"] for f in frames] == [2, 3, 4]
        assert not [f for f in c.events if f["type"] == "message_updated"]
        await c.assert_quiet()
        m = await react(b, "👍", on=False)
        assert m["reactions"] == {"👍": [ada.id], ":+1:": [ada.id]}
        m = await react(a, ":+1:", on=False)
        assert m["reactions"] == {"👍": [ada.id]} and m["rev"] == 6


@pytest.mark.parametrize(
    "emoji",
    [
        "",
        "x" * 33,
        "👍" * 8 + "x",  # 33 bytes
        " ",
        "a b",
        "👍\n",
        "\u00a0",  # no-break space is White_Space
        "\u3000",
        "\u2028",
        "\x00",
        "\x07",
        "\x7f",
    ],
)
async def test_bad_emoji_is_bad_request(h: Harness, emoji: str) -> None:
    ada, _bob, _cyd, cid = await _group(h)
    async with h.ws(ada) as a:
        await _send(a, cid, "m")
        _error(
            await a.request("react", conversation_id=cid, seq=1, emoji=emoji, on=True),
            "bad_request",
        )
        # The field rule comes before the conversation and the message.
        _error(
            await a.request("react", conversation_id="c_nope", seq=99, emoji=emoji, on=True),
            "bad_request",
        )


async def test_emoji_of_exactly_32_bytes_and_sequences_are_accepted(h: Harness) -> None:
    ada, _bob, _cyd, cid = await _group(h)
    async with h.ws(ada) as a:
        await _send(a, cid, "m")
        for emoji in ["👍" * 8, "x" * 32, "👨‍👩‍👧", "🇫🇷", ":+1:"]:
            frame = await a.request("react", conversation_id=cid, seq=1, emoji=emoji, on=True)
            assert frame["type"] == "updated" and emoji in frame["message"]["reactions"]


async def test_the_33rd_distinct_emoji_is_too_large_until_one_goes(h: Harness) -> None:
    ada, bob, _cyd, cid = await _group(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        await _send(a, cid, "m")
        for i in range(32):
            frame = await a.request("react", conversation_id=cid, seq=1, emoji=f"e{i}", on=True)
            assert frame["type"] == "updated", frame
        _error(
            await b.request("react", conversation_id=cid, seq=1, emoji="e32", on=True), "too_large"
        )
        # An emoji already there still takes more users.
        frame = await b.request("react", conversation_id=cid, seq=1, emoji="e0", on=True)
        assert frame["message"]["reactions"]["e0"] == [ada.id, bob.id]
        # When the last user of an emoji removes it, it stops counting.
        await a.request("react", conversation_id=cid, seq=1, emoji="e5", on=False)
        frame = await b.request("react", conversation_id=cid, seq=1, emoji="e32", on=True)
        assert frame["type"] == "updated" and len(frame["message"]["reactions"]) == 32


async def test_reacting_to_a_tombstone_is_conflict(h: Harness) -> None:
    ada, bob, _cyd, cid = await _group(h)
    eve = await h.account("eve")
    async with h.ws(ada) as a, h.ws(bob) as b, h.ws(eve) as e:
        await _send(a, cid, "m")
        await a.request("delete_message", conversation_id=cid, seq=1)
        _error(await b.request("react", conversation_id=cid, seq=1, emoji="x", on=True), "conflict")
        _error(
            await b.request("react", conversation_id=cid, seq=1, emoji="x", on=False), "conflict"
        )
        _error(
            await b.request("react", conversation_id=cid, seq=2, emoji="x", on=True), "not_found"
        )
        _error(
            await e.request("react", conversation_id=cid, seq=1, emoji="x", on=True), "forbidden"
        )


# ---------------------------------------------------------------- send: reply_to, mentions


async def test_reply_to_and_mentions_rules(h: Harness) -> None:
    ada, bob, _cyd, cid = await _group(h)
    eve = await h.account("eve")
    async with h.ws(ada) as a:
        await _send(a, cid, "one")

        async def send(**fields: Any) -> dict[str, Any]:
            return await a.request(
                "send_message", conversation_id=cid, client_id=uuid.uuid4().hex, body="b", **fields
            )

        _error(await send(reply_to=5), "bad_request")  # no such seq
        _error(await send(reply_to=0), "bad_request")
        _error(await send(mentions=[eve.id]), "bad_request")  # not a member
        _error(await send(mentions=[bob.id, "u_nobody"]), "bad_request")
        _error(await send(mentions=[f"u_{i}" for i in range(51)]), "bad_request")
        ok = await send(reply_to=None, mentions=[])
        assert ok["type"] == "ack" and ok["message"]["reply_to"] is None
        assert ok["message"]["mentions"] == []
        # 51 entries that are 50 distinct members after deduplication would be fine;
        # here: a repeated member counts once.
        ok = await send(reply_to=1, mentions=[bob.id] * 60)
        assert ok["type"] == "ack", ok
        assert ok["message"]["reply_to"] == 1 and ok["message"]["mentions"] == [bob.id]
        # Nothing refused took a seq or a rev.
        changes = await a.request("get_changes", conversation_id=cid, after_rev=0)
        assert [m["rev"] for m in changes["messages"]] == [1, 2, 3] and changes["last_rev"] == 3


WRONG_TYPES: list[tuple[str, dict[str, Any]]] = [
    ("edit_message", {"seq": "1", "body": "x"}),
    ("edit_message", {"seq": 1.0, "body": "x"}),
    ("edit_message", {"seq": True, "body": "x"}),
    ("edit_message", {"seq": None, "body": "x"}),
    ("edit_message", {"seq": -1, "body": "x"}),
    ("edit_message", {"seq": 1, "body": 5}),
    ("edit_message", {"seq": 1}),
    ("edit_message", {"conversation_id": 7, "seq": 1, "body": "x"}),
    ("delete_message", {"seq": "1"}),
    ("delete_message", {"seq": [1]}),
    ("delete_message", {}),
    ("delete_message", {"conversation_id": None, "seq": 1}),
    ("react", {"seq": 1, "emoji": 1, "on": True}),
    ("react", {"seq": 1, "emoji": "x", "on": "true"}),
    ("react", {"seq": 1, "emoji": "x", "on": 1}),
    ("react", {"seq": 1, "emoji": "x"}),
    ("react", {"seq": "1", "emoji": "x", "on": True}),
    ("react", {"seq": 1, "emoji": ["x"], "on": True}),
    ("get_changes", {"after_rev": "0"}),
    ("get_changes", {"after_rev": -1}),
    ("get_changes", {"after_rev": 0.5}),
    ("get_changes", {}),
    ("get_changes", {"after_rev": 0, "limit": 0}),
    ("get_changes", {"after_rev": 0, "limit": "5"}),
    ("get_changes", {"conversation_id": ["c"], "after_rev": 0}),
    ("send_message", {"client_id": "k", "body": "x", "reply_to": "1"}),
    ("send_message", {"client_id": "k", "body": "x", "reply_to": True}),
    ("send_message", {"client_id": "k", "body": "x", "reply_to": -1}),
    ("send_message", {"client_id": "k", "body": "x", "mentions": "u_1"}),
    ("send_message", {"client_id": "k", "body": "x", "mentions": [1]}),
    ("send_message", {"client_id": "k", "body": "x", "mentions": [""]}),
    ("send_message", {"client_id": "k", "body": "x", "mentions": [None]}),
]


async def test_every_field_of_the_wrong_json_type_is_bad_request(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with harness(make_config(tmp_path / "data")) as h:
            ada, _bob, _cyd, cid = await _group(h)
            async with h.ws(ada) as a:
                await _send(a, cid, "m")
                for type_, fields in WRONG_TYPES:
                    frame = await a.request(type_, **{"conversation_id": cid, **fields})
                    assert frame["type"] == "error" and frame["code"] == "bad_request", (
                        type_,
                        fields,
                        frame,
                    )
                # The connection still works, and nothing changed.
                changes = await a.request("get_changes", conversation_id=cid, after_rev=0)
                assert changes["last_rev"] == 1 and changes["messages"][0]["body"] == "m"


# ---------------------------------------------------------------- get_changes


async def test_get_changes_pages_by_rev_with_messages_in_their_state_now(h: Harness) -> None:
    ada, bob, _cyd, cid = await _group(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        empty = await a.request("get_changes", conversation_id=cid, after_rev=0)
        assert empty["type"] == "changes"
        assert (empty["messages"], empty["last_rev"], empty["has_more"]) == ([], 0, False)
        for i in range(5):
            await _send(a, cid, f"m{i}")
        await a.request("edit_message", conversation_id=cid, seq=2, body="m1 edited")
        await b.request("react", conversation_id=cid, seq=4, emoji="x", on=True)
        await a.request("edit_message", conversation_id=cid, seq=2, body="m1 again")
        # revs: 1..5 sends, 6 edit of 2, 7 reaction on 4, 8 edit of 2 again.
        seen: list[tuple[int, int]] = []
        after = 0
        while True:
            page = await b.request("get_changes", conversation_id=cid, after_rev=after, limit=2)
            assert page["last_rev"] == 8 and page["conversation_id"] == cid
            seen += [(m["seq"], m["rev"]) for m in page["messages"]]
            if not page["has_more"]:
                break
            after = page["messages"][-1]["rev"]
        assert seen == [(1, 1), (3, 3), (5, 5), (4, 7), (2, 8)]
        page = await b.request("get_changes", conversation_id=cid, after_rev=5)
        assert [m["body"] for m in page["messages"]] == ["m3", "m1 again"]
        beyond = await b.request("get_changes", conversation_id=cid, after_rev=99)
        assert (beyond["messages"], beyond["has_more"], beyond["last_rev"]) == ([], False, 8)
        # limit is clamped to 200, default 100.
        clamp = await b.request("get_changes", conversation_id=cid, after_rev=0, limit=10**6)
        assert len(clamp["messages"]) == 5 and not clamp["has_more"]


async def test_get_changes_default_limit_is_100_and_clamped_to_200(h: Harness) -> None:
    ada, _bob, _cyd, cid = await _group(h)
    for i in range(0, 250, 50):
        for j in range(50):
            r = await h.http.post(
                f"/v1/conversations/{cid}/messages",
                json={"client_id": f"k{i + j}", "body": "x"},
                headers=h.auth(ada),
            )
            assert r.status_code == 201
    async with h.ws(ada) as a:
        page = await a.request("get_changes", conversation_id=cid, after_rev=0)
        assert len(page["messages"]) == 100 and page["has_more"]
        page = await a.request("get_changes", conversation_id=cid, after_rev=0, limit=500)
        assert len(page["messages"]) == 200 and page["has_more"]
        page = await a.request("get_changes", conversation_id=cid, after_rev=200, limit=500)
        assert len(page["messages"]) == 50 and not page["has_more"]


# ---------------------------------------------------------------- rate limit


async def test_edits_deletes_and_reactions_spend_the_message_budget(tmp_path: Path) -> None:
    config = make_config(
        tmp_path / "data", limits={"messages_per_second": 0.01, "message_burst": 3}
    )
    with trio.fail_after(60):
        async with harness(config) as h:
            ada, _bob, _cyd, cid = await _group(h)
            async with h.ws(ada) as a:
                await _send(a, cid, "one")  # 1 of 3
                assert (await a.request("edit_message", conversation_id=cid, seq=1, body="1"))[
                    "type"
                ] == "updated"
                assert (await a.request("react", conversation_id=cid, seq=1, emoji="x", on=True))[
                    "type"
                ] == "updated"
                refused: list[tuple[str, dict[str, Any]]] = [
                    ("edit_message", {"seq": 1, "body": "2"}),
                    ("react", {"seq": 1, "emoji": "y", "on": True}),
                    ("delete_message", {"seq": 1}),
                    ("send_message", {"client_id": "k", "body": "x"}),
                ]
                for type_, fields in refused:
                    frame = await a.request(type_, conversation_id=cid, **fields)
                    _error(frame, "rate_limited")
                    assert frame["retry_after_ms"] > 0
                changes = await a.request("get_changes", conversation_id=cid, after_rev=0)
                assert changes["last_rev"] == 3
                assert changes["messages"][0]["body"] == "1"
                assert changes["messages"][0]["reactions"] == {"x": [ada.id]}


async def test_a_resend_gets_its_original_ack_after_its_reply_to_and_mention_are_gone(
    h: Harness,
) -> None:
    ada, _bob, cyd, cid = await _group(h)
    async with h.ws(ada) as a:
        await _send(a, cid, "parent")
        first = await a.request(
            "send_message",
            conversation_id=cid,
            client_id="once",
            body="reply",
            reply_to=1,
            mentions=[cyd.id],
        )
        assert first["type"] == "ack"
        await a.request("delete_message", conversation_id=cid, seq=1)
        r = await h.http.delete(f"/v1/conversations/{cid}/members/{cyd.id}", headers=h.auth(ada))
        assert r.status_code == 204
        again = await a.request(
            "send_message",
            conversation_id=cid,
            client_id="once",
            body="reply",
            reply_to=1,
            mentions=[cyd.id],
        )
        assert again["type"] == "ack" and again["duplicate"] is True
        assert again["message"] == first["message"]
        # A new send with the same fields is refused.
        _error(
            await a.request(
                "send_message", conversation_id=cid, client_id="new", body="r", mentions=[cyd.id]
            ),
            "bad_request",
        )
