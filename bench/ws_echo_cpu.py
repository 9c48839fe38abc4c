"""Server CPU per WebSocket echo: trio-websocket against hypercorn's ASGI WebSocket.

The measurement behind the front door (`messageai/edge/frontdoor.py`): serving
/v1/ws with trio-websocket on the same port as hypercorn's HTTP costs private
hypercorn API; this says what it buys. Each server runs in its own process and
reports its own CPU time (user + system, `time.process_time`) between the client's
"start" and "stop" messages; the client (this process) sends `--frames` messages
of `--size` bytes one at a time and waits for each echo. CPU time, not wall time,
so other load on the machine matters little.

    python bench/ws_echo_cpu.py [--frames 20000] [--size 100] [--rounds 3]

Issue 2 measured, on an idle machine: trio-websocket about 60-90 µs of server CPU
per echo, hypercorn's ASGI WebSocket 1.5-2.6x that. Re-measured on 2026-12-01
(2 cores shared with four other engineers' test runs, load average 3.4-3.8;
hypercorn 0.18.0, trio-websocket 0.12.2, Python 3.11.7) with
`python bench/ws_echo_cpu.py --frames 20000 --rounds 3`:

    trio-websocket  server CPU per echo (µs): 338.9, 325.9, 289.0
    hypercorn       server CPU per echo (µs): 385.1, 372.5, 369.4
    hypercorn ASGI / trio-websocket (best of each): 1.28x

(and 1.24x with `--frames 10000 --rounds 2`). Contention inflates both figures
about fourfold and narrows the gap; run it on an idle machine before leaning on
the ratio. The server's real send path (hand framing in the session) is cheaper
than trio-websocket's `send_message`, which this echo uses.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import trio
import trio_websocket


def serve_trio_websocket() -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        started = 0.0
        while True:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            if message == "start":
                started = time.process_time()
            elif message == "stop":
                await ws.send_message(f"{time.process_time() - started:.6f}")
            else:
                await ws.send_message(message)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
            )
            print(server.port, flush=True)

    trio.run(main)


def serve_hypercorn() -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def,type-arg]
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                kind = event["type"].rsplit(".", 1)[1]  # startup, shutdown
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "websocket":
            return
        started = 0.0
        while True:
            event = await receive()
            if event["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif event["type"] == "websocket.receive":
                message = event.get("text")
                if message == "start":
                    started = time.process_time()
                elif message == "stop":
                    reply = f"{time.process_time() - started:.6f}"
                    await send({"type": "websocket.send", "text": reply})
                else:
                    await send({"type": "websocket.send", "text": message})
            else:
                return

    async def main() -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = config.errorlog = None
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, app, config)
            print(binds[0].rsplit(":", 1)[1], flush=True)

    trio.run(main)


async def measure(port: int, frames: int, size: int) -> float:
    payload = "x" * size
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        for _ in range(200):  # warm up
            await ws.send_message(payload)
            await ws.get_message()
        await ws.send_message("start")
        for _ in range(frames):
            await ws.send_message(payload)
            await ws.get_message()
        await ws.send_message("stop")
        return float(await ws.get_message()) / frames


def run_server(kind: str, frames: int, size: int) -> float:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        return trio.run(measure, port, frames, size)
    finally:
        child.terminate()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=["trio-websocket", "hypercorn"])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.serve == "trio-websocket":
        serve_trio_websocket()
        return
    if args.serve == "hypercorn":
        serve_hypercorn()
        return
    results: dict[str, list[float]] = {"trio-websocket": [], "hypercorn": []}
    for _ in range(args.rounds):
        for kind in results:
            results[kind].append(run_server(kind, args.frames, args.size) * 1e6)
    for kind, values in results.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"{kind:15} server CPU per echo (µs): {shown}")
    ratio = min(results["hypercorn"]) / min(results["trio-websocket"])
    print(f"hypercorn ASGI / trio-websocket (best of each): {ratio:.2f}x")


if __name__ == "__main__":
    main()
