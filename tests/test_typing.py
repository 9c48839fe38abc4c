"""PROTOCOL.md v1.1 "Typing expires": the server sends `typing: false` to the others when
a typist has not renewed `typing: true` for 6 seconds, sends a message into the
conversation, or closes their last connection (not an earlier one).

The real server on 127.0.0.1:0 with real WebSocket clients and the real clock (the
expiry test waits the protocol's 6 s). Clients close first. Every test has an
absolute `trio.fail_after`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from messageai.conversations.actor import TYPING_TIMEOUT_SECONDS
from tests.helpers import WS, Harness, harness, make_config

DEADLINE = 30


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(make_config(tmp_path / "data")) as h:
        yield h


async def next_typing(ws: WS, timeout: float = 3) -> dict[str, Any]:
    """The next `typing` frame (presence frames may come before it)."""
    return await ws.next_event("typing", timeout=timeout)


async def no_typing(ws: WS, seconds: float = 0.5) -> None:
    """No `typing` frame arrives for `seconds` (other frames are kept for later)."""
    with trio.move_on_after(seconds):
        frame = await ws.next_event("typing", timeout=seconds + 1)
        raise AssertionError(f"unexpected typing frame: {frame!r}")


async def subscribe(ws: WS, cid: str) -> None:
    assert (await ws.request("subscribe", conversation_id=cid))["type"] == "subscribed"


async def type_(ws: WS, cid: str, typing: bool = True) -> None:
    assert (await ws.request("typing", conversation_id=cid, typing=typing))["type"] == "ok"


def stopped(frame: dict[str, Any], cid: str, user_id: str) -> bool:
    return frame == {
        "type": "typing",
        "conversation_id": cid,
        "user_id": user_id,
        "typing": False,
    }


async def test_typing_expires_after_six_seconds_without_renewal(h: Harness) -> None:
    assert TYPING_TIMEOUT_SECONDS == 6
    with trio.fail_after(DEADLINE):
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.direct(ada, bob)
        async with h.ws(ada) as a, h.ws(bob) as b:
            await subscribe(a, cid)
            await subscribe(b, cid)
            await type_(a, cid)
            assert (await next_typing(b))["typing"] is True
            # A renewal halfway moves the deadline: nothing expires at the first 6 s.
            await trio.sleep(TYPING_TIMEOUT_SECONDS / 2)
            await type_(a, cid)
            renewed = trio.current_time()
            assert (await next_typing(b))["typing"] is True
            frame = await next_typing(b, timeout=TYPING_TIMEOUT_SECONDS + 3)
            assert stopped(frame, cid, ada.id), frame
            # Not early: a correctness bound, with slack for the clock of the two ends.
            assert trio.current_time() - renewed >= TYPING_TIMEOUT_SECONDS - 0.5
            # The typist's own connection is not told about itself.
            await no_typing(a, 0.2)


async def test_sending_a_message_ends_typing_at_once(h: Harness) -> None:
    with trio.fail_after(DEADLINE):
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.direct(ada, bob)
        async with h.ws(ada) as a, h.ws(bob) as b:
            await subscribe(a, cid)
            await subscribe(b, cid)
            await type_(a, cid)
            assert (await next_typing(b))["typing"] is True
            assert (await a.send_message(cid, "hi"))["type"] == "ack"
            frame = await next_typing(b)
            assert stopped(frame, cid, ada.id), frame
            assert (await b.next_event("new_message"))["message"]["body"] == "hi"
            # Once ended, a later send sends no second `typing: false`.
            assert (await a.send_message(cid, "again"))["type"] == "ack"
            assert (await b.next_event("new_message"))["message"]["body"] == "again"
            await no_typing(b)


async def test_typing_ends_when_the_typists_last_connection_closes_not_an_earlier_one(
    h: Harness,
) -> None:
    with trio.fail_after(DEADLINE):
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.group(ada, bob)
        async with h.ws(bob) as b:
            await subscribe(b, cid)
            async with h.ws(ada) as phone:
                async with h.ws(ada) as laptop:
                    # The laptop types without being subscribed: sending needs only
                    # membership, so typing is the user's, not the connection's.
                    await type_(laptop, cid)
                    assert (await next_typing(b))["typing"] is True
                # The typing connection closed, but Ada still has her phone.
                await no_typing(b)
                assert (await phone.request("ping"))["type"] == "pong"
            frame = await next_typing(b)
            assert stopped(frame, cid, ada.id), frame
            # Her offline presence follows (after the online one kept from before);
            # nothing more about typing.
            statuses = [(await b.next_event("presence_update"))["status"] for _ in range(2)]
            assert statuses == ["online", "offline"]
            await no_typing(b)


async def test_typing_false_from_the_typist_is_not_repeated_when_they_leave(h: Harness) -> None:
    with trio.fail_after(DEADLINE):
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.direct(ada, bob)
        async with h.ws(bob) as b:
            await subscribe(b, cid)
            async with h.ws(ada) as a:
                await type_(a, cid)
                assert (await next_typing(b))["typing"] is True
                await type_(a, cid, typing=False)
                assert stopped(await next_typing(b), cid, ada.id)
            await b.next_event("presence_update")
            await no_typing(b)
