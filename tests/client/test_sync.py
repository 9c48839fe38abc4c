"""The sync engine under cancellation: a caller's cancel is never mistaken for a lost
connection (REVIEW 2.9), whether it arrives alone or beside a connection error.

Rules: a real server on 127.0.0.1:0 behind the loopback proxy (tests/client/netproxy.py)
standing in for the network, real stores under tmp_path, an absolute deadline per
test (the `h` fixture); the task groups are real anyio/Trio ones, nothing is patched.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import attrs
import pytest
import trio

from messageai.client import Unreachable
from messageai.client.errors import ProtocolViolation
from messageai.client.events import ConnectionChanged
from messageai.client.sync import _check_message, _leaf
from tests.client.netproxy import Proxy
from tests.client.support import FAST, sign_in
from tests.helpers import Harness


async def test_a_group_of_a_cancel_and_a_lost_connection_stays_a_cancel() -> None:
    # The shape a connection's task group raises when the caller cancels just as the
    # socket dies: the outer scope's Cancelled beside the reader's Unreachable.
    groups: list[BaseExceptionGroup[BaseException]] = []
    with trio.CancelScope() as outer:
        try:
            async with anyio.create_task_group() as tg:

                async def lose_the_connection() -> None:
                    outer.cancel()
                    raise Unreachable("connection lost")

                tg.start_soon(trio.sleep_forever)
                tg.start_soon(lose_the_connection)
        except BaseExceptionGroup as raised:
            groups.append(raised)
    (group,) = groups
    assert group.split(trio.Cancelled)[0] is not None
    assert group.split(Unreachable)[0] is not None
    assert _leaf(group) is group
    # Without a cancel in it, the ClientError is still what the syncer acts on.
    lost = Unreachable("connection lost")
    assert _leaf(BaseExceptionGroup("tg", [BaseExceptionGroup("inner", [lost])])) is lost


async def test_sync_cancelled_while_the_network_hangs_ends_as_cancelled(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    await h.direct(ada, bob)
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(h.server.port or 0).run)
        client = await sign_in(proxy.url, "ada", tmp_path / "ada")
        async with client:
            proxy.blackhole()  # nothing comes back: the sync waits on the network
            with trio.move_on_after(0.5) as scope:
                await client.sync()
            assert scope.cancelled_caught
            assert client.state == "offline"
        nursery.cancel_scope.cancel()


async def test_run_cancelled_while_the_server_is_unreachable_ends_without_a_retry(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    await h.direct(ada, bob)
    slow_retry = attrs.evolve(FAST, backoff_initial_seconds=30.0, backoff_max_seconds=60.0)
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(h.server.port or 0).run)
        client = await sign_in(proxy.url, "ada", tmp_path / "ada", settings=slow_retry)
        proxy.cut()  # refused: the server is unreachable from here on
        async with client, client.events() as events:
            async with trio.open_nursery() as runner:
                await runner.start(client.run)
                async for event in events:
                    if isinstance(event, ConnectionChanged) and event.retry_in_seconds:
                        break  # backing off for 15 s or more
                runner.cancel_scope.cancel()
            # The cancel ended the run inside its backoff, and nothing retried after it.
            assert client.state == "offline"
            assert client.syncer.link is None
        nursery.cancel_scope.cancel()


GOOD_MESSAGE = {
    "id": "m_1",
    "conversation_id": "c_1",
    "seq": 1,
    "sender_id": "u_1",
    "client_id": "k1",
    "body": "hi",
    "attachments": [],
    "created_at": 1764150000123,
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seq": "1"}, "seq"),
        ({"seq": True}, "seq"),
        ({"body": None}, "body"),
        ({"attachments": [1]}, "attachments"),
        ({"created_at": 1.5}, "created_at"),
        ({"seq": 0}, "seq"),
    ],
)
def test_a_server_message_not_shaped_like_the_servers_record_is_a_protocol_violation(
    change: dict[str, object], field: str
) -> None:
    _check_message({**GOOD_MESSAGE, "extension": "ignored"})
    with pytest.raises(ProtocolViolation, match=field):
        _check_message({**GOOD_MESSAGE, **change})
    missing = {k: v for k, v in GOOD_MESSAGE.items() if k != field}
    with pytest.raises(ProtocolViolation, match=field):
        _check_message(missing)
