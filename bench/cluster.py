"""`./scripts/bench --cluster`: three nodes on one host (docs/SCALE.md §11), measured.

A real `redis-server` and three real `messageai serve` nodes sharing one data
directory (the machinery of tests/cluster_nodes.py), driven by WebSocket clients in
this process. Phases, each over a measured window after a warm-up:

- `direct local` / `direct forwarded`: direct conversations, both clients of each on
  the node that owns it, then both on another node (every command crosses a node
  link): ack p50/p99 and the cluster's CPU per message, which is the cost of a
  forwarded message against a local one;
- `direct spread`: client j on node j mod 3 (a pair's two clients on two nodes);
- `group`: one group, its members and senders spread over the nodes; acks of the
  senders on the owner and elsewhere counted apart.

First the baseline: `direct local`'s load on one server in single-node mode. Per-node
CPU is each process's own (/proc/PID/stat, all threads). Then failover: the
cluster chaos of tests/cluster_chaos.py at the lease TTL given (the default's 10 s),
which kills the busiest owner a few times and gives kill -> first ack on the new
owner, with the checker's counts. Prints markdown; writes JSON under
bench-results/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import trio

from bench.procs import ROOT, proc_cpu_seconds
from tests.cluster_chaos import run_cluster_chaos
from tests.cluster_nodes import Cluster, cluster_of
from tests.helpers import Account, Harness, ServerProcess, connect_ws

NODES = 3
DEFAULT_LEASE_TTL = 10.0  # messageai/default.toml's


@attrs.define
class Conn:
    """One client of a phase: who, on which node, subscribed where, sending where."""

    account: Account
    node: str
    subscribe: str
    send_to: str | None
    tag: str  # whose ack latencies these are: "local" or "forwarded"


@attrs.define
class Phase:
    name: str
    seconds: float = 0.0
    acks: int = 0
    deliveries: int = 0
    errors: int = 0
    latency_us: dict[str, list[int]] = attrs.Factory(dict)  # tag -> ack latencies
    cpu_seconds: dict[str, float] = attrs.Factory(dict)  # node -> CPU in the window
    idle_cpu: dict[str, float] = attrs.Factory(dict)  # node -> CPU seconds a second, no load

    def figures(self) -> dict[str, Any]:
        total_cpu = sum(self.cpu_seconds.values())
        idle = sum(self.idle_cpu.values()) * self.seconds
        return {
            "phase": self.name,
            "seconds": round(self.seconds, 2),
            "acks": self.acks,
            "acks_per_s": round(self.acks / self.seconds, 1) if self.seconds else None,
            "deliveries": self.deliveries,
            "errors": self.errors,
            "cpu_us_per_msg": round(total_cpu * 1e6 / self.acks) if self.acks else None,
            # Less what the three nodes burn with no load (lease renewals, presence...).
            "cpu_us_per_msg_net": (
                round((total_cpu - idle) * 1e6 / self.acks) if self.acks else None
            ),
            "cpu_us_per_msg_by_node": {
                node: round(cpu * 1e6 / self.acks) if self.acks else None
                for node, cpu in sorted(self.cpu_seconds.items())
            },
            "ack_ms": {
                tag: {"n": len(v), "p50": _pct(v, 0.5), "p99": _pct(v, 0.99)}
                for tag, v in sorted(self.latency_us.items())
            },
        }


def _pct(values: list[int], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] / 1000, 2)


def _servers(cluster: Cluster) -> dict[str, ServerProcess]:
    return {node.node_id: node.process for node in cluster.nodes}


def _cpu(servers: dict[str, ServerProcess]) -> dict[str, float]:
    out = {}
    for name, server in servers.items():
        assert server.process is not None
        out[name] = proc_cpu_seconds(server.process.pid)
    return out


async def _run_phase(
    servers: dict[str, ServerProcess],
    name: str,
    conns: list[Conn],
    *,
    window: int,
    warmup: float,
    seconds: float,
    rate: float,
) -> Phase:
    """Connect and subscribe every client, send with `window` in flight (and `rate`
    messages a second in all, spread over the senders; 0: as fast as acks come) for
    `warmup` + `seconds`, drain; count what the measured window saw."""
    phase = Phase(name)
    senders = sum(1 for conn in conns if conn.send_to is not None)
    pause = senders / rate if rate else 0.0
    ports = {name: server.port for name, server in servers.items()}
    counting = False
    sending = True
    ready = 0
    all_ready = trio.Event()
    drained = trio.Event()
    in_flight_total = 0

    async def one(conn: Conn) -> None:
        nonlocal ready, in_flight_total
        port = ports[conn.node]
        assert port is not None
        async with connect_ws(port, token=conn.account.token) as ws:
            frame = {"type": "subscribe", "req": "s", "conversation_id": conn.subscribe}
            await ws.send_message(orjson.dumps(frame).decode())
            while orjson.loads(await ws.get_message()).get("req") != "s":
                pass
            ready += 1
            if ready == len(conns):
                all_ready.set()
            await all_ready.wait()
            slots = trio.Semaphore(window)
            sent_at: dict[str, int] = {}
            ids = itertools.count()

            async def sender() -> None:
                nonlocal in_flight_total
                while sending and conn.send_to is not None:
                    await slots.acquire()
                    if not sending:
                        return
                    client_id = f"{conn.account.id}-{next(ids)}"
                    sent_at[client_id] = time.monotonic_ns()
                    in_flight_total += 1
                    frame = {
                        "type": "send_message",
                        "conversation_id": conn.send_to,
                        "client_id": client_id,
                        "body": "x" * 64,
                        "req": client_id,
                    }
                    await ws.send_message(orjson.dumps(frame).decode())
                    await trio.sleep(pause)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                while True:
                    with trio.move_on_after(0.2):
                        frame = orjson.loads(await ws.get_message())
                        kind = frame["type"]
                        if kind == "ack":
                            began = sent_at.pop(frame["client_id"], None)
                            in_flight_total -= 1
                            slots.release()
                            if counting and began is not None:
                                phase.acks += 1
                                latency = (time.monotonic_ns() - began) // 1000
                                phase.latency_us.setdefault(conn.tag, []).append(latency)
                        elif kind == "new_message" and counting:
                            phase.deliveries += 1
                        elif kind == "error":
                            phase.errors += 1
                            if frame.get("req") in sent_at:
                                sent_at.pop(frame["req"])
                                in_flight_total -= 1
                                slots.release()
                    if drained.is_set():
                        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(one, conn)
        await all_ready.wait()
        await trio.sleep(warmup)
        cpu0, t0 = _cpu(servers), time.monotonic()
        counting = True
        await trio.sleep(seconds)
        sending = False
        for _ in range(1000):  # the in-flight acks, 10 s at most
            if in_flight_total <= 0:
                break
            await trio.sleep(0.01)
        phase.seconds = time.monotonic() - t0
        cpu1 = _cpu(servers)
        phase.cpu_seconds = {node: cpu1[node] - cpu0[node] for node in cpu0}
        drained.set()
    return phase


async def _accounts(cluster: Cluster, count: int, prefix: str) -> list[Account]:
    first = cluster.nodes[0].harness
    return [await first.account(f"{prefix}{i:04d}") for i in range(count)]


async def _single_node(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The baseline: `direct` on one server in single-node mode, the same load."""
    config = ServerProcess.write_config(workdir / "single.toml")
    server = ServerProcess(workdir / "single-data", config)
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as http:
        port = await server.start(nursery)
        http.base_url = httpx.URL(f"http://127.0.0.1:{port}")
        harness = Harness(server, http)  # type: ignore[arg-type]
        people = [await harness.account(f"s{i:04d}") for i in range(2 * args.direct)]
        conns = []
        for i in range(args.direct):
            a, b = people[2 * i], people[2 * i + 1]
            cid = await harness.direct(a, b)
            conns += [Conn(who, "1", cid, cid, "local") for who in (a, b)]
        cpu0, t0 = _cpu({"1": server}), time.monotonic()
        await trio.sleep(args.seconds / 2)
        idle = {"1": (_cpu({"1": server})["1"] - cpu0["1"]) / (time.monotonic() - t0)}
        figures = await _phase({"1": server}, "direct, single node", conns, args, idle, window=2)
        server.terminate()
        await server.wait()
    return figures


async def measure(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"phases": [await _single_node(workdir, args)]}
    node_ids = [chr(ord("a") + i) for i in range(NODES)]
    async with cluster_of(workdir / "load", NODES, lease_ttl=args.lease_ttl) as cluster:
        first = cluster.nodes[0].harness
        people = await _accounts(cluster, 2 * args.direct, "d")
        # What the nodes cost with nothing to do, measured before any load.
        await trio.sleep(1)
        cpu0, t0 = _cpu(_servers(cluster)), time.monotonic()
        await trio.sleep(args.seconds / 2)
        cpu1, idle_for = _cpu(_servers(cluster)), time.monotonic() - t0
        idle = {node: (cpu1[node] - cpu0[node]) / idle_for for node in cpu0}
        results["idle_cpu_pct"] = {node: round(100 * v, 1) for node, v in idle.items()}
        pairs = []
        for i in range(args.direct):
            a, b = people[2 * i], people[2 * i + 1]
            cid = await first.direct(a, b)
            pairs.append((a, b, cid, await cluster.placed(cid, a)))
        owners = [owner for *_, owner in pairs]
        results["direct_owners"] = {n: owners.count(n) for n in node_ids}

        # Both clients of a pair on its owner, then both on the next node.
        for name, step, tag in (("direct local", 0, "local"), ("direct forwarded", 1, "forwarded")):
            conns = []
            for a, b, cid, owner in pairs:
                node = node_ids[(node_ids.index(owner) + step) % NODES]
                conns += [Conn(who, node, cid, cid, tag) for who in (a, b)]
            phase = await _phase(_servers(cluster), name, conns, args, idle, window=2)
            results["phases"].append(phase)
        conns = []
        for i, (a, b, cid, owner) in enumerate(pairs):
            for j, who in enumerate((a, b)):
                node = node_ids[(2 * i + j) % NODES]
                conns.append(Conn(who, node, cid, cid, "local" if node == owner else "forwarded"))
        spread = await _phase(_servers(cluster), "direct spread", conns, args, idle, window=2)
        results["phases"].append(spread)

        members = await _accounts(cluster, args.group_members, "g")
        gid = await first.group(members[0], *members[1:])
        group_owner = await cluster.placed(gid, members[0])
        results["group_owner"] = group_owner
        conns = []
        for j, who in enumerate(members):
            node = node_ids[j % NODES]
            tag = "local" if node == group_owner else "forwarded"
            conns.append(Conn(who, node, gid, gid if j < args.group_senders else None, tag))
        group = await _phase(_servers(cluster), "group", conns, args, idle, window=4)
        results["phases"].append(group)

    chaos = await run_cluster_chaos(
        workdir / "failover",
        seconds=args.failover_seconds,
        kill_every=args.lease_ttl + 5,
        lease_ttl=args.lease_ttl,
        clients=6,
        per_conversation=2,
        settle_seconds=60,
    )
    results["failover"] = {
        "lease_ttl": args.lease_ttl,
        "seconds": [round(t, 2) for t in chaos.failovers],
        "takeovers": chaos.takeovers,
        "checker": chaos.checked.summary(),
        "passed": chaos.passed,
    }
    return results


async def _phase(
    servers: dict[str, ServerProcess],
    name: str,
    conns: list[Conn],
    args: argparse.Namespace,
    idle: dict[str, float],
    *,
    window: int,
) -> dict[str, Any]:
    print(f"  {name}: {len(conns)} clients ...", file=sys.stderr, flush=True)
    phase = await _run_phase(
        servers,
        name,
        conns,
        window=window,
        warmup=args.warmup,
        seconds=args.seconds,
        rate=args.rate,
    )
    phase.idle_cpu = idle
    return phase.figures()


def report(results: dict[str, Any]) -> str:
    lines = [
        f"cluster bench, commit {results['commit']}, {results['when']}, "
        f"lease ttl {results['failover']['lease_ttl']} s, {NODES} nodes on one host, "
        f"offered {results['rate'] or 'as fast as acks come'} msg/s",
        "",
        f"idle CPU of the nodes with no load, %: {results['idle_cpu_pct']}",
        "",
        "| phase | acks/s | CPU µs/msg (all nodes) | less idle | by node (a/b/c) | ack p50/p99 "
        "ms, local | ack p50/p99 ms, forwarded | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in results["phases"]:
        by_node = "/".join(str(v) for v in p["cpu_us_per_msg_by_node"].values())
        ack = p["ack_ms"]
        lat = {
            tag: f"{ack[tag]['p50']}/{ack[tag]['p99']}" if tag in ack else "-"
            for tag in ("local", "forwarded")
        }
        lines.append(
            f"| {p['phase']} | {p['acks_per_s']} | {p['cpu_us_per_msg']} | "
            f"{p['cpu_us_per_msg_net']} | {by_node} | "
            f"{lat['local']} | {lat['forwarded']} | {p['errors']} |"
        )
    f = results["failover"]
    lines += [
        "",
        f"failover (kill -9 of the owner -> first ack on the new owner), lease ttl "
        f"{f['lease_ttl']} s: {', '.join(f'{t:.2f}' for t in f['seconds'])} s; "
        f"{f['takeovers']} takeovers",
        f"checker: {f['checker']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench --cluster", description=__doc__)
    parser.add_argument("--cluster", action="store_true", help="(how scripts/bench gets here)")
    parser.add_argument("--direct", type=int, default=24, help="direct conversations")
    parser.add_argument("--group-members", type=int, default=30)
    parser.add_argument("--group-senders", type=int, default=6)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured per phase")
    parser.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="messages a second offered in all (0: closed loop, as fast as acks come)",
    )
    parser.add_argument("--lease-ttl", type=float, default=DEFAULT_LEASE_TTL)
    parser.add_argument(
        "--failover-seconds", type=float, default=50.0, help="chaos run giving the failovers"
    )
    args = parser.parse_args(argv)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = out / f"cluster-{stamp}"
    workdir.mkdir()
    results = trio.run(measure, workdir, args)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        results["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    results.setdefault("commit", "?")
    results["rate"] = args.rate
    results["when"] = stamp
    (out / f"cluster-{stamp}.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(report(results))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if results["failover"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
