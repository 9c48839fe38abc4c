"""Reference server for the bench: the smallest trio-websocket echo server.

Every text frame is sent straight back on the same connection. No JSON, no
storage: the floor of what one WebSocket round trip costs in this stack.
Prints `ref_echo serving ws://127.0.0.1:PORT` once listening (port 0 picks one).
Usage: python scripts/ref_echo.py [--port N]
"""

from __future__ import annotations

import argparse
import signal

import trio
import trio_websocket


async def handler(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    while True:
        try:
            message = await ws.get_message()
            await ws.send_message(message)
        except trio_websocket.ConnectionClosed:
            return


async def main(port: int) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: trio_websocket.serve_websocket(
                    handler, "127.0.0.1", port, None, message_queue_size=4, task_status=task_status
                )
            )
            print(f"ref_echo serving ws://127.0.0.1:{server.port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    trio.run(main, parser.parse_args().port)
