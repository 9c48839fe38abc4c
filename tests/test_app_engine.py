"""The app's engine (`app/src/engine`) tested with jest-expo against the real server.

Each pytest test starts the server on 127.0.0.1:0 with a fresh data directory
and runs the whole jest suite once with the server's URL in MESSAGEAI_TEST_URL,
once with the browser's local database and once with the phones';
jest's own report says which engine test failed. The engine's reconnect tests
stop and restart that server under it through MESSAGEAI_TEST_CONTROL, a tiny
loopback HTTP endpoint (`POST /stop`, `POST /start`) served by this test: the
server comes back on the same port with the same data, as after a real restart.
The server's assistant talks to tests/llm.py's stand-in chat-completions endpoint
(real HTTP on loopback), which answers every request with its default text.
`npm ci` runs first when `app/node_modules` is missing or stale (tests/app_env.py).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import attrs
import pytest
import trio

from messageai.server import Server
from tests.app_env import ensure_node_modules
from tests.helpers import make_config
from tests.llm import fake_llm

# The jest suite takes about a minute; a cold jest transform cache a bit more.
JEST_TIMEOUT_SECONDS = 600
# The most bytes of a control request read (they are one line and no body).
MAX_CONTROL_REQUEST_BYTES = 4096


@attrs.define
class RestartableServer:
    """The real server in its own cancel scope, so the test can stop and restart it."""

    data_dir: Path
    nursery: trio.Nursery
    llm_url: str
    port: int = 0
    server: Server | None = None
    done: trio.Event | None = None

    async def start(self) -> None:
        if self.server is not None:
            return
        config = make_config(
            self.data_dir,
            server={"port": self.port},
            ai={"base_url": self.llm_url, "model": "fake-model", "timeout_seconds": 5.0},
        )
        server = Server(config)
        done = trio.Event()

        async def run(task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await server.run(task_status=task_status)
            finally:
                done.set()

        await self.nursery.start(run)
        assert server.port is not None
        self.port = server.port
        self.server, self.done = server, done

    async def stop(self) -> None:
        if self.server is None or self.done is None:
            return
        self.server.shutdown()
        await self.done.wait()
        self.server = self.done = None


async def serve_control(
    target: RestartableServer, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        request = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in request and len(request) < MAX_CONTROL_REQUEST_BYTES:
                chunk = await stream.receive_some(1024)
                if not chunk:
                    break
                request += chunk
        line = request.split(b"\r\n", 1)[0].decode("latin-1")
        status = "200 OK"
        if line.startswith("POST /stop "):
            await target.stop()
        elif line.startswith("POST /start "):
            await target.start()
        else:
            status = "404 Not Found"
        await stream.send_all(
            f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n"
            "Access-Control-Allow-Origin: *\r\n\r\n".encode()
        )
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["indexeddb", "sqlite"])
async def test_engine_jest_suite_passes_against_the_real_server(
    tmp_path: Path, backend: str
) -> None:
    """The whole jest suite, its devices over the browser's local database
    (IndexedDB) or the phones' (SQLite, as sql.js: the same engine over both)."""
    app_dir = ensure_node_modules()
    # jest writes into a file, not a pipe, so that a run cut off by the timeout still
    # says which test it was in.
    out_path = tmp_path / "jest.out"
    returncode: int | None = None
    with out_path.open("wb") as out:
        with trio.move_on_after(JEST_TIMEOUT_SECONDS):
            async with fake_llm() as llm, trio.open_nursery() as nursery:
                target = RestartableServer(tmp_path / "data", nursery, llm.url)
                await target.start()
                control_port = await nursery.start(serve_control, target)
                result = await trio.run_process(
                    [
                        str(app_dir / "node_modules" / ".bin" / "jest"),
                        "--ci",
                        # e.g. MESSAGEAI_JEST_ARGS="-t reconnects" to run some tests only
                        *shlex.split(os.environ.get("MESSAGEAI_JEST_ARGS", "")),
                    ],
                    cwd=app_dir,
                    env={
                        **os.environ,
                        "MESSAGEAI_TEST_URL": f"http://127.0.0.1:{target.port}",
                        "MESSAGEAI_TEST_CONTROL": f"http://127.0.0.1:{control_port}",
                        "MESSAGEAI_TEST_BACKEND": backend,
                        "CI": "1",
                        "FORCE_COLOR": "0",
                    },
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
                returncode = result.returncode
                await target.stop()
                nursery.cancel_scope.cancel()
    report = out_path.read_text(errors="replace")
    print(report)  # jest's own summary, shown with -s or on failure
    assert returncode is not None, (
        f"jest did not finish within {JEST_TIMEOUT_SECONDS} s; what it said:\n{report[-20000:]}"
    )
    assert returncode == 0, report[-20000:]
    assert "Tests:" in report and "failed" not in report.split("Tests:", 1)[1].split("\n", 1)[0]
