"""v1.1 channels and conversation settings (PROTOCOL.md "Conversations, people, files"),
end to end on the real server: `general`, `GET /v1/channels`, creating and joining
channels, leaving them, `PATCH /v1/conversations/{id}` with `conversation_updated`,
and the member-list `conversation_updated` of member adds and removals (extension).
Every refusal is checked to change nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import WS, Account, Harness, assert_error, harness, make_config
from tests.test_clerk import post_webhook, signed, token, user_event, webhook_server
from tests.test_cli import cli, err, password_file


async def general_id(h: Harness, who: Account) -> str:
    r = await h.http.get("/v1/channels", params={"q": "general"}, headers=h.auth(who))
    assert r.status_code == 200, r.text
    (entry,) = [c for c in r.json()["channels"] if c["title"] == "general"]
    cid: str = entry["id"]
    return cid


async def channel(h: Harness, who: Account, title: str, topic: str | None = None) -> str:
    body: dict[str, Any] = {"kind": "channel", "title": title}
    if topic is not None:
        body["topic"] = topic
    r = await h.http.post("/v1/conversations", json=body, headers=h.auth(who))
    assert r.status_code == 201, r.text
    cid: str = r.json()["id"]
    return cid


async def post(h: Harness, who: Account, cid: str, body: str = "hi") -> Any:
    return await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": uuid.uuid4().hex, "body": body},
        headers=h.auth(who),
    )


async def members(h: Harness, who: Account, cid: str) -> list[str]:
    r = await h.http.get(f"/v1/conversations/{cid}", headers=h.auth(who))
    assert r.status_code == 200, r.text
    return sorted(r.json()["member_ids"])


async def channels(h: Harness, who: Account, q: str | None = None) -> list[dict[str, Any]]:
    r = await h.http.get("/v1/channels", params={} if q is None else {"q": q}, headers=h.auth(who))
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"channels"}
    found: list[dict[str, Any]] = r.json()["channels"]
    return found


# ---------------------------------------------------------------- general


async def test_every_new_user_is_in_general_and_may_post_at_once(h: Harness) -> None:
    ada = await h.account("ada")
    cid = await general_id(h, ada)
    # General's actor is running (ada posted) when bob registers: it learns of him.
    assert (await post(h, ada, cid)).status_code == 201
    async with h.ws(ada) as ws:
        assert (await ws.request("subscribe", conversation_id=cid))["type"] == "subscribed"
        bob = await h.account("bob")
        r = await post(h, bob, cid, "hello all")
        assert r.status_code == 201, r.text
        assert (await ws.next_event("new_message"))["message"]["body"] == "hello all"
    assert await members(h, bob, cid) == sorted([ada.id, bob.id])
    (entry,) = await channels(h, bob, "gen")
    assert entry["kind"] == "channel" and entry["member_count"] == 2
    assert entry["topic"] is None and entry["last_seq"] == 2


# ---------------------------------------------------------------- create and browse


async def test_a_channel_is_created_with_its_creator_title_and_topic(h: Harness) -> None:
    ada = await h.account("ada")
    r = await h.http.post(
        "/v1/conversations",
        json={"kind": "channel", "title": "  random  ", "topic": " anything goes "},
        headers=h.auth(ada),
    )
    assert r.status_code == 201, r.text
    c = r.json()
    assert (c["kind"], c["title"], c["topic"], c["member_ids"]) == (
        "channel",
        "random",
        "anything goes",
        [ada.id],
    )
    r = await h.http.get("/v1/conversations", headers=h.auth(ada))
    assert {x["title"]: x["topic"] for x in r.json()["conversations"]} == {
        "random": "anything goes",
        "general": None,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "channel"},
        {"kind": "channel", "title": ""},
        {"kind": "channel", "title": "   "},
        {"kind": "channel", "title": 5},
        {"kind": "channel", "title": "x" * 201},
        {"kind": "channel", "title": "a\x00b"},
        {"kind": "channel", "title": "ok", "topic": 5},
        {"kind": "channel", "title": "ok", "topic": "t" * 501},
        {"kind": "channel", "title": "ok", "member_ids": ["u_x"]},
        {"kind": "channel", "title": "ok", "member_ids": "nope"},
    ],
)
async def test_bad_channel_bodies_are_400_and_create_nothing(
    h: Harness, body: dict[str, Any]
) -> None:
    ada = await h.account("ada")
    r = await h.http.post("/v1/conversations", json=body, headers=h.auth(ada))
    assert_error(r, 400, "bad_request")
    assert [c["title"] for c in await channels(h, ada)] == ["general"]


async def test_a_channel_title_is_taken_whatever_its_case(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    await channel(h, ada, "Design")
    for title in ["design", "DESIGN", "general"]:
        r = await h.http.post(
            "/v1/conversations", json={"kind": "channel", "title": title}, headers=h.auth(bob)
        )
        assert_error(r, 409, "conflict")
    assert sorted(c["title"] for c in await channels(h, bob)) == ["Design", "general"]


async def test_channels_are_listed_by_title_prefix_most_members_first(h: Harness) -> None:
    ada, bob, cy = await h.account("ada"), await h.account("bob"), await h.account("cyd")
    small = await channel(h, ada, "dev-small")
    big = await channel(h, ada, "Dev-big")
    await channel(h, ada, "ops")
    for who in (bob, cy):
        r = await h.http.post(f"/v1/conversations/{big}/join", headers=h.auth(who))
        assert r.status_code == 200
    assert (await post(h, ada, small, "secret")).status_code == 201
    listed = await channels(h, bob, "dev")
    assert [(c["title"], c["member_count"]) for c in listed] == [("Dev-big", 3), ("dev-small", 1)]
    assert [c["title"] for c in await channels(h, bob, "DEV-S")] == ["dev-small"]
    assert await channels(h, bob, "zzz") == []
    # general has three members too: a tie goes by title, ASCII case ignored.
    titles = ["Dev-big", "general", "dev-small", "ops"]
    assert [c["title"] for c in await channels(h, bob)] == titles
    # A channel bob is not in shows no message (they are for members).
    (entry,) = [c for c in listed if c["id"] == small]
    assert entry["last_message"] is None and entry["last_seq"] == 0
    assert entry["unread_count"] == 0 and entry["member_ids"] == [ada.id]
    # ... and a member sees it as in their list.
    (mine,) = [c for c in await channels(h, ada, "dev-s")]
    assert mine["last_message"]["body"] == "secret" and mine["last_seq"] == 1
    r = await h.http.get("/v1/channels", params={"q": "x" * 201}, headers=h.auth(ada))
    assert_error(r, 400, "bad_request")
    assert_error(await h.http.get("/v1/channels"), 401, "unauthorized")


async def test_the_channel_list_holds_at_most_50(h: Harness) -> None:
    ada = await h.account("ada")
    for i in range(52):
        await channel(h, ada, f"c{i:02}")
    # One member each: by title, so general (after "c51") is left out.
    assert [c["title"] for c in await channels(h, ada)] == [f"c{i:02}" for i in range(50)]


# ---------------------------------------------------------------- join and leave


async def test_joining_makes_a_member_tells_the_joiner_and_the_members(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await channel(h, ada, "random")
    # The channel's actor is live before bob joins: it must learn of him.
    assert (await post(h, ada, cid, "before")).status_code == 201
    async with h.ws(ada) as ada_ws, h.ws(bob) as bob_ws:
        # A non-member reads nothing of it.
        assert_error(
            await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(bob)),
            403,
            "forbidden",
        )
        refused = await bob_ws.request("subscribe", conversation_id=cid)
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        r = await h.http.post(f"/v1/conversations/{cid}/join", headers=h.auth(bob))
        assert r.status_code == 200, r.text
        joined = r.json()
        assert sorted(joined["member_ids"]) == sorted([ada.id, bob.id])
        assert joined["last_seq"] == 1 and joined["unread_count"] == 1
        added = await bob_ws.next_event("conversation_added")
        assert added["conversation"]["id"] == cid
        updated = await ada_ws.next_event("conversation_updated")
        assert sorted(updated["conversation"]["member_ids"]) == sorted([ada.id, bob.id])
        # Bob may now post and read.
        assert (await post(h, bob, cid, "after")).status_code == 201
        r = await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(bob))
        assert [m["body"] for m in r.json()["messages"]] == ["before", "after"]
        # Twice changes nothing and announces nothing.
        r = await h.http.post(f"/v1/conversations/{cid}/join", headers=h.auth(bob))
        assert r.status_code == 200 and sorted(r.json()["member_ids"]) == sorted([ada.id, bob.id])
        await ada_ws.assert_quiet()
        await bob_ws.assert_quiet()
    (entry,) = await channels(h, ada, "random")
    assert entry["member_count"] == 2


async def test_only_channels_can_be_joined(h: Harness) -> None:
    ada, bob, eve = await h.account("ada"), await h.account("bob"), await h.account("eve")
    group = await h.group(ada, bob)
    direct = await h.direct(ada, bob)
    for cid in (group, direct):
        r = await h.http.post(f"/v1/conversations/{cid}/join", headers=h.auth(eve))
        assert_error(r, 403, "forbidden")
        assert eve.id not in await members(h, ada, cid)
    r = await h.http.post("/v1/conversations/c_nope/join", headers=h.auth(eve))
    assert_error(r, 404, "not_found")
    assert_error(await h.http.post(f"/v1/conversations/{group}/join"), 401, "unauthorized")


async def test_leaving_a_channel_ends_access_and_tells_who_stays(h: Harness) -> None:
    ada, bob, cy = await h.account("ada"), await h.account("bob"), await h.account("cyd")
    cid = await channel(h, ada, "random")
    for who in (bob, cy):
        assert (await h.http.post(f"/v1/conversations/{cid}/join", headers=h.auth(who))).is_success
    async with h.ws(ada) as ada_ws, h.ws(bob) as bob_ws:
        await bob_ws.request("subscribe", conversation_id=cid)
        # A member who is not the creator removes nobody else.
        r = await h.http.delete(f"/v1/conversations/{cid}/members/{cy.id}", headers=h.auth(bob))
        assert_error(r, 403, "forbidden")
        r = await h.http.delete(f"/v1/conversations/{cid}/members/{bob.id}", headers=h.auth(bob))
        assert r.status_code == 204
        assert (await bob_ws.next_event("unsubscribed"))["reason"] == "removed"
        updated = await ada_ws.next_event("conversation_updated")
        assert sorted(updated["conversation"]["member_ids"]) == sorted([ada.id, cy.id])
        assert_error(await post(h, bob, cid), 403, "forbidden")
        # The creator may remove anyone, as in a group.
        r = await h.http.delete(f"/v1/conversations/{cid}/members/{cy.id}", headers=h.auth(ada))
        assert r.status_code == 204
    assert await members(h, ada, cid) == [ada.id]
    # Anyone may join again.
    assert (await h.http.post(f"/v1/conversations/{cid}/join", headers=h.auth(bob))).is_success


async def test_in_general_everyone_may_leave_and_nobody_removes_others(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await general_id(h, ada)
    r = await h.http.delete(f"/v1/conversations/{cid}/members/{bob.id}", headers=h.auth(ada))
    assert_error(r, 403, "forbidden")
    r = await h.http.delete(f"/v1/conversations/{cid}/members/{ada.id}", headers=h.auth(ada))
    assert r.status_code == 204
    assert await members(h, bob, cid) == [bob.id]


# ---------------------------------------------------------------- PATCH and conversation_updated


async def test_any_member_renames_a_group_and_every_connection_hears_it(h: Harness) -> None:
    ada, bob, cy = await h.account("ada"), await h.account("bob"), await h.account("cyd")
    gid = await h.group(ada, bob, cy)
    async with h.ws(ada) as ada_ws, h.ws(bob) as bob_ws, h.ws(bob) as bob_other:
        # Subscribed or not, every open connection of every member hears it, the
        # changer's own included (a REST change comes from no connection).
        await bob_ws.request("subscribe", conversation_id=gid)
        r = await h.http.patch(
            f"/v1/conversations/{gid}",
            json={"title": " Core team ", "topic": "ship v1.1"},
            headers=h.auth(bob),
        )
        assert r.status_code == 200, r.text
        assert (r.json()["title"], r.json()["topic"]) == ("Core team", "ship v1.1")
        for ws in (ada_ws, bob_ws, bob_other):
            frame = await ws.next_event("conversation_updated")
            assert set(frame) == {"type", "conversation"}
            c = frame["conversation"]
            assert (c["id"], c["title"], c["topic"]) == (gid, "Core team", "ship v1.1")
        # Only the topic; an empty topic clears it.
        r = await h.http.patch(f"/v1/conversations/{gid}", json={"topic": ""}, headers=h.auth(cy))
        assert r.status_code == 200 and r.json()["topic"] is None
        assert r.json()["title"] == "Core team"
        assert (await ada_ws.next_event("conversation_updated"))["conversation"]["topic"] is None
        # The same values again change nothing and announce nothing.
        r = await h.http.patch(
            f"/v1/conversations/{gid}", json={"title": "Core team"}, headers=h.auth(cy)
        )
        assert r.status_code == 200
        await ada_ws.assert_quiet()
    r = await h.http.get(f"/v1/conversations/{gid}", headers=h.auth(ada))
    assert (r.json()["title"], r.json()["topic"]) == ("Core team", None)


async def test_a_channel_topic_shows_in_the_channel_list(h: Harness) -> None:
    ada = await h.account("ada")
    cid = await general_id(h, ada)
    r = await h.http.patch(
        f"/v1/conversations/{cid}", json={"topic": "Say hi"}, headers=h.auth(ada)
    )
    assert r.status_code == 200, r.text
    (entry,) = await channels(h, ada, "general")
    assert entry["topic"] == "Say hi"
    other = await channel(h, ada, "random")
    r = await h.http.patch(
        f"/v1/conversations/{other}", json={"title": "GENERAL"}, headers=h.auth(ada)
    )
    assert_error(r, 409, "conflict")
    r = await h.http.patch(
        f"/v1/conversations/{other}", json={"title": "Random"}, headers=h.auth(ada)
    )
    assert r.status_code == 200 and r.json()["title"] == "Random"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": None},
        {"title": ""},
        {"title": "x" * 201},
        {"title": 7},
        {"topic": 7},
        {"topic": "t" * 501},
        {"topic": "bell\x07"},
        {"title": "ok", "topic": ["no"]},
    ],
)
async def test_bad_patches_are_400_and_change_nothing(h: Harness, body: dict[str, Any]) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    gid = await h.group(ada, bob, title="Team")
    async with h.ws(bob) as ws:
        r = await h.http.patch(f"/v1/conversations/{gid}", json=body, headers=h.auth(ada))
        assert_error(r, 400, "bad_request")
        await ws.assert_quiet()
    r = await h.http.get(f"/v1/conversations/{gid}", headers=h.auth(ada))
    assert (r.json()["title"], r.json()["topic"]) == ("Team", None)


async def test_patch_refusals_follow_the_order_of_checks(h: Harness) -> None:
    ada, bob, eve = await h.account("ada"), await h.account("bob"), await h.account("eve")
    gid = await h.group(ada, bob, title="Team")
    direct = await h.direct(ada, bob)
    ok = {"title": "New"}
    assert_error(await h.http.patch(f"/v1/conversations/{gid}", json=ok), 401, "unauthorized")
    # The body's fields come before the conversation.
    r = await h.http.patch("/v1/conversations/c_nope", json={"title": ""}, headers=h.auth(eve))
    assert_error(r, 400, "bad_request")
    r = await h.http.patch("/v1/conversations/c_nope", json=ok, headers=h.auth(eve))
    assert_error(r, 404, "not_found")
    r = await h.http.patch(f"/v1/conversations/{gid}", json=ok, headers=h.auth(eve))
    assert_error(r, 403, "forbidden")
    r = await h.http.patch(f"/v1/conversations/{direct}", json=ok, headers=h.auth(ada))
    assert_error(r, 400, "bad_request")
    r = await h.http.get(f"/v1/conversations/{direct}", headers=h.auth(ada))
    assert r.json()["title"] is None and r.json()["topic"] is None
    r = await h.http.get(f"/v1/conversations/{gid}", headers=h.auth(ada))
    assert r.json()["title"] == "Team"


# ---------------------------------------------------------------- member adds and removals


async def test_members_who_stay_hear_the_new_member_list(h: Harness) -> None:
    ada, bob, cy = await h.account("ada"), await h.account("bob"), await h.account("cyd")
    gid = await h.group(ada, bob)
    async with h.ws(ada) as ada_ws, h.ws(bob) as bob_ws, h.ws(cy) as cy_ws:
        r = await h.http.post(
            f"/v1/conversations/{gid}/members", json={"user_ids": [cy.id]}, headers=h.auth(bob)
        )
        assert r.status_code == 200
        both = sorted([ada.id, bob.id, cy.id])
        for ws in (ada_ws, bob_ws):
            frame = await ws.next_event("conversation_updated")
            assert sorted(frame["conversation"]["member_ids"]) == both
        assert (await cy_ws.next_event("conversation_added"))["conversation"]["id"] == gid
        await cy_ws.assert_quiet()
        # Adding someone who is in already tells nobody anything.
        r = await h.http.post(
            f"/v1/conversations/{gid}/members", json={"user_ids": [cy.id]}, headers=h.auth(bob)
        )
        assert r.status_code == 200
        await ada_ws.assert_quiet()
        r = await h.http.delete(f"/v1/conversations/{gid}/members/{bob.id}", headers=h.auth(ada))
        assert r.status_code == 204
        for ws in (ada_ws, cy_ws):
            frame = await ws.next_event("conversation_updated")
            assert sorted(frame["conversation"]["member_ids"]) == sorted([ada.id, cy.id])
        await _no_update(bob_ws)


async def _no_update(ws: WS) -> None:
    """The removed member gets no conversation_updated (its access ended)."""
    await ws.assert_quiet()
    assert all(e["type"] != "conversation_updated" for e in ws.events)


# ---------------------------------------------------------------- general for every way in


async def test_a_user_added_by_the_cli_beside_the_running_server_is_in_general(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with trio.fail_after(40):
        async with harness(make_config(data)) as h:
            bob = await h.account("bob")
            cid = await general_id(h, bob)
            # General's actor is live, with the members it knew at its start.
            assert (await post(h, bob, cid)).status_code == 201
            added = await cli(
                "user", "add", "ada", "--password-file", password_file(tmp_path), "--data-dir", data
            )
            assert added.returncode == 0, err(added)
            r = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "correct horse"}
            )
            assert r.status_code == 200, r.text
            ada = Account(r.json()["user"]["id"], "ada", r.json()["token"])
            r = await post(h, ada, cid, "hi from the cli")
            assert r.status_code == 201, r.text
            # One who left general stays out, whatever their next login does.
            r = await h.http.delete(
                f"/v1/conversations/{cid}/members/{ada.id}", headers=h.auth(ada)
            )
            assert r.status_code == 204
            r = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "correct horse"}
            )
            assert r.status_code == 200
            assert_error(await post(h, ada, cid), 403, "forbidden")


async def test_clerk_users_join_general_on_their_first_token_and_by_webhook(
    tmp_path: Path,
) -> None:
    with trio.fail_after(40):
        async with webhook_server(tmp_path) as h:
            first = {"Authorization": f"Bearer {token(sub='user_first')}"}
            r = await h.http.get("/v1/channels", params={"q": "general"}, headers=first)
            assert r.status_code == 200, r.text
            (general,) = r.json()["channels"]
            assert general["member_ids"] == ["user_first"] and general["last_seq"] == 0
            cid = general["id"]
            r = await h.http.post(
                f"/v1/conversations/{cid}/messages",
                json={"client_id": "x1", "body": "first"},
                headers=first,
            )
            assert r.status_code == 201, r.text
            # Created by webhook while general's actor runs: it may post at once.
            r = await post_webhook(h, *signed(user_event("user.created")))
            assert r.status_code == 200, r.text
            created = {"Authorization": f"Bearer {token()}"}
            r = await h.http.post(
                f"/v1/conversations/{cid}/messages",
                json={"client_id": "x2", "body": "second"},
                headers=created,
            )
            assert r.status_code == 201, r.text


# ---------------------------------------------------------------- members_joined_at (extension)


async def test_conversations_say_when_each_member_joined(h: Harness) -> None:
    ada, bob, cyd = await h.account("ada"), await h.account("bob"), await h.account("cyd")
    gid = await h.group(ada, bob)
    before = (await post(h, ada, gid, "before cyd")).json()
    await trio.sleep(0.01)  # a later millisecond than that message, for the comparison
    r = await h.http.post(
        f"/v1/conversations/{gid}/members", json={"user_ids": [cyd.id]}, headers=h.auth(ada)
    )
    joined = r.json()["members_joined_at"]
    # In joining order, as member_ids (founders, who joined at once, by id).
    assert list(joined) == r.json()["member_ids"] == [*sorted([ada.id, bob.id]), cyd.id]
    created = r.json()["created_at"]
    assert joined[ada.id] == joined[bob.id] == created
    after = (await post(h, ada, gid, "after cyd")).json()
    # "read by N of M": cyd counts for the second message only.
    assert before["created_at"] < joined[cyd.id] <= after["created_at"]
    r = await h.http.get(f"/v1/conversations/{gid}", headers=h.auth(cyd))
    assert r.json()["members_joined_at"] == joined
    # Groups only: not for direct conversations or channels (general: everyone).
    direct = await h.direct(ada, bob)
    r = await h.http.get(f"/v1/conversations/{direct}", headers=h.auth(ada))
    assert r.json()["members_joined_at"] == {}
    r = await h.http.get(f"/v1/conversations/{await general_id(h, ada)}", headers=h.auth(ada))
    assert r.json()["members_joined_at"] == {}
