"""`messageai tail --follow` as a script and a person use it: beside another process
on the same store, through a revoked session, and with messages queued offline.

Rules: a real server on 127.0.0.1:0 (the `h` fixture, with its absolute deadline),
the real `messageai` console script in subprocesses sharing one store directory
under tmp_path, the loopback proxy (tests/client/netproxy.py) as the network
between them and the server. Every wait is for a line of output or a process
exit, each with its own deadline; nothing is timed.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from tests.client.netproxy import Proxy
from tests.client.support import sign_in
from tests.client.test_commands import MESSAGEAI
from tests.helpers import Account, Harness

# One line of output, or the end of the process, must come within this.
LINE_SECONDS = 15


class Follow:
    """A running `messageai tail --follow --json`, read a line at a time."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buffer = b""

    async def json(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with trio.fail_after(LINE_SECONDS):
            while b"\n" not in self._buffer:
                chunk = await self.proc.stdout.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"tail ended first; it had printed {self._buffer!r}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        value: dict[str, Any] = orjson.loads(line)
        return value

    async def finished(self) -> tuple[int, str]:
        """Its exit status and everything it wrote on stderr."""
        assert self.proc.stderr is not None
        err = b""
        with trio.fail_after(LINE_SECONDS):
            while chunk := await self.proc.stderr.receive_some(65536):
                err += chunk
            return await self.proc.wait(), err.decode()


@contextlib.asynccontextmanager
async def tail(store: Path, conversation_id: str) -> AsyncIterator[Follow]:
    argv = [*MESSAGEAI, "tail", conversation_id, "--follow", "--json", "--store", str(store)]
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield Follow(proc)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        with trio.fail_after(LINE_SECONDS):
            await proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                await stream.aclose()


async def cli(store: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            [*MESSAGEAI, *args, "--store", str(store)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def post(h: Harness, sender: Account, conversation_id: str, body: str) -> None:
    r = await h.http.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"client_id": uuid.uuid4().hex, "body": body},
        headers=h.auth(sender),
    )
    assert r.status_code == 201, r.text


async def follow_live(h: Harness, follow: Follow, bob: Account, cid: str) -> None:
    """The snapshot ("first"), then a message that only the follower's own live
    connection can bring ("second"): from here on that connection is up."""
    assert (await follow.json())["body"] == "first"
    await post(h, bob, cid, "second")
    assert (await follow.json())["body"] == "second"


async def test_tail_follow_shows_a_message_that_another_process_on_the_store_merged_first(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    await post(h, bob, cid, "first")
    store = tmp_path / "ada-store"
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(h.server.port or 0).run)
        await (await sign_in(proxy.url, "ada", store)).aclose()
        async with tail(store, cid) as follow:
            await follow_live(h, follow, bob, cid)
            # The follower hears of "third" only after another process (`messageai chat`
            # in the default set-up; `messageai sync` here) has merged it into the store.
            proxy.hold()
            await post(h, bob, cid, "third")
            done = await cli(store, "sync")
            assert done.returncode == 0, done.stderr
            proxy.release()
            assert (await follow.json())["body"] == "third"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["closed_with_1008", "refused_on_reconnect"])
async def test_tail_follow_ends_with_one_line_and_status_1_when_the_session_is_revoked(
    h: Harness, tmp_path: Path, how: str
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    await post(h, bob, cid, "first")
    store = tmp_path / "ada-store"
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(h.server.port or 0).run)
        client = await sign_in(proxy.url, "ada", store)
        token = client.account.token
        await client.aclose()
        async with tail(store, cid) as follow:
            await follow_live(h, follow, bob, cid)
            r = await h.http.post("/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 204
            if how == "closed_with_1008":
                # What the server does on revocation (PROTOCOL.md v1.1, "Revocation
                # reaches sockets"), through its own code path for it.
                h.server.close_user_sessions(ada.id, "token revoked")
            else:
                # A server that leaves the socket open: the next connection is refused.
                proxy.cut()
                proxy.restore()
            status, err = await follow.finished()
        assert status == 1
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert err.startswith("messageai: ") and "messageai login" in err, err
        nursery.cancel_scope.cancel()


async def test_tail_follow_shows_a_queued_message_again_once_it_is_delivered(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    store = tmp_path / "ada-store"
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(h.server.port or 0).run)
        await (await sign_in(proxy.url, "ada", store)).aclose()
        proxy.cut()
        sent = await cli(store, "send", cid, "written offline", "--json")
        assert sent.returncode == 0 and b"queued" in sent.stderr, sent.stderr
        queued = orjson.loads(sent.stdout)
        async with tail(store, cid) as follow:
            shown = await follow.json()
            assert (shown["client_id"], shown["status"], shown["seq"], shown["local_only"]) == (
                queued["client_id"],
                "sending",
                None,
                True,
            )
            proxy.restore()  # the follower's own connection delivers it
            delivered = await follow.json()
            assert (delivered["client_id"], delivered["status"], delivered["seq"]) == (
                queued["client_id"],
                "sent",
                1,
            )
            assert delivered["local_only"] is False and delivered["body"] == "written offline"
        nursery.cancel_scope.cancel()
