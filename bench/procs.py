"""Processes the bench starts and watches: the server, the references, the load.

Everything here is synchronous and bounded by timeouts: a child that does not
answer in time is killed and the bench fails loudly rather than hanging.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_sys_seconds(pid: int) -> float:
    """System (kernel) CPU time of process `pid`: syscalls, fsync, socket writes."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[12]) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def read_line(stream: IO[bytes], timeout: float) -> bytes:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise TimeoutError("no output in time")
    finally:
        sel.close()
    return stream.readline()


class Child:
    """A server-like child process that prints one `... serving URL` line when ready."""

    def __init__(self, argv: list[str], name: str, log_path: Path, timeout: float = 30.0) -> None:
        self.name = name
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        try:
            line = read_line(self.proc.stdout, timeout).decode()
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{name} did not start in {timeout} s (see {log_path})") from None
        match = re.search(r"(?:http|ws)://127\.0\.0\.1:(\d+)", line)
        if match is None:
            self.stop()
            raise RuntimeError(f"{name} printed no address: {line!r} (see {log_path})")
        self.port = int(match.group(1))
        self.pid = self.proc.pid

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def sys_cpu(self) -> float:
        return proc_sys_seconds(self.pid)

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def start_messageai(config: Path, data_dir: Path, log_path: Path) -> Child:
    argv = [sys.executable, "-m", "messageai", "serve", "--config", str(config)]
    argv += ["--port", "0", "--data-dir", str(data_dir)]
    return Child(argv, "messageai", log_path)


def start_reference(script: str, log_path: Path) -> Child:
    return Child([sys.executable, str(ROOT / "scripts" / script)], script, log_path)


class LoadGroup:
    """`shards` load processes sharing one plan; talks to them line by line."""

    def __init__(self, plan_path: Path, shards: int, log_path: Path) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.load", str(plan_path), str(i), str(shards)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
            )
            for i in range(shards)
        ]
        self.progress: dict[int, dict[str, Any]] = {}
        self._fds = [p.stdout.fileno() for p in self.procs if p.stdout is not None]
        self._buffers = [b""] * shards

    def tell(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            try:
                proc.stdin.write(word.encode() + b"\n")
                proc.stdin.flush()
            except BrokenPipeError:
                pass

    def wait_all(
        self, event: str | None, timeout: float, on_progress: Callable[[], None] | None = None
    ) -> list[dict[str, Any]]:
        """Each process's next `event` line; progress lines update `self.progress`.
        With `event` None, just follow progress for `timeout` seconds."""
        deadline = time.monotonic() + timeout
        out: dict[int, dict[str, Any]] = {}
        while len(out) < len(self.procs):
            for i in range(len(self.procs)):
                while i not in out and b"\n" in self._buffers[i]:
                    line, _, self._buffers[i] = self._buffers[i].partition(b"\n")
                    obj = orjson.loads(line)
                    if obj["event"] == "progress":
                        self.progress[i] = obj
                    elif obj["event"] == event:
                        out[i] = obj
            if on_progress is not None:
                on_progress()
            if len(out) == len(self.procs):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                if event is None:
                    return []
                raise TimeoutError(f"load processes gave no {event!r} in {timeout} s")
            waiting = [i for i in range(len(self.procs)) if i not in out]
            sel = selectors.DefaultSelector()
            for i in waiting:
                sel.register(self._fds[i], selectors.EVENT_READ, i)
            try:
                ready = sel.select(min(left, 1.0))
            finally:
                sel.close()
            for key, _ in ready:
                i = key.data
                chunk = os.read(self._fds[i], 1 << 20)
                if not chunk:
                    raise RuntimeError(f"load process {i} ended early (see the load log)")
                self._buffers[i] += chunk
        return [out[i] for i in range(len(self.procs))]

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                # EOF on stdin tells a load process to stop, if nothing else did.
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._log.close()
