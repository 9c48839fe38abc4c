"""PROTOCOL.md v1.1 "Revocation reaches sockets": revoking a token (logout) closes every
WebSocket opened with that token at once with 1008, and no other.

The real server on 127.0.0.1:0 with real WebSocket clients; the server closes first
here (that is what is under test). Every test has an absolute `trio.fail_after`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio_websocket

from tests.helpers import WS, Account, Harness, harness, make_config, raw_websocket_handshake

DEADLINE = 20


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(make_config(tmp_path / "data")) as h:
        yield h


async def login(h: Harness, account: Account) -> Account:
    """Another session token of the same user (a second device)."""
    r = await h.http.post(
        "/v1/auth/login", json={"username": account.username, "password": "password1"}
    )
    assert r.status_code == 200, r.text
    return Account(id=account.id, username=account.username, token=r.json()["token"])


async def logout(h: Harness, account: Account) -> None:
    r = await h.http.post("/v1/auth/logout", headers=h.auth(account))
    assert r.status_code == 204, r.text


async def closed_with(ws: WS) -> int | None:
    """Read until the server closes the connection; its close code."""
    with trio.fail_after(5):
        while True:
            try:
                await ws.conn.get_message()
            except trio_websocket.ConnectionClosed as closed:
                return closed.reason.code if closed.reason is not None else None


async def still_live(ws: WS, cid: str, h: Harness, sender: Account) -> None:
    """The connection answers, and live frames of its subscription still reach it."""
    assert (await ws.request("ping"))["type"] == "pong"
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": f"c{trio.current_time()}", "body": "still there?"},
        headers=h.auth(sender),
    )
    assert r.status_code == 201, r.text
    frame = await ws.next_event("new_message")
    assert frame["message"]["body"] == "still there?"


async def test_logout_closes_exactly_the_sockets_of_that_token_with_1008(h: Harness) -> None:
    with trio.fail_after(DEADLINE):
        ada, bob = await h.account("ada"), await h.account("bob")
        phone, browser = await login(h, ada), await login(h, ada)
        cid = await h.direct(ada, bob)
        async with (
            h.ws(ada) as laptop_ws,
            h.ws(phone) as phone_ws,
            h.ws(query=f"?access_token={browser.token}") as browser_ws,
        ):
            for ws in (laptop_ws, phone_ws, browser_ws):
                assert (await ws.request("subscribe", conversation_id=cid))["type"] == "subscribed"

            await logout(h, ada)  # the laptop's token
            assert await closed_with(laptop_ws) == 1008
            await still_live(phone_ws, cid, h, bob)
            await still_live(browser_ws, cid, h, bob)

            # A socket opened with ?access_token= is that token's socket too.
            await logout(h, browser)
            assert await closed_with(browser_ws) == 1008
            await still_live(phone_ws, cid, h, bob)


async def test_a_revoked_token_cannot_open_a_socket_and_other_users_keep_theirs(
    h: Harness,
) -> None:
    with trio.fail_after(DEADLINE):
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.direct(ada, bob)
        async with h.ws(bob) as bob_ws:
            assert (await bob_ws.request("subscribe", conversation_id=cid))["type"] == "subscribed"
            await logout(h, ada)
            status, _ = await raw_websocket_handshake(
                h.url, "/v1/ws", {"Authorization": f"Bearer {ada.token}"}
            )
            assert status == 401
            await still_live(bob_ws, cid, h, await login(h, ada))
