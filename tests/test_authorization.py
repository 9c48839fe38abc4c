"""Authorization everywhere: only members subscribe, send, read, mark read, type or
see a conversation, over REST and WebSocket; removal takes effect at once; the
WebSocket handshake needs a valid token.

Negative checks never wait for silence: after a refused request, a member does
something allowed, and the frame it causes must be the next one to arrive.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
import trio_websocket

from tests.helpers import (
    WS,
    Account,
    Harness,
    assert_error,
    raw_websocket_handshake,
    without_general,
)

# ---------------------------------------------------------------- helpers


async def rest_history(h: Harness, who: Account, cid: str) -> list[dict[str, Any]]:
    r = await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(who))
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages


def assert_ws_error(frame: dict[str, Any], code: str) -> None:
    assert frame["type"] == "error", frame
    assert frame["code"] == code, frame
    assert isinstance(frame["message"], str) and frame["message"]


async def every_ws_call(ws: WS, cid: str) -> list[dict[str, Any]]:
    """One of each conversation request; returns the responses in order."""
    return [
        await ws.request("subscribe", conversation_id=cid),
        await ws.request(
            "send_message", conversation_id=cid, client_id=uuid.uuid4().hex, body="sneaky"
        ),
        await ws.request("get_history", conversation_id=cid),
        await ws.request("get_history", conversation_id=cid, after_seq=0),
        await ws.request("mark_read", conversation_id=cid, seq=1),
        await ws.request("typing", conversation_id=cid, typing=True),
        await ws.request("unsubscribe", conversation_id=cid),
    ]


async def every_rest_call(h: Harness, who: Account, cid: str, member: Account) -> list[Any]:
    base = f"/v1/conversations/{cid}"
    return [
        await h.http.get(base, headers=h.auth(who)),
        await h.http.get(f"{base}/messages", headers=h.auth(who)),
        await h.http.get(f"{base}/messages", params={"after_seq": 0}, headers=h.auth(who)),
        await h.http.post(
            f"{base}/messages", json={"client_id": "x", "body": "sneaky"}, headers=h.auth(who)
        ),
        await h.http.post(f"{base}/members", json={"user_ids": [who.id]}, headers=h.auth(who)),
        await h.http.delete(f"{base}/members/{member.id}", headers=h.auth(who)),
    ]


async def group_state(
    h: Harness, member: Account, cid: str
) -> tuple[list[str], int, list[dict[str, Any]]]:
    r = await h.http.get(f"/v1/conversations/{cid}", headers=h.auth(member))
    assert r.status_code == 200
    return sorted(r.json()["member_ids"]), r.json()["last_seq"], await rest_history(h, member, cid)


# ---------------------------------------------------------------- non-members


async def test_non_member_is_refused_every_websocket_call_and_nothing_changes(h: Harness) -> None:
    ada, bob, eve = await h.account("ada"), await h.account("bob"), await h.account("eve")
    cid = await h.group(ada, bob)
    await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": "a1", "body": "private"},
        headers=h.auth(ada),
    )
    before = await group_state(h, ada, cid)
    async with h.ws(ada) as a, h.ws(eve) as e:
        sub = await a.request("subscribe", conversation_id=cid)
        assert sub["type"] == "subscribed" and sub["read_cursors"] == {}
        for frame in await every_ws_call(e, cid):
            assert_ws_error(frame, "forbidden")
        # Eve's frames reached nobody: the next frame Ada sees is Bob's typing.
        async with h.ws(bob) as b:
            assert (await b.request("typing", conversation_id=cid, typing=True))["type"] == "ok"
            # (Presence frames may come first; the first typing frame must be Bob's.)
            frame = await a.next_event("typing")
            assert frame["user_id"] == bob.id, frame
            assert all(f["type"] == "presence_update" for f in a.events), a.events
        # Eve's mark_read moved no cursor, and her message was not stored.
        resub = await a.request("subscribe", conversation_id=cid)
        assert resub["read_cursors"] == {} and resub["last_seq"] == 1
        # Eve was never subscribed: Ada's message does not reach her.
        await a.send_message(cid, "still private")
        assert (await e.request("ping"))["type"] == "pong"
        assert e.events == []
        # Eve's connection keeps working.
        other = await h.direct(eve, bob)
        assert (await e.request("subscribe", conversation_id=other))["type"] == "subscribed"
    members, last_seq, messages = await group_state(h, ada, cid)
    assert (members, last_seq) == (before[0], 2)
    assert [m["body"] for m in messages] == ["private", "still private"]


async def test_unknown_conversation_is_not_found_for_every_websocket_call(h: Harness) -> None:
    ada = await h.account("ada")
    async with h.ws(ada) as ws:
        for frame in await every_ws_call(ws, "c_does_not_exist"):
            assert_ws_error(frame, "not_found")
        for frame in await every_ws_call(ws, "c" * 128):
            assert_ws_error(frame, "not_found")
        assert (await ws.request("ping"))["type"] == "pong"


async def test_non_member_is_refused_every_rest_call_and_nothing_changes(h: Harness) -> None:
    ada, bob, eve = await h.account("ada"), await h.account("bob"), await h.account("eve")
    cid = await h.group(ada, bob)
    await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": "a1", "body": "private"},
        headers=h.auth(ada),
    )
    before = await group_state(h, ada, cid)
    for r in await every_rest_call(h, eve, cid, bob):
        assert_error(r, 403, "forbidden")
    assert await group_state(h, ada, cid) == before
    r = await h.http.get("/v1/conversations", headers=h.auth(eve))
    assert without_general(r.json()["conversations"]) == []


async def test_non_member_of_a_direct_conversation_is_refused(h: Harness) -> None:
    ada, bob, eve = await h.account("ada"), await h.account("bob"), await h.account("eve")
    cid = await h.direct(ada, bob)
    r = await h.http.get(f"/v1/conversations/{cid}", headers=h.auth(eve))
    assert_error(r, 403, "forbidden")
    async with h.ws(eve) as e:
        for frame in await every_ws_call(e, cid):
            assert_ws_error(frame, "forbidden")
    assert await rest_history(h, ada, cid) == []


async def test_unknown_conversation_is_404_for_every_rest_call(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    for r in await every_rest_call(h, ada, "c_does_not_exist", bob):
        assert_error(r, 404, "not_found")


# ---------------------------------------------------------------- removal


async def test_removed_member_gets_unsubscribed_at_once_and_every_later_call_is_refused(
    h: Harness,
) -> None:
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    cid = await h.group(ada, bob, cat)
    async with h.ws(ada) as a, h.ws(bob) as b:
        assert (await a.request("subscribe", conversation_id=cid))["type"] == "subscribed"
        assert (await b.request("subscribe", conversation_id=cid))["type"] == "subscribed"
        ack = await a.send_message(cid, "before")
        assert (await b.next_event("new_message"))["message"] == ack["message"]

        r = await h.http.delete(f"/v1/conversations/{cid}/members/{bob.id}", headers=h.auth(ada))
        assert r.status_code == 204
        # The frame was queued before DELETE answered: it is the next one Bob gets.
        frame = await b.recv()
        assert frame == {"type": "unsubscribed", "conversation_id": cid, "reason": frame["reason"]}
        assert isinstance(frame["reason"], str) and frame["reason"]

        # Live traffic no longer reaches Bob (the ping answer comes first).
        await a.send_message(cid, "after")
        assert (await a.request("typing", conversation_id=cid, typing=True))["type"] == "ok"
        assert (await b.request("ping"))["type"] == "pong"
        assert b.events == []

        for response in await every_ws_call(b, cid):
            assert_ws_error(response, "forbidden")
        for response in await every_rest_call(h, bob, cid, cat):
            assert_error(response, 403, "forbidden")
        assert (await b.request("ping"))["type"] == "pong"
        assert b.events == []

    members, last_seq, messages = await group_state(h, ada, cid)
    assert members == sorted([ada.id, cat.id]) and last_seq == 2
    assert [m["body"] for m in messages] == ["before", "after"]
    r = await h.http.get("/v1/conversations", headers=h.auth(bob))
    assert without_general(r.json()["conversations"]) == []


async def test_member_who_leaves_gets_unsubscribed_on_every_device(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.group(ada, bob)
    async with h.ws(bob) as phone, h.ws(bob) as laptop:
        await phone.request("subscribe", conversation_id=cid)
        await laptop.request("subscribe", conversation_id=cid)
        r = await h.http.delete(f"/v1/conversations/{cid}/members/{bob.id}", headers=h.auth(bob))
        assert r.status_code == 204
        for device in (phone, laptop):
            frame = await device.recv()
            assert frame["type"] == "unsubscribed" and frame["conversation_id"] == cid
            assert_ws_error(await device.request("subscribe", conversation_id=cid), "forbidden")


async def test_removal_ends_only_that_conversations_subscription(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    gid = await h.group(ada, bob)
    did = await h.direct(ada, bob)
    async with h.ws(ada) as a, h.ws(bob) as b:
        await b.request("subscribe", conversation_id=gid)
        await b.request("subscribe", conversation_id=did)
        r = await h.http.delete(f"/v1/conversations/{gid}/members/{bob.id}", headers=h.auth(ada))
        assert r.status_code == 204
        assert (await b.next_event("unsubscribed"))["conversation_id"] == gid
        ack = await a.send_message(did, "direct still works")
        assert (await b.next_event("new_message"))["message"] == ack["message"]


async def test_removed_member_is_refused_even_after_the_actor_restarts(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.group(ada, bob)
    # Nobody has used the conversation, so no actor holds its member list yet.
    r = await h.http.delete(f"/v1/conversations/{cid}/members/{bob.id}", headers=h.auth(ada))
    assert r.status_code == 204
    async with h.ws(bob) as b:
        for frame in await every_ws_call(b, cid):
            assert_ws_error(frame, "forbidden")
    assert await rest_history(h, ada, cid) == []


async def test_removed_then_added_member_can_subscribe_again(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.group(ada, bob)
    async with h.ws(ada) as a, h.ws(bob) as b:
        await a.request("subscribe", conversation_id=cid)
        await b.request("subscribe", conversation_id=cid)
        await h.http.delete(f"/v1/conversations/{cid}/members/{bob.id}", headers=h.auth(ada))
        assert (await b.next_event("unsubscribed"))["conversation_id"] == cid
        assert_ws_error(await b.request("subscribe", conversation_id=cid), "forbidden")
        r = await h.http.post(
            f"/v1/conversations/{cid}/members", json={"user_ids": [bob.id]}, headers=h.auth(ada)
        )
        assert r.status_code == 200
        assert (await b.request("subscribe", conversation_id=cid))["type"] == "subscribed"
        ack = await a.send_message(cid, "welcome back")
        assert (await b.next_event("new_message"))["message"] == ack["message"]


@pytest.mark.parametrize("live", [True, False], ids=["actor-running", "actor-not-running"])
async def test_added_member_can_subscribe_send_and_read(h: Harness, live: bool) -> None:
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    cid = await h.group(ada, bob)
    async with h.ws(ada) as a, h.ws(cat) as c:
        if live:
            await a.request("subscribe", conversation_id=cid)
            await a.send_message(cid, "before cat")
        assert_ws_error(await c.request("subscribe", conversation_id=cid), "forbidden")
        r = await h.http.post(
            f"/v1/conversations/{cid}/members", json={"user_ids": [cat.id]}, headers=h.auth(bob)
        )
        assert r.status_code == 200
        sub = await c.request("subscribe", conversation_id=cid)
        assert sub["type"] == "subscribed" and cat.id in sub["online"]
        ack = await c.send_message(cid, "hi, I'm new")
        assert ack["type"] == "ack" and ack["duplicate"] is False
        if live:
            assert (await a.next_event("new_message"))["message"] == ack["message"]
        history = await c.request("get_history", conversation_id=cid)
        assert history["type"] == "history"
        assert history["messages"][-1] == ack["message"]
        assert (await c.request("mark_read", conversation_id=cid, seq=ack["message"]["seq"]))[
            "type"
        ] == "ok"


# ---------------------------------------------------------------- the WebSocket handshake


async def handshake(
    h: Harness, query: str = "", authorization: str | None = None
) -> tuple[int, bytes]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return await raw_websocket_handshake(h.url, "/v1/ws" + query, headers)


def assert_refused(result: tuple[int, bytes]) -> None:
    status, body = result
    assert status == 401, result
    assert orjson.loads(body)["error"]["code"] == "unauthorized"


async def test_handshake_without_token_is_refused_with_401(h: Harness) -> None:
    assert_refused(await handshake(h))


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-token", "Bearer", "Basic dXNlcjpwYXNz", "not-a-scheme", "TOKEN"],
)
async def test_handshake_with_bad_token_is_refused_with_401(h: Harness, header: str) -> None:
    ada = await h.account("ada")
    # A real token in the wrong place (no scheme) is still no token.
    assert_refused(await handshake(h, authorization=header.replace("TOKEN", ada.token)))


@pytest.mark.parametrize("query", ["?access_token=not-a-token", "?access_token=", "?token=TOKEN"])
async def test_handshake_with_bad_query_token_is_refused_with_401(h: Harness, query: str) -> None:
    ada = await h.account("ada")
    assert_refused(await handshake(h, query=query.replace("TOKEN", ada.token)))


async def test_handshake_with_revoked_token_is_refused_with_401(h: Harness) -> None:
    ada = await h.account("ada")
    assert (await handshake(h, authorization=f"Bearer {ada.token}"))[0] == 101
    assert (await h.http.post("/v1/auth/logout", headers=h.auth(ada))).status_code == 204
    assert_refused(await handshake(h, authorization=f"Bearer {ada.token}"))
    assert_refused(await handshake(h, query=f"?access_token={ada.token}"))


async def test_access_token_query_parameter_authenticates_the_websocket(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with trio_websocket.open_websocket_url(h.ws_url + f"?access_token={ada.token}") as conn:
        ws = WS(conn)
        assert (await ws.request("ping"))["type"] == "pong"
        sub = await ws.request("subscribe", conversation_id=cid)
        assert sub["type"] == "subscribed" and sub["online"] == [ada.id]
        ack = await ws.send_message(cid, "via query token")
        assert ack["message"]["sender_id"] == ada.id
