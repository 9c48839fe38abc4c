"""The SDK offline: queued sends across restarts, catch-up after a gap, lost acks, local reads.

Rules: real servers on 127.0.0.1 (restarted on the same port and data dir when
a test needs the server "back"), real store files under tmp_path, a loopback
TCP proxy (tests/client/netproxy.py) standing in for the network; an absolute
`trio.fail_after` per test; waits are on events, never sleeps.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from messageai.client import Client, ClientError, Unreachable
from messageai.config import Config
from tests.client.netproxy import Proxy
from tests.client.support import FAST, PASSWORD, bodies, leave_channels, live, mine, sign_in, until
from tests.helpers import Harness, harness, make_config, running_server

DEADLINE = 60


@contextlib.asynccontextmanager
async def proxied(h: Harness) -> AsyncIterator[Proxy]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(h.server.port or 0).run)
        yield proxy
        nursery.cancel_scope.cancel()


async def server_messages(url: str, token: str, cid: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.get(
            f"/v1/conversations/{cid}/messages",
            params={"after_seq": 0, "limit": 200},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        messages: list[dict[str, object]] = r.json()["messages"]
        return messages


def same_port(config: Config, port: int) -> Config:
    return make_config(config.data_dir, server={"port": port})


async def test_three_sends_while_server_down_survive_client_restart_and_arrive_once_in_order(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "data")
    with trio.fail_after(DEADLINE):
        async with harness(config) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cid = await h.direct(ada, bob)
            client = await sign_in(h.url, "ada", tmp_path / "store")
            async with client:
                await client.sync()
            port = h.server.port
            url = h.url
        assert port is not None
        # The server is down: three sends are queued, then the client process "restarts".
        async with Client.open(tmp_path / "store", settings=FAST) as client:
            queued = [await client.send(cid, f"offline {i}") for i in range(3)]
            with pytest.raises(Unreachable):
                await client.sync()
            assert [m.status for m in client.messages(cid)] == ["sending"] * 3
            assert all(m.local_only for m in client.messages(cid))
        async with Client.open(tmp_path / "store", settings=FAST) as client:
            assert client.outbox_size() == 3
            async with running_server(same_port(config, port)):
                async with live(client):
                    await until(client, lambda: client.outbox_size() == 0)
                stored = await server_messages(url, bob.token, cid)
                assert [(m["seq"], m["body"], m["client_id"]) for m in stored] == [
                    (i + 1, f"offline {i}", queued[i].client_id) for i in range(3)
                ]
                final = client.messages(cid)
                assert [(m.seq, m.status, m.client_id) for m in final] == [
                    (i + 1, "sent", queued[i].client_id) for i in range(3)
                ]
                # Nothing left to do: a second pass sends and fetches nothing.
                report = await client.sync()
                assert (report.delivered, report.fetched, report.queued) == ([], 0, 0)
                assert len(await server_messages(url, bob.token, cid)) == 3


async def test_messages_from_others_while_offline_arrive_on_reconnect_without_gap_or_duplicate(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with proxied(h) as proxy, h.ws(bob) as b:
        client = await sign_in(proxy.url, "ada", tmp_path / "ada")
        async with client, live(client):
            await b.send_message(cid, "before")
            await until(client, lambda: bodies(client, cid) == ["before"])
            proxy.cut()
            await until(client, lambda: client.state == "offline")
            mine = await client.send(cid, "typed while offline")
            # More than two pages of history (pages are 100) arrive while we are away.
            for i in range(230):
                await b.send_message(cid, f"missed {i}")
            proxy.restore()
            client.reconnect_now()
            await until(
                client, lambda: client.outbox_size() == 0 and len(client.messages(cid)) == 232
            )
            messages = client.messages(cid)
        assert [m.seq for m in messages] == list(range(1, 233))
        assert [m.body for m in messages[:231]] == ["before"] + [f"missed {i}" for i in range(230)]
        # The queued message goes out after the catch-up, with its original client_id.
        assert (messages[-1].body, messages[-1].client_id, messages[-1].status) == (
            "typed while offline",
            mine.client_id,
            "sent",
        )
        assert len({m.id for m in messages}) == 232


async def test_send_whose_ack_was_lost_ends_as_one_message(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with proxied(h) as proxy, h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        client = await sign_in(proxy.url, "ada", tmp_path / "ada")
        async with client, live(client):
            proxy.blackhole()  # what the server says from now on is lost on the way back
            message = await client.send(cid, "did this arrive?")
            arrived = await b.next_event("new_message")  # the server committed it...
            assert arrived["message"]["client_id"] == message.client_id
            assert mine(client, cid, message.client_id).status == "sending"
            proxy.cut()  # ...and the connection drops before the ack gets through
            await until(client, lambda: client.state == "offline")
            proxy.restore()
            client.reconnect_now()
            await until(client, lambda: client.outbox_size() == 0 and client.state == "online")
            final = client.messages(cid)
        stored = await server_messages(h.url, bob.token, cid)
        assert [(m["body"], m["client_id"]) for m in stored] == [
            ("did this arrive?", message.client_id)
        ]
        assert [(m.seq, m.id, m.status) for m in final] == [(1, arrived["message"]["id"], "sent")]


async def test_reads_from_the_local_store_work_with_the_server_down(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with harness(make_config(tmp_path / "data")) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            await leave_channels(h, ada)  # no `general`: this test counts
            cid = await h.direct(ada, bob)
            async with h.ws(bob) as b:
                await b.send_message(cid, "one")
                await b.send_message(cid, "two")
            async with await sign_in(h.url, "ada", tmp_path / "store") as client:
                await client.sync()
        async with Client.open(tmp_path / "store", settings=FAST) as client:
            assert bodies(client, cid) == ["one", "two"]
            [conv] = client.conversations()
            assert (conv.id, conv.kind, conv.unread_count, conv.last_seq) == (cid, "direct", 2, 2)
            assert sorted(conv.member_ids) == sorted([ada.id, bob.id])
            assert client.user_name(bob.id) == "bob"
            with pytest.raises(Unreachable):
                await client.sync()


async def test_wrong_password_is_a_clear_error(h: Harness, tmp_path: Path) -> None:
    await h.account("ada")
    from messageai.client import AuthError

    with pytest.raises(AuthError) as info:
        await Client.login(h.url, "ada", PASSWORD + "x", store_dir=tmp_path)
    assert info.value.code == "unauthorized"


async def test_a_silently_dead_network_is_noticed_by_keepalive_and_queued_sends_follow(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with proxied(h) as proxy:
        # No FIN, no RST: only the missing pongs tell the client the network is gone.
        settings = attrs.evolve(FAST, keepalive_seconds=0.2)
        client = await sign_in(proxy.url, "ada", tmp_path / "ada", settings)
        async with client, live(client):
            proxy.blackhole()
            await until(client, lambda: client.state == "offline")
            message = await client.send(cid, "typed into the void")
            assert mine(client, cid, message.client_id).status == "sending"
            proxy.restore()
            client.reconnect_now()
            await until(client, lambda: client.outbox_size() == 0)
        stored = await server_messages(h.url, bob.token, cid)
        assert [(m["body"], m["client_id"]) for m in stored] == [
            ("typed into the void", message.client_id)
        ]


async def test_mark_read_of_an_unknown_conversation_is_a_clear_error_and_changes_nothing(
    h: Harness, tmp_path: Path
) -> None:
    await h.account("ada")
    async with await sign_in(h.url, "ada", tmp_path / "ada") as client:
        with pytest.raises(ClientError, match="no conversation 'c_nope'"):
            await client.mark_read("c_nope", 3)
        assert client.conversations() == [] and client.messages("c_nope") == []
