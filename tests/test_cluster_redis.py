"""Redis through coredis under Trio, as cluster mode will use it (docs/SCALE.md §2, §6):
pub/sub in order, keys that expire. Against a real `redis-server` of the test's own
(the `redis` fixture; skipped, saying so, without the binary). And the single-node
server imports none of cluster mode (a fresh interpreter, so nothing of this one's
imports counts).
"""

from __future__ import annotations

import sys

import coredis
import trio

DEADLINE = 15


async def test_pubsub_delivers_in_order_under_trio(redis: coredis.Redis[str]) -> None:
    with trio.fail_after(DEADLINE):
        async with redis.pubsub(channels=["messageai:user"]) as subscription:
            for n in range(100):
                await redis.publish("messageai:user", f"frame {n}")
            got: list[str] = []
            async for message in subscription:
                if message["type"] == "message":
                    got.append(str(message["data"]))
                    if len(got) == 100:
                        break
        assert got == [f"frame {n}" for n in range(100)]


async def test_a_key_with_a_ttl_expires(redis: coredis.Redis[str]) -> None:
    with trio.fail_after(DEADLINE):
        assert await redis.set("node:a", "10.0.0.1:8080", px=200)
        assert await redis.get("node:a") == "10.0.0.1:8080"
        while await redis.get("node:a") is not None:
            await trio.sleep(0.02)
        assert await redis.exists(["node:a"]) == 0


async def test_the_single_node_server_imports_nothing_of_cluster_mode() -> None:
    probe = (
        "import sys, messageai.server, messageai.cli;"
        " print(sorted(m for m in sys.modules if m == 'coredis' or m.startswith('messageai.cluster')))"
    )
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-c", probe], capture_stdout=True, check=True
        )
    assert done.stdout.decode().strip() == "[]"
