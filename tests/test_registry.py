"""The registry of actors: the cap on open databases, a conversation file that will not
open, and the deadline on `call`.

Real SQLite files under `tmp_path`, the real commit pool and the real clock; the
end-to-end test runs the real server on 127.0.0.1:0. Every test has an absolute
`trio.fail_after`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from messageai.conversations.commands import Command, Page, Waiter
from messageai.conversations.registry import Registry
from messageai.errors import Unavailable
from messageai.protocol import GetHistory, SendMessage
from messageai.services.directory import Directory
from messageai.store.paths import conversation_path
from tests.helpers import harness, make_config

DEADLINE = 20


async def test_open_databases_are_capped_least_recently_used_first(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", storage={"max_open_databases": 2})
    directory = Directory(config)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            registry = Registry(config, directory, nursery, lambda _user: False)
            ada, _ = await directory.register("ada", "password1", None)
            cids = []
            for i in range(5):
                other, _ = await directory.register(f"friend{i}", "password1", None)
                record, _ = await directory.open_direct(ada.id, other.id)
                cids.append(record.id)
                await registry.call(record.id, ada.id, SendMessage(record.id, f"k{i}", f"to {i}"))
            assert registry.open_databases() == cids[-2:]
            for i, cid in enumerate(cids):
                page = await registry.call(cid, ada.id, GetHistory(cid))
                assert [m.body for m in page.messages] == [f"to {i}"]
                assert registry.open_databases()[-1] == cid and len(registry.open_databases()) == 2
            nursery.cancel_scope.cancel()
    registry.close()
    directory.close()


async def test_call_past_its_deadline_is_unavailable_and_the_command_still_runs(
    tmp_path: Path,
) -> None:
    # A deadline shorter than any commit: it passes while the send is being committed.
    config = make_config(tmp_path / "data", conversations={"call_timeout_seconds": 0.001})
    directory = Directory(config)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            registry = Registry(config, directory, nursery, lambda _user: False)
            ada, _ = await directory.register("ada", "password1", None)
            bob, _ = await directory.register("bob", "password1", None)
            record, _ = await directory.open_direct(ada.id, bob.id)
            cid = record.id
            with pytest.raises(Unavailable, match="did not answer in time"):
                await registry.call(cid, ada.id, SendMessage(cid, "k1", "late"))
            # The command was queued before the deadline: it ran and was committed.
            # (A waiter of its own has no deadline.)
            waiter: Waiter[Page] = Waiter()
            await registry.submit(cid, Command(op=GetHistory(cid), user_id=ada.id, waiter=waiter))
            page = await waiter.wait()
            assert [m.client_id for m in page.messages] == ["k1"]
            nursery.cancel_scope.cancel()
    registry.close()
    directory.close()


async def test_unreadable_conversation_file_answers_unavailable_and_server_keeps_serving(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "data", conversations={"idle_seconds": 0.1})
    with trio.fail_after(DEADLINE):
        async with harness(config) as h:
            ada, bob, carol = await h.account("ada"), await h.account("bob"), await h.account()
            broken = await h.direct(ada, bob)
            fine = await h.direct(ada, carol)
            registry = h.server.registry
            assert registry is not None
            while registry.is_running(broken):  # wait for the actor to retire
                await trio.sleep(0.05)
            path = conversation_path(config.data_dir, broken)
            for suffix in ("-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            path.write_bytes(b"this is not a database" * 100)
            async with h.ws(ada) as a:
                reply = await a.request(
                    "send_message", conversation_id=broken, client_id="x", body="hi"
                )
                assert reply["type"] == "error" and reply["code"] == "unavailable"
                assert (await a.send_message(fine, "still here"))["type"] == "ack"
                path.unlink()
                assert (await a.send_message(broken, "after repair", client_id="x"))[
                    "type"
                ] == "ack"
