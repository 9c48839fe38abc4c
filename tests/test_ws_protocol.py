"""The WebSocket rows of PROTOCOL.md, each against the real server.

Every test here runs on 127.0.0.1:0 with its data under tmp_path; the client
closes first. Bad-input tests also check that nothing was stored and that the
same connection keeps working afterwards.
"""

from __future__ import annotations

import orjson
import pytest
import trio
import trio_websocket

from tests.helpers import WS, Account, Harness


async def _pair(h: Harness) -> tuple[Account, Account, str]:
    ada, bob = await h.account("ada"), await h.account("bob")
    return ada, bob, await h.direct(ada, bob)


async def test_ping_answers_pong_with_req_and_nothing_without(h: Harness) -> None:
    ada = await h.account()
    async with h.ws(ada) as ws:
        assert await ws.request("ping") == {"type": "pong", "req": 1}
        # PROTOCOL.md: a frame without `req` gets a response only on error. The next
        # frame to arrive is the answer to the second ping, not one to the first.
        await ws.send({"type": "ping"})
        await ws.send({"type": "ping", "req": "second"})
        assert await ws.recv() == {"type": "pong", "req": "second"}


async def test_subscribe_reports_last_seq_cursors_and_online(h: Harness) -> None:
    ada, _bob, cid = await _pair(h)
    async with h.ws(ada) as a:
        for i in range(3):
            await a.send_message(cid, f"m{i}")
        assert (await a.request("mark_read", conversation_id=cid, seq=2))["type"] == "ok"
        sub = await a.request("subscribe", conversation_id=cid)
        assert sub == {
            "type": "subscribed",
            "req": sub["req"],
            "conversation_id": cid,
            "last_seq": 3,
            "read_cursors": {ada.id: 2},
            "online": [ada.id],
        }


async def test_sender_gets_ack_not_new_message_but_own_other_device_does(h: Harness) -> None:
    ada, bob, cid = await _pair(h)
    async with h.ws(ada) as phone, h.ws(ada) as laptop, h.ws(bob) as b:
        for ws in (phone, laptop, b):
            await ws.request("subscribe", conversation_id=cid)
        ack = await phone.send_message(cid, "hi", client_id="c1")
        assert ack["type"] == "ack" and ack["client_id"] == "c1"
        assert (await laptop.next_event("new_message"))["message"] == ack["message"]
        assert (await b.next_event("new_message"))["message"] == ack["message"]
        await phone.assert_quiet()


async def test_resend_with_same_client_id_returns_original_ack(h: Harness) -> None:
    ada, bob, cid = await _pair(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        first = await a.send_message(cid, "once", client_id="same")
        again = await a.send_message(cid, "once (edited)", client_id="same")
        assert again["duplicate"] is True and first["duplicate"] is False
        assert again["message"] == first["message"]
        await b.next_event("new_message")
        await b.assert_quiet()  # the duplicate is not broadcast
        history = await a.request("get_history", conversation_id=cid)
        assert [m["body"] for m in history["messages"]] == ["once"]


async def test_same_client_id_from_different_senders_are_different_messages(h: Harness) -> None:
    ada, bob, cid = await _pair(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        one = await a.send_message(cid, "from ada", client_id="x")
        two = await b.send_message(cid, "from bob", client_id="x")
        assert not one["duplicate"] and not two["duplicate"]
        assert (one["message"]["seq"], two["message"]["seq"]) == (1, 2)


async def test_get_history_pages_both_ways(h: Harness) -> None:
    ada, _bob, cid = await _pair(h)
    async with h.ws(ada) as a:
        for i in range(1, 8):
            await a.send_message(cid, f"m{i}")
        latest = await a.request("get_history", conversation_id=cid, limit=3)
        assert [m["seq"] for m in latest["messages"]] == [5, 6, 7] and latest["has_more"] is True
        older = await a.request("get_history", conversation_id=cid, before_seq=5, limit=3)
        assert [m["seq"] for m in older["messages"]] == [2, 3, 4] and older["has_more"] is True
        oldest = await a.request("get_history", conversation_id=cid, before_seq=2, limit=3)
        assert [m["seq"] for m in oldest["messages"]] == [1] and oldest["has_more"] is False
        after = await a.request("get_history", conversation_id=cid, after_seq=2, limit=3)
        assert [m["seq"] for m in after["messages"]] == [3, 4, 5] and after["has_more"] is True
        tail = await a.request("get_history", conversation_id=cid, after_seq=5, limit=3)
        assert [m["seq"] for m in tail["messages"]] == [6, 7] and tail["has_more"] is False
        default = await a.request("get_history", conversation_id=cid)
        assert len(default["messages"]) == 7 and default["has_more"] is False


async def test_get_history_limit_above_200_is_clamped(h: Harness) -> None:
    ada, _bob, cid = await _pair(h)
    async with h.ws(ada) as a:
        # Pipelined sends: one group commit per batch keeps this quick.
        for i in range(205):
            await a.send(
                {
                    "type": "send_message",
                    "conversation_id": cid,
                    "client_id": f"k{i}",
                    "body": "x",
                    "req": i,
                }
            )
        for _ in range(205):
            assert (await a.recv())["type"] == "ack"
        page = await a.request("get_history", conversation_id=cid, after_seq=0, limit=1000)
        assert len(page["messages"]) == 200 and page["has_more"] is True


async def test_mark_read_moves_cursor_forward_only_and_clamps_to_last_seq(h: Harness) -> None:
    ada, bob, cid = await _pair(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        await a.request("subscribe", conversation_id=cid)
        await a.send_message(cid, "1")
        await a.send_message(cid, "2")
        assert (await b.request("mark_read", conversation_id=cid, seq=99))["type"] == "ok"
        event = await a.next_event("message_read")
        assert event == {
            "type": "message_read",
            "conversation_id": cid,
            "user_id": bob.id,
            "seq": 2,
        }
        assert (await b.request("mark_read", conversation_id=cid, seq=1))["type"] == "ok"
        assert (await b.request("mark_read", conversation_id=cid, seq=2))["type"] == "ok"
        await a.assert_quiet()  # the cursor did not move, so no message_read
        sub = await a.request("subscribe", conversation_id=cid)
        assert sub["read_cursors"][bob.id] == 2


async def test_typing_goes_to_other_subscribers_only_and_is_not_stored(h: Harness) -> None:
    ada, bob, cid = await _pair(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        await a.request("subscribe", conversation_id=cid)
        await b.request("subscribe", conversation_id=cid)
        assert (await a.request("typing", conversation_id=cid, typing=True))["type"] == "ok"
        assert await b.next_event("typing") == {
            "type": "typing",
            "conversation_id": cid,
            "user_id": ada.id,
            "typing": True,
        }
        await a.assert_quiet()
        history = await a.request("get_history", conversation_id=cid)
        assert history["messages"] == []


async def test_unsubscribe_stops_live_frames(h: Harness) -> None:
    ada, bob, cid = await _pair(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        assert (await b.request("unsubscribe", conversation_id=cid))["type"] == "ok"
        await a.send_message(cid, "unseen")
        await b.assert_quiet()


async def test_presence_updates_once_per_change(h: Harness) -> None:
    ada, bob, cid = await _pair(h)
    group = await h.group(ada, bob)
    async with h.ws(ada) as a:
        # Subscribed to two conversations with bob: still one update per change.
        await a.request("subscribe", conversation_id=cid)
        await a.request("subscribe", conversation_id=group)
        async with h.ws(bob):
            online = await a.next_event("presence_update")
            assert online["user_id"] == bob.id and online["status"] == "online"
            assert isinstance(online["last_seen_at"], int)
            async with h.ws(bob):  # a second device changes nothing
                await a.assert_quiet()
            await a.assert_quiet()
        offline = await a.next_event("presence_update")
        assert offline["user_id"] == bob.id and offline["status"] == "offline"
        await a.assert_quiet()


# ------------------------------------------------------------------ bad input


BAD_FRAMES = [
    ("not json", "bad_request", None),
    ("[1, 2]", "bad_request", None),
    ('"text"', "bad_request", None),
    ('{"req": 7}', "bad_request", 7),
    ('{"type": "launch", "req": "r"}', "unknown_type", "r"),
    ('{"type": 5, "req": 1}', "bad_request", 1),
    ('{"type": "send_message", "req": 2}', "bad_request", 2),
    (
        '{"type": "send_message", "req": 3, "conversation_id": 5, "client_id": "a", "body": "x"}',
        "bad_request",
        3,
    ),
    (
        '{"type": "send_message", "req": 4, "conversation_id": "CID", "client_id": "", "body": "x"}',
        "bad_request",
        4,
    ),
    (
        '{"type": "send_message", "req": 5, "conversation_id": "CID", "client_id": "a", "body": "   "}',
        "bad_request",
        5,
    ),
    (
        '{"type": "send_message", "req": 6, "conversation_id": "CID", "client_id": "a", "body": ["x"]}',
        "bad_request",
        6,
    ),
    (
        '{"type": "send_message", "req": 7, "conversation_id": "CID", "client_id": "a", "body": "x", "attachments": "m"}',
        "bad_request",
        7,
    ),
    ('{"type": "mark_read", "req": 8, "conversation_id": "CID", "seq": -1}', "bad_request", 8),
    ('{"type": "mark_read", "req": 9, "conversation_id": "CID", "seq": 1.5}', "bad_request", 9),
    ('{"type": "mark_read", "req": 10, "conversation_id": "CID", "seq": "1"}', "bad_request", 10),
    ('{"type": "mark_read", "req": 11, "conversation_id": "CID", "seq": true}', "bad_request", 11),
    (
        '{"type": "mark_read", "req": 12, "conversation_id": "CID", "seq": 1e400}',
        "bad_request",
        None,
    ),
    ('{"type": "mark_read", "req": 13, "conversation_id": "CID", "seq": NaN}', "bad_request", None),
    ('{"type": "get_history", "req": 14, "conversation_id": "CID", "limit": 0}', "bad_request", 14),
    (
        '{"type": "get_history", "req": 15, "conversation_id": "CID", "after_seq": "x"}',
        "bad_request",
        15,
    ),
    ('{"type": "typing", "req": 16, "conversation_id": "CID", "typing": "yes"}', "bad_request", 16),
    ('{"type": "subscribe", "req": 17}', "bad_request", 17),
    ('{"type": "subscribe", "req": 18, "conversation_id": "c_does_not_exist"}', "not_found", 18),
    ('{"type": "ping", "req": {"nested": 1}}', "bad_request", None),
    ('{"type": "ping", "req": 1.5}', "bad_request", None),
    (
        '{"type": "send_message", "req": 19, "conversation_id": "CID", "client_id": "a", "body": {"a": {"b": {"c": {}}}}}',
        "bad_request",
        19,
    ),
    ("[" * 5000 + "]" * 5000, "bad_request", None),
    (
        '{"type": "send_message", "req": 20, "conversation_id": "CID", "client_id": "'
        + "x" * 129
        + '", "body": "x"}',
        "bad_request",
        20,
    ),
    (
        '{"type": "send_message", "req": 21, "conversation_id": "CID", "client_id": "a", "body": "x", "attachments": ["md_nope"]}',
        "forbidden",
        21,
    ),
    ('\xff\xfe"', "bad_request", None),
]


@pytest.mark.parametrize(("text", "code", "req"), BAD_FRAMES)
async def test_bad_frame_gets_error_changes_nothing_and_connection_keeps_working(
    h: Harness, text: str, code: str, req: object
) -> None:
    ada, _bob, cid = await _pair(h)
    async with h.ws(ada) as a:
        await a.send(text.replace("CID", cid))
        error = await a.recv()
        assert error["type"] == "error" and error["code"] == code, error
        assert error.get("req") == req and isinstance(error["message"], str) and error["message"]
        assert (await a.request("ping"))["type"] == "pong"
        history = await a.request("get_history", conversation_id=cid)
        assert history["messages"] == []
        sub = await a.request("subscribe", conversation_id=cid)
        assert sub["read_cursors"] == {} and sub["last_seq"] == 0


async def test_body_longer_than_limit_is_too_large(h: Harness) -> None:
    ada, _bob, cid = await _pair(h)
    async with h.ws(ada) as a:
        reply = await a.request(
            "send_message", conversation_id=cid, client_id="big", body="y" * 16001
        )
        assert reply["type"] == "error" and reply["code"] == "too_large"
        # Exactly at the limit, with surrounding white space, is fine.
        ok = await a.request(
            "send_message", conversation_id=cid, client_id="max", body="  " + "y" * 16000 + "\n"
        )
        assert ok["type"] == "ack"


async def test_unknown_extra_fields_are_ignored_for_forward_compatibility(h: Harness) -> None:
    ada, _bob, cid = await _pair(h)
    async with h.ws(ada) as a:
        reply = await a.request(
            "send_message", conversation_id=cid, client_id="e", body="x", future_field=1
        )
        assert reply["type"] == "ack"


async def _expect_close(ws: WS, code: int) -> None:
    with trio.fail_after(5):
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            while True:
                await ws.conn.get_message()
    reason = closed.value.reason
    assert reason is not None and reason.code == code


async def test_oversized_text_frame_closes_with_1009(h: Harness) -> None:
    ada, _bob, _cid = await _pair(h)
    async with h.ws(ada) as a:
        await a.send('{"type": "ping", "pad": "' + "x" * 70000 + '"}')
        await _expect_close(a, 1009)


async def test_oversized_multibyte_frame_is_measured_in_bytes(h: Harness) -> None:
    ada = await h.account()
    async with h.ws(ada) as a:
        # 30,000 characters, 90,000 bytes of UTF-8: over the 65,536-byte limit.
        await a.send('{"type": "ping", "pad": "' + "€" * 30000 + '"}')
        await _expect_close(a, 1009)


async def test_binary_frame_closes_with_1003(h: Harness) -> None:
    ada = await h.account()
    async with h.ws(ada) as a:
        await a.conn.send_message(b'{"type": "ping"}')
        await _expect_close(a, 1003)


async def test_large_binary_frame_closes_with_1009(h: Harness) -> None:
    ada = await h.account()
    async with h.ws(ada) as a:
        await a.conn.send_message(b"x" * 70000)
        await _expect_close(a, 1009)


async def test_bad_input_on_one_connection_does_not_disturb_another(h: Harness) -> None:
    ada, bob, cid = await _pair(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        await a.send(orjson.dumps({"type": "send_message", "conversation_id": cid}).decode())
        assert (await a.recv())["code"] == "bad_request"
        await a.send("[" * 60000)
        assert (await a.recv())["code"] == "bad_request"
        ack = await a.send_message(cid, "still fine")
        assert (await b.next_event("new_message"))["message"]["id"] == ack["message"]["id"]


async def test_new_conversation_is_announced_to_members_live_connections(h: Harness) -> None:
    ada, bob, carol = await h.account("ada"), await h.account("bob"), await h.account("carol")
    async with h.ws(ada) as a, h.ws(bob) as b:
        cid = await h.direct(ada, bob)
        for ws in (a, b):
            added = await ws.next_event("conversation_added")
            assert added["conversation"]["id"] == cid
            assert set(added["conversation"]["member_ids"]) == {ada.id, bob.id}
            assert added["conversation"]["unread_count"] == 0
        await h.direct(bob, ada)  # already exists: nothing new to announce
        await a.assert_quiet()
        group = await h.group(ada, carol, title="Later")
        assert (await a.next_event("conversation_added"))["conversation"]["id"] == group
        await b.assert_quiet()  # bob is not in it
        await a.send_message(group, "before bob joined")
        r = await h.http.post(
            f"/v1/conversations/{group}/members", json={"user_ids": [bob.id]}, headers=h.auth(ada)
        )
        assert r.status_code == 200
        added = await b.next_event("conversation_added")
        assert added["conversation"]["id"] == group and added["conversation"]["unread_count"] == 1


async def test_frames_without_req_are_carried_out_but_answered_only_on_error(h: Harness) -> None:
    ada, bob, cid = await _pair(h)
    async with h.ws(ada) as a, h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        await a.send({"type": "subscribe", "conversation_id": cid})
        await a.send(
            {"type": "send_message", "conversation_id": cid, "client_id": "n", "body": "x"}
        )
        await a.send({"type": "mark_read", "conversation_id": cid, "seq": 1})
        await a.send(
            {"type": "send_message", "conversation_id": "c_nope", "client_id": "e", "body": "x"}
        )
        # The only answer before the pong is the error of the frame that failed.
        await a.send({"type": "ping", "req": "after"})
        assert (await a.recv())["type"] == "error"
        assert await a.recv() == {"type": "pong", "req": "after"}
        # The send was stored and delivered, the subscription and the cursor took effect.
        delivered = await b.next_event("new_message")
        assert delivered["message"]["client_id"] == "n"
        await b.send_message(cid, "to ada")
        assert (await a.next_event("new_message"))["message"]["body"] == "to ada"
        sub = await b.request("subscribe", conversation_id=cid)
        assert sub["read_cursors"][ada.id] == 1
