"""The server's own cost of one message: CPU time, syscalls (`strace -c -f`) or a
py-spy profile of a `messageai serve` process, with the client in this process and
not counted.

The workload is fixed and its batching deterministic: one direct conversation, both
members connected and subscribed; one sends N messages, one at a time, each waiting
for its `ack` and for the other member's `new_message` (so every message is its own
commit: the 1 x 2 closed loop with one sender). The client is blocking sockets and
hand-made frames, so nothing in it depends on the server's timing.

Syscalls are counted over the whole process, so it runs twice, with N and a larger
M, and divides the difference of the two totals by M - N: start-up, set-up and
shutdown cancel out, and what is left is one message's syscalls (the event loop and
the commit thread together). CPU time (user and system, all threads) is taken over
the messages alone, so `0 M` measures it with one server:

    .venv/bin/python -m bench.server_cost 0 2000
    .venv/bin/python -m bench.server_cost --wrap strace 100 600
    .venv/bin/python -m bench.server_cost --wrap py-spy --keep DIR 0 3000

(py-spy: `pip install py-spy` into .venv; it samples the threads holding the GIL and
writes collapsed stacks to DIR. Instruction counts under valgrind were tried: on this
shared 2-core machine the server did not finish starting under it in 10 minutes.)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

CONFIG = """\
[server]
host = "127.0.0.1"
port = {port}
[storage]
data_dir = "{data}"
synchronous = "FULL"
[auth]
scrypt_n = 16
[embeddings]
enabled = false
[limits]
messages_per_second = 1000000.0
message_burst = 1000000
"""

WRAPS = {
    "none": [],
    "strace": ["strace", "-c", "-f", "-o", "{out}"],
    # attached for the messages only (see `run`): where the time goes, not counting
    "py-spy": [],
}


class Client:
    """One WebSocket client on a blocking socket: masked text frames out, frames in."""

    def __init__(self, port: int, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /v1/ws?access_token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"handshake refused: {head!r}")

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise SystemExit("the server closed the connection")
        return data

    def send(self, frame: dict[str, object]) -> None:
        payload = orjson.dumps(frame)
        n = len(payload)
        header = bytes((0x81, 0x80 | n)) if n < 126 else b"\x81\xfe" + n.to_bytes(2, "big")
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def receive(self) -> dict[str, object]:
        while True:
            if len(self.buf) >= 2:
                n = self.buf[1] & 0x7F
                start = 2
                if n == 126:
                    n, start = int.from_bytes(self.buf[2:4], "big"), 4
                elif n == 127:
                    n, start = int.from_bytes(self.buf[2:10], "big"), 10
                if len(self.buf) >= start + n:
                    opcode = self.buf[0] & 0x0F
                    payload, self.buf = self.buf[start : start + n], self.buf[start + n :]
                    if opcode == 1:
                        frame: dict[str, object] = orjson.loads(payload)
                        return frame
                    continue  # a ping: the run is far shorter than the ping interval
            self.buf += self._recv()

    def until(self, kind: str) -> dict[str, object]:
        while (frame := self.receive())["type"] != kind:
            pass
        return frame


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(count: int, wrap: str, out: Path) -> tuple[str, float]:
    """One server run with `count` messages; the wrapper's report and the CPU seconds."""
    data = out / f"data-{count}"
    shutil.rmtree(data, ignore_errors=True)
    port = free_port()
    config = out / f"server-{count}.toml"
    config.write_text(CONFIG.format(port=port, data=data))
    report = out / f"{wrap}-{count}.txt"
    prefix = [part.format(out=report) for part in WRAPS[wrap]]
    command = [*prefix, sys.executable, "-m", "messageai", "serve", "--config", str(config)]
    log = (out / f"server-{count}.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the server did not start; see {out}")
            time.sleep(0.5)
        tokens, ids = [], []
        with httpx.Client(base_url=base, timeout=120) as http:
            for name in ("ada", "bob"):
                body = {"username": name, "password": "password1"}
                account = http.post("/v1/auth/register", json=body).json()
                tokens.append(account["token"])
                ids.append(account["user"]["id"])
            created = http.post(
                "/v1/conversations",
                headers={"Authorization": f"Bearer {tokens[0]}"},
                json={"kind": "direct", "member_ids": [ids[1]]},
            )
            conversation = created.json()["id"]
        sender, receiver = Client(port, tokens[0]), Client(port, tokens[1])
        for client in (sender, receiver):
            client.send({"type": "subscribe", "conversation_id": conversation, "req": 0})
            client.until("subscribed")
        spy = None
        if wrap == "py-spy":  # the one installed in this venv (pip install py-spy)
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(server.pid),
                    "--threads",
                    "--gil",
                    "--nonblocking",
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "-o",
                    str(report),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(2)  # attached
        cpu_before = _cpu_seconds(server.pid)
        sys_before = _cpu_seconds(server.pid, 2)
        for i in range(count):
            frame = {
                "type": "send_message",
                "conversation_id": conversation,
                "client_id": f"k{i}",
                "body": "x" * 100,
                "req": i + 1,
            }
            sender.send(frame)
            ack = sender.until("ack")
            if ack["req"] != i + 1:
                raise SystemExit(f"ack out of order: {ack}")
            receiver.until("new_message")
        cpu = _cpu_seconds(server.pid) - cpu_before
        kernel = _cpu_seconds(server.pid, 2) - sys_before
        share = kernel / cpu if cpu else 0.0
        print(f"{count} messages: {cpu / count * 1e6:.0f} µs CPU each, {share:.0%} in the kernel")
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        sender.sock.close()
        receiver.sock.close()
    finally:
        # strace passes no SIGTERM on: the server itself is told, strace then reports.
        target = _child(server.pid) if wrap == "strace" else server.pid
        os.kill(target or server.pid, signal.SIGTERM)
        server.wait(timeout=600)
        log.close()
    text = ""
    if wrap in ("strace", "py-spy"):
        text = report.read_text()
    return text, cpu


def _child(pid: int) -> int | None:
    """The first child process of `pid` (the server under strace)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else None


def _cpu_seconds(pid: int, field: int = 0) -> float:
    """User + system CPU of `pid` and its children (the server under its wrapper);
    `field` 1: user time only, 2: system time only."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(path.parent.name) == pid or int(fields[1]) == pid:
            user, system = int(fields[11]), int(fields[12])
            total += (user + system if field == 0 else user if field == 1 else system) / ticks
    return total


def syscalls(text: str) -> dict[str, int]:
    """strace -c's table: calls per syscall name."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls = int(parts[3])
            counts[parts[-1]] = calls
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wrap", choices=sorted(WRAPS), default="none")
    parser.add_argument("--keep", help="a folder for the logs and reports (default: temporary)")
    parser.add_argument("small", type=int, nargs="?", default=200)
    parser.add_argument("large", type=int, nargs="?", default=1200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or tmp)
        out.mkdir(parents=True, exist_ok=True)
        # CPU is taken over the messages alone: `0 N` measures it with one server.
        small, small_cpu = run(args.small, args.wrap, out) if args.small else ("", 0.0)
        large, large_cpu = run(args.large, args.wrap, out)
        n = args.large - args.small
        result: dict[str, object] = {
            "messages": n,
            "cpu_us_per_message": round((large_cpu - small_cpu) / n * 1e6, 1),
        }
        if args.wrap == "strace":
            a, b = syscalls(small), syscalls(large)
            per = {k: round((b.get(k, 0) - a.get(k, 0)) / n, 2) for k in sorted(set(a) | set(b))}
            result["syscalls_per_message"] = {k: v for k, v in per.items() if abs(v) >= 0.01}
            result["total_syscalls_per_message"] = round(sum(per.values()), 2)
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
