"""The conversation actor's lifecycle: idle retire, a batch that fails, a loop that
crashes, and subscriptions as the actor sees them.

Actor tests drive a real `Registry` (real SQLite files under `tmp_path`, the real
commit pool) without a server; the stand-in peers below take the place of WebSocket
sessions and keep what they are sent. All on the real clock: with `autojump_clock`
every wait for a worker thread would jump to the next deadline, which is the
`Registry.call` deadline. Subscription tests run the real server on 127.0.0.1:0 with
real WebSocket clients. Every test has an absolute `trio.fail_after`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import apsw
import pytest
import trio
import trio_websocket

from messageai.config import Config
from messageai.conversations.commands import Command, Stored, Waiter
from messageai.conversations.registry import Registry
from messageai.errors import Unavailable
from messageai.protocol import Error, GetHistory, SendMessage, Subscribe, Subscribed
from messageai.services.directory import Directory
from messageai.sqlite import open_db
from messageai.store.paths import conversation_path
from tests.helpers import Harness, harness, make_config

DEADLINE = 20
IDLE_SECONDS = 0.3


class Inbox:
    """A peer that keeps what it is sent (stands where a WebSocket session would)."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.frames: list[object] = []
        self.subscriptions: set[str] = set()

    def push(self, text: str) -> None:
        self.frames.append(text)

    def push_frame(self, frame: object) -> None:
        self.frames.append(frame)

    def subscription_started(self, conversation_id: str) -> bool:
        self.subscriptions.add(conversation_id)
        return True

    def subscription_ended(self, conversation_id: str) -> None:
        self.subscriptions.discard(conversation_id)

    def flush(self) -> None:
        pass  # `push` keeps frames at once: nothing is ever waiting to be written


class BrokenSubscriber(Inbox):
    """A subscriber with a bug: taking a live frame raises."""

    def push(self, text: str) -> None:
        raise RuntimeError("subscriber bug")


class BrokenSender(Inbox):
    """A connection with a bug: taking its own answer raises."""

    def push_frame(self, frame: object) -> None:
        raise RuntimeError("sender bug")


@asynccontextmanager
async def registry_of(config: Config) -> AsyncIterator[tuple[Directory, Registry, str, str]]:
    """A registry with two users, ada and bob, and their direct conversation."""
    directory = Directory(config)
    try:
        async with trio.open_nursery() as nursery:
            registry = Registry(config, directory, nursery, lambda _user: False)
            try:
                ada, _ = await directory.register("ada", "password1", None)
                bob, _ = await directory.register("bob", "password1", None)
                record, _ = await directory.open_direct(ada.id, bob.id)
                yield directory, registry, ada.id, record.id
                nursery.cancel_scope.cancel()
            finally:
                nursery.cancel_scope.cancel()
        registry.close()
    finally:
        directory.close()


async def _until(predicate: object) -> None:
    assert callable(predicate)
    while not predicate():
        await trio.sleep(0.01)


# ------------------------------------------------------------------ idle retire


async def test_idle_actor_retires_and_comes_back_with_nothing_lost(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", conversations={"idle_seconds": IDLE_SECONDS})
    with trio.fail_after(DEADLINE):
        async with registry_of(config) as (_directory, registry, ada, cid):
            first = await registry.call(cid, ada, SendMessage(cid, "k1", "one"))
            assert isinstance(first, Stored)
            assert registry.is_running(cid)
            # An idle actor with no subscribers retires.
            await _until(lambda: not registry.is_running(cid))
            assert registry.open_databases() == []
            second = await registry.call(cid, ada, SendMessage(cid, "k2", "two"))
            assert second.message.seq == 2
            again = await registry.call(cid, ada, SendMessage(cid, "k1", "one"))
            assert again.duplicate is True and again.message == first.message
            page = await registry.call(cid, ada, GetHistory(cid))
            assert [m.body for m in page.messages] == ["one", "two"]


async def test_actor_with_a_subscriber_does_not_retire(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", conversations={"idle_seconds": IDLE_SECONDS})
    with trio.fail_after(DEADLINE):
        async with registry_of(config) as (_directory, registry, ada, cid):
            inbox = Inbox(ada)
            await registry.submit(cid, Command(op=Subscribe(cid), user_id=ada, req=0, peer=inbox))
            await registry.call(cid, ada, GetHistory(cid))  # the subscribe has been handled
            assert inbox.subscriptions == {cid}
            await trio.sleep(IDLE_SECONDS * 4)
            assert registry.is_running(cid) and len(inbox.frames) == 1


class EndedPeer(Inbox):
    """A connection that has ended by the time the actor handles its subscribe."""

    def subscription_started(self, conversation_id: str) -> bool:
        return False


async def test_subscribe_handled_after_its_connection_ended_is_not_kept(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", conversations={"idle_seconds": IDLE_SECONDS})
    with trio.fail_after(DEADLINE):
        async with registry_of(config) as (_directory, registry, ada, cid):
            gone = EndedPeer(ada)
            await registry.submit(cid, Command(op=Subscribe(cid), user_id=ada, req=0, peer=gone))
            await registry.call(cid, ada, SendMessage(cid, "k1", "after it left"))
            assert gone.frames[1:] == [], "no live frame for a connection that has ended"
            # And it does not keep the actor alive: it retires when idle.
            await _until(lambda: not registry.is_running(cid))


# ------------------------------------------------------------------ failures


@asynccontextmanager
async def _send_while_locked(
    config: Config, registry: Registry, cid: str, user_id: str
) -> AsyncIterator[tuple[apsw.Connection, Waiter[object]]]:
    """Another connection takes the conversation file's write lock (BEGIN IMMEDIATE),
    then a send "k2" is submitted: yields that connection and the send's waiter."""
    holder = open_db(conversation_path(config.data_dir, cid), "FULL")
    try:
        holder.execute("BEGIN IMMEDIATE")
        waiter: Waiter[object] = Waiter()
        command = Command(op=SendMessage(cid, "k2", "two"), user_id=user_id, waiter=waiter)
        await registry.submit(cid, command)
        yield holder, waiter
    finally:
        holder.close()


async def test_storage_failure_in_one_conversation_fails_its_batch_only(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    with trio.fail_after(DEADLINE):
        async with registry_of(config) as (directory, registry, ada, cid):
            carol, _ = await directory.register("carol", "password1", None)
            other, _ = await directory.open_direct(ada, carol.id)
            await registry.call(cid, ada, SendMessage(cid, "k1", "one"))
            # A real SQLite failure: another connection holds the write lock, so the
            # actor's commit gives up after its busy timeout (SQLITE_BUSY).
            async with _send_while_locked(config, registry, cid, ada) as (holder, waiter):
                with pytest.raises(Unavailable):
                    await waiter.wait()
                # Other conversations never noticed.
                sent = await registry.call(other.id, ada, SendMessage(other.id, "o1", "fine"))
                assert sent.message.seq == 1
                holder.execute("ROLLBACK")
            # The actor reloaded its state from disk: the resend now succeeds, no gap.
            sent = await registry.call(cid, ada, SendMessage(cid, "k2", "two"))
            assert (sent.message.seq, sent.duplicate) == (2, False)


async def test_a_commit_that_finds_the_file_locked_waits_in_a_thread_not_on_the_loop(
    tmp_path: Path,
) -> None:
    # A conversation alone commits small batches on the loop (actor `_commit`); the
    # loop must never wait for another connection's write lock: the send waits in a
    # commit thread, the loop goes on, and the send is stored once the lock is gone.
    config = make_config(tmp_path / "data")
    with trio.fail_after(DEADLINE):
        async with registry_of(config) as (_directory, registry, ada, cid):
            await registry.call(cid, ada, SendMessage(cid, "k1", "one"))  # on the loop
            async with _send_while_locked(config, registry, cid, ada) as (holder, waiter):
                before = trio.current_time()
                await trio.sleep(0.3)
                assert trio.current_time() - before < 1.5, "the loop waited for the lock"
                assert not waiter._done.is_set(), "stored while another writer held the file"
                holder.execute("ROLLBACK")
                sent = await waiter.wait()
            assert isinstance(sent, Stored) and sent.message.seq == 2
            page = await registry.call(cid, ada, GetHistory(cid))
            assert [m.client_id for m in page.messages] == ["k1", "k2"]


@pytest.mark.parametrize("max_batch", [1, 512])
async def test_crash_of_the_loop_answers_every_queued_command_unavailable(
    tmp_path: Path, max_batch: int
) -> None:
    # A real path out of the batch guard: fanning out a send raises (a subscriber's
    # bug), so the guard answers the send `unavailable`, and that raises too (the
    # sender's bug): the loop itself dies. Everything submitted behind that send,
    # still queued (max_batch 1) or also in its batch (512), must get one
    # `unavailable` answer, over a peer and through `call`, and nothing may hang.
    config = make_config(
        tmp_path / "data",
        conversations={"max_batch": max_batch, "call_timeout_seconds": 600.0},
    )
    with trio.fail_after(DEADLINE):
        async with registry_of(config) as (_directory, registry, ada, cid):
            subscriber = BrokenSubscriber(ada)
            await registry.submit(
                cid, Command(op=Subscribe(cid), user_id=ada, req=0, peer=subscriber)
            )
            await registry.call(cid, ada, GetHistory(cid))  # subscribed; the actor is idle
            assert subscriber.subscriptions == {cid}
            inbox = Inbox(ada)
            failures: list[Unavailable] = []

            async def rest_caller(client_id: str) -> None:
                try:
                    await registry.call(cid, ada, SendMessage(cid, client_id, "via call"))
                except Unavailable as exc:
                    failures.append(exc)

            async with trio.open_nursery() as nursery:
                # These start only once this task waits, so the fatal send below is
                # first in the queue; they are all queued while its commit runs.
                for n in (1, 2):
                    nursery.start_soon(rest_caller, f"rest{n}")
                    ws_send = SendMessage(cid, f"ws{n}", "via ws")
                    command = Command(op=ws_send, user_id=ada, req=n, peer=inbox)
                    nursery.start_soon(registry.submit, cid, command)
                fatal = SendMessage(cid, "fatal", "boom")
                await registry.submit(
                    cid, Command(op=fatal, user_id=ada, req=0, peer=BrokenSender(ada))
                )
            await _until(lambda: len(inbox.frames) == 2 and len(failures) == 2)
            assert all(isinstance(f, Error) and f.code == "unavailable" for f in inbox.frames)
            assert {f.req for f in inbox.frames if isinstance(f, Error)} == {1, 2}
            assert all("did not answer in time" not in exc.message for exc in failures)
            assert subscriber.subscriptions == set(), "the crashed actor ended its subscriptions"
            # The conversation works again: a fresh actor, subscriptions and sends.
            watcher = Inbox(ada)
            await registry.submit(cid, Command(op=Subscribe(cid), user_id=ada, req=0, peer=watcher))
            sent = await registry.call(cid, ada, SendMessage(cid, "rest1", "via call"))
            assert sent.message.client_id == "rest1"
            if max_batch == 1:
                assert isinstance(sent, Stored), "the queued send was answered, never run"
            assert isinstance(watcher.frames[0], Subscribed) and watcher.subscriptions == {cid}
            page = await registry.call(cid, ada, GetHistory(cid))
            assert [m.seq for m in page.messages] == list(range(1, len(page.messages) + 1))
            assert {"fatal", "rest1"} <= {m.client_id for m in page.messages}


# ------------------------------------------------------------------ subscriptions and idleness


@asynccontextmanager
async def started(tmp_path: Path) -> AsyncIterator[Harness]:
    config = make_config(tmp_path / "data", server={"idle_timeout_seconds": 0.3})
    with trio.fail_after(DEADLINE):
        async with harness(config) as h:
            yield h


async def _closed_for_idleness(ws: trio_websocket.WebSocketConnection) -> None:
    with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    reason = closed.value.reason
    assert reason is not None and (reason.code, reason.reason) == (1000, "idle timeout")


async def test_refused_subscribe_leaves_the_connection_subject_to_the_idle_timeout(
    tmp_path: Path,
) -> None:
    async with started(tmp_path) as h:
        ada, bob, carol = await h.account(), await h.account(), await h.account()
        cid = await h.direct(ada, bob)
        async with h.ws(carol) as outsider:
            reply = await outsider.request("subscribe", conversation_id=cid)
            assert reply["type"] == "error" and reply["code"] == "forbidden"
            await _closed_for_idleness(outsider.conn)


async def test_withdrawn_subscription_leaves_the_connection_subject_to_the_idle_timeout(
    tmp_path: Path,
) -> None:
    async with started(tmp_path) as h:
        ada, bob = await h.account(), await h.account()
        cid = await h.direct(ada, bob)
        async with h.ws(ada) as a:
            assert (await a.request("subscribe", conversation_id=cid))["type"] == "subscribed"
            assert (await a.request("unsubscribe", conversation_id=cid))["type"] == "ok"
            await _closed_for_idleness(a.conn)


async def test_subscribed_quiet_connection_is_not_closed_for_idleness(tmp_path: Path) -> None:
    async with started(tmp_path) as h:
        ada, bob = await h.account(), await h.account()
        cid = await h.direct(ada, bob)
        async with h.ws(ada) as a:
            assert (await a.request("subscribe", conversation_id=cid))["type"] == "subscribed"
            await trio.sleep(1.0)  # more than three idle timeouts without a frame
            assert (await a.request("ping"))["type"] == "pong"
