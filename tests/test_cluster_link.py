"""The node link's framing and its bounds (`messageai.cluster.link.Link`), over a real
TCP connection on 127.0.0.1: objects cross in order, one read's objects arrive
together; a send queue that would pass its limit closes the link (LinkBroken), and so
does a frame announced larger than `MAX_FRAME_BYTES`. No Redis needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from messageai.cluster.link import MAX_FRAME_BYTES, Link, LinkBroken

DEADLINE = 10


@contextlib.asynccontextmanager
async def connected() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """Both ends of one TCP connection on 127.0.0.1."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            server = await listeners[0].accept()
            async with server:
                yield client, server
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_objects_cross_in_order() -> None:
    received: list[dict[str, Any]] = []
    done = trio.Event()

    async def handle(objects: list[dict[str, Any]]) -> None:
        received.extend(objects)
        if len(received) == 100:
            done.set()

    with trio.fail_after(DEADLINE):
        async with connected() as (client, server), trio.open_nursery() as nursery:
            sender, receiver = Link(client, 1000, "a->b"), Link(server, 1000, "b<-a")
            nursery.start_soon(sender.run, handle)
            nursery.start_soon(receiver.run, handle)
            for n in range(100):
                sender.send({"k": "f", "n": n, "f": "x" * n})
            await done.wait()
            sender.close()
            await receiver.closed.wait()  # the other end's close reaches it
    assert [obj["n"] for obj in received] == list(range(100))
    assert received[99]["f"] == "x" * 99


async def test_a_send_queue_over_its_limit_closes_the_link() -> None:
    with trio.fail_after(DEADLINE):
        async with connected() as (client, _server):
            link = Link(client, 16, "a->b")  # its writer is not running: nothing drains
            for n in range(16):
                link.send({"k": "f", "n": n})
            with pytest.raises(LinkBroken, match="overflowed"):
                link.send({"k": "f", "n": 16})
            assert link.closed.is_set()
            with pytest.raises(LinkBroken, match="closed"):
                link.send({"k": "f", "n": 17})


async def test_a_frame_announced_too_large_closes_the_link() -> None:
    heard: list[dict[str, Any]] = []

    async def handle(objects: list[dict[str, Any]]) -> None:
        heard.extend(objects)

    with trio.fail_after(DEADLINE):
        async with connected() as (client, server):
            receiver = Link(server, 16, "b<-a")
            await client.send_all((MAX_FRAME_BYTES + 1).to_bytes(4, "big") + b"{}")
            await receiver.run(handle)  # returns: it closed the link
            assert receiver.closed.is_set() and heard == []
            assert await client.receive_some(10) == b""
