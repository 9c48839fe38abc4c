"""Expo push notifications: token routes, and the push task against a loopback Expo.

The stand-in for Expo (tests/expo.py) is a real HTTP server on 127.0.0.1:0 that
records what it is sent. Tests wait for what they expect to arrive there (never
for a time to pass) under the absolute deadline each test sets.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from messageai.backoff import parse_retry_after
from messageai.model import Message
from messageai.services.push import MAX_PAYLOAD_BYTES, Push, fit_payload
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import conversation as conversation_sql
from messageai.store.paths import conversation_path
from tests.expo import FakeExpo, fake_expo
from tests.helpers import Account, Harness, assert_error, harness, make_config

TOKEN_A = "ExponentPushToken[aaaaaaaaaaaaaaaaaaaaaa]"
TOKEN_B = "ExpoPushToken[bbbbbbbbbbbbbbbbbbbbbb]"
TOKEN_C = "ExponentPushToken[cccccccccccccccccccccc]"


@contextlib.asynccontextmanager
async def push_server(tmp_path: Path, **push: Any) -> AsyncIterator[tuple[Harness, FakeExpo]]:
    async with fake_expo() as expo:
        settings = {"endpoint": expo.endpoint, "retry_base_seconds": 0.01, **push}
        async with harness(make_config(tmp_path / "data", push=settings)) as h:
            yield h, expo


def service(h: Harness) -> Push:
    assert h.server.push is not None
    return h.server.push


async def add_token(h: Harness, who: Account, token: str, platform: str = "ios") -> None:
    r = await h.http.post(
        "/v1/push-tokens", json={"token": token, "platform": platform}, headers=h.auth(who)
    )
    assert r.status_code == 201, r.text


async def post(h: Harness, who: Account, cid: str, body: str) -> dict[str, Any]:
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": uuid.uuid4().hex, "body": body},
        headers=h.auth(who),
    )
    assert r.status_code == 201, r.text
    sent: dict[str, Any] = r.json()
    return sent


async def wait_until(h: Harness, predicate: Callable[[], object]) -> None:
    """Wait until `predicate()` holds, re-checking whenever the push task made progress."""
    while not predicate():
        with trio.move_on_after(0.05):
            await service(h).wait_progress()


# ---------------------------------------------------------------- token routes


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"token": None},
        {"token": 42},
        {"token": "abc"},
        {"token": "ExponentPushToken[]"},
        {"token": "ExponentPushToken[a b]"},
        {"token": "ExponentPushToken[abc"},
        {"token": "OtherPushToken[abc]"},
        {"token": " ExponentPushToken[abc]"},
        {"token": TOKEN_A, "platform": 5},
        {"token": TOKEN_A, "platform": "x" * 33},
    ],
)
async def test_push_token_of_any_other_form_is_400_and_stores_nothing(
    h: Harness, body: dict[str, Any]
) -> None:
    ada = await h.account("ada")
    r = await h.http.post("/v1/push-tokens", json=body, headers=h.auth(ada))
    assert_error(r, 400, "bad_request")
    assert service(h).tokens_of(ada.id) == []


async def test_push_tokens_are_added_moved_and_removed_by_their_owner_only(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    await add_token(h, ada, TOKEN_A)
    await add_token(h, ada, TOKEN_B, "android")
    r = await h.http.post("/v1/push-tokens", json={"token": TOKEN_C}, headers=h.auth(ada))
    assert r.status_code == 201
    assert service(h).tokens_of(ada.id) == [TOKEN_A, TOKEN_B, TOKEN_C]
    # Bob cannot remove Ada's token; a malformed one is 400; without a token 401.
    assert (
        await h.http.delete(f"/v1/push-tokens/{TOKEN_A}", headers=h.auth(bob))
    ).status_code == 204
    assert_error(
        await h.http.delete("/v1/push-tokens/nope", headers=h.auth(ada)), 400, "bad_request"
    )
    assert_error(await h.http.delete(f"/v1/push-tokens/{TOKEN_A}"), 401, "unauthorized")
    assert_error(await h.http.post("/v1/push-tokens", json={"token": TOKEN_A}), 401, "unauthorized")
    assert service(h).tokens_of(ada.id) == [TOKEN_A, TOKEN_B, TOKEN_C]
    r = await h.http.delete(f"/v1/push-tokens/{TOKEN_A}", headers=h.auth(ada))
    assert r.status_code == 204
    assert service(h).tokens_of(ada.id) == [TOKEN_B, TOKEN_C]
    # A device that signs into another account now belongs to it.
    await add_token(h, bob, TOKEN_B)
    assert service(h).tokens_of(ada.id) == [TOKEN_C]
    assert service(h).tokens_of(bob.id) == [TOKEN_B]


def test_a_long_preview_is_cut_to_fit_expos_payload_limit() -> None:
    base = {"to": TOKEN_A, "title": "ada", "data": {"conversation_id": "c_1"}, "badge": 1}
    short = fit_payload(base, "hi")
    assert short["body"] == "hi"
    for body in ("é" * 16000, "x" * 5000, '"\\' * 3000, "😀" * 4000):
        cut = fit_payload(base, body)
        assert len(orjson.dumps(cut)) <= MAX_PAYLOAD_BYTES
        assert cut["body"].endswith("…") and body.startswith(cut["body"][:-1])
        assert (
            len(orjson.dumps({**base, "body": body[: len(cut["body"])] + "…"})) > MAX_PAYLOAD_BYTES
        )


# ---------------------------------------------------------------- the push task


async def test_offline_members_get_one_push_per_device_with_badge_online_ones_none(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with push_server(tmp_path, access_token="s3cret") as (h, expo):
            ada, bob, carol = (
                await h.account("ada"),
                await h.account("bob"),
                await h.account("carol"),
            )
            await add_token(h, ada, TOKEN_A)
            await add_token(h, bob, TOKEN_B)
            await add_token(h, bob, TOKEN_C, "android")
            await add_token(h, carol, "ExpoPushToken[carolcarolcarol]")
            direct = await h.direct(ada, bob)
            group = await h.group(ada, bob, carol, title="Team")
            async with h.ws(carol) as carol_ws:
                assert (await carol_ws.request("ping"))["type"] == "pong"
                await post(h, ada, direct, "one")
                await post(h, ada, direct, "two")
                await post(h, bob, direct, "mine, not unread for bob")
                long = "é" * 5000
                last = await post(h, ada, group, long)
                await expo.wait_for(
                    lambda: any(n["data"]["message_id"] == last["id"] for n in expo.notifications())
                )
            for request in expo.sends():
                assert request.headers["authorization"] == "Bearer s3cret"
                assert request.headers["content-encoding"] == "gzip"
                assert len(request.body) <= 100
            about = [n for n in expo.notifications() if n["data"]["message_id"] == last["id"]]
            # Bob's two devices, once each; Carol is online, Ada sent it.
            assert sorted(n["to"] for n in about) == sorted([TOKEN_B, TOKEN_C])
            for n in about:
                assert n["title"] == "ada in Team"
                assert n["data"] == {
                    "conversation_id": group,
                    "message_id": last["id"],
                    "seq": last["seq"],
                }
                # Unread for Bob: two in the direct conversation (not his own), one here.
                assert n["badge"] == 3
                assert len(orjson.dumps(n)) <= MAX_PAYLOAD_BYTES
                assert n["body"].endswith("…") and long.startswith(n["body"][:-1])
            everyone = [n["to"] for n in expo.notifications()]
            assert "ExpoPushToken[carolcarolcarol]" not in everyone
            # Ada got Bob's direct message, titled with his name, preview intact.
            to_ada = [n for n in expo.notifications() if n["to"] == TOKEN_A]
            assert [(n["title"], n["body"], n["badge"]) for n in to_ada] == [
                ("bob", "mine, not unread for bob", 1)
            ]


async def test_without_content_a_push_shows_no_sender_or_text(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with push_server(tmp_path, include_content=False) as (h, expo):
            ada, bob = await h.account("ada"), await h.account("bob")
            await add_token(h, bob, TOKEN_B)
            message = await post(h, ada, await h.direct(ada, bob), "secret plans")
            await expo.wait_for(lambda: len(expo.notifications()) == 1)
            (n,) = expo.notifications()
            assert n["title"] == "New message" and "body" not in n
            assert n["data"]["message_id"] == message["id"] and n["badge"] == 1
            assert b"secret" not in orjson.dumps(n) and b"ada" not in orjson.dumps(n)


async def test_dead_tokens_are_removed_from_tickets_and_from_receipts(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with push_server(tmp_path, receipt_delay_seconds=0.1) as (h, expo):
            ada, bob = await h.account("ada"), await h.account("bob")
            await add_token(h, bob, TOKEN_A)
            await add_token(h, bob, TOKEN_B)
            await add_token(h, bob, TOKEN_C)
            expo.dead.add(TOKEN_A)
            expo.dead_on_receipt.add(TOKEN_B)
            await post(h, ada, await h.direct(ada, bob), "hello")
            # The ticket says DeviceNotRegistered for A; the receipt, later, for B.
            await wait_until(h, lambda: service(h).tokens_of(bob.id) == [TOKEN_C])
            receipts = [r for r in expo.requests if r.path.endswith("/getReceipts")]
            assert receipts and receipts[0].headers["content-encoding"] == "gzip"
            assert len(receipts[0].body["ids"]) == 2
            assert service(h).counters.removed_tokens == 2
            # Settled tickets are forgotten; the next message reaches only C.
            assert h.server.directory is not None
            await wait_until(
                h,
                lambda: (
                    h.server.directory is not None
                    and h.server.directory.read(
                        lambda c: c.execute("SELECT count(*) FROM push_tickets").get
                    )
                    == 0
                ),
            )
            before = len(expo.notifications())
            await post(h, ada, await h.direct(ada, bob), "again")
            await expo.wait_for(lambda: len(expo.notifications()) > before)
            assert [n["to"] for n in expo.notifications()[before:]] == [TOKEN_C]


async def test_429_and_5xx_are_retried_with_backoff_until_accepted(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with push_server(tmp_path) as (h, expo):
            ada, bob = await h.account("ada"), await h.account("bob")
            await add_token(h, bob, TOKEN_B)
            expo.fail_next = [429, 503]
            message = await post(h, ada, await h.direct(ada, bob), "hello")
            await wait_until(h, lambda: service(h).counters.sent == 1)
            sends = expo.sends()
            assert len(sends) == 3
            assert all(s.body == sends[0].body for s in sends)
            assert sends[0].body[0]["data"]["message_id"] == message["id"]
            assert service(h).counters.retries == 2 and service(h).counters.failed == 0


async def test_retry_after_is_waited_at_least(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with push_server(tmp_path, retry_base_seconds=0.01) as (h, expo):
            ada, bob = await h.account("ada"), await h.account("bob")
            await add_token(h, bob, TOKEN_B)
            expo.fail_next = [429]
            expo.retry_after = "1"
            await post(h, ada, await h.direct(ada, bob), "hello")
            await wait_until(h, lambda: service(h).counters.sent == 1)
            first, second = expo.sends()
            # The backoff alone would have waited at most 0.01 s.
            assert second.at - first.at >= 1.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("5", 5.0), (" 2 ", 2.0), ("0.5", 0.5), ("0", 0.0), (None, None), ("", None)]
    + [(bad, None) for bad in ("-1", "soon", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT", "²")],
)
def test_retry_after_header_is_read_as_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


async def test_unreachable_endpoint_gives_up_after_retries_and_messages_flow(
    tmp_path: Path,
) -> None:
    # A port nobody listens on: every attempt is a network error.
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    push = {
        "endpoint": f"http://127.0.0.1:{port}/send",
        "max_retries": 2,
        "retry_base_seconds": 0.01,
    }
    with trio.fail_after(30):
        async with harness(make_config(tmp_path / "data", push=push)) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            await add_token(h, bob, TOKEN_B)
            cid = await h.direct(ada, bob)
            await post(h, ada, cid, "one")
            await wait_until(h, lambda: service(h).counters.failed == 1)
            assert service(h).counters.retries == 2 and service(h).counters.sent == 0
            assert (await post(h, ada, cid, "two"))["seq"] == 2


async def test_a_stalled_push_endpoint_never_delays_an_ack(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with push_server(
            tmp_path, queue_size=2, max_concurrent_requests=1, request_timeout_seconds=600.0
        ) as (h, expo):
            expo.stall = True
            ada, bob = await h.account("ada"), await h.account("bob")
            await add_token(h, bob, TOKEN_B)
            cid = await h.direct(ada, bob)
            async with h.ws(ada) as ws:
                await ws.send_message(cid, "first")
                await expo.wait_for(lambda: len(expo.requests) == 1)
                # The one request is held open; the queue is bounded; acks keep coming.
                for i in range(40):
                    ack = await ws.send_message(cid, f"m{i}")
                    assert ack["type"] == "ack" and ack["message"]["seq"] == i + 2
            assert len(expo.requests) == 1
            counters = service(h).counters
            assert counters.dropped > 0 and counters.sent == 0


# ---------------------------------------------------------------- badges


async def unread_in_list(h: Harness, who: Account) -> int:
    """The sum of `unread_count` over the user's conversation list (GET /v1/conversations)."""
    r = await h.http.get("/v1/conversations", headers=h.auth(who))
    assert r.status_code == 200, r.text
    return sum(c["unread_count"] for c in r.json()["conversations"])


def badges_for(expo: FakeExpo, message_id: str) -> list[int]:
    return [n["badge"] for n in expo.notifications() if n["data"]["message_id"] == message_id]


async def test_badge_equals_the_unread_count_of_the_conversation_list(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with push_server(tmp_path) as (h, expo):
            ada, bob, carol = (
                await h.account("ada"),
                await h.account("bob"),
                await h.account("carol"),
            )
            await add_token(h, bob, TOKEN_B)
            direct = await h.direct(ada, bob)
            group = await h.group(ada, bob, carol)
            for i in range(5):
                await post(h, ada, direct, f"d{i}")
            await post(h, carol, group, "g0")
            await post(h, bob, group, "bob's own, not unread")
            await post(h, carol, group, "g1")
            # Bob reads the direct conversation up to seq 3 and then goes offline.
            async with h.ws(bob) as ws:
                assert (await ws.request("mark_read", conversation_id=direct, seq=3))[
                    "type"
                ] == "ok"
            last = await post(h, ada, group, "the one that is pushed")
            await expo.wait_for(lambda: bool(badges_for(expo, last["id"])))
            # 2 in the direct conversation, 3 in the group (not Bob's own).
            assert badges_for(expo, last["id"]) == [await unread_in_list(h, bob)] == [5]


async def test_badge_counts_past_9999_unread_like_the_conversation_list(tmp_path: Path) -> None:
    """The old badge formula (a capped scan of the conversation file) stopped at 9,999;
    the conversation list does not. The history is written while no server runs (no
    actor owns the file then), so the test needs no 10,000 requests."""
    with trio.fail_after(60):
        async with fake_expo() as expo:
            config = make_config(
                tmp_path / "data", push={"endpoint": expo.endpoint, "retry_base_seconds": 0.01}
            )
            async with harness(config) as h:
                ada, bob = await h.account("ada"), await h.account("bob")
                await add_token(h, bob, TOKEN_B)
                cid = await h.direct(ada, bob)
            conn = open_db(conversation_path(config.data_dir, cid), "NORMAL")
            try:
                migrate(conn, conversation_sql.MIGRATIONS)
                with transaction(conn):
                    for seq in range(1, 10_001):
                        conversation_sql.insert_message(
                            conn,
                            Message(f"m_{seq}", cid, seq, ada.id, f"k{seq}", "x", [], seq),
                        )
            finally:
                conn.close()
            async with harness(config) as h:
                last = await post(h, ada, cid, "and one more")
                assert last["seq"] == 10_001
                await expo.wait_for(lambda: bool(badges_for(expo, last["id"])))
                assert badges_for(expo, last["id"]) == [await unread_in_list(h, bob)] == [10_001]


IN_OPEN = 0x20


@contextlib.contextmanager
def watch_opens(paths: list[Path]) -> Iterator[Any]:
    """Linux inotify on `paths`: yields a function returning how many times any of them
    was opened (by anyone, any thread) since the watch began."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        pytest.skip(f"inotify is not available: errno {ctypes.get_errno()}")
    try:
        for path in paths:
            assert libc.inotify_add_watch(fd, str(path).encode(), IN_OPEN) >= 0, path
        opened = 0

        def opens() -> int:
            nonlocal opened
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    return opened
                offset = 0
                while offset < len(data):
                    _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                    opened += bool(mask & IN_OPEN)
                    offset += 16 + length

        yield opens
    finally:
        os.close(fd)


async def test_push_never_opens_a_conversation_file_itself(tmp_path: Path) -> None:
    """The conversations' actors hold their files open; computing Bob's badge over both
    conversations must go through them, not open the files again. (Bob gets his token
    only once the actors are up, so the first badge is computed under the watch:
    SQLite reuses the descriptor of a second connection it closed while another
    connection of the process holds the file, so only a first open is an open(2).)"""
    with trio.fail_after(30):
        async with push_server(tmp_path) as (h, expo):
            ada, bob = await h.account("ada"), await h.account("bob")
            direct = await h.direct(ada, bob)
            group = await h.group(ada, bob)
            await post(h, ada, direct, "one")
            await post(h, ada, group, "two")
            await add_token(h, bob, TOKEN_B)
            files = [conversation_path(h.server.config.data_dir, c) for c in (direct, group)]
            with watch_opens(files) as opens:
                last = await post(h, ada, group, "three")
                await expo.wait_for(lambda: bool(badges_for(expo, last["id"])))
                assert badges_for(expo, last["id"]) == [3]
                assert opens() == 0
                # The watch does see opens: this one, by the test itself.
                files[0].open("rb").close()
                assert opens() == 1
