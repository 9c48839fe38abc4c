"""REST API of PROTOCOL.md (all rows but media and push tokens), end to end.

Every test runs against the real server on 127.0.0.1:0 (the `h` fixture) with
real SQLite files under tmp_path. Failure paths also check that nothing changed.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import (
    Account,
    Harness,
    assert_error,
    harness,
    make_config,
    without_general,
)

# ---------------------------------------------------------------- helpers


async def post_message(
    h: Harness, who: Account, cid: str, body: str, client_id: str | None = None
) -> dict[str, Any]:
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": client_id or uuid.uuid4().hex, "body": body},
        headers=h.auth(who),
    )
    assert r.status_code == 201, r.text
    sent: dict[str, Any] = r.json()
    return sent


async def history(h: Harness, who: Account, cid: str, **params: Any) -> dict[str, Any]:
    r = await h.http.get(f"/v1/conversations/{cid}/messages", params=params, headers=h.auth(who))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def conversation(h: Harness, who: Account, cid: str) -> dict[str, Any]:
    r = await h.http.get(f"/v1/conversations/{cid}", headers=h.auth(who))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def listing(h: Harness, who: Account) -> list[dict[str, Any]]:
    r = await h.http.get("/v1/conversations", headers=h.auth(who))
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"conversations"}
    # Less `general`, which every user joins (v1.1; tests/test_channels.py covers it).
    return without_general(r.json()["conversations"])


async def user_count(h: Harness, who: Account) -> int:
    r = await h.http.get("/v1/users", params={"q": ""}, headers=h.auth(who))
    assert r.status_code == 200
    return len(r.json()["users"])


async def next_ms() -> None:
    """Let the server clock move on, so that activity times differ."""
    await trio.sleep(0.003)


USER_KEYS = {"id", "username", "display_name", "created_at", "bot"}
MESSAGE_KEYS = {
    "id",
    "conversation_id",
    "seq",
    "sender_id",
    "client_id",
    "body",
    "attachments",
    "created_at",
    # v1.1
    "reply_to",
    "mentions",
    "edited_at",
    "deleted_at",
    "reactions",
    "rev",
}
CONVERSATION_KEYS = {
    "id",
    "kind",
    "title",
    "member_ids",
    "created_at",
    "last_seq",
    "last_message",
    "unread_count",
    "topic",
    "members_joined_at",
    "last_rev",  # v1.1
}


# ---------------------------------------------------------------- health and accounts


async def test_healthz_answers_ok_without_auth(h: Harness) -> None:
    r = await h.http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_register_returns_201_with_user_and_token_that_works(h: Harness) -> None:
    r = await h.http.post(
        "/v1/auth/register",
        json={"username": "ada", "password": "password1", "display_name": "Ada L."},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"user", "token"}
    user = body["user"]
    assert set(user) == USER_KEYS
    assert user["username"] == "ada" and user["display_name"] == "Ada L."
    assert isinstance(user["id"], str) and isinstance(user["created_at"], int)
    me = await h.http.get("/v1/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200 and me.json() == user


async def test_register_without_display_name_uses_the_username(h: Harness) -> None:
    r = await h.http.post("/v1/auth/register", json={"username": "bob", "password": "password1"})
    assert r.status_code == 201
    assert r.json()["user"]["display_name"] == "bob"


@pytest.mark.parametrize(
    "username",
    ["ab", "a" * 33, "Ada", "ada lovelace", "ada@x", "adé", "", 123, None, ["ada"]],
)
async def test_register_rejects_bad_username_with_400_and_creates_nothing(
    h: Harness, username: object
) -> None:
    witness = await h.account("witness")
    r = await h.http.post("/v1/auth/register", json={"username": username, "password": "password1"})
    assert_error(r, 400, "bad_request")
    assert await user_count(h, witness) == 1


@pytest.mark.parametrize("username", ["abc", "a" * 32, "a_b.c-9", "..."])
async def test_register_accepts_every_username_of_the_allowed_alphabet(
    h: Harness, username: str
) -> None:
    r = await h.http.post("/v1/auth/register", json={"username": username, "password": "password1"})
    assert r.status_code == 201, r.text
    assert r.json()["user"]["username"] == username


@pytest.mark.parametrize("password", ["1234567", "", 12345678, None])
async def test_register_rejects_short_or_non_string_password_with_400(
    h: Harness, password: object
) -> None:
    witness = await h.account("witness")
    r = await h.http.post("/v1/auth/register", json={"username": "carol", "password": password})
    assert_error(r, 400, "bad_request")
    assert await user_count(h, witness) == 1
    login = await h.http.post("/v1/auth/login", json={"username": "carol", "password": "12345678"})
    assert_error(login, 401, "unauthorized")


async def test_register_accepts_password_of_exactly_eight_characters(h: Harness) -> None:
    r = await h.http.post("/v1/auth/register", json={"username": "carol", "password": "12345678"})
    assert r.status_code == 201


@pytest.mark.parametrize("display_name", ["", "   ", 7, ["Ada"]])
async def test_register_rejects_bad_display_name_with_400(h: Harness, display_name: object) -> None:
    witness = await h.account("witness")
    r = await h.http.post(
        "/v1/auth/register",
        json={"username": "ada", "password": "password1", "display_name": display_name},
    )
    assert_error(r, 400, "bad_request")
    assert await user_count(h, witness) == 1


async def test_register_taken_username_is_409_and_keeps_the_first_account(h: Harness) -> None:
    first = await h.account("ada")
    r = await h.http.post("/v1/auth/register", json={"username": "ada", "password": "different1"})
    assert_error(r, 409, "conflict")
    assert_error(
        await h.http.post("/v1/auth/login", json={"username": "ada", "password": "different1"}),
        401,
        "unauthorized",
    )
    login = await h.http.post("/v1/auth/login", json={"username": "ada", "password": "password1"})
    assert login.status_code == 200 and login.json()["user"]["id"] == first.id


async def test_concurrent_registrations_of_one_name_create_one_account(h: Harness) -> None:
    statuses: list[int] = []

    async def register() -> None:
        r = await h.http.post(
            "/v1/auth/register", json={"username": "racer", "password": "password1"}
        )
        statuses.append(r.status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(register)
    assert sorted(statuses) == [201, 409, 409, 409]


async def test_register_is_403_when_registration_is_closed(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", auth={"allow_registration": False})
    with trio.fail_after(30):
        async with harness(config) as h:
            r = await h.http.post(
                "/v1/auth/register", json={"username": "ada", "password": "password1"}
            )
            assert_error(r, 403, "forbidden")
            login = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "password1"}
            )
            assert_error(login, 401, "unauthorized")


async def test_login_returns_200_with_user_and_a_new_working_token(h: Harness) -> None:
    ada = await h.account("ada")
    r = await h.http.post("/v1/auth/login", json={"username": "ada", "password": "password1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"user", "token"}
    assert body["user"]["id"] == ada.id and body["token"] != ada.token
    me = await h.http.get("/v1/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200 and me.json()["id"] == ada.id


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "ada", "password": "wrong-password"},
        {"username": "nobody", "password": "password1"},
        {"username": "ADA", "password": "password1"},
        {"username": "ada", "password": ""},
    ],
)
async def test_login_with_wrong_credentials_is_401(h: Harness, credentials: dict[str, str]) -> None:
    await h.account("ada")
    assert_error(await h.http.post("/v1/auth/login", json=credentials), 401, "unauthorized")


async def test_logout_is_204_and_revokes_only_that_token(h: Harness) -> None:
    ada = await h.account("ada")
    login = await h.http.post("/v1/auth/login", json={"username": "ada", "password": "password1"})
    other_token = login.json()["token"]
    r = await h.http.post("/v1/auth/logout", headers=h.auth(ada))
    assert r.status_code == 204 and r.content == b""
    assert_error(await h.http.get("/v1/me", headers=h.auth(ada)), 401, "unauthorized")
    assert_error(await h.http.post("/v1/auth/logout", headers=h.auth(ada)), 401, "unauthorized")
    still = await h.http.get("/v1/me", headers={"Authorization": f"Bearer {other_token}"})
    assert still.status_code == 200 and still.json()["id"] == ada.id


async def test_logout_without_token_is_401(h: Harness) -> None:
    assert_error(await h.http.post("/v1/auth/logout"), 401, "unauthorized")


# ---------------------------------------------------------------- users


async def test_me_returns_the_caller(h: Harness) -> None:
    ada = await h.account("ada")
    r = await h.http.get("/v1/me", headers=h.auth(ada))
    assert r.status_code == 200
    assert r.json()["id"] == ada.id and r.json()["username"] == "ada"
    assert set(r.json()) == USER_KEYS


async def test_get_user_by_id_and_404_for_unknown(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    r = await h.http.get(f"/v1/users/{bob.id}", headers=h.auth(ada))
    assert r.status_code == 200 and r.json()["username"] == "bob" and set(r.json()) == USER_KEYS
    assert_error(await h.http.get("/v1/users/u_nobody", headers=h.auth(ada)), 404, "not_found")


async def test_user_search_matches_username_or_display_name_prefix(h: Harness) -> None:
    for username, display_name in [
        ("ada", "Countess"),
        ("adam", "Adam"),
        ("bob", "Adalbert"),
        ("carl", "Carl"),
    ]:
        r = await h.http.post(
            "/v1/auth/register",
            json={"username": username, "password": "password1", "display_name": display_name},
        )
        assert r.status_code == 201
    me = Account(id=r.json()["user"]["id"], username="carl", token=r.json()["token"])
    r = await h.http.get("/v1/users", params={"q": "ad"}, headers=h.auth(me))
    assert r.status_code == 200 and set(r.json()) == {"users"}
    assert sorted(u["username"] for u in r.json()["users"]) == ["ada", "adam", "bob"]
    r = await h.http.get("/v1/users", params={"q": "count"}, headers=h.auth(me))
    assert [u["username"] for u in r.json()["users"]] == ["ada"]
    # A prefix, not a substring: "arl" is inside "carl" but starts nothing.
    r = await h.http.get("/v1/users", params={"q": "arl"}, headers=h.auth(me))
    assert r.json()["users"] == []


async def test_user_search_treats_like_wildcards_literally(h: Harness) -> None:
    await h.account("a_b")
    axb = await h.account("axb")
    r = await h.http.get("/v1/users", params={"q": "a_"}, headers=h.auth(axb))
    assert [u["username"] for u in r.json()["users"]] == ["a_b"]
    r = await h.http.get("/v1/users", params={"q": "%"}, headers=h.auth(axb))
    assert r.json()["users"] == []


async def test_user_search_returns_at_most_20(h: Harness) -> None:
    accounts = [await h.account(f"member{i:02d}") for i in range(23)]
    r = await h.http.get("/v1/users", params={"q": "member"}, headers=h.auth(accounts[0]))
    users = r.json()["users"]
    assert len(users) == 20
    assert all(set(u) == USER_KEYS and u["username"].startswith("member") for u in users)


# ---------------------------------------------------------------- creating conversations


async def test_direct_conversation_is_201_then_200_with_the_same_one_from_either_side(
    h: Harness,
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    first = await h.http.post(
        "/v1/conversations", json={"kind": "direct", "member_ids": [bob.id]}, headers=h.auth(ada)
    )
    assert first.status_code == 201, first.text
    conv = first.json()
    assert set(conv) == CONVERSATION_KEYS
    assert conv["kind"] == "direct" and conv["title"] is None
    assert sorted(conv["member_ids"]) == sorted([ada.id, bob.id])
    assert conv["last_seq"] == 0 and conv["last_message"] is None and conv["unread_count"] == 0
    again = await h.http.post(
        "/v1/conversations", json={"kind": "direct", "member_ids": [bob.id]}, headers=h.auth(ada)
    )
    assert again.status_code == 200 and again.json()["id"] == conv["id"]
    reverse = await h.http.post(
        "/v1/conversations", json={"kind": "direct", "member_ids": [ada.id]}, headers=h.auth(bob)
    )
    assert reverse.status_code == 200 and reverse.json()["id"] == conv["id"]
    assert [c["id"] for c in await listing(h, ada)] == [conv["id"]]


async def test_concurrent_direct_creation_gives_one_conversation(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    results: list[tuple[int, str]] = []

    async def open_direct(a: Account, b: Account) -> None:
        r = await h.http.post(
            "/v1/conversations", json={"kind": "direct", "member_ids": [b.id]}, headers=h.auth(a)
        )
        results.append((r.status_code, r.json()["id"]))

    async with trio.open_nursery() as nursery:
        for a, b in [(ada, bob), (bob, ada), (ada, bob), (bob, ada)]:
            nursery.start_soon(open_direct, a, b)
    assert sorted(status for status, _ in results) == [200, 200, 200, 201]
    assert len({cid for _, cid in results}) == 1


async def test_direct_conversation_with_an_existing_message_returns_it_with_200(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    sent = await post_message(h, ada, cid, "hello")
    r = await h.http.post(
        "/v1/conversations", json={"kind": "direct", "member_ids": [ada.id]}, headers=h.auth(bob)
    )
    assert r.status_code == 200
    assert r.json()["last_seq"] == 1 and r.json()["last_message"] == sent
    assert r.json()["unread_count"] == 1


async def test_group_conversation_is_201_with_title_and_the_caller_as_member(h: Harness) -> None:
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    r = await h.http.post(
        "/v1/conversations",
        json={"kind": "group", "title": "Team", "member_ids": [bob.id, cat.id]},
        headers=h.auth(ada),
    )
    assert r.status_code == 201, r.text
    conv = r.json()
    assert conv["kind"] == "group" and conv["title"] == "Team"
    assert sorted(conv["member_ids"]) == sorted([ada.id, bob.id, cat.id])
    # Naming yourself, or someone twice, still makes each a member once.
    r = await h.http.post(
        "/v1/conversations",
        json={"kind": "group", "title": "Pair", "member_ids": [ada.id, bob.id, bob.id]},
        headers=h.auth(ada),
    )
    assert r.status_code == 201
    assert sorted(r.json()["member_ids"]) == sorted([ada.id, bob.id])
    # Two groups with the same people are two conversations.
    assert r.json()["id"] != conv["id"]


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "direct", "member_ids": ["u_nobody"]},
        {"kind": "group", "title": "T", "member_ids": ["u_nobody"]},
        {"kind": "direct", "member_ids": []},
        {"kind": "direct", "member_ids": "BOB"},
        {"kind": "direct"},
        {"kind": "direct", "member_ids": [7]},
        {"kind": "group", "member_ids": []},
        {"kind": "group", "title": "   ", "member_ids": []},
        {"kind": "group", "title": 5, "member_ids": []},
        {"kind": "channel", "member_ids": []},
        {"member_ids": []},
    ],
)
async def test_create_conversation_bad_input_is_400_and_creates_nothing(
    h: Harness, body: dict[str, Any]
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    body = {**body}
    if body.get("member_ids") == "BOB":
        body["member_ids"] = bob.id  # a string, not a list
    r = await h.http.post("/v1/conversations", json=body, headers=h.auth(ada))
    assert_error(r, 400, "bad_request")
    assert await listing(h, ada) == []
    assert await listing(h, bob) == []


async def test_direct_conversation_with_yourself_is_400(h: Harness) -> None:
    ada = await h.account("ada")
    r = await h.http.post(
        "/v1/conversations", json={"kind": "direct", "member_ids": [ada.id]}, headers=h.auth(ada)
    )
    body = assert_error(r, 400, "bad_request")
    # Said as a person would read it (the CLI shows it as is): no field name.
    assert body["error"]["message"] == "you cannot open a direct conversation with yourself"
    assert await listing(h, ada) == []


async def test_direct_with_two_others_is_400(h: Harness) -> None:
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    r = await h.http.post(
        "/v1/conversations",
        json={"kind": "direct", "member_ids": [bob.id, cat.id]},
        headers=h.auth(ada),
    )
    assert_error(r, 400, "bad_request")
    assert await listing(h, ada) == []


# ---------------------------------------------------------------- listing and reading conversations


async def test_conversation_list_holds_only_the_callers_conversations(h: Harness) -> None:
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    ab = await h.direct(ada, bob)
    bc = await h.direct(bob, cat)
    group = await h.group(cat, ada, title="Ada and Cat")
    assert sorted(c["id"] for c in await listing(h, ada)) == sorted([ab, group])
    assert sorted(c["id"] for c in await listing(h, bob)) == sorted([ab, bc])
    assert sorted(c["id"] for c in await listing(h, cat)) == sorted([bc, group])
    assert all(set(c) == CONVERSATION_KEYS for c in await listing(h, ada))


async def test_conversation_list_is_ordered_by_most_recent_activity(h: Harness) -> None:
    ada, bob, cat, dan = [await h.account(n) for n in ("ada", "bob", "cat", "dan")]
    first = await h.direct(ada, bob)
    await next_ms()
    second = await h.direct(ada, cat)
    await next_ms()
    third = await h.direct(ada, dan)
    # Without messages, the newest conversation comes first.
    assert [c["id"] for c in await listing(h, ada)] == [third, second, first]
    await next_ms()
    await post_message(h, bob, first, "bump")
    assert [c["id"] for c in await listing(h, ada)] == [first, third, second]
    await next_ms()
    await post_message(h, ada, second, "mine counts too")
    assert [c["id"] for c in await listing(h, ada)] == [second, first, third]


async def test_conversation_entries_carry_last_seq_last_message_and_unread_for_the_caller(
    h: Harness,
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    await post_message(h, bob, cid, "one")
    await post_message(h, bob, cid, "two")
    last = await post_message(h, ada, cid, "three")
    (for_ada,) = await listing(h, ada)
    (for_bob,) = await listing(h, bob)
    assert for_ada["last_seq"] == for_bob["last_seq"] == 3
    assert for_ada["last_message"] == for_bob["last_message"] == last
    # Only others' messages count, and sending does not move the sender's cursor.
    assert for_ada["unread_count"] == 2
    assert for_bob["unread_count"] == 1
    assert (await conversation(h, ada, cid))["unread_count"] == 2
    assert (await conversation(h, bob, cid))["unread_count"] == 1


async def test_only_mark_read_moves_the_unread_count(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    for body in ("one", "two", "three"):
        await post_message(h, bob, cid, body)
    # Reading history and subscribing do not move the cursor.
    await history(h, ada, cid)
    async with h.ws(ada) as ws:
        assert (await ws.request("subscribe", conversation_id=cid))["type"] == "subscribed"
        assert (await conversation(h, ada, cid))["unread_count"] == 3
        assert (await ws.request("mark_read", conversation_id=cid, seq=2))["type"] == "ok"
        assert (await conversation(h, ada, cid))["unread_count"] == 1
        # Sending does not count as reading.
        await post_message(h, ada, cid, "reply")
        assert (await conversation(h, ada, cid))["unread_count"] == 1
        # A cursor never moves back, and stops at last_seq.
        assert (await ws.request("mark_read", conversation_id=cid, seq=1))["type"] == "ok"
        assert (await conversation(h, ada, cid))["unread_count"] == 1
        assert (await ws.request("mark_read", conversation_id=cid, seq=999))["type"] == "ok"
        assert (await conversation(h, ada, cid))["unread_count"] == 0
        await post_message(h, bob, cid, "five")
        assert (await conversation(h, ada, cid))["unread_count"] == 1
    # Bob's unread count is his own: Ada's reply, untouched by Ada's cursor.
    assert (await conversation(h, bob, cid))["unread_count"] == 1


async def test_get_conversation_404_for_unknown_and_403_for_non_member(h: Harness) -> None:
    ada, bob, eve = await h.account("ada"), await h.account("bob"), await h.account("eve")
    cid = await h.direct(ada, bob)
    conv = await conversation(h, ada, cid)
    assert conv["id"] == cid and set(conv) == CONVERSATION_KEYS
    assert_error(
        await h.http.get("/v1/conversations/c_nothing", headers=h.auth(ada)), 404, "not_found"
    )
    assert_error(
        await h.http.get(f"/v1/conversations/{'c' * 300}", headers=h.auth(ada)), 404, "not_found"
    )
    assert_error(
        await h.http.get(f"/v1/conversations/{cid}", headers=h.auth(eve)), 403, "forbidden"
    )


# ---------------------------------------------------------------- members


async def test_any_member_may_add_members_to_a_group(h: Harness) -> None:
    ada, bob, cat, dan = [await h.account(n) for n in ("ada", "bob", "cat", "dan")]
    gid = await h.group(ada, bob)
    r = await h.http.post(
        f"/v1/conversations/{gid}/members", json={"user_ids": [cat.id]}, headers=h.auth(bob)
    )
    assert r.status_code == 200, r.text
    assert set(r.json()) == CONVERSATION_KEYS
    assert sorted(r.json()["member_ids"]) == sorted([ada.id, bob.id, cat.id])
    # Adding an existing member again changes nothing and is not an error.
    r = await h.http.post(
        f"/v1/conversations/{gid}/members", json={"user_ids": [cat.id, dan.id]}, headers=h.auth(cat)
    )
    assert r.status_code == 200
    assert sorted(r.json()["member_ids"]) == sorted([ada.id, bob.id, cat.id, dan.id])
    assert gid in [c["id"] for c in await listing(h, dan)]
    await post_message(h, dan, gid, "hello from dan")


async def test_adding_members_refused_for_non_members_direct_and_bad_input(h: Harness) -> None:
    ada, bob, eve = await h.account("ada"), await h.account("bob"), await h.account("eve")
    gid = await h.group(ada, bob)
    did = await h.direct(ada, bob)
    url = f"/v1/conversations/{gid}/members"
    assert_error(
        await h.http.post(url, json={"user_ids": [eve.id]}, headers=h.auth(eve)), 403, "forbidden"
    )
    assert_error(
        await h.http.post(
            "/v1/conversations/c_nothing/members", json={"user_ids": [eve.id]}, headers=h.auth(ada)
        ),
        404,
        "not_found",
    )
    assert_error(
        await h.http.post(
            f"/v1/conversations/{did}/members", json={"user_ids": [eve.id]}, headers=h.auth(ada)
        ),
        400,
        "bad_request",
    )
    bad: dict[str, Any]
    for bad in (
        {"user_ids": ["u_nobody"]},
        {"user_ids": []},
        {"user_ids": eve.id},
        {},
        {"user_ids": [1]},
    ):
        assert_error(await h.http.post(url, json=bad, headers=h.auth(ada)), 400, "bad_request")
    # An unknown id among known ones adds none of them.
    assert_error(
        await h.http.post(url, json={"user_ids": [eve.id, "u_nobody"]}, headers=h.auth(ada)),
        400,
        "bad_request",
    )
    assert sorted((await conversation(h, ada, gid))["member_ids"]) == sorted([ada.id, bob.id])
    assert sorted((await conversation(h, ada, did))["member_ids"]) == sorted([ada.id, bob.id])
    assert await listing(h, eve) == []


async def test_member_may_remove_themself(h: Harness) -> None:
    ada, bob, cat = [await h.account(n) for n in ("ada", "bob", "cat")]
    gid = await h.group(ada, bob, cat)
    r = await h.http.delete(f"/v1/conversations/{gid}/members/{bob.id}", headers=h.auth(bob))
    assert r.status_code == 204 and r.content == b""
    assert sorted((await conversation(h, ada, gid))["member_ids"]) == sorted([ada.id, cat.id])
    assert await listing(h, bob) == []


async def test_creator_may_remove_anyone_but_others_may_not(h: Harness) -> None:
    ada, bob, cat = [await h.account(n) for n in ("ada", "bob", "cat")]
    gid = await h.group(ada, bob, cat)
    assert_error(
        await h.http.delete(f"/v1/conversations/{gid}/members/{cat.id}", headers=h.auth(bob)),
        403,
        "forbidden",
    )
    assert_error(
        await h.http.delete(f"/v1/conversations/{gid}/members/{ada.id}", headers=h.auth(bob)),
        403,
        "forbidden",
    )
    assert sorted((await conversation(h, ada, gid))["member_ids"]) == sorted(
        [ada.id, bob.id, cat.id]
    )
    r = await h.http.delete(f"/v1/conversations/{gid}/members/{cat.id}", headers=h.auth(ada))
    assert r.status_code == 204
    assert sorted((await conversation(h, ada, gid))["member_ids"]) == sorted([ada.id, bob.id])


async def test_removing_from_direct_non_member_or_unknown_is_refused(h: Harness) -> None:
    ada, bob, eve = await h.account("ada"), await h.account("bob"), await h.account("eve")
    did = await h.direct(ada, bob)
    gid = await h.group(ada, bob)
    assert_error(
        await h.http.delete(f"/v1/conversations/{did}/members/{bob.id}", headers=h.auth(ada)),
        400,
        "bad_request",
    )
    assert_error(
        await h.http.delete(f"/v1/conversations/{gid}/members/{bob.id}", headers=h.auth(eve)),
        403,
        "forbidden",
    )
    assert_error(
        await h.http.delete(f"/v1/conversations/{gid}/members/{eve.id}", headers=h.auth(ada)),
        404,
        "not_found",
    )
    assert_error(
        await h.http.delete(f"/v1/conversations/c_nothing/members/{bob.id}", headers=h.auth(ada)),
        404,
        "not_found",
    )
    assert sorted((await conversation(h, ada, did))["member_ids"]) == sorted([ada.id, bob.id])
    assert sorted((await conversation(h, ada, gid))["member_ids"]) == sorted([ada.id, bob.id])


# ---------------------------------------------------------------- messages


async def test_post_message_returns_201_with_the_stored_message(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": "c-1", "body": "hello"},
        headers=h.auth(ada),
    )
    assert r.status_code == 201, r.text
    message = r.json()
    assert set(message) == MESSAGE_KEYS
    assert (
        message["conversation_id"] == cid and message["seq"] == 1 and message["sender_id"] == ada.id
    )
    assert (
        message["client_id"] == "c-1"
        and message["body"] == "hello"
        and message["attachments"] == []
    )
    assert (await history(h, bob, cid))["messages"] == [message]


async def test_repeated_client_id_over_rest_returns_original_with_200(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    original = await post_message(h, ada, cid, "first", client_id="same")
    again = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": "same", "body": "changed"},
        headers=h.auth(ada),
    )
    assert again.status_code == 200 and again.json() == original
    assert (await history(h, ada, cid))["messages"] == [original]
    # The same client_id from another sender is another message.
    other = await post_message(h, bob, cid, "bob's", client_id="same")
    assert other["seq"] == 2 and other["id"] != original["id"]
    # A WebSocket resend of the REST message is the same original too.
    async with h.ws(ada) as ws:
        ack = await ws.send_message(cid, "via ws", client_id="same")
        assert ack["type"] == "ack" and ack["duplicate"] is True and ack["message"] == original
    assert [m["seq"] for m in (await history(h, ada, cid))["messages"]] == [1, 2]


@pytest.mark.parametrize("body", ["", "   ", "\n\t "])
async def test_post_message_with_empty_body_is_400_and_stores_nothing(
    h: Harness, body: str
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": "x", "body": body},
        headers=h.auth(ada),
    )
    assert_error(r, 400, "bad_request")
    assert (await history(h, ada, cid))["messages"] == []
    # The client_id was not used up.
    assert (await post_message(h, ada, cid, "ok", client_id="x"))["seq"] == 1


async def test_post_message_body_limit_counts_characters_after_trimming(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", limits={"max_body_chars": 10})
    with trio.fail_after(30):
        async with harness(config) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cid = await h.direct(ada, bob)
            url = f"/v1/conversations/{cid}/messages"
            r = await h.http.post(
                url, json={"client_id": "a", "body": "x" * 11}, headers=h.auth(ada)
            )
            assert_error(r, 413, "too_large")
            assert (await history(h, ada, cid))["messages"] == []
            # Exactly the limit, in characters (not bytes), with whitespace around it.
            body = "  " + "é" * 10 + "\n"
            r = await h.http.post(url, json={"client_id": "b", "body": body}, headers=h.auth(ada))
            # v1.1: bodies are stored trimmed, and returned as stored.
            assert r.status_code == 201 and r.json()["body"] == body.strip()


@pytest.mark.parametrize(
    "payload",
    [
        {"body": "no client id"},
        {"client_id": "", "body": "empty client id"},
        {"client_id": "x" * 129, "body": "long client id"},
        {"client_id": 5, "body": "numeric client id"},
        {"client_id": "a"},
        {"client_id": "a", "body": 5},
        {"client_id": "a", "body": None},
        {"client_id": "a", "body": "hi", "attachments": "m_1"},
        {"client_id": "a", "body": "hi", "attachments": [1]},
        [{"client_id": "a", "body": "hi"}],
        "hello",
    ],
)
async def test_post_message_bad_input_is_400_and_stores_nothing(h: Harness, payload: Any) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    r = await h.http.post(f"/v1/conversations/{cid}/messages", json=payload, headers=h.auth(ada))
    assert_error(r, 400, "bad_request")
    assert (await history(h, ada, cid))["messages"] == []
    assert (await conversation(h, ada, cid))["last_seq"] == 0


async def test_post_message_accepts_client_id_of_128_characters(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    assert (await post_message(h, ada, cid, "hi", client_id="k" * 128))["client_id"] == "k" * 128


async def test_post_message_to_unknown_or_foreign_conversation_is_404_or_403(h: Harness) -> None:
    ada, bob, eve = await h.account("ada"), await h.account("bob"), await h.account("eve")
    cid = await h.direct(ada, bob)
    good = {"client_id": "a", "body": "hi"}
    assert_error(
        await h.http.post("/v1/conversations/c_nothing/messages", json=good, headers=h.auth(ada)),
        404,
        "not_found",
    )
    assert_error(
        await h.http.post(f"/v1/conversations/{cid}/messages", json=good, headers=h.auth(eve)),
        403,
        "forbidden",
    )
    # Authorization is decided before the body is looked at.
    assert_error(
        await h.http.post(
            f"/v1/conversations/{cid}/messages", json={"body": ""}, headers=h.auth(eve)
        ),
        403,
        "forbidden",
    )
    assert (await history(h, ada, cid))["messages"] == []


# ---------------------------------------------------------------- history paging


async def seed(h: Harness, count: int) -> tuple[Account, str]:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with h.ws(ada) as ws:
        for i in range(count):
            ack = await ws.send_message(cid, f"m{i + 1}")
            assert ack["message"]["seq"] == i + 1
    return bob, cid


def seqs(page: dict[str, Any]) -> list[int]:
    return [m["seq"] for m in page["messages"]]


async def test_history_default_is_the_latest_50_ascending_with_has_more(h: Harness) -> None:
    bob, cid = await seed(h, 60)
    page = await history(h, bob, cid)
    assert set(page) == {"messages", "has_more"}
    assert seqs(page) == list(range(11, 61)) and page["has_more"] is True
    assert all(set(m) == MESSAGE_KEYS for m in page["messages"])
    assert page["messages"][0]["body"] == "m11"


async def test_history_limit_above_200_is_clamped_to_200(h: Harness) -> None:
    bob, cid = await seed(h, 205)
    page = await history(h, bob, cid, limit=1000)
    assert seqs(page) == list(range(6, 206)) and page["has_more"] is True
    page = await history(h, bob, cid, after_seq=0, limit=201)
    assert seqs(page) == list(range(1, 201)) and page["has_more"] is True
    page = await history(h, bob, cid, limit=200, before_seq=201)
    assert seqs(page) == list(range(1, 201)) and page["has_more"] is False


async def test_history_before_seq_pages_backwards_with_has_more_for_older(h: Harness) -> None:
    bob, cid = await seed(h, 7)
    page = await history(h, bob, cid, limit=3)
    assert seqs(page) == [5, 6, 7] and page["has_more"] is True
    page = await history(h, bob, cid, limit=3, before_seq=5)
    assert seqs(page) == [2, 3, 4] and page["has_more"] is True
    page = await history(h, bob, cid, limit=3, before_seq=2)
    assert seqs(page) == [1] and page["has_more"] is False
    page = await history(h, bob, cid, limit=3, before_seq=4)
    assert seqs(page) == [1, 2, 3] and page["has_more"] is False
    page = await history(h, bob, cid, limit=3, before_seq=1)
    assert seqs(page) == [] and page["has_more"] is False
    page = await history(h, bob, cid, limit=7)
    assert seqs(page) == list(range(1, 8)) and page["has_more"] is False


async def test_history_after_seq_pages_forwards_with_has_more_for_newer(h: Harness) -> None:
    bob, cid = await seed(h, 7)
    page = await history(h, bob, cid, after_seq=0, limit=3)
    assert seqs(page) == [1, 2, 3] and page["has_more"] is True
    page = await history(h, bob, cid, after_seq=3, limit=3)
    assert seqs(page) == [4, 5, 6] and page["has_more"] is True
    page = await history(h, bob, cid, after_seq=6, limit=3)
    assert seqs(page) == [7] and page["has_more"] is False
    page = await history(h, bob, cid, after_seq=4, limit=3)
    assert seqs(page) == [5, 6, 7] and page["has_more"] is False
    page = await history(h, bob, cid, after_seq=7)
    assert seqs(page) == [] and page["has_more"] is False
    page = await history(h, bob, cid, after_seq=100)
    assert seqs(page) == [] and page["has_more"] is False


async def test_history_with_both_bounds_stays_between_them(h: Harness) -> None:
    bob, cid = await seed(h, 10)
    page = await history(h, bob, cid, after_seq=2, before_seq=8, limit=3)
    assert seqs(page) == [3, 4, 5] and page["has_more"] is True
    page = await history(h, bob, cid, after_seq=4, before_seq=8, limit=3)
    assert seqs(page) == [5, 6, 7] and page["has_more"] is False


async def test_history_of_empty_conversation_is_empty(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    assert await history(h, ada, cid) == {"messages": [], "has_more": False}
    assert await history(h, ada, cid, after_seq=0) == {"messages": [], "has_more": False}


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"limit": "²"},
        {"after_seq": "-1"},
        {"after_seq": "x"},
        {"before_seq": "¹"},
        {"before_seq": "99999999999999999999999"},
    ],
)
async def test_history_bad_paging_parameters_are_400(h: Harness, params: dict[str, str]) -> None:
    bob, cid = await seed(h, 2)
    r = await h.http.get(f"/v1/conversations/{cid}/messages", params=params, headers=h.auth(bob))
    assert_error(r, 400, "bad_request")


async def test_history_of_unknown_or_foreign_conversation_is_404_or_403(h: Harness) -> None:
    bob, cid = await seed(h, 1)
    eve = await h.account("eve")
    assert_error(
        await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(eve)), 403, "forbidden"
    )
    assert_error(
        await h.http.get("/v1/conversations/c_nothing/messages", headers=h.auth(bob)),
        404,
        "not_found",
    )


# ---------------------------------------------------------------- auth on every route, bad bodies


AUTHENTICATED_ROUTES = [
    ("POST", "/v1/auth/logout"),
    ("GET", "/v1/me"),
    ("GET", "/v1/users/{user}"),
    ("GET", "/v1/users?q=a"),
    ("POST", "/v1/conversations"),
    ("GET", "/v1/conversations"),
    ("GET", "/v1/conversations/{cid}"),
    ("POST", "/v1/conversations/{cid}/members"),
    ("DELETE", "/v1/conversations/{cid}/members/{user}"),
    ("GET", "/v1/conversations/{cid}/messages"),
    ("POST", "/v1/conversations/{cid}/messages"),
]


async def test_every_authenticated_route_is_401_without_or_with_a_bad_token(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    gid = await h.group(ada, bob)
    revoked = await h.http.post("/v1/auth/login", json={"username": "bob", "password": "password1"})
    revoked_token = revoked.json()["token"]
    assert (
        await h.http.post("/v1/auth/logout", headers={"Authorization": f"Bearer {revoked_token}"})
    ).status_code == 204
    bodies = {
        "/v1/conversations": {"kind": "direct", "member_ids": [bob.id]},
        f"/v1/conversations/{gid}/members": {"user_ids": [bob.id]},
        f"/v1/conversations/{gid}/messages": {"client_id": "a", "body": "hi"},
    }
    for method, path in AUTHENTICATED_ROUTES:
        url = path.format(user=bob.id, cid=gid)
        for headers in (
            {},
            {"Authorization": "Bearer not-a-token"},
            {"Authorization": f"Bearer {revoked_token}"},
            {"Authorization": f"Basic {ada.token}"},
            {"Authorization": "Bearer"},
            {"Authorization": ada.token},
        ):
            r = await h.http.request(method, url, json=bodies.get(url), headers=headers)
            try:
                assert_error(r, 401, "unauthorized")
            except AssertionError as exc:
                raise AssertionError(f"{method} {url} with {headers}: {exc}") from None
    # Nothing happened: no message, no member change, ada still logged in.
    assert (await conversation(h, ada, gid))["last_seq"] == 0
    assert sorted((await conversation(h, ada, gid))["member_ids"]) == sorted([ada.id, bob.id])
    assert len(await listing(h, ada)) == 1
    assert (await h.http.get("/v1/me", headers=h.auth(ada))).status_code == 200


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"null",
        b"[]",
        b'"text"',
        b"42",
        b'{"a": NaN}',
        b"[" * 5000 + b"]" * 5000,
        b"\xff\xfe",
    ],
)
async def test_bad_json_bodies_are_400_and_change_nothing(h: Harness, content: bytes) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    gid = await h.group(ada, bob)
    headers = {**h.auth(ada), "Content-Type": "application/json"}
    for url in (
        "/v1/auth/register",
        "/v1/auth/login",
        "/v1/conversations",
        f"/v1/conversations/{gid}/members",
        f"/v1/conversations/{gid}/messages",
    ):
        r = await h.http.post(url, content=content, headers=headers)
        assert_error(r, 400, "bad_request")
    assert await user_count(h, ada) == 2
    assert [c["id"] for c in await listing(h, ada)] == [gid]
    assert (await conversation(h, ada, gid))["last_seq"] == 0


async def test_oversized_request_body_is_413_and_changes_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", server={"max_request_body_bytes": 1024})
    with trio.fail_after(30):
        async with harness(config) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cid = await h.direct(ada, bob)
            big = {"client_id": "a", "body": "x" * 2000}
            r = await h.http.post(
                f"/v1/conversations/{cid}/messages", json=big, headers=h.auth(ada)
            )
            assert_error(r, 413, "too_large")

            # Streamed without a Content-Length, the limit holds too.
            async def chunks() -> Any:
                for _ in range(4):
                    yield b" " * 400
                yield b'{"username": "zed", "password": "password1"}'

            r = await h.http.post("/v1/auth/register", content=chunks())
            assert_error(r, 413, "too_large")
            r = await h.http.post(
                "/v1/auth/register",
                json={"username": "zed", "password": "password1", "display_name": "z" * 2000},
            )
            assert_error(r, 413, "too_large")
            assert (await history(h, ada, cid))["messages"] == []
            assert await user_count(h, ada) == 2
            # The server still serves normally afterwards.
            assert (await post_message(h, ada, cid, "small"))["seq"] == 1


async def test_unknown_route_is_404_and_wrong_method_is_405_with_error_body(h: Harness) -> None:
    ada = await h.account("ada")
    assert_error(await h.http.get("/v1/nothing", headers=h.auth(ada)), 404, "not_found")
    r = await h.http.delete("/v1/me", headers=h.auth(ada))
    assert r.status_code == 405 and set(r.json()["error"]) == {"code", "message"}


async def test_error_responses_are_json(h: Harness) -> None:
    r = await h.http.get("/v1/me")
    assert r.headers["content-type"] == "application/json"
    assert isinstance(r.json()["error"]["message"], str)


async def test_rest_and_websocket_share_one_seq_order(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with h.ws(bob) as ws:
        await ws.request("subscribe", conversation_id=cid)
        sent = await post_message(h, ada, cid, "via rest")
        assert (await ws.next_event("new_message"))["message"] == sent
        ack = await ws.send_message(cid, "via ws")
        assert ack["message"]["seq"] == 2
    assert [m["body"] for m in (await history(h, ada, cid))["messages"]] == ["via rest", "via ws"]
