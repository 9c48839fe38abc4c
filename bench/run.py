"""`./scripts/bench`: MessageAI against the machine's own limits, measured in one run.

Each scenario starts the server as its own process on a fresh data directory,
seeds it over REST, and drives it from separate load processes of real
WebSocket clients (`bench.load`). Its reference (a minimal trio-websocket echo
or fan-out server from `scripts/`) runs the same load right after it, so the
ratios compare figures taken minutes apart on the same machine. Server CPU is
the server process's own CPU time (/proc/PID/stat, all threads) over the
measured window. Prints markdown tables and writes JSON under bench-results/.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import httpx
import orjson

from bench import embed as embed_bench
from bench import procs, seed
from bench import search as search_bench
from bench.procs import ROOT, Child, LoadGroup
from messageai.config import ConfigError, parse_config

SCENARIOS = [
    "direct",
    "group",
    "rr",
    "idle",
    "cold",
    "history",
    "durability",
    "react",
    "changes",
    "search",
    "embed",
    "backlog",
]


class Sizes(TypedDict):
    """How big each scenario is; every loop below is bounded by these."""

    direct_conversations: int
    group_members: int
    group_senders: int
    rr_clients: int
    idle_connections: int
    cold_conversations: int
    history_messages: int
    history_clients: int
    react_targets: int
    changes_total: int
    changes_clients: int
    search_single_messages: int
    search_many_messages: int
    search_conversations: int
    search_queries: int
    embed_messages: int
    embed_scan_vectors: int
    backlog_messages: int
    warmup: float
    duration: float
    hold: float


# Full run and --quick sizes.
FULL: Sizes = {
    "direct_conversations": 200,
    "group_members": 50,
    "group_senders": 5,
    "rr_clients": 100,
    "idle_connections": 10_000,
    "cold_conversations": 1000,
    "history_messages": 1_000_000,
    "history_clients": 4,
    "react_targets": 20,
    "changes_total": 10_000,
    "changes_clients": 4,
    "search_single_messages": 1_000_000,
    "search_many_messages": 1_000_000,
    "search_conversations": 200,
    "search_queries": 500,
    "embed_messages": 5000,
    "embed_scan_vectors": 100_000,
    "backlog_messages": 100_000,
    "warmup": 2.0,
    "duration": 10.0,
    "hold": 5.0,
}
QUICK: Sizes = {
    **FULL,
    "direct_conversations": 100,
    "idle_connections": 500,
    "cold_conversations": 200,
    "history_messages": 200_000,
    "search_single_messages": 100_000,
    "search_many_messages": 100_000,
    "search_queries": 200,
    "embed_messages": 1000,
    "embed_scan_vectors": 100_000,
    "warmup": 0.5,
    "duration": 2.0,
    "hold": 1.0,
}

# Server settings for the bench (each run adds `[storage] synchronous`). The
# server's own parser checks them before anything starts: a misplaced or unknown
# key stops the bench with the parser's message, as it would stop the server.
SERVER_CONFIG: dict[str, dict[str, Any]] = {
    # No connection is closed for idling while it waits for its scenario to start.
    "server": {"host": "127.0.0.1", "port": 0, "idle_timeout_seconds": 3600.0},
    "auth": {"scrypt_n": 16},  # registering thousands of users is not what we measure
    "logging": {"level": "warning"},
    # The scenarios measure messaging without the model's CPU; `embed` turns it on.
    "embeddings": {"enabled": False},
    "conversations": {"idle_seconds": 3600.0},  # no actor retires during a long seeding
    # Abuse limits sized for a load generator that is one machine acting as thousands.
    "limits": {
        "max_connections_per_user": 100_000,
        "messages_per_second": 1_000_000,
        "message_burst": 1_000_000,
    },
}


def server_config(
    synchronous: str, settings: dict[str, dict[str, Any]] = SERVER_CONFIG
) -> dict[str, dict[str, Any]]:
    """The bench's settings with the run's `synchronous` level."""
    return {**settings, "storage": {**settings.get("storage", {}), "synchronous": synchronous}}


def config_toml(data: dict[str, dict[str, Any]]) -> str:
    """`data` as a TOML file, once `messageai.config.parse_config` has accepted it.

    Raises ConfigError (the server's own message) for a key the server would refuse.
    TOML is written by hand (the standard library only reads it) for the few value
    types a config holds, and read back to prove it says exactly `data`.
    """
    parse_config(data, "bench server config")
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != data:
        raise AssertionError(f"the bench's TOML writer changed the config:\n{text}")
    return text


def percentile(values: list[int], p: float) -> float | None:
    """Nearest-rank percentile of µs samples, in ms."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index] / 1000


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size: Sizes = QUICK if args.quick else FULL
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = ROOT / "bench-results" / stamp
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.scenario = ""
        self.step = ""
        self._progress_shown = False
        self._apsw: dict[str, list[dict[str, Any]]] = {}

    # ------------------------------------------------------------ plumbing

    def progress(self, text: str) -> None:
        line = f"[{self.scenario}] {self.step}: {text}"
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K" + line[:150])
            self._progress_shown = True
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def progress_done(self) -> None:
        if self._progress_shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._progress_shown = False

    def config(self, synchronous: str) -> Path:
        path = self.out / f"messageai-{synchronous.lower()}.toml"
        path.write_text(config_toml(server_config(synchronous)))
        return path

    def data_dir(self, name: str) -> Path:
        path = self.out / f"data-{name}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def start_server(self, synchronous: str, data_dir: Path) -> Child:
        self.step = "messageai"
        self.progress("starting the server")
        return procs.start_messageai(self.config(synchronous), data_dir, self.out / "server.log")

    def run_load(
        self,
        target: Child,
        plan: dict[str, Any],
        *,
        system: str,
        offered: str,
        baseline_rss_kib: int | None = None,
    ) -> dict[str, Any]:
        """Drive `target` with `plan`, measured over the window between mark and drain."""
        self.step = system
        size = self.size
        plan = {"max_seconds": 900, "body_chars": 64, **plan}
        plan_path = self.out / f"plan-{self.scenario}-{system}.json"
        plan_path.write_bytes(orjson.dumps(plan))
        shards = max(1, min(self.args.load_procs, len(plan["conns"])))
        if plan["kind"] in ("cold",):
            shards = 1
        group = LoadGroup(plan_path, shards, self.out / "load.log")

        def show(phase: str, start: float | None = None, total: float | None = None) -> Any:
            def update() -> None:
                acks = sum(p.get("acks", 0) for p in group.progress.values())
                deliv = sum(p.get("deliveries", 0) for p in group.progress.values())
                errors = sum(p.get("errors", 0) for p in group.progress.values())
                clock = f" {time.monotonic() - start:4.1f}/{total:.0f}s" if start else ""
                self.progress(
                    f"{phase}{clock}  acks {acks}  deliveries {deliv}  errors {errors}  "
                    f"server CPU {target.cpu():.1f}s RSS {target.rss_kib() // 1024} MB"
                )

            return update

        try:
            self.progress("connecting the load")
            ready = group.wait_all("ready", 600, show("connecting the load"))
            connections = sum(r["connections"] for r in ready)
            connect_errors = sum(r["connect_errors"] for r in ready)
            metrics: dict[str, Any] = {
                "system": system,
                "offered": offered,
                "connections": connections,
                "connect_errors": connect_errors,
                "connect_seconds": max(r["connect_seconds"] for r in ready),
                "load_procs": shards,
            }
            kind = plan["kind"]
            if kind == "idle":
                rss = target.rss_kib()
                base = baseline_rss_kib or 0
                metrics["rss_mb"] = rss / 1024
                metrics["rss_per_conn_kib"] = (rss - base) / max(1, connections)
                metrics["load_rss_per_conn_kib"] = sum(r["rss_kib"] for r in ready) / max(
                    1, connections
                )
                group.tell("go")
                cpu0, t0 = target.cpu(), time.monotonic()
                group.wait_all(None, size["hold"], show("holding", t0, size["hold"]))
                metrics["idle_cpu_pct"] = 100 * (target.cpu() - cpu0) / (time.monotonic() - t0)
                group.tell("stop")
                group.wait_all("result", 60, show("closing"))
                return metrics
            if kind == "cold":
                sys0 = target.sys_cpu()
                cpu0 = target.cpu()
                group.tell("go")
                results = group.wait_all("result", 600, show("sending first messages"))
                cpu1 = target.cpu()
            else:
                group.tell("go")
                t0 = time.monotonic()
                group.wait_all(None, size["warmup"], show("warming up", t0, size["warmup"]))
                group.tell("mark")
                group.wait_all("marked", 30)
                sys0 = target.sys_cpu()
                cpu0 = target.cpu()
                t0 = time.monotonic()
                spy = self.profile(target, system)
                group.wait_all(None, size["duration"], show("measuring", t0, size["duration"]))
                if spy is not None:
                    spy.wait()
                group.tell("stop")
                results = group.wait_all("result", 60, show("draining"))
                cpu1 = target.cpu()
            metrics.update(merge(results))
            cpu = cpu1 - cpu0
            metrics["server_cpu_seconds"] = cpu
            metrics["server_sys_share"] = (target.sys_cpu() - sys0) / cpu if cpu else None
            metrics["server_cpu_pct"] = 100 * cpu / max(1e-9, metrics["drained_seconds"])
            metrics["cpu_us_per_msg"] = cpu * 1e6 / metrics["acks"] if metrics["acks"] else None
            metrics["cpu_us_per_delivery"] = (
                cpu * 1e6 / metrics["deliveries"] if metrics["deliveries"] else None
            )
            metrics["rss_mb"] = target.rss_kib() / 1024
            return metrics
        finally:
            self.progress_done()
            group.close()

    def profile(self, target: Child, system: str) -> subprocess.Popen[bytes] | None:
        """With --profile, py-spy samples the server for the measured window."""
        if not self.args.profile or system != "messageai":
            return None
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        name = self.scenario.replace(" ", "-")
        argv = [spy, "record", "--pid", str(target.pid), "--rate", "250", "--nonblocking"]
        argv += self.args.profile_args.split()
        argv += ["--duration", str(max(1, int(self.size["duration"]) - 1))]
        argv += ["--format", "raw", "--output", str(self.out / f"profile-{name}.txt")]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def add(self, scenario: str, metrics: dict[str, Any]) -> dict[str, Any]:
        metrics = {"scenario": scenario, **metrics}
        self.rows.append(metrics)
        return metrics

    # ------------------------------------------------------------ scenarios

    def direct_pairs(self, server: Child, n: int, prefix: str) -> tuple[list[Any], list[str]]:
        rest = seed.Rest(server.port)
        try:
            self.progress(f"registering {2 * n} users")
            users = rest.register([f"{prefix}{i:05d}" for i in range(2 * n)])
            self.progress(f"creating {n} direct conversations")
            convs = rest.direct([(users[2 * i], users[2 * i + 1]) for i in range(n)])
        finally:
            rest.close()
        return users, convs

    def stream_direct(self, synchronous: str, label: str, with_ref: bool) -> dict[str, Any]:
        n = self.size["direct_conversations"]
        window = 2
        offered = f"{n} conv x 2 senders x {window} in flight"
        server = self.start_server(synchronous, self.data_dir(label))
        try:
            users, convs = self.direct_pairs(server, n, "d")
            conns = [
                {
                    "path": f"/v1/ws?access_token={u['token']}",
                    "subscribe": [convs[i // 2]],
                    "send_to": convs[i // 2],
                    "tag": f"c{i}",
                }
                for i, u in enumerate(users)
            ]
            plan = {"kind": "stream", "url": ws_url(server), "conns": conns, "window": window}
            ours = self.add(label, self.run_load(server, plan, system="messageai", offered=offered))
            ours["synchronous"] = synchronous
        finally:
            server.stop()
        if with_ref:
            ref = procs.start_reference("ref_fanout.py", self.out / "ref.log")
            try:
                conns = [
                    {"path": f"/room/{i // 2}", "send_to": f"r{i // 2}", "tag": f"c{i}"}
                    for i in range(2 * n)
                ]
                plan = {"kind": "stream", "url": ws_url(ref), "conns": conns, "window": window}
                ours["ref"] = self.add(
                    label,
                    self.run_load(ref, plan, system="ref_fanout (rooms of 2)", offered=offered),
                )
            finally:
                ref.stop()
        return ours

    def s_direct(self) -> None:
        ours = self.stream_direct("FULL", "direct", with_ref=True)
        self.results["direct"] = ours
        self.results.setdefault("apsw", self.apsw("FULL"))

    def s_durability(self) -> None:
        full = self.stream_direct("FULL", "durability FULL", with_ref=False)
        normal = self.stream_direct("NORMAL", "durability NORMAL", with_ref=False)
        self.results["durability"] = {"FULL": full, "NORMAL": normal}
        self.results["apsw"] = self.apsw("FULL") + self.apsw("NORMAL")

    def s_group(self) -> None:
        members = self.size["group_members"]
        senders = self.size["group_senders"]
        window = 4
        offered = f"1 group x {members} members, {senders} senders x {window} in flight"
        server = self.start_server("FULL", self.data_dir("group"))
        try:
            rest = seed.Rest(server.port)
            try:
                users = rest.register([f"g{i:05d}" for i in range(members)])
                (cid,) = rest.groups([(users[0], users[1:])])
            finally:
                rest.close()
            conns = [
                {
                    "path": f"/v1/ws?access_token={u['token']}",
                    "subscribe": [cid],
                    "send_to": cid if i < senders else None,
                    "tag": f"c{i}",
                }
                for i, u in enumerate(users)
            ]
            plan = {"kind": "stream", "url": ws_url(server), "conns": conns, "window": window}
            ours = self.add(
                "group", self.run_load(server, plan, system="messageai", offered=offered)
            )
        finally:
            server.stop()
        ref = procs.start_reference("ref_fanout.py", self.out / "ref.log")
        try:
            conns = [
                {"path": "/room/g", "send_to": "g" if i < senders else None, "tag": f"c{i}"}
                for i in range(members)
            ]
            plan = {"kind": "stream", "url": ws_url(ref), "conns": conns, "window": window}
            ours["ref"] = self.add(
                "group", self.run_load(ref, plan, system="ref_fanout", offered=offered)
            )
        finally:
            ref.stop()
        self.results["group"] = ours

    def s_react(self) -> None:
        """`group` with reactions instead of messages: the same 50 members and senders,
        each sender toggling its reaction on the group's first messages (every frame
        a change: a rev, a commit, a `message_updated` to the 49 others)."""
        members = self.size["group_members"]
        senders = self.size["group_senders"]
        targets = self.size["react_targets"]
        window = 4
        offered = f"1 group x {members} members, {senders} senders x {window} reactions in flight"
        server = self.start_server("FULL", self.data_dir("react"))
        try:
            rest = seed.Rest(server.port)
            try:
                users = rest.register([f"x{i:05d}" for i in range(members)])
                (cid,) = rest.groups([(users[0], users[1:])])
                rest.messages(cid, users[0]["token"], targets)
            finally:
                rest.close()
            conns = [
                {
                    "path": f"/v1/ws?access_token={u['token']}",
                    "subscribe": [cid],
                    "send_to": cid if i < senders else None,
                    "tag": f"c{i}",
                }
                for i, u in enumerate(users)
            ]
            plan = {
                "kind": "stream",
                "action": "react",
                "react_seqs": list(range(1, targets + 1)),
                "url": ws_url(server),
                "conns": conns,
                "window": window,
            }
            self.results["react"] = self.add(
                "react", self.run_load(server, plan, system="messageai", offered=offered)
            )
        finally:
            server.stop()

    def s_changes(self) -> None:
        """Catch-up with `get_changes`: clients page 200 at a time from rev 0 through a
        conversation of `changes_total` messages that were each changed once since."""
        total = self.size["changes_total"]

        def figures(ours: dict[str, Any]) -> None:
            ours["pages_per_s"] = ours.get("acked_per_s")
            ours["catch_ups_per_s"] = (
                ours["acked_per_s"] / (total / 200) if ours.get("acked_per_s") else None
            )

        self._one_big_conversation(
            "changes",
            "k",
            self.size["changes_clients"],
            f"{self.size['changes_clients']} clients catching up {total:,} changes, 200 a page",
            f"writing {total:,} messages and {total:,} changes",
            seed.fill_changes,
            total,
            {"changes_total": 2 * total, "changes_limit": 200},
            figures,
        )

    def s_search(self) -> None:
        """Keyword search latency: one big conversation, and many (`bench.search`)."""
        size = self.size
        data = self.data_dir("search")
        self.step = "search"
        try:
            figures = search_bench.run(
                self.config("NORMAL"),
                data,
                self.out / "server.log",
                single_messages=size["search_single_messages"],
                many_messages=size["search_many_messages"],
                conversations=size["search_conversations"],
                queries_per_case=size["search_queries"],
                progress=self.progress,
            )
        finally:
            shutil.rmtree(data, ignore_errors=True)
        self.progress_done()
        self.results["search"] = figures

    def s_embed(self) -> None:
        """The background embedding indexer's messages/s and the vector scan (`bench.embed`)."""
        data = self.data_dir("embed")
        self.step = "embed"
        settings = {**SERVER_CONFIG, "embeddings": {"enabled": True}}
        config = self.out / "messageai-embed.toml"
        config.write_text(config_toml(server_config("NORMAL", settings)))
        try:
            figures = embed_bench.run(
                config,
                data,
                self.out / "server.log",
                messages=self.size["embed_messages"],
                scan_vectors=self.size["embed_scan_vectors"],
                progress=self.progress,
            )
        finally:
            shutil.rmtree(data, ignore_errors=True)
        self.progress_done()
        self.results["embed"] = figures

    def s_backlog(self) -> None:
        """`direct`'s load (FULL) on a server whose indexer is catching up one
        conversation's backlog of embeddings, right after the same load with embeddings
        off: ack p99 with the backlog ÷ without."""
        n = self.size["direct_conversations"]
        window = 2
        offered = f"{n} conv x 2 senders x {window} in flight"
        data = self.data_dir("backlog")
        settings = {**SERVER_CONFIG, "embeddings": {"enabled": True}}
        config = self.out / "messageai-backlog.toml"
        config.write_text(config_toml(server_config("FULL", settings)))
        self.step = "backlog"
        server = self.start_server("FULL", data)
        try:
            users, convs = self.direct_pairs(server, n, "b")
            rest = seed.Rest(server.port)
            try:
                owner, other = rest.register(["backlog1", "backlog2"])
                (backlog,) = rest.groups([(owner, [other])])
            finally:
                rest.close()
        finally:
            server.stop()
        total = self.size["backlog_messages"]
        self.progress(f"seeding a backlog of {total:,} messages")
        search_bench.fill(data, backlog, [owner["id"], other["id"]], total, random.Random(12))
        figures: dict[str, Any] = {"backlog_messages": total}
        for label, path in (("without", self.config("FULL")), ("with", config)):
            # Tags name the client ids: the second run's must differ, or its sends are
            # resends of the first's (acked as duplicates, never delivered).
            conns = [
                {
                    "path": f"/v1/ws?access_token={u['token']}",
                    "subscribe": [convs[i // 2]],
                    "send_to": convs[i // 2],
                    "tag": f"{label}{i}",
                }
                for i, u in enumerate(users)
            ]
            server = procs.start_messageai(path, data, self.out / "server.log")

            def indexing(port: int) -> object:
                # A semantic search: it wakes the backlog's conversation (its indexer
                # starts) and says whether embeddings still lag.
                with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
                    r = http.get(
                        "/v1/search",
                        params={"q": "meeting", "mode": "semantic"},
                        headers={"authorization": f"Bearer {owner['token']}"},
                    )
                    return r.json().get("indexing")

            try:
                if label == "with":
                    figures["indexing_before"] = indexing(server.port)
                plan = {"kind": "stream", "url": ws_url(server), "conns": conns, "window": window}
                metrics = self.run_load(server, plan, system="messageai", offered=offered)
                figures[label] = self.add(f"direct, embeddings backlog: {label}", metrics)
                if label == "with":
                    figures["indexing_after"] = indexing(server.port)
            finally:
                server.stop()
        shutil.rmtree(data, ignore_errors=True)
        with_p99, without_p99 = figures["with"]["ack_p99_ms"], figures["without"]["ack_p99_ms"]
        figures["ack_p99_ratio"] = with_p99 / without_p99 if with_p99 and without_p99 else None
        self.results["backlog"] = figures

    def s_rr(self) -> None:
        n = self.size["rr_clients"]
        offered = f"{n} clients x 1 in flight"
        server = self.start_server("FULL", self.data_dir("rr"))
        try:
            users, convs = self.direct_pairs(server, n, "r")
            # Only one side of each direct conversation connects: ack only, no delivery,
            # the same work per message as the echo reference's.
            conns = [
                {
                    "path": f"/v1/ws?access_token={users[2 * i]['token']}",
                    "send_to": convs[i],
                    "tag": f"c{i}",
                }
                for i in range(n)
            ]
            plan = {"kind": "stream", "url": ws_url(server), "conns": conns, "window": 1}
            ours = self.add("rr", self.run_load(server, plan, system="messageai", offered=offered))
        finally:
            server.stop()
        ref = procs.start_reference("ref_echo.py", self.out / "ref.log")
        try:
            conns = [{"path": f"/echo/{i}", "send_to": f"e{i}", "tag": f"c{i}"} for i in range(n)]
            plan = {"kind": "stream", "url": ws_url(ref), "conns": conns, "window": 1}
            ours["ref"] = self.add(
                "rr", self.run_load(ref, plan, system="ref_echo", offered=offered)
            )
        finally:
            ref.stop()
        self.results["rr"] = ours

    def s_idle(self) -> None:
        n = self.size["idle_connections"]
        per_group = 10
        offered = f"{n} connections x 5 subscriptions (groups of {per_group})"
        server = self.start_server("FULL", self.data_dir("idle"))
        try:
            rest = seed.Rest(server.port)
            try:
                self.progress(f"registering {n} users")
                users = rest.register([f"i{i:05d}" for i in range(n)])
                # Five layers; in each, a different shuffle cut into groups of `per_group`:
                # every user is in exactly five groups.
                groups: list[list[int]] = []
                rng = random.Random(5)
                for _layer in range(5):
                    order = list(range(n))
                    rng.shuffle(order)
                    groups += [order[k : k + per_group] for k in range(0, n, per_group)]
                self.progress(f"creating {len(groups)} groups")
                ids = rest.groups([(users[g[0]], [users[m] for m in g[1:]]) for g in groups])
            finally:
                rest.close()
            subs: list[list[str]] = [[] for _ in range(n)]
            for gid, members in zip(ids, groups, strict=True):
                for m in members:
                    subs[m].append(gid)
            conns = [
                {"path": f"/v1/ws?access_token={u['token']}", "subscribe": subs[i], "tag": f"c{i}"}
                for i, u in enumerate(users)
            ]
            plan = {"kind": "idle", "url": ws_url(server), "conns": conns}
            base = server.rss_kib()
            ours = self.add(
                "idle",
                self.run_load(
                    server, plan, system="messageai", offered=offered, baseline_rss_kib=base
                ),
            )
            ours["baseline_rss_mb"] = base / 1024
        finally:
            server.stop()
        ref = procs.start_reference("ref_fanout.py", self.out / "ref.log")
        try:
            conns = [{"path": f"/room/{i // per_group}", "tag": f"c{i}"} for i in range(n)]
            plan = {"kind": "idle", "url": ws_url(ref), "conns": conns}
            base = ref.rss_kib()
            ours["ref"] = self.add(
                "idle",
                self.run_load(
                    ref, plan, system="ref_fanout", offered=offered, baseline_rss_kib=base
                ),
            )
        finally:
            ref.stop()
        self.results["idle"] = ours

    def s_cold(self) -> None:
        n = self.size["cold_conversations"]
        concurrency = 4
        offered = f"first message to {n} inactive conversations, {concurrency} at a time"
        data = self.data_dir("cold")
        server = self.start_server("FULL", data)
        try:
            rest = seed.Rest(server.port)
            try:
                users = rest.register(["cold_a", "cold_b"])
                self.progress(f"creating {n} conversations")
                ids = rest.groups([(users[0], [users[1]])] * n)
            finally:
                rest.close()
        finally:
            server.stop()
        # A restart: no actor is running and no database is open.
        server = self.start_server("FULL", data)
        try:
            conns = [{"path": f"/v1/ws?access_token={users[0]['token']}", "tag": "cold"}]
            plan = {
                "kind": "cold",
                "url": ws_url(server),
                "conns": conns,
                "cold_targets": ids,
                "concurrency": concurrency,
            }
            self.results["cold"] = self.add(
                "cold", self.run_load(server, plan, system="messageai", offered=offered)
            )
        finally:
            server.stop()

    def s_history(self) -> None:
        total = self.size["history_messages"]
        self._one_big_conversation(
            "history",
            "h",
            self.size["history_clients"],
            f"{self.size['history_clients']} clients paging 200 at random in {total:,} messages",
            f"writing {total:,} messages into the conversation's database",
            seed.fill_history,
            total,
            {"history_total": total, "history_limit": 200},
        )

    def _one_big_conversation(
        self,
        name: str,
        tag: str,
        clients: int,
        offered: str,
        filling: str,
        fill_with: Callable[[Path, str, list[str], int, str], float],
        total: int,
        plan_extra: dict[str, Any],
        figures: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """A scenario over one direct conversation of `total` messages written into its
        file while the server is stopped (`fill_with`), read by `clients` clients of
        the load kind `name` (`history`, `changes`); `tag` prefixes its users."""
        data = self.data_dir(name)
        server = self.start_server("FULL", data)
        try:
            users, convs = self.direct_pairs(server, 1, tag)
        finally:
            server.stop()
        self.step = "filling"
        self.progress(filling)
        fill = fill_with(data, convs[0], [u["id"] for u in users], total, "FULL")
        server = self.start_server("FULL", data)
        try:
            conns = [
                {"path": f"/v1/ws?access_token={users[i % 2]['token']}", "tag": f"{tag}{i}"}
                for i in range(clients)
            ]
            plan = {
                "kind": name,
                "url": ws_url(server),
                "conns": conns,
                f"{name}_conversation": convs[0],
                **plan_extra,
            }
            ours = self.add(name, self.run_load(server, plan, system="messageai", offered=offered))
            ours["fill_seconds"] = fill
            if figures is not None:
                figures(ours)
            self.results[name] = ours
        finally:
            server.stop()
            shutil.rmtree(data, ignore_errors=True)

    def apsw(self, synchronous: str) -> list[dict[str, Any]]:
        """The actor's own insert (`store.conversation.insert_message`) straight on APSW,
        without the server around it: one row per commit, and 64 per commit."""
        if synchronous in self._apsw:
            return self._apsw[synchronous]
        from messageai.model import Message
        from messageai.sqlite import migrate, open_db
        from messageai.store import conversation as sql

        self.step = "raw APSW"
        out = []
        seconds = self.size["duration"] / 2
        for batch in (1, 64):
            self.progress(f"inserts, synchronous={synchronous}, {batch} per commit")
            directory = self.out / f"apsw-{synchronous}-{batch}"
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            conn = open_db(directory / "c.sqlite3", synchronous)
            migrate(conn, sql.MIGRATIONS)
            rows, seq = 0, 0
            body = "z" * 64
            cpu0, t0 = time.process_time(), time.monotonic()
            while time.monotonic() - t0 < seconds and rows < 10_000_000:
                with conn:
                    for _ in range(batch):
                        seq += 1
                        message = Message(
                            id=f"m_{seq}",
                            conversation_id="c_bench",
                            seq=seq,
                            sender_id="u_1",
                            client_id=f"c{seq}",
                            body=body,
                            attachments=[],
                            created_at=0,
                        )
                        sql.insert_message(conn, message)
                rows += batch
            cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
            conn.close()
            shutil.rmtree(directory, ignore_errors=True)
            out.append(
                {
                    "synchronous": synchronous,
                    "rows_per_commit": batch,
                    "rows_per_s": rows / wall,
                    "cpu_us_per_row": cpu * 1e6 / rows,
                    "commits_per_s": rows / batch / wall,
                }
            )
        self.progress_done()
        self._apsw[synchronous] = out
        return out

    # ------------------------------------------------------------ report

    def targets(self) -> list[dict[str, Any]]:
        r = self.results
        out: list[dict[str, Any]] = []

        def check(
            name: str, measured: float | None, limit: float | None, goal: str, le: bool
        ) -> None:
            met = None
            if measured is not None and limit is not None:
                met = measured <= limit if le else measured >= limit
            out.append(
                {"target": name, "measured": measured, "limit": limit, "goal": goal, "met": met}
            )

        def ratio(a: float | None, b: float | None) -> float | None:
            return a / b if a is not None and b else None

        if "direct" in r and "ref" in r["direct"]:
            d = r["direct"]
            check(
                "direct: CPU/msg ÷ ref (echo + delivery)",
                ratio(d["cpu_us_per_msg"], d["ref"]["cpu_us_per_msg"]),
                1.5,
                "≤ 1.5",
                True,
            )
            check("direct: acked/s", d["acked_per_s"], 4000, "≥ 4,000", False)
            check("direct: delivered/s", d["delivered_per_s"], 4000, "≥ 4,000", False)
        if "group" in r:
            g = r["group"]
            check(
                "group: CPU/delivery ÷ ref fan-out",
                ratio(g["cpu_us_per_delivery"], g["ref"]["cpu_us_per_delivery"]),
                1.3,
                "≤ 1.3",
                True,
            )
            check("group: deliveries/s", g["delivered_per_s"], 20000, "≥ 20,000", False)
        if "react" in r and "group" in r:
            check(
                "react: CPU/delivery ÷ group's",
                ratio(r["react"]["cpu_us_per_delivery"], r["group"]["cpu_us_per_delivery"]),
                1.2,
                "≤ 1.2",
                True,
            )
        if "changes" in r:
            check("changes: pages/s (200 a page)", r["changes"]["pages_per_s"], None, "-", False)
        if "rr" in r:
            check(
                "rr: ack p99 ÷ ref echo p99",
                ratio(r["rr"]["ack_p99_ms"], r["rr"]["ref"]["ack_p99_ms"]),
                2.0,
                "≤ 2",
                True,
            )
        if "idle" in r:
            i = r["idle"]
            check(
                "idle: RSS/connection ÷ ref",
                ratio(i["rss_per_conn_kib"], i["ref"]["rss_per_conn_kib"]),
                1.5,
                "≤ 1.5",
                True,
            )
            check(
                "idle: connections held",
                i["connections"] - i["connect_errors"],
                self.size["idle_connections"],
                f"≥ {self.size['idle_connections']:,}",
                False,
            )
        if "backlog" in r:
            check(
                "backlog: direct ack p99 with the embedding indexer catching up ÷ without",
                r["backlog"]["ack_p99_ratio"],
                1.2,
                "≤ 1.2",
                True,
            )
        if "cold" in r:
            check("cold: first-message ack p99 (ms)", r["cold"]["ack_p99_ms"], 20, "≤ 20", True)
        if "history" in r:
            check("history: page p99 (ms)", r["history"]["ack_p99_ms"], 20, "≤ 20", True)
        if "search" in r:
            se = r["search"]
            check(
                f"search: p99 in one conversation of {se['single_messages']:,} (ms)",
                se["one"]["p99_ms"],
                20,
                "≤ 20",
                True,
            )
            check(
                f"search: p99 across {se['conversations']} conversations"
                f" of {se['many_messages']:,} in all (ms)",
                se["all"]["p99_ms"],
                200,
                "≤ 200",
                True,
            )
        if "durability" in r:
            du = r["durability"]
            check(
                "durability: CPU/msg FULL ÷ NORMAL",
                ratio(du["FULL"]["cpu_us_per_msg"], du["NORMAL"]["cpu_us_per_msg"]),
                1.25,
                "≤ 1.25",
                True,
            )
        return out

    def report(self) -> str:
        lines = [
            "| scenario | system | offered load | acked/s | delivered/s "
            "| ack p50 / p95 / p99 ms | delivery p50 / p95 / p99 ms "
            "| server CPU µs/msg | µs/delivery | server CPU % | load CPU % | server RSS MB |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in self.rows:
            if row["scenario"] == "idle":
                lines.append(
                    f"| idle | {row['system']} | {row['offered']} | - | - | - | - | - | - "
                    f"| {fmt(row.get('idle_cpu_pct'), 1)} (idle) | - "
                    f"| {fmt(row['rss_mb'], 0)} ({fmt(row['rss_per_conn_kib'], 1)} KiB/conn) |"
                )
                continue
            lines.append(
                f"| {row['scenario']} | {row['system']} | {row['offered']} "
                f"| {fmt(row['acked_per_s'], 0)} | {fmt(row['delivered_per_s'], 0)} "
                f"| {fmt(row['ack_p50_ms'], 1)} / {fmt(row['ack_p95_ms'], 1)} / "
                f"{fmt(row['ack_p99_ms'], 1)} "
                f"| {fmt(row['deliv_p50_ms'], 1)} / {fmt(row['deliv_p95_ms'], 1)} / "
                f"{fmt(row['deliv_p99_ms'], 1)} "
                f"| {fmt(row['cpu_us_per_msg'], 0)} | {fmt(row['cpu_us_per_delivery'], 1)} "
                f"| {fmt(row['server_cpu_pct'], 0)} | {fmt(row['load_cpu_pct'], 0)} "
                f"| {fmt(row['rss_mb'], 0)} |"
            )
        apsw = self.results.get("apsw")
        if apsw:
            lines += [
                "",
                "| raw APSW insert | rows/s | commits/s | CPU µs/row |",
                "| --- | ---: | ---: | ---: |",
            ]
            for a in apsw:
                lines.append(
                    f"| synchronous={a['synchronous']}, {a['rows_per_commit']} row(s)/commit "
                    f"| {fmt(a['rows_per_s'], 0)} | {fmt(a['commits_per_s'], 0)} "
                    f"| {fmt(a['cpu_us_per_row'], 1)} |"
                )
        se = self.results.get("search")
        if se:
            lines += [
                "",
                "| search | queries | p50 / p95 / p99 ms | results | server CPU ms/query |",
                "| --- | ---: | ---: | ---: | ---: |",
            ]
            for key, label in [
                ("one", f"one conversation of {se['single_messages']:,}"),
                ("all", f"{se['conversations']} conversations of {se['many_messages']:,} in all"),
            ]:
                f = se[key]
                lines.append(
                    f"| {label} | {se['queries']} | {fmt(f['p50_ms'], 1)} / {fmt(f['p95_ms'], 1)}"
                    f" / {fmt(f['p99_ms'], 1)} | {f['results']} | {fmt(f['cpu_ms_per_query'], 1)} |"
                )
            sw = se["stop_words_one"]
            lines.append(
                f"| stop words only, one conversation | 20 | {fmt(sw['p50_ms'], 1)} / "
                f"{fmt(sw['p95_ms'], 1)} / {fmt(sw['p99_ms'], 1)} | - | - |"
            )
            lines.append(
                f"\nSeeding (indexed as inserted): {fmt(se['seed_single_seconds'], 0)} s for one"
                f" conversation, {fmt(se['seed_many_seconds'], 0)} s for the others; the"
                f" filler rebuilt the big one's index in {fmt(se['fill_seconds'], 1)} s"
                f" ({fmt(se['fill_rows_per_s'], 0)} messages/s)."
            )
        em = self.results.get("embed")
        if em:
            lines += [
                "",
                "| embed | messages | seconds | messages/s | server CPU ms/message |",
                "| --- | ---: | ---: | ---: | ---: |",
                f"| background indexer, one conversation | {em['messages']:,}"
                f" | {fmt(em['seconds'], 1)} | {fmt(em['messages_per_s'], 0)}"
                f" | {fmt(em['cpu_ms_per_message'], 1)} |",
            ]
            sc = em.get("scan")
            if sc:
                lines.append(
                    f"\nNearest 50 among {sc['vectors']:,} int8 vectors of one file (best / median"
                    f" ms): NumPy scan of the BLOBs {fmt(sc['numpy']['best_ms'], 0)} /"
                    f" {fmt(sc['numpy']['median_ms'], 0)}, sqlite-vec"
                    f" {fmt(sc['sqlite_vec']['best_ms'], 0)} /"
                    f" {fmt(sc['sqlite_vec']['median_ms'], 0)}"
                    f" (top 10 in common: {sc['top10_overlap']} of 10)."
                )
        targets = self.targets()
        if targets:
            lines += ["", "| target | measured | goal | met |", "| --- | ---: | ---: | --- |"]
            for t in targets:
                met = {True: "yes", False: "**no**", None: "?"}[t["met"]]
                lines.append(f"| {t['target']} | {fmt(t['measured'], 2)} | {t['goal']} | {met} |")
        return "\n".join(lines)


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    acks_lat = [v for r in results for v in r["ack_lat_us"]]
    deliv_lat = [v for r in results for v in r["deliv_lat_us"]]
    measured = max(r["measured_seconds"] for r in results) or 1e-9
    drained = max(r["drained_seconds"] for r in results) or 1e-9
    out: dict[str, Any] = {
        "measured_seconds": measured,
        "drained_seconds": drained,
        "acks": sum(r["acks"] for r in results),
        "deliveries": sum(r["deliveries"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "error_samples": [s for r in results for s in r["error_samples"]][:5],
        "inflight_left": sum(r["inflight_left"] for r in results),
        "acked_per_s": sum(r["acks_at_stop"] for r in results) / measured,
        "delivered_per_s": sum(r["deliveries_at_stop"] for r in results) / measured,
        "load_cpu_pct": 100 * sum(r["load_cpu_seconds"] for r in results) / drained,
        "load_rss_mb": sum(r["rss_kib"] for r in results) / 1024,
    }
    for name, values in (("ack", acks_lat), ("deliv", deliv_lat)):
        for p in (50, 95, 99):
            out[f"{name}_p{p}_ms"] = percentile(values, p)
        out[f"{name}_samples"] = len(values)
    return out


def fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def toml_value(value: Any) -> str:
    """One TOML value: a string (JSON's escapes are TOML's), bool, number or array."""
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def ws_url(child: Child) -> str:
    return f"ws://127.0.0.1:{child.port}"


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: about a minute")
    parser.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="run only this one (repeatable)"
    )
    parser.add_argument("--load-procs", type=int, default=1, help="load processes (default 1)")
    parser.add_argument("--idle-connections", type=int, help="override the idle scenario's N")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server (pip install py-spy)"
    )
    parser.add_argument("--profile-args", default="", help="extra py-spy flags, e.g. --gil")
    parser.add_argument("--duration", type=float, help="seconds measured per run")
    parser.add_argument(
        "--search-messages", type=int, help="the search scenario's messages (each of its two cases)"
    )
    parser.add_argument(
        "--search-conversations", type=int, help="the search scenario's many conversations"
    )
    args = parser.parse_args(argv)
    try:
        for synchronous in ("FULL", "NORMAL"):
            config_toml(server_config(synchronous))
    except ConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    bench = Bench(args)
    if args.idle_connections:
        bench.size = {**bench.size, "idle_connections": args.idle_connections}
    if args.duration:
        bench.size = {**bench.size, "duration": args.duration}
    if args.search_messages:
        bench.size = {
            **bench.size,
            "search_single_messages": args.search_messages,
            "search_many_messages": args.search_messages,
        }
    if args.search_conversations:
        bench.size = {**bench.size, "search_conversations": args.search_conversations}
    nofile = procs.raise_nofile()
    if bench.size["idle_connections"] + 2000 > nofile:
        print(f"bench: RLIMIT_NOFILE is {nofile}; the idle scenario may fail", file=sys.stderr)
    started = time.monotonic()
    info = machine()
    print(
        f"MessageAI bench{' --quick' if args.quick else ''}: {info['cpu']}, {info['cores']} cores, "
        f"{info['memory_gib']} GiB, Python {info['python']}; results in "
        f"{bench.out.relative_to(ROOT)}",
        file=sys.stderr,
    )
    failed = []
    for name in args.scenario or SCENARIOS:
        bench.scenario = name
        t0 = time.monotonic()
        try:
            getattr(bench, f"s_{name}")()
            print(f"bench: {name} took {time.monotonic() - t0:.1f} s", file=sys.stderr)
        except Exception as exc:  # one scenario failing must not hide the others' numbers
            bench.progress_done()
            print(f"bench: scenario {name} failed: {exc!r}", file=sys.stderr)
            failed.append(name)
    info["seconds"] = round(time.monotonic() - started, 1)
    table = bench.report()
    print(table)
    (bench.out / "results.json").write_bytes(
        orjson.dumps(
            {
                "machine": info,
                "quick": args.quick,
                "sizes": bench.size,
                "rows": bench.rows,
                "apsw": bench.results.get("apsw", []),
                "embed": bench.results.get("embed"),
                "backlog": bench.results.get("backlog"),
                "targets": bench.targets(),
                "failed": failed,
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    (bench.out / "table.md").write_text(table + "\n")
    for data in bench.out.glob("data-*"):
        shutil.rmtree(data, ignore_errors=True)
    print(
        f"\n{info['seconds']} s; JSON: {bench.out.relative_to(ROOT)}/results.json", file=sys.stderr
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
