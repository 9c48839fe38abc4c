"""A fixed, in-process round-trip workload for counting instructions (`valgrind
--tool=callgrind`), where seconds on a shared 2-core machine are too noisy.

One server on 127.0.0.1:0 and one client in the same process; the client sends N
messages into one direct conversation, one at a time, each waiting for its `ack`.
Run it twice, with N and a larger M, and divide the difference of the two totals by
M - N: start-up cancels out and what is left is the instructions of one round trip
(server, commit thread and client together):

    cg="valgrind --tool=callgrind --callgrind-out-file=/dev/null"
    $cg .venv/bin/python -m bench.instructions 200 2>&1 | grep Collected
    $cg .venv/bin/python -m bench.instructions 1200 2>&1 | grep Collected
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import httpx
import orjson
import trio
import trio_websocket

from messageai.config import parse_config
from messageai.server import Server


async def round_trips(count: int, data_dir: Path) -> list[int]:
    """Send `count` messages one at a time; the seqs of their acks, in order."""
    config = parse_config(
        {"server": {"port": 0}, "storage": {"data_dir": str(data_dir)}, "auth": {"scrypt_n": 16}}
    )
    server = Server(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        async with httpx.AsyncClient(base_url=server.url) as http:
            tokens, ids = [], []
            for name in ("ada", "bob"):
                body = {"username": name, "password": "password1"}
                account = (await http.post("/v1/auth/register", json=body)).json()
                tokens.append(account["token"])
                ids.append(account["user"]["id"])
            created = await http.post(
                "/v1/conversations",
                headers={"Authorization": f"Bearer {tokens[0]}"},
                json={"kind": "direct", "member_ids": [ids[1]]},
            )
            conversation_id = created.json()["id"]
        url = server.url.replace("http", "ws", 1) + f"/v1/ws?access_token={tokens[0]}"
        ws = await trio_websocket.connect_websocket_url(nursery, url)
        seqs: list[int] = []
        for i in range(count):
            frame = {
                "type": "send_message",
                "conversation_id": conversation_id,
                "client_id": f"k{i}",
                "body": "hello there",
                "req": i,
            }
            await ws.send_message(orjson.dumps(frame).decode())
            while (answer := orjson.loads(await ws.get_message()))["type"] != "ack":
                pass
            seqs.append(answer["message"]["seq"])
        await ws.aclose()
        server.shutdown()
    return seqs


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(round_trips, count, Path(tmp))


if __name__ == "__main__":
    main()
