"""A real `redis-server` for the cluster tests, started by the test and stopped after it.

Debian's `redis-server` on 127.0.0.1 and a free port (or on an address of a network
namespace, `tests/netns.py`), with nothing persisted. A test that needs it skips,
saying so, when the binary is missing (`./scripts/test` installs it where it can).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import coredis
import pytest
import trio

START_TIMEOUT_SECONDS = 10.0


def redis_binary() -> str:
    """The path of `redis-server`, or the test is skipped with how to get it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "no redis-server on PATH: the cluster tests need it (apt-get install redis-server)"
        )
    return binary


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@attrs.frozen
class RedisServer:
    host: str
    port: int

    def client(self) -> coredis.Redis[str]:
        """A new client (enter it with `async with`); short timeouts, as a node uses."""
        return coredis.Redis(
            host=self.host,
            port=self.port,
            decode_responses=True,
            connect_timeout=1.0,
            stream_timeout=1.0,
        )


async def _answers_ping(server: RedisServer) -> bool:
    # A raw PING: coredis would report a refused connection as an exception group
    # from its client's own task group, which says less.
    try:
        stream = await trio.open_tcp_stream(server.host, server.port)
    except OSError:
        return False
    async with stream:
        await stream.send_all(b"PING\r\n")
        return (await stream.receive_some(64)).startswith(b"+PONG")


@contextlib.asynccontextmanager
async def redis_server(
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    netns: str | None = None,
    also_on: tuple[str, ...] = (),
    port: int | None = None,
) -> AsyncIterator[RedisServer]:
    """Run `redis-server` on `host` and the addresses `also_on` (inside network namespace
    `netns` if given) until the block ends; ready (answering PING on `host`) when it
    yields. `port`: the one of a server started again (a restart, its data gone)."""
    binary = redis_binary()
    if port is None:
        port = free_port(host) if netns is None else 6379  # a fresh namespace: all free
    await trio.Path(workdir).mkdir(parents=True, exist_ok=True)
    command = [
        binary,
        "--bind",
        host,
        *also_on,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        # No password on the test's own addresses; protected mode would refuse all but
        # loopback clients (the namespaced hosts of tests/netns.py).
        "--protected-mode",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(workdir / "redis.log"),
    ]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    server = RedisServer(host, port)
    try:
        with trio.fail_after(START_TIMEOUT_SECONDS):
            while True:
                if process.poll() is not None:
                    log = workdir / "redis.log"
                    raise RuntimeError(
                        f"redis-server exited {process.returncode}: "
                        + (log.read_text()[-2000:] if log.exists() else "")
                    )
                if await _answers_ping(server):
                    break
                await trio.sleep(0.05)
        yield server
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
