"""A partitioned owner stops acking before the new owner's first ack (docs/SCALE.md §4,
§12), on hosts of the test's own (`tests/netns.py`).

Three hosts: Redis on one, node a (`python -m tests.cluster_node`, a process of its
own) on another, and the test process itself as node b; both nodes own the same
conversation file in turn (one machine's filesystem: the shared-file case, where the
file's epoch is the fence). Node a owns the conversation and sends without pause; the
test cuts a's link to Redis, leaving the process running and sending; b takes the
lease once it has expired, claims the file and sends. Compared: every ack node a gave
and every message in the file, by the epoch the file says it was committed under.
Skipped, saying why, without root/`ip netns` or without `redis-server`. Real clock,
an absolute `trio.fail_after`.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from messageai.cluster.fence import Fence
from messageai.cluster.lease import Leases
from messageai.model import Message
from messageai.sqlite import open_db
from messageai.store import fence as fence_sql
from messageai.store.paths import conversation_path
from tests.cluster_node import MEMBERS, owned_actor, take_over
from tests.helpers import make_config
from tests.netns import hosts
from tests.redis_server import RedisServer, redis_binary, redis_server

DEADLINE = 40
CID = "c_partitioned"
# Node a stops believing in its lease 0.62 s before Redis lets node b in (drift 1 %):
# room for a loaded machine to be slow between a commit and its ack line.
TTL_SECONDS = 2.0
MARGIN_SECONDS = 0.6
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
async def test_a_partitioned_owner_stops_acking_before_the_new_owner_acks(
    tmp_path: Path,
) -> None:
    redis_binary()  # skips first, without redis-server, before any namespace is made
    config = make_config(tmp_path / "data")
    events: list[dict[str, Any]] = []
    with hosts() as net, trio.fail_after(DEADLINE):
        redis_host, a_host = net.add("redis"), net.add("a")
        to_b = net.link(None, redis_host)  # node b: this process
        to_a = net.link(a_host, redis_host)
        async with (
            redis_server(
                tmp_path / "redis",
                host=to_b.far_address,
                netns=redis_host,
                also_on=(to_a.far_address,),
            ) as server,
            trio.open_nursery() as nursery,
        ):
            command = net.exec(
                a_host,
                [
                    sys.executable, "-m", "tests.cluster_node",
                    "--redis", f"{to_a.far_address}:{server.port}",
                    "--data-dir", str(config.data_dir),
                    "--conversation", CID,
                    "--node", "node-a",
                    "--ttl", str(TTL_SECONDS),
                    "--margin", str(MARGIN_SECONDS),
                ],
            )  # fmt: skip
            node_a: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process, command, cwd=REPO, stdout=subprocess.PIPE, check=False
                )
            )
            nursery.start_soon(_read_events, node_a, events)

            # Node a owns the conversation and acks.
            while sum(e["event"] == "ack" for e in events) < 5:
                await trio.sleep(0.02)
            cut_at = time.monotonic()
            net.cut(to_a)  # node a is alive, sending, and cannot reach Redis

            async with RedisServer(to_b.far_address, server.port).client() as redis:
                leases = Leases(redis, "node-b", ttl_seconds=5)
                lease = await take_over(leases, config, CID, wait_seconds=10)
                claimed_at = time.monotonic()
                b_acks: list[tuple[float, str]] = []
                async with owned_actor(config, CID, Fence(lease.epoch, lease.held)) as owner:
                    for n in range(5):
                        result = await owner.send(MEMBERS[1], f"node-b-{n}", "from b")
                        assert isinstance(result, Message), result
                        b_acks.append((time.monotonic(), result.client_id))
                    await trio.sleep(0.3)  # node a keeps trying meanwhile
            node_a.kill()
            nursery.cancel_scope.cancel()

    owner_a = next(e for e in events if e["event"] == "owner")
    a_acks = [e for e in events if e["event"] == "ack"]
    refused_after_cut = [e for e in events if e["event"] == "refused" and e["t"] > cut_at]
    assert owner_a["epoch"] < lease.epoch
    # Its renewals hung on the cut link until the lease's validity ran out.
    assert any(e["event"] == "lost" for e in events)
    # Node a was alive and still sending after the cut, and was refused, not acked.
    assert refused_after_cut, events[-5:]
    assert {e["code"] for e in events if e["event"] == "refused"} == {"unavailable"}
    # Every ack of the old owner came before the new owner claimed the file, so before
    # its first ack.
    assert max(e["t"] for e in a_acks) < claimed_at < b_acks[0][0]

    # The file agrees: the new epoch, and after its claim only the new owner's commits.
    conn = open_db(conversation_path(config.data_dir, CID), "FULL", create=False)
    try:
        fence = fence_sql.current(conn)
        revs = dict(conn.execute("SELECT client_id, coalesce(rev, seq) FROM messages"))
    finally:
        conn.close()
    assert fence is not None and (fence.epoch, fence.node) == (lease.epoch, "node-b")
    before = {c for c, rev in revs.items() if rev <= fence.since_rev}
    after = {c for c, rev in revs.items() if rev > fence.since_rev}
    assert before == {e["client_id"] for e in a_acks}  # every ack of a is kept, no more
    assert after == {client_id for _, client_id in b_acks}


async def _read_events(process: trio.Process, events: list[dict[str, Any]]) -> None:
    """Node a's JSON lines, as they come, into `events`."""
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        events.extend(orjson.loads(line) for line in lines if line)
