"""Helpers for client tests: signed-in SDK clients on real stores, and waiting on events.

Waiting is event-driven (re-check a condition after each SDK event), never a
sleep; each test's absolute deadline comes from the `h` fixture or its own
`trio.fail_after`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

from messageai.client import Client, LocalMessage, Settings
from tests.helpers import Account, Harness

# Fast reconnects and no background polling, so tests move on events alone.
FAST = Settings(
    backoff_initial_seconds=0.02,
    backoff_max_seconds=0.2,
    keepalive_seconds=None,
    refresh_seconds=3600,
)
PASSWORD = "password1"


async def sign_in(url: str, username: str, store_dir: Path, settings: Settings = FAST) -> Client:
    return await Client.login(url, username, PASSWORD, store_dir=store_dir, settings=settings)


async def until(client: Client, condition: Callable[[], object], deadline: float = 20) -> None:
    """Wait until `condition()` is true, re-checking after every event of `client`."""
    with trio.fail_after(deadline):
        async with client.events() as events:
            if condition():
                return
            async for _ in events:
                if condition():
                    return


@contextlib.asynccontextmanager
async def live(*clients: Client) -> AsyncIterator[None]:
    """Keep `clients` connected for the block; waits until each is online first."""
    async with trio.open_nursery() as nursery:
        for client in clients:
            await nursery.start(client.run)
        for client in clients:
            await until(client, functools.partial(_online, client))
        yield
        nursery.cancel_scope.cancel()


def _online(client: Client) -> bool:
    return client.state == "online"


def bodies(client: Client, conversation_id: str) -> list[str]:
    return [m.body for m in client.messages(conversation_id)]


def mine(client: Client, conversation_id: str, client_id: str) -> LocalMessage:
    """One of `client`'s own messages by its client_id, which must be in its store."""
    message = client.message(conversation_id, client_id)
    assert message is not None, client_id
    return message


async def leave_channels(h: Harness, *accounts: Account) -> None:
    """Take `accounts` out of every channel they were put in on registration (v1.1's
    `general`), for tests that count or step through a user's conversations. Leaving a
    channel is `DELETE …/members/{own id}`; a server without channels lists none."""
    for account in accounts:
        r = await h.http.get("/v1/conversations", headers=h.auth(account))
        assert r.status_code == 200, r.text
        for conv in r.json()["conversations"]:
            if conv["kind"] == "channel":
                left = await h.http.delete(
                    f"/v1/conversations/{conv['id']}/members/{account.id}",
                    headers=h.auth(account),
                )
                assert left.status_code == 204, left.text
