"""Chaos: kill -9 under load, with a Jepsen-style checker. Shared by `scripts/chaos`
(`python -m tests.chaos --seconds N`) and tests/test_chaos.py (a short run).

The server is a real child process on a fixed loopback port, SIGKILLed every
`kill_every` seconds and restarted on the same data directory. Clients (one user
each, `per_conversation` to a group) keep a few messages in flight, each with its
own client id; on any disconnect they reconnect, subscribe, catch up with
`get_history` after the highest seq they hold, and resend every unacked message
with its original client id. After the chaos the server runs undisturbed until
every client has all its messages acked; then the checker reads every history:

- acked: distinct client ids acknowledged;
- lost: acked, but missing from the history or stored differently than acked;
- duplicated: a (sender, client id) stored more than once;
- phantom: delivered as `new_message` but not in the history as delivered;
- order violations: a gap in seq, a reader whose view of a seq differs from the
  history, or live frames out of seq order on one connection;
- unresolved: messages still unacked when the run ended (a liveness failure).

Finally the server is killed once more and `PRAGMA integrity_check` runs on every
database file. Every loop is bounded by the run's deadline.

`power_loss=True` (`scripts/chaos --power-loss`): the server runs under the power-cut
VFS of tests/powercut.py, and each kill, at a random moment when some write is not
yet synced, is a power cut: once the process is dead, its files are rebuilt as a cut
leaves them (unsynced writes lost, or torn), then it restarts. The users and conversations are made durable first by a
clean restart, so that what a run measures is messages. After the settle, power is
cut once more before the histories are read: an ack whose message a cut took back
counts as lost.

`run_slow_consumer` (`scripts/chaos --slow-consumer`): 5,000 large messages into a
group while one subscriber reads nothing: the server's RSS stays bounded, the
reader is dropped and then catches up from its last seq with nothing lost.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import attrs
import httpx
import orjson
import trio
import trio_websocket

from tests import powercut
from tests.helpers import child_log, connect_ws

ROOT = Path(__file__).resolve().parent.parent

# What a dead or restarting server looks like to a client.
DISCONNECTED = (
    trio_websocket.ConnectionClosed,
    trio_websocket.HandshakeError,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


class Unavailable(Exception):
    """The server answered `unavailable` (in a cluster: the owner is gone and its lease
    not yet taken over): nothing was stored, the client reconnects and resends."""


# Where a client connects next: (the client) -> a port. One server: always its port; a
# cluster (tests/cluster_chaos.py): a live node, another one after each failure.
PortOf = Callable[["Client"], int]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerChild:
    """`python -m messageai serve` on a fixed port; killed and restarted at will. With
    `journal`, it runs under the power-cut VFS (`python -m tests.powercut JOURNAL ...`)."""

    def __init__(
        self, workdir: Path, port: int, extra_config: str = "", journal: Path | None = None
    ) -> None:
        self.port = port
        self.data_dir = workdir / "data"
        self.config = workdir / "messageai.toml"
        self.config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {port}\n[auth]\nscrypt_n = 16\n'
            # Messaging under kills is the subject: no model to load at each restart.
            f"[embeddings]\nenabled = false\n{extra_config}"
        )
        # In a test, at DEBUG into the secrets grep's folder (tests/secret_logs.py).
        self.env, log = child_log("chaos")
        self.log = log or workdir / "server.log"
        self.process: trio.Process | None = None
        self.starts = 0
        self.journal = journal

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the server and return once it prints that it is serving."""
        program = ("tests.powercut", str(self.journal)) if self.journal else ("messageai",)
        with self.log.open("ab") as log:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [
                        *(sys.executable, "-m", *program, "serve"),
                        *("--config", str(self.config), "--port", str(self.port)),
                        *("--data-dir", str(self.data_dir)),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    check=False,
                    cwd=ROOT,
                    env={**os.environ, **self.env},
                )
            )
        self.process = process
        assert process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while b"\n" not in line:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"server exited on start; see {self.log}")
                line += chunk
        match = re.search(rb"MessageAI serving http://127\.0\.0\.1:(\d+)", line)
        if not match or int(match.group(1)) != self.port:
            raise RuntimeError(f"unexpected start-up line: {line!r}")
        self.starts += 1
        nursery.start_soon(_drain, process.stdout)

    async def kill(self) -> None:
        """SIGKILL and wait for the process to be gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM: a clean shutdown, every database closed (and so synced)."""
        assert self.process is not None
        self.process.terminate()
        if await self.process.wait() != 0:
            raise RuntimeError(f"the server did not stop cleanly; see {self.log}")

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    # Keep the server's stdout pipe from filling up; ends when the process does.
    with trio.move_on_after(3600):
        while await stream.receive_some(4096):
            pass


@attrs.define
class Client:
    """One user sending into one conversation and reading it."""

    index: int
    token: str
    user_id: str
    conversation_id: str
    pending: dict[str, str] = attrs.Factory(dict)  # client id -> body, not yet acked
    acked: dict[str, dict[str, Any]] = attrs.Factory(dict)  # client id -> acked message
    held: dict[int, str] = attrs.Factory(dict)  # seq -> message id, as this reader saw it
    delivered: dict[str, dict[str, Any]] = attrs.Factory(dict)  # new_message frames, by id
    disagreements: int = 0  # a seq seen with two different message ids
    out_of_order: int = 0  # live frames not in ascending seq on one connection
    connections: int = 0
    failures: int = 0  # sessions ended by a disconnect or `unavailable`
    ack_times: list[float] = attrs.Factory(list)  # trio.current_time() of each ack
    _counter: itertools.count[int] = attrs.Factory(itertools.count)

    @property
    def last_seq(self) -> int:
        """The highest seq held with every seq below it held too (the sync cursor)."""
        seq = 0
        while seq + 1 in self.held:
            seq += 1
        return seq

    def hold(self, message: dict[str, Any]) -> None:
        known = self.held.setdefault(message["seq"], message["id"])
        if known != message["id"]:
            self.disagreements += 1

    def new_client_id(self) -> str:
        return f"c{self.index}-{next(self._counter)}"


@attrs.define
class Report:
    seconds: float
    kills: int
    power_loss: bool = False
    synchronous: str = "FULL"
    torn_cuts: int = 0
    bytes_cut: int = 0  # unsynced bytes the cuts threw away
    acked: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    phantom: int = 0
    order_violations: int = 0
    unresolved: int = 0
    reconnects: int = 0
    databases: int = 0
    integrity_failures: list[str] = attrs.Factory(list)

    @property
    def passed(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.phantom
            or self.order_violations
            or self.unresolved
            or self.integrity_failures
        ) and bool(self.acked and self.databases)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        kills = (
            f"{self.kills} power cuts at synchronous = {self.synchronous} ({self.torn_cuts} torn, "
            f"{self.bytes_cut} unsynced bytes thrown away)"
            if self.power_loss
            else f"{self.kills} kill -9"
        )
        return (
            f"{verdict}: {self.seconds:.0f} s, {kills}, {self.reconnects} reconnects; "
            f"acked {self.acked}, stored {self.stored}, lost {self.lost}, "
            f"duplicated {self.duplicated}, phantom {self.phantom}, "
            f"order violations {self.order_violations}, unresolved {self.unresolved}; "
            f"integrity_check ok on {self.databases - len(self.integrity_failures)}"
            f"/{self.databases} databases"
            + (
                f" (failed: {', '.join(self.integrity_failures)})"
                if self.integrity_failures
                else ""
            )
        )


async def setup(port: int, clients: int, per_conversation: int) -> list[Client]:
    """Register one user per client and one group per `per_conversation` of them."""
    out: list[Client] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        users = []
        for i in range(clients):
            r = await http.post(
                "/v1/auth/register", json={"username": f"chaos{i}", "password": "password1"}
            )
            r.raise_for_status()
            users.append(r.json())
        for start in range(0, clients, per_conversation):
            members = users[start : start + per_conversation]
            r = await http.post(
                "/v1/conversations",
                json={
                    "kind": "group",
                    "title": f"chaos {start // per_conversation}",
                    "member_ids": [u["user"]["id"] for u in members[1:]],
                },
                headers={"Authorization": f"Bearer {members[0]['token']}"},
            )
            r.raise_for_status()
            for offset, user in enumerate(members):
                out.append(
                    Client(start + offset, user["token"], user["user"]["id"], r.json()["id"])
                )
    return out


@attrs.define
class Load:
    """When the clients stop sending: `seconds` after `start`, or, with `min_acked`, once
    that many messages are acked too (a loaded machine acks fewer a second), and at the
    latest `seconds` later again. Once over, it stays over."""

    start: float
    seconds: float
    min_acked: int
    everyone: list[Client]
    stopped_at: float | None = None

    @property
    def latest_seconds(self) -> float:
        return self.seconds * 2 if self.min_acked else self.seconds

    def producing(self) -> bool:
        if self.stopped_at is not None:
            return False
        now = trio.current_time()
        if now < self.start + self.seconds:
            return True
        acked = sum(len(client.acked) for client in self.everyone)
        if acked < self.min_acked and now < self.start + self.latest_seconds:
            return True
        self.stopped_at = now
        return False


async def _session(client: Client, port: int, *, window: int, pace: float, load: Load) -> None:
    """One connection's life: subscribe, catch up, resend, then send and read until it
    drops (raises one of DISCONNECTED, or Unavailable) or, once the load is over, until
    nothing is pending."""
    async with connect_ws(port, token=client.token) as ws:
        client.connections += 1
        cid = client.conversation_id
        reqs = itertools.count(1)
        await ws.send_message(
            orjson.dumps({"type": "subscribe", "req": 0, "conversation_id": cid}).decode()
        )
        in_flight = trio.Semaphore(window)
        last_live = 0  # seq of the last new_message on this connection
        caught_up = trio.Event()
        history_req: int | None = None

        async def ask_history() -> None:
            nonlocal history_req
            history_req = next(reqs)
            frame = {
                "type": "get_history",
                "req": history_req,
                "conversation_id": cid,
                "after_seq": client.last_seq,
                "limit": 200,
            }
            await ws.send_message(orjson.dumps(frame).decode())

        async def send(client_id: str) -> None:
            await in_flight.acquire()
            frame = {
                "type": "send_message",
                "conversation_id": cid,
                "client_id": client_id,
                "body": client.pending[client_id],
                "req": client_id,
            }
            await ws.send_message(orjson.dumps(frame).decode())

        async def writer() -> None:
            await caught_up.wait()
            for client_id in list(client.pending):  # resend everything unacked, in order
                await send(client_id)
            while load.producing():
                client_id = client.new_client_id()
                client.pending[client_id] = f"message {client_id}"
                await send(client_id)
                await trio.sleep(pace)
            if not client.pending:  # all acked already: no frame will come to notice it
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            subscribed = False
            while True:
                frame = orjson.loads(await ws.get_message())
                kind = frame["type"]
                if kind == "subscribed" and not subscribed:
                    subscribed = True
                    await ask_history()
                elif kind == "history" and frame.get("req") == history_req:
                    for message in frame["messages"]:
                        client.hold(message)
                    if frame["has_more"]:
                        await ask_history()
                    elif not caught_up.is_set():
                        caught_up.set()
                        nursery.start_soon(writer)
                elif kind == "ack":
                    message = frame["message"]
                    client.pending.pop(frame["client_id"], None)
                    client.acked[frame["client_id"]] = message
                    client.ack_times.append(trio.current_time())
                    client.hold(message)
                    in_flight.release()
                elif kind == "new_message":
                    message = frame["message"]
                    if message["seq"] <= last_live:
                        client.out_of_order += 1
                    last_live = message["seq"]
                    client.delivered[message["id"]] = message
                    client.hold(message)
                elif kind == "error" and frame.get("code") == "unavailable":
                    raise Unavailable(frame.get("message"))
                elif kind == "error":
                    raise RuntimeError(f"client {client.index}: unexpected error frame {frame}")
                if caught_up.is_set() and not load.producing() and not client.pending:
                    nursery.cancel_scope.cancel()
                    return


async def client_loop(
    client: Client, port_of: PortOf, *, window: int, pace: float, load: Load, end: float
) -> None:
    """Reconnect (to `port_of(client)`) until everything this client sent is acked, or
    `end`."""
    with trio.move_on_after(max(0.0, end - trio.current_time())):
        while True:
            dropped = False
            try:
                await _session(client, port_of(client), window=window, pace=pace, load=load)
            except* (*DISCONNECTED, Unavailable):
                dropped = True
            if dropped:
                client.failures += 1
                await trio.sleep(0.05)  # the server is restarting
            elif not load.producing() and not client.pending:
                return


def start_clients(
    nursery: trio.Nursery,
    clients: list[Client],
    port_of: PortOf,
    window: int,
    pace: float,
    load: Load,
    end: float,
) -> None:
    """One `client_loop` for each client, in `nursery`."""
    for client in clients:
        nursery.start_soon(
            functools.partial(
                client_loop,
                client,
                port_of,
                window=window,
                pace=pace,
                load=load,
                end=end,
            )
        )


async def read_history(port: int, client: Client) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        after = 0
        while True:
            r = await http.get(
                f"/v1/conversations/{client.conversation_id}/messages",
                params={"after_seq": after, "limit": 200},
                headers={"Authorization": f"Bearer {client.token}"},
            )
            r.raise_for_status()
            page = r.json()
            messages.extend(page["messages"])
            if not page["has_more"] or not page["messages"]:
                return messages
            after = page["messages"][-1]["seq"]


def check(
    clients: list[Client], histories: dict[str, list[dict[str, Any]]], report: Report
) -> None:
    """Fill the Jepsen-style counts of `report` from what clients saw and what is stored."""
    for history in histories.values():
        report.stored += len(history)
        if [m["seq"] for m in history] != list(range(1, len(history) + 1)):
            report.order_violations += 1
        keys = [(m["sender_id"], m["client_id"]) for m in history]
        report.duplicated += len(keys) - len(set(keys))
    for client in clients:
        history = histories[client.conversation_id]
        by_id = {m["id"]: m for m in history}
        report.acked += len(client.acked)
        for client_id, message in client.acked.items():
            if by_id.get(message["id"]) != message or message["client_id"] != client_id:
                report.lost += 1
        for message_id, message in client.delivered.items():
            if by_id.get(message_id) != message:
                report.phantom += 1
        by_seq = {m["seq"]: m["id"] for m in history}
        report.order_violations += client.disagreements + client.out_of_order
        report.order_violations += sum(1 for s, i in client.held.items() if by_seq.get(s) != i)
        report.unresolved += len(client.pending)
        report.reconnects += max(0, client.connections - 1)


async def _while_all_synced(journal: Path) -> None:
    """Wait (2 s at most) for a moment when some write is not yet synced: a cut then can
    lose something. Idle moments, where it cannot, are what a random moment mostly is
    on a loaded machine."""
    with trio.move_on_after(2.0):
        while not any((journal / "undo").iterdir()):
            await trio.sleep(0.001)


def integrity(data_dir: Path, report: Report) -> None:
    for path in sorted(data_dir.rglob("*.sqlite3")):
        report.databases += 1
        conn = apsw.Connection(str(path))
        try:
            result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
        if result != ["ok"]:
            report.integrity_failures.append(f"{path.name}: {result[:3]}")


async def run_chaos(
    workdir: Path,
    *,
    seconds: float = 60.0,
    kill_every: float = 2.0,
    clients: int = 20,
    per_conversation: int = 4,
    window: int = 4,
    pace: float = 0.02,
    settle_seconds: float = 60.0,
    progress: Callable[[str], None] | None = None,
    power_loss: bool = False,
    synchronous: str = "FULL",
    seed: int | None = None,
    min_acked: int = 0,
) -> Report:
    """Run the kill -9 (or power cut) chaos for `seconds` (and on until `min_acked`
    messages are acked, for at most `seconds` more: see `Load`), then settle and check.
    Returns the report."""
    rng = random.Random(seed)
    journal = workdir / "powercut" if power_loss else None
    config = f'[storage]\nsynchronous = "{synchronous}"\n'
    server = ServerChild(workdir, free_port(), config, journal=journal)
    report = Report(seconds=seconds, kills=0, power_loss=power_loss, synchronous=synchronous)

    async def kill() -> None:
        await server.kill()
        report.kills += 1
        if journal is not None:
            torn = rng.random() < 0.5
            report.torn_cuts += torn
            report.bytes_cut += powercut.cut(journal, rng, torn=torn).bytes_lost

    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        everyone = await setup(server.port, clients, per_conversation)
        if power_loss:
            await server.stop()
            await server.start(nursery)
        start = trio.current_time()
        production = Load(start, seconds, min_acked, everyone)
        end = start + production.latest_seconds + settle_seconds

        async def killer() -> None:
            while production.producing():
                # kill -9 on a beat; power cuts at a random moment, around the same pace
                await trio.sleep(kill_every * (rng.uniform(0.25, 1.75) if power_loss else 1))
                if not production.producing():
                    break
                if journal is not None:
                    await _while_all_synced(journal)
                await kill()
                await server.start(nursery)
                if progress:
                    acked = sum(len(c.acked) for c in everyone)
                    pending = sum(len(c.pending) for c in everyone)
                    what = "power cut" if power_loss else "kill -9"
                    progress(
                        f"{trio.current_time() - start:5.1f} s: {what} #{report.kills}, "
                        f"acked {acked}, unacked {pending}"
                    )

        async with trio.open_nursery() as load:
            load.start_soon(killer)
            start_clients(
                load, everyone, lambda _client: server.port, window, pace, production, end
            )
        report.seconds = (production.stopped_at or trio.current_time()) - start
        if power_loss:  # what the acks were worth: read back after one more cut
            await kill()
            await server.start(nursery)
        histories = {}
        for client in everyone:
            if client.conversation_id not in histories:
                histories[client.conversation_id] = await read_history(server.port, client)
        check(everyone, histories, report)
        await kill()
    integrity(server.data_dir, report)
    return report


@attrs.define
class SlowReport:
    messages: int
    fast_in_order: bool = False
    slow_close_code: int | None = None
    slow_live: int = 0  # messages the slow reader got live before it was dropped
    slow_caught_up: bool = False
    rss_before: int = 0
    rss_peak: int = 0
    with_slow: bool = True
    # Send-to-delivery latency seen by the fast reader, milliseconds, one per message.
    fast_latencies_ms: list[float] = attrs.Factory(list)

    @property
    def fast_p99_ms(self) -> float:
        ordered = sorted(self.fast_latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before

    @property
    def passed(self) -> bool:
        # A reader that has stopped cannot take even the close frame: after the grace
        # period its TCP stream is cut, and it sees 1006 instead of 1013.
        if not self.with_slow:
            return self.fast_in_order
        return (
            self.fast_in_order
            and self.slow_close_code in (1013, 1006)
            and self.slow_live < self.messages
            and self.slow_caught_up
            and self.growth < SLOW_RSS_BOUND
        )

    def summary(self) -> str:
        if not self.with_slow:
            return (
                f"baseline (no slow reader): {self.messages} messages; fast reader in order: "
                f"{self.fast_in_order}; its delivery p99 {self.fast_p99_ms:.1f} ms"
            )
        return (
            f"slow consumer: {self.messages} messages; fast reader in order: "
            f"{self.fast_in_order}, delivery p99 {self.fast_p99_ms:.1f} ms; "
            f"slow reader closed with {self.slow_close_code} after "
            f"{self.slow_live} live, caught up with nothing lost: {self.slow_caught_up}; "
            f"server RSS {self.rss_before >> 20} MiB before, {self.rss_peak >> 20} MiB peak "
            f"(+{self.growth >> 20} MiB for {self.messages * SLOW_BODY_CHARS >> 20} MiB of bodies)"
        )


SLOW_BODY_CHARS = 15000
# Server memory may grow by this much at most while the bodies sent add up to far more.
SLOW_RSS_BOUND = 48 << 20


async def run_slow_consumer(
    workdir: Path, *, messages: int = 5000, with_slow: bool = True
) -> SlowReport:
    """Two senders push `messages` large messages into a group while one member reads
    everything and another reads nothing; the server's RSS is sampled throughout.
    Each body starts with its send time, so the fast reader measures delivery
    latency; `with_slow=False` is the baseline run, where the silent member never
    subscribes."""
    server = ServerChild(workdir, free_port())
    report = SlowReport(messages, with_slow=with_slow)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        alice, bob, fast, slow = await setup(server.port, 4, 4)
        cid = alice.conversation_id
        body = "z" * SLOW_BODY_CHARS
        report.rss_before = report.rss_peak = server.rss_bytes()
        done = trio.Event()

        async def sample() -> None:
            while not done.is_set():
                report.rss_peak = max(report.rss_peak, server.rss_bytes())
                await trio.sleep(0.02)

        # Senders may run at most this many messages ahead of the fast reader: it is
        # the fast reader's pace that the test holds up, so it must not be outrun by
        # the load generator itself (all of which shares one process and its CPU).
        window = trio.Semaphore(32)

        async def send(client: Client, count: int) -> None:
            async with connect_ws(server.port, token=client.token) as ws:

                async def pump() -> None:
                    for i in range(count):
                        await window.acquire()
                        frame = {
                            "type": "send_message",
                            "conversation_id": cid,
                            "client_id": f"{client.index}-{i}",
                            "body": f"{time.monotonic():.6f} {body}",
                            "req": i,
                        }
                        await ws.send_message(orjson.dumps(frame).decode())

                async with trio.open_nursery() as inner:
                    inner.start_soon(pump)
                    acks = 0
                    while acks < count:
                        frame = orjson.loads(await ws.get_message())
                        if frame["type"] != "ack":
                            raise RuntimeError(f"sender got {frame}")
                        acks += 1

        async def read_fast(ws: trio_websocket.WebSocketConnection, seqs: list[int]) -> None:
            while len(seqs) < messages:
                frame = orjson.loads(await ws.get_message())
                if frame["type"] == "new_message":
                    seqs.append(frame["message"]["seq"])
                    sent = float(frame["message"]["body"].partition(" ")[0])
                    report.fast_latencies_ms.append((time.monotonic() - sent) * 1000)
                    window.release()

        async def subscribe(ws: trio_websocket.WebSocketConnection) -> None:
            await ws.send_message(
                orjson.dumps({"type": "subscribe", "req": 1, "conversation_id": cid}).decode()
            )
            while orjson.loads(await ws.get_message()).get("req") != 1:
                pass

        with trio.fail_after(300):
            nursery.start_soon(sample)
            async with (
                connect_ws(server.port, token=fast.token) as fast_ws,
                connect_ws(server.port, token=slow.token) as slow_ws,
            ):
                await subscribe(fast_ws)
                if with_slow:
                    await subscribe(slow_ws)
                # From here `slow_ws` is not read: trio-websocket's client stops reading
                # the socket once one message waits in its queue.
                fast_seqs: list[int] = []
                async with trio.open_nursery() as load:
                    load.start_soon(read_fast, fast_ws, fast_seqs)
                    load.start_soon(send, alice, messages // 2)
                    load.start_soon(send, bob, messages - messages // 2)
                done.set()
                report.fast_in_order = fast_seqs == list(range(1, messages + 1))
                if not with_slow:
                    await server.kill()
                    return report
                slow_seqs: list[int] = []
                try:
                    while True:
                        frame = orjson.loads(await slow_ws.get_message())
                        if frame["type"] == "new_message":
                            slow_seqs.append(frame["message"]["seq"])
                except trio_websocket.ConnectionClosed as closed:
                    assert closed.reason is not None
                    report.slow_close_code = closed.reason.code
                report.slow_live = len(slow_seqs)
            # The slow reader returns and catches up from its last seq.
            prefix_ok = slow_seqs == list(range(1, len(slow_seqs) + 1))
            slow.held = dict.fromkeys(slow_seqs, "")
            history = await read_history(server.port, slow)
            caught_up = [m["seq"] for m in history if m["seq"] > len(slow_seqs)]
            report.slow_caught_up = prefix_ok and caught_up == list(
                range(len(slow_seqs) + 1, messages + 1)
            )
        await server.kill()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/chaos", description="kill -9 the MessageAI server under load; check"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to make chaos")
    parser.add_argument(
        "--kill-every", type=float, help="seconds between kills (default 2, --cluster 5)"
    )
    parser.add_argument("--clients", type=int, help="default 20, --cluster 12")
    parser.add_argument("--per-conversation", type=int, help="default 4, --cluster 3")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="Redis and three nodes; kill -9 the busiest conversation's owner (tests/cluster_chaos.py)",
    )
    parser.add_argument(
        "--lease-ttl", type=float, default=1.5, help="--cluster: the nodes' lease_ttl_seconds"
    )
    parser.add_argument(
        "--restart-after", type=float, help="--cluster: seconds a killed node stays down"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory and log")
    parser.add_argument(
        "--power-loss",
        action="store_true",
        help="each kill is a power cut: unsynced writes lost or torn (tests/powercut.py)",
    )
    parser.add_argument(
        "--synchronous", choices=("FULL", "NORMAL"), default="FULL", help="storage.synchronous"
    )
    parser.add_argument("--seed", type=int, help="of the cuts' moments and tears")
    parser.add_argument(
        "--slow-consumer",
        action="store_true",
        help="instead: 5,000 large messages while one subscriber stops reading",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="messageai-chaos-"))
    if args.cluster:
        return _main_cluster(args, workdir)
    args.kill_every = args.kill_every or 2.0
    args.clients = args.clients or 20
    args.per_conversation = args.per_conversation or 4
    if args.slow_consumer:
        (workdir / "base").mkdir()
        (workdir / "slow").mkdir()
        base = trio.run(functools.partial(run_slow_consumer, workdir / "base", with_slow=False))
        print(base.summary(), flush=True)
        slow = trio.run(run_slow_consumer, workdir / "slow")
        print(slow.summary())
        print(
            f"fast reader's delivery p99: {base.fast_p99_ms:.1f} ms alone, "
            f"{slow.fast_p99_ms:.1f} ms beside a stopped reader "
            f"({slow.fast_p99_ms / max(base.fast_p99_ms, 0.001):.2f}x)"
        )
        return 0 if slow.passed and base.passed else 1

    def progress(line: str) -> None:
        print(line, flush=True)

    what = "a power cut about" if args.power_loss else "kill -9"
    print(
        f"chaos: {args.clients} clients in {args.clients // args.per_conversation} "
        f"conversations, synchronous = {args.synchronous}, {what} every {args.kill_every} s "
        f"for {args.seconds} s; in {workdir}",
        flush=True,
    )
    report = trio.run(
        functools.partial(
            run_chaos,
            workdir,
            seconds=args.seconds,
            kill_every=args.kill_every,
            clients=args.clients,
            per_conversation=args.per_conversation,
            progress=progress,
            power_loss=args.power_loss,
            synchronous=args.synchronous,
            seed=args.seed,
        )
    )
    return finish(report.summary(), report.passed, workdir, keep=args.keep)


def finish(summary: str, passed: bool, workdir: Path, *, keep: bool) -> int:
    """Print the verdict; remove the run's directory unless kept or failed; the exit code."""
    print(summary)
    if not keep and passed:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if passed else 1


def _main_cluster(args: argparse.Namespace, workdir: Path) -> int:
    from tests.cluster_chaos import run_cluster_chaos

    clients, per = args.clients or 12, args.per_conversation or 3
    kill_every = args.kill_every or 5.0
    print(
        f"chaos --cluster: {clients} clients in {clients // per} conversations over 3 nodes, "
        f"kill -9 of the busiest owner {kill_every} s after each restart, for {args.seconds} s, "
        f"lease ttl {args.lease_ttl} s; in {workdir}",
        flush=True,
    )
    report = trio.run(
        functools.partial(
            run_cluster_chaos,
            workdir,
            seconds=args.seconds,
            kill_every=kill_every,
            restart_after=args.restart_after,
            lease_ttl=args.lease_ttl,
            clients=clients,
            per_conversation=per,
            progress=lambda line: print(line, flush=True),
        )
    )
    return finish(report.summary(), report.passed, workdir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
