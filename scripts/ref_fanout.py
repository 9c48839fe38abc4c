"""Reference server for the bench: the smallest sound trio-websocket fan-out server.

A client joins the room named by its path (`/room/NAME`). Every text frame it
sends is echoed back to it (its "ack") and queued for every other member of the
room (a "delivery"), through one bounded queue and one writer task per
connection, so a slow reader never blocks a sender: the same shape as the
MessageAI session, with no JSON, no validation and no storage.
Prints `ref_fanout serving ws://127.0.0.1:PORT` once listening (port 0 picks one).
Usage: python scripts/ref_fanout.py [--port N]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections import defaultdict

import trio
import trio_websocket

QUEUE_FRAMES = 2048
rooms: defaultdict[str, set[trio.MemorySendChannel[str]]] = defaultdict(set)


async def writer(
    ws: trio_websocket.WebSocketConnection, queue: trio.MemoryReceiveChannel[str]
) -> None:
    async for text in queue:
        await ws.send_message(text)


async def handler(request: trio_websocket.WebSocketRequest) -> None:
    room_name = request.path.rpartition("/")[2]
    ws = await request.accept()
    send, receive = trio.open_memory_channel[str](QUEUE_FRAMES)
    room = rooms[room_name]
    room.add(send)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, ws, receive)
            while True:
                try:
                    text = await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    break
                for peer in room:
                    # Too slow: the real server closes it with 1013; here it just loses frames.
                    with contextlib.suppress(trio.WouldBlock):
                        peer.send_nowait(text)
            nursery.cancel_scope.cancel()
    finally:
        room.discard(send)


async def main(port: int) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: trio_websocket.serve_websocket(
                    handler, "127.0.0.1", port, None, message_queue_size=4, task_status=task_status
                )
            )
            print(f"ref_fanout serving ws://127.0.0.1:{server.port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    trio.run(main, parser.parse_args().port)
