"""A bench load process: real WebSocket clients (trio-websocket) following a plan file.

Started by `bench.run` as `python -m bench.load PLAN.json SHARD SHARDS`; it opens
its share of the plan's connections (subscribing where the plan says), prints
`{"event": "ready"}`, then obeys one-word commands on stdin: `go` (start the
traffic), `mark` (start counting), `stop` (stop sending, drain, report). Every
line it prints is one JSON object. Each loop is bounded in count and in time:
the process ends by itself after `max_seconds` even if nobody says `stop`.

Kinds: `stream` (senders keep `window` messages in flight; everyone counts acks
and deliveries; with `"action": "react"` the senders toggle their reaction on the
plan's `react_seqs` instead of sending, and `message_updated` frames are the
deliveries), `idle` (connect, subscribe, hold), `cold` (first message to each of many
conversations), `history` (random pages of `limit` messages), `changes` (catch-up:
`get_changes` pages of `limit` from rev 0 to the end, over and over).
"""

from __future__ import annotations

import os
import random
import resource
import sys
import time
from typing import Any

import orjson
import trio
import trio_websocket

CONNECT_CONCURRENCY = 64
DRAIN_SECONDS = 5.0


def now_ns() -> int:
    # CLOCK_MONOTONIC is system-wide on Linux: comparable across the load processes.
    return time.monotonic_ns()


def emit(**fields: Any) -> None:
    sys.stdout.write(orjson.dumps(fields).decode() + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sample(frame: str | bytes) -> str:
    """The start of a frame, as text, for the report's error samples."""
    text = frame if isinstance(frame, str) else frame.decode(errors="replace")
    return text[:200]


class Stats:
    def __init__(self) -> None:
        self.counting = False
        self.mark_ns = 0
        self.acks = 0
        self.deliveries = 0
        self.errors = 0
        self.sent = 0
        self.ack_lat: list[int] = []  # µs
        self.deliv_lat: list[int] = []  # µs
        self.last_frame_ns = 0
        self.error_samples: list[str] = []


class Client:
    def __init__(self, spec: dict[str, Any], ws: trio_websocket.WebSocketConnection) -> None:
        self.spec = spec
        self.ws = ws
        self.inflight: dict[str, int] = {}
        self.responses: dict[Any, trio.Event] = {}
        self.answers: dict[Any, Any] = {}


class Load:
    def __init__(self, plan: dict[str, Any], shard: int, shards: int) -> None:
        self.plan = plan
        self.conns = plan["conns"][shard::shards]
        self.shard = shard
        self.stats = Stats()
        self.clients: list[Client] = []
        self.stop = trio.Event()
        self.go = trio.Event()
        self.pad = "x" * max(0, plan.get("body_chars", 64) - 20)
        self.connect_errors = 0

    # ------------------------------------------------------------ connecting

    async def connect_all(self, nursery: trio.Nursery) -> None:
        limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
        base = self.plan["url"]

        async def one(spec: dict[str, Any]) -> None:
            async with limiter:
                for _attempt in range(3):
                    try:
                        ws = await trio_websocket.connect_websocket_url(
                            nursery, base + spec["path"], message_queue_size=64
                        )
                        break
                    except (OSError, trio_websocket.HandshakeError, trio.BrokenResourceError):
                        await trio.sleep(0.2)
                else:
                    self.connect_errors += 1
                    return
                client = Client(spec, ws)
                self.clients.append(client)
                nursery.start_soon(self.reader, client)
                for i, cid in enumerate(spec.get("subscribe", [])):
                    await self.request(
                        client, {"type": "subscribe", "conversation_id": cid, "req": f"s{i}"}
                    )

        async with trio.open_nursery() as inner:
            for spec in self.conns:
                inner.start_soon(one, spec)

    async def request(self, client: Client, frame: dict[str, Any]) -> Any:
        """Send a frame with `req` and wait for its response (bounded by a timeout)."""
        event = trio.Event()
        client.responses[frame["req"]] = event
        await client.ws.send_message(orjson.dumps(frame).decode())
        with trio.fail_after(30):
            await event.wait()
        return client.answers.pop(frame["req"])

    # ------------------------------------------------------------ receiving

    async def reader(self, client: Client) -> None:
        stats = self.stats
        inflight = client.inflight
        loads = orjson.loads
        while True:
            try:
                text = await client.ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            now = now_ns()
            stats.last_frame_ns = now
            obj = loads(text)
            req = obj.get("req")
            if req is not None:
                sent = inflight.pop(req, None)
                if sent is not None:
                    self.window_release(client)
                    if obj.get("type") == "error":
                        stats.errors += 1
                        if len(stats.error_samples) < 5:
                            stats.error_samples.append(_sample(text))
                    elif stats.counting:
                        stats.acks += 1
                        if sent >= stats.mark_ns:
                            stats.ack_lat.append((now - sent) // 1000)
                    continue
                event = client.responses.pop(req, None)
                if event is not None:
                    client.answers[req] = obj
                    event.set()
                    continue
            kind = obj.get("type")
            if kind == "new_message" or kind == "send_message":
                body = obj["message"]["body"] if kind == "new_message" else obj["body"]
                if stats.counting:
                    stats.deliveries += 1
                    sent = int(body.partition(" ")[0])
                    if sent >= stats.mark_ns:
                        stats.deliv_lat.append((now - sent) // 1000)
            elif kind == "message_updated":
                # A reaction carries no send time: counted, without a latency.
                if stats.counting:
                    stats.deliveries += 1
            elif kind == "error":
                stats.errors += 1
                if len(stats.error_samples) < 5:
                    stats.error_samples.append(_sample(text))

    # ------------------------------------------------------------ sending

    def window_release(self, client: Client) -> None:
        sem = getattr(client, "window", None)
        if sem is not None:
            sem.release()

    async def sender(self, client: Client, conversation_id: str) -> None:
        window = trio.Semaphore(self.plan["window"])
        client.window = window  # type: ignore[attr-defined]
        tag = client.spec["tag"]
        max_messages = self.plan.get("max_messages_per_sender", 1_000_000)
        n = 0
        dumps = orjson.dumps
        react = self.plan.get("action") == "react"
        seqs: list[int] = self.plan.get("react_seqs", [])
        # Each sender toggles its own reaction on each target: on, off, on… every
        # frame a real change (frames of one connection are handled in order).
        reacted = dict.fromkeys(seqs, False)
        try:
            while not self.stop.is_set() and n < max_messages:
                await window.acquire()
                if self.stop.is_set():
                    break
                n += 1
                req = f"{tag}.{n}"
                sent = now_ns()
                frame: dict[str, Any]
                if react:
                    seq = seqs[n % len(seqs)]
                    reacted[seq] = not reacted[seq]
                    frame = {
                        "type": "react",
                        "conversation_id": conversation_id,
                        "seq": seq,
                        "emoji": "\U0001f44d",
                        "on": reacted[seq],
                        "req": req,
                    }
                else:
                    frame = {
                        "type": "send_message",
                        "conversation_id": conversation_id,
                        "client_id": req,
                        "body": f"{sent} {self.pad}",
                        "req": req,
                    }
                client.inflight[req] = sent
                self.stats.sent += 1
                await client.ws.send_message(dumps(frame).decode())
        except trio_websocket.ConnectionClosed:
            return

    # ------------------------------------------------------------ kinds

    async def run_stream(self, nursery: trio.Nursery) -> None:
        for client in self.clients:
            target = client.spec.get("send_to")
            if target is not None:
                nursery.start_soon(self.sender, client, target)

    async def run_cold(self) -> None:
        """First message to each conversation in `cold_targets`, `concurrency` at a time."""
        client = self.clients[0]
        targets = list(self.plan["cold_targets"])
        limiter = trio.CapacityLimiter(self.plan.get("concurrency", 8))
        stats = self.stats

        async def one(i: int, cid: str) -> None:
            async with limiter:
                if self.stop.is_set():
                    return
                req = f"cold.{i}"
                sent = now_ns()
                answer = await self.request(
                    client,
                    {
                        "type": "send_message",
                        "conversation_id": cid,
                        "client_id": req,
                        "body": f"{sent} first",
                        "req": req,
                    },
                )
                if answer.get("type") == "ack":
                    stats.acks += 1
                    stats.ack_lat.append((now_ns() - sent) // 1000)
                else:
                    stats.errors += 1
                    if len(stats.error_samples) < 5:
                        stats.error_samples.append(str(answer)[:200])

        async with trio.open_nursery() as nursery:
            for i, cid in enumerate(targets):
                nursery.start_soon(one, i, cid)

    async def run_history(self, client: Client, index: int) -> None:
        """Random pages until stopped: `after_seq` pages and `before_seq` pages alternate."""
        total = self.plan["history_total"]
        limit = self.plan.get("history_limit", 200)
        cid = self.plan["history_conversation"]
        rng = random.Random(index)
        stats = self.stats
        n = 0
        while not self.stop.is_set() and n < 1_000_000:
            n += 1
            frame: dict[str, Any] = {
                "type": "get_history",
                "conversation_id": cid,
                "limit": limit,
                "req": f"h{n}",
            }
            if n % 2:
                frame["after_seq"] = rng.randrange(0, total - limit)
            else:
                frame["before_seq"] = rng.randrange(limit + 1, total + 1)
            sent = now_ns()
            answer = await self.request(client, frame)
            if answer.get("type") != "history" or len(answer["messages"]) != limit:
                stats.errors += 1
                if len(stats.error_samples) < 5:
                    stats.error_samples.append(str(answer)[:200])
            elif stats.counting:
                stats.acks += 1
                if sent >= stats.mark_ns:
                    stats.ack_lat.append((now_ns() - sent) // 1000)

    async def run_changes(self, client: Client, index: int) -> None:
        """Catch-up until stopped: page `get_changes` from rev 0 until `has_more` is
        false, then again. Each page is one answer counted."""
        limit = self.plan.get("changes_limit", 200)
        total = self.plan["changes_total"]
        cid = self.plan["changes_conversation"]
        stats = self.stats
        n = 0
        after = 0
        while not self.stop.is_set() and n < 10_000_000:
            n += 1
            frame = {
                "type": "get_changes",
                "conversation_id": cid,
                "after_rev": after,
                "limit": limit,
                "req": f"c{index}.{n}",
            }
            sent = now_ns()
            answer = await self.request(client, frame)
            messages = answer.get("messages") if answer.get("type") == "changes" else None
            if not messages and after < total:
                stats.errors += 1
                if len(stats.error_samples) < 5:
                    stats.error_samples.append(str(answer)[:200])
                after = 0
                continue
            if stats.counting:
                stats.acks += 1
                stats.deliveries += len(messages or [])
                if sent >= stats.mark_ns:
                    stats.ack_lat.append((now_ns() - sent) // 1000)
            after = messages[-1]["rev"] if answer["has_more"] and messages else 0

    # ------------------------------------------------------------ control

    async def control(self, nursery: trio.Nursery) -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        while True:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                self.stop.set()
                return
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                word = line.strip().decode()
                if word == "go":
                    self.go.set()
                elif word == "mark":
                    self.stats.mark_ns = now_ns()
                    self.stats.counting = True
                    self.mark_cpu = cpu_seconds()
                    emit(event="marked")
                elif word == "stop":
                    self.stop.set()
                    return

    async def progress(self) -> None:
        while not self.stop.is_set():
            await trio.sleep(1.0)
            s = self.stats
            emit(event="progress", acks=s.acks, deliveries=s.deliveries, errors=s.errors)

    async def main(self) -> None:
        kind = self.plan["kind"]
        with trio.move_on_after(self.plan.get("max_seconds", 600)):
            async with trio.open_nursery() as nursery:
                start = time.monotonic()
                await self.connect_all(nursery)
                emit(
                    event="ready",
                    connections=len(self.clients),
                    connect_errors=self.connect_errors,
                    connect_seconds=round(time.monotonic() - start, 3),
                    rss_kib=rss_kib(),
                )
                nursery.start_soon(self.control, nursery)
                await self.go.wait()
                nursery.start_soon(self.progress)
                if kind == "stream":
                    await self.run_stream(nursery)
                elif kind == "history":
                    for i, client in enumerate(self.clients):
                        nursery.start_soon(self.run_history, client, i)
                elif kind == "changes":
                    for i, client in enumerate(self.clients):
                        nursery.start_soon(self.run_changes, client, i)
                elif kind == "cold":
                    self.stats.mark_ns = now_ns()
                    self.stats.counting = True
                    self.mark_cpu = cpu_seconds()
                    await self.run_cold()
                    self.stop.set()
                await self.stop.wait()
                stop_ns = now_ns()
                at_stop = (self.stats.acks, self.stats.deliveries)
                await self.drain()
                end_ns = now_ns()
                s = self.stats
                emit(
                    event="result",
                    measured_seconds=(stop_ns - s.mark_ns) / 1e9 if s.mark_ns else 0.0,
                    drained_seconds=(end_ns - s.mark_ns) / 1e9 if s.mark_ns else 0.0,
                    acks_at_stop=at_stop[0],
                    deliveries_at_stop=at_stop[1],
                    acks=s.acks,
                    deliveries=s.deliveries,
                    errors=s.errors,
                    error_samples=s.error_samples,
                    sent=s.sent,
                    inflight_left=sum(len(c.inflight) for c in self.clients),
                    ack_lat_us=s.ack_lat,
                    deliv_lat_us=s.deliv_lat,
                    load_cpu_seconds=cpu_seconds() - getattr(self, "mark_cpu", 0.0),
                    rss_kib=rss_kib(),
                )
                nursery.cancel_scope.cancel()

    async def drain(self) -> None:
        """Wait for in-flight acks and their deliveries (bounded), after the senders stop."""
        with trio.move_on_after(DRAIN_SECONDS):
            # Polling is the point here: "quiet for 200 ms" has no event to wait on.
            while any(c.inflight for c in self.clients):  # noqa: ASYNC110
                await trio.sleep(0.01)
            while now_ns() - self.stats.last_frame_ns < 200_000_000:  # noqa: ASYNC110
                await trio.sleep(0.05)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    plan_path, shard, shards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with open(plan_path, "rb") as f:
        plan = orjson.loads(f.read())
    trio.run(Load(plan, shard, shards).main)


if __name__ == "__main__":
    main()
