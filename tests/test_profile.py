"""v1.1 people (PROTOCOL.md "Conversations, people, files"): `PATCH /v1/me`,
`POST /v1/me/password` (every other token revoked and its sockets closed with 1008),
the paged user list of `GET /v1/users`, and `bot` on user objects. The real server on
127.0.0.1:0; where sockets are closed, the server closes first (that is under test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import Account, Harness, assert_error
from tests.test_clerk import clerk_server, token
from tests.test_revocation import closed_with, login

USER_KEYS = {"id", "username", "display_name", "created_at", "bot"}


async def me(h: Harness, who: Account) -> dict[str, Any]:
    r = await h.http.get("/v1/me", headers=h.auth(who))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# ---------------------------------------------------------------- display name


async def test_patch_me_sets_the_display_name_others_see(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    r = await h.http.patch("/v1/me", json={"display_name": "  Ada L.  "}, headers=h.auth(ada))
    assert r.status_code == 200, r.text
    assert set(r.json()) == USER_KEYS
    assert r.json()["display_name"] == "Ada L." and r.json()["bot"] is False
    assert (await me(h, ada))["display_name"] == "Ada L."
    r = await h.http.get(f"/v1/users/{ada.id}", headers=h.auth(bob))
    assert r.json()["display_name"] == "Ada L."
    # A body without it changes nothing.
    r = await h.http.patch("/v1/me", json={}, headers=h.auth(ada))
    assert r.status_code == 200 and r.json()["display_name"] == "Ada L."


@pytest.mark.parametrize(
    "body",
    [
        {"display_name": ""},
        {"display_name": "   "},
        {"display_name": "x" * 65},
        {"display_name": None},
        {"display_name": 5},
        {"display_name": ["a"]},
    ],
)
async def test_bad_display_names_are_400_and_change_nothing(
    h: Harness, body: dict[str, Any]
) -> None:
    ada = await h.account("ada")
    assert_error(await h.http.patch("/v1/me", json=body, headers=h.auth(ada)), 400, "bad_request")
    assert (await me(h, ada))["display_name"] == "ada"


async def test_patch_me_needs_a_token(h: Harness) -> None:
    assert_error(await h.http.patch("/v1/me", json={"display_name": "x"}), 401, "unauthorized")


# ---------------------------------------------------------------- password


async def change(h: Harness, who: Account, old: Any, new: Any) -> Any:
    return await h.http.post(
        "/v1/me/password", json={"old_password": old, "new_password": new}, headers=h.auth(who)
    )


async def signs_in(h: Harness, who: Account, password: str) -> bool:
    r = await h.http.post("/v1/auth/login", json={"username": who.username, "password": password})
    return r.status_code == 200


async def test_a_password_change_revokes_every_other_token_and_closes_its_sockets(
    h: Harness,
) -> None:
    ada = await h.account("ada")
    phone, laptop = await login(h, ada), await login(h, ada)
    with trio.fail_after(20):
        async with h.ws(ada) as own_ws, h.ws(phone) as phone_ws, h.ws(laptop) as laptop_ws:
            r = await change(h, ada, "password1", "a new secret")
            assert r.status_code == 204, r.text
            assert await closed_with(phone_ws) == 1008
            assert await closed_with(laptop_ws) == 1008
            # The caller stays signed in, on REST and on its socket.
            assert (await own_ws.request("ping"))["type"] == "pong"
            assert (await me(h, ada))["id"] == ada.id
    for other in (phone, laptop):
        assert_error(await h.http.get("/v1/me", headers=h.auth(other)), 401, "unauthorized")
    assert not await signs_in(h, ada, "password1")
    assert await signs_in(h, ada, "a new secret")


async def test_a_wrong_old_password_is_403_and_the_caller_stays_signed_in(h: Harness) -> None:
    ada = await h.account("ada")
    phone = await login(h, ada)
    r = await change(h, ada, "not my password", "a new secret")
    assert_error(r, 403, "forbidden")
    assert (await me(h, ada))["id"] == ada.id
    assert (await me(h, phone))["id"] == ada.id
    assert await signs_in(h, ada, "password1")
    assert not await signs_in(h, ada, "a new secret")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("password1", "short"),
        ("password1", "x" * 1025),
        ("password1", None),
        (None, "long enough"),
        (5, "long enough"),
        ("password1", 12345678),
    ],
)
async def test_bad_password_bodies_are_400_and_change_nothing(
    h: Harness, old: Any, new: Any
) -> None:
    ada = await h.account("ada")
    phone = await login(h, ada)
    assert_error(await change(h, ada, old, new), 400, "bad_request")
    assert (await me(h, phone))["id"] == ada.id
    assert await signs_in(h, ada, "password1")


async def test_password_changes_are_refused_in_clerk_mode(tmp_path: Path) -> None:
    async with clerk_server(tmp_path) as h:
        headers = {"Authorization": f"Bearer {token()}"}
        r = await h.http.post(
            "/v1/me/password",
            json={"old_password": "password1", "new_password": "a new secret"},
            headers=headers,
        )
        assert_error(r, 403, "forbidden")
        # The profile may still be named here (Clerk's next update names it again).
        r = await h.http.patch("/v1/me", json={"display_name": "Ada"}, headers=headers)
        assert r.status_code == 200 and r.json()["display_name"] == "Ada"


# ---------------------------------------------------------------- the user list


async def test_the_user_list_pages_by_username(h: Harness) -> None:
    names = [f"user{i:03}" for i in range(105)]
    accounts = [await h.account(name) for name in reversed(names)]
    ada = accounts[0]
    seen: list[str] = []
    after = ""
    pages = 0
    while True:
        params = {"after": after} if after else {}
        r = await h.http.get("/v1/users", params=params, headers=h.auth(ada))
        assert r.status_code == 200, r.text
        page = r.json()["users"]
        assert all(set(u) == USER_KEYS and u["bot"] is False for u in page)
        seen += [u["username"] for u in page]
        pages += 1
        if len(page) < 100:
            break
        after = page[-1]["username"]
    assert seen == names and pages == 2
    r = await h.http.get("/v1/users", params={"after": "user050"}, headers=h.auth(ada))
    assert [u["username"] for u in r.json()["users"]][:2] == ["user051", "user052"]
    r = await h.http.get("/v1/users", params={"after": "zzz"}, headers=h.auth(ada))
    assert r.json() == {"users": []}
    # The prefix search is unchanged: at most 20, and it takes no `after`.
    r = await h.http.get("/v1/users", params={"q": "user"}, headers=h.auth(ada))
    assert [u["username"] for u in r.json()["users"]] == names[:20]
    r = await h.http.get("/v1/users", params={"q": "user", "after": "x"}, headers=h.auth(ada))
    assert_error(r, 400, "bad_request")
    r = await h.http.get("/v1/users", params={"after": "x" * 129}, headers=h.auth(ada))
    assert_error(r, 400, "bad_request")
