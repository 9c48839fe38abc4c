"""Chaos in a cluster: `scripts/chaos --cluster` (`python -m tests.chaos --cluster`) and
tests/test_cluster_chaos.py (a short run).

A real `redis-server` and three real `messageai serve` nodes on one data directory
(`tests/cluster_nodes.py`). The clients of `tests/chaos.py` are spread over the nodes
(client i on node i mod 3); each keeps messages in flight, and after a disconnect or
an `unavailable` answer it reconnects to the next live node and resends every unacked
`client_id` there. `kill_every` seconds after the start and after each restart, the
node that owns the busiest conversation (the most acks since the last kill, its owner as the lease in Redis
says) is `kill -9`ed; it is started again `restart_after` seconds later, so that two
nodes at least are always up. A kill's failover time is from the kill to the first
ack of that conversation read once the dead node's lease is gone from Redis (an ack
read earlier may be the dead node's last, still on its way), which only the new owner
can give; a takeover is counted when Redis then names another node as its owner.

At the end the histories are read through a live node and the checker of
tests/chaos.py counts lost acked messages, duplicates, phantoms and order
violations; then the nodes stop and `PRAGMA integrity_check` runs on every file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import trio

from tests.chaos import (
    Client,
    Load,
    Report,
    check,
    integrity,
    read_history,
    setup,
    start_clients,
)
from tests.cluster_nodes import ClusterNode, cluster_of

NODES = 3


@attrs.define
class ClusterReport:
    """The single-node checker's counts plus what the kills did."""

    checked: Report
    lease_ttl: float
    failovers: list[float] = attrs.Factory(list)  # seconds, kill -> first ack after it
    takeovers: int = 0  # kills after which another node owned the conversation
    restarts: int = 0

    @property
    def passed(self) -> bool:
        return self.checked.passed and self.takeovers == len(self.failovers) == self.checked.kills

    def summary(self) -> str:
        times = ", ".join(f"{t:.2f}" for t in self.failovers) or "none"
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict} (cluster of {NODES}, lease ttl {self.lease_ttl} s): "
            f"{self.checked.summary()}; {self.takeovers} takeovers, {self.restarts} restarts; "
            f"failover (kill -9 -> first ack on the new owner), s: {times}"
        )


def _busiest(everyone: list[Client], since: float) -> str:
    """The conversation with the most acks since `since`."""
    counts: dict[str, int] = {}
    for client in everyone:
        recent = sum(1 for t in client.ack_times if t >= since)
        counts[client.conversation_id] = counts.get(client.conversation_id, 0) + recent
    return max(counts, key=lambda cid: counts[cid])


def _first_ack_after(everyone: list[Client], cid: str, moment: float) -> float | None:
    times = [t for c in everyone if c.conversation_id == cid for t in c.ack_times if t > moment]
    return min(times) if times else None


async def run_cluster_chaos(
    workdir: Path,
    *,
    seconds: float = 60.0,
    kill_every: float = 5.0,
    restart_after: float | None = None,
    lease_ttl: float = 1.5,
    clients: int = 12,
    per_conversation: int = 3,
    window: int = 4,
    pace: float = 0.02,
    settle_seconds: float = 60.0,
    progress: Any = None,
) -> ClusterReport:
    """Run the cluster chaos for `seconds`, then settle and check. `restart_after`
    defaults to half of `kill_every`."""
    restart_after = kill_every / 2 if restart_after is None else restart_after
    report = ClusterReport(Report(seconds=seconds, kills=0), lease_ttl)
    async with cluster_of(workdir, NODES, lease_ttl=lease_ttl) as cluster:
        alive = {n.node_id: n.process.port for n in cluster.nodes if n.process.port}
        everyone = await setup(alive["a"], clients, per_conversation)

        def port_of(client: Client) -> int:
            live = [alive[n.node_id] for n in cluster.nodes if n.node_id in alive]
            return live[(client.index + client.failures) % len(live)]

        start = trio.current_time()
        production = Load(start, seconds, 0, everyone)
        end = start + seconds + settle_seconds

        async def measure(cid: str, killed: str, moment: float) -> None:
            # An ack the dead node sent just before its kill may still be on its way
            # (through a link and a client's socket): only an ack read once its lease
            # is gone from Redis is the new owner's (the lease goes at most a ttl
            # after the kill; the 10 ms of this loop are the measure's resolution).
            while await cluster.owner(cid) == killed:
                if trio.current_time() > end:
                    return
                await trio.sleep(0.01)
            gone = trio.current_time()
            while (first := _first_ack_after(everyone, cid, gone)) is None:
                if trio.current_time() > end:
                    return
                await trio.sleep(0.01)
            report.failovers.append(first - moment)
            owner = await cluster.owner(cid)
            report.takeovers += owner not in (None, killed)
            if progress:
                progress(f"  {cid} on {owner} after {first - moment:.2f} s")

        async def kill(node: ClusterNode, cid: str, nursery: trio.Nursery) -> None:
            del alive[node.node_id]
            node.process.kill()
            moment = trio.current_time()
            await node.process.wait()
            report.checked.kills += 1
            nursery.start_soon(measure, cid, node.node_id, moment)
            if progress:
                acked = sum(len(c.acked) for c in everyone)
                progress(
                    f"{moment - start:5.1f} s: kill -9 node {node.node_id} (owner of {cid}) "
                    f"#{report.checked.kills}, acked {acked}"
                )

        async def killer(nursery: trio.Nursery) -> None:
            since = start
            while trio.current_time() + kill_every < start + seconds:
                await trio.sleep(kill_every)
                cid = _busiest(everyone, since)
                since = trio.current_time()
                owner = await cluster.owner(cid)
                if owner is None or owner not in alive:
                    continue
                node = cluster.node(owner)
                await kill(node, cid, nursery)
                await trio.sleep(restart_after)
                alive[node.node_id] = await cluster.restart(node)
                report.restarts += 1

        async with trio.open_nursery() as load:
            load.start_soon(killer, load)
            start_clients(load, everyone, port_of, window, pace, production, end)
        histories = {}
        for client in everyone:
            if client.conversation_id not in histories:
                histories[client.conversation_id] = await read_history(port_of(client), client)
        check(everyone, histories, report.checked)
    integrity(cluster.data_dir, report.checked)
    return report
