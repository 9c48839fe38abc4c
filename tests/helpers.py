"""Test helpers: a real server on 127.0.0.1:0 and small real clients for it.

Rules for every end-to-end test: localhost only, port 0, real SQLite files under
pytest's `tmp_path`, an absolute `trio.fail_after` per test (the `server`
fixture applies one), and the client closes first unless the test says otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import trio
import trio_websocket

from messageai.config import Config, parse_config
from messageai.server import Server

# The folder of the secrets grep (tests/secret_logs.py), set for a pytest session.
LOG_DIR_VARIABLE = "MESSAGEAI_TEST_LOG_DIR"
# The TLS settings of the tests' own HTTP clients, made once: httpx reads certifi's whole
# CA bundle into a new context for every client made without one (~0.1 s on a loaded
# 2-core machine; `harness` makes a client per test). No test server speaks TLS.
CLIENT_TLS = httpx.create_ssl_context()


def child_log(name: str) -> tuple[dict[str, str], Path | None]:
    """For a server child a test starts: the environment that makes it log at DEBUG,
    and the file for its stderr; ({}, None) outside a pytest session (scripts/chaos)."""
    folder = os.environ.get(LOG_DIR_VARIABLE)
    if not folder:
        return {}, None
    test = os.environ.get("PYTEST_CURRENT_TEST", "no-test").split(" ")[0]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{test}-{name}")[-150:]
    path = Path(folder) / f"{stem}-{os.getpid()}-{len(os.listdir(folder))}.log"
    return {"MESSAGEAI_LOGGING__LEVEL": "debug"}, path


def make_config(data_dir: Path, **sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_timeout_seconds": 2.0},
        "storage": {"data_dir": str(data_dir)},
        # Cheap hashes keep registration fast in tests; production uses the default.
        "auth": {"scrypt_n": 16},
        # The model costs CPU on every message: only the tests of embeddings turn it on.
        "embeddings": {"enabled": False},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw)


@contextlib.asynccontextmanager
async def running_server(config: Config) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(Server(config).run)
        try:
            yield server
        finally:
            server.shutdown()


@attrs.define
class Account:
    id: str
    username: str
    token: str


class WS:
    """A WebSocket client that matches responses to requests by `req`."""

    def __init__(self, conn: trio_websocket.WebSocketConnection) -> None:
        self.conn = conn
        self._req = itertools.count(1)
        # Frames that arrived while waiting for something else, oldest first.
        self.events: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.conn.send_message(
            frame if isinstance(frame, str) else orjson.dumps(frame).decode()
        )

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        with trio.fail_after(timeout):
            frame: dict[str, Any] = orjson.loads(await self.conn.get_message())
            return frame

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a frame with a fresh `req` and return the response that names it.
        Other frames arriving first are kept in `self.events`."""
        req = next(self._req)
        await self.send({"type": type_, "req": req, **fields})
        while True:
            frame = await self.recv()
            if frame.get("req") == req:
                return frame
            self.events.append(frame)

    async def next_event(self, type_: str, timeout: float = 5) -> dict[str, Any]:
        for i, frame in enumerate(self.events):
            if frame["type"] == type_:
                return self.events.pop(i)
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == type_:
                return frame
            self.events.append(frame)

    async def assert_quiet(self, seconds: float = 0.2) -> None:
        """Nothing arrives for `seconds`."""
        with trio.move_on_after(seconds):
            frame = await self.conn.get_message()
            raise AssertionError(f"unexpected frame: {frame!r}")

    async def send_message(
        self, conversation_id: str, body: str, client_id: str | None = None
    ) -> dict[str, Any]:
        return await self.request(
            "send_message",
            conversation_id=conversation_id,
            client_id=client_id or uuid.uuid4().hex,
            body=body,
        )


class Harness:
    """A running server plus helpers to make accounts, conversations and connections."""

    def __init__(self, server: Server, http: httpx.AsyncClient) -> None:
        self.server = server
        self.http = http
        self._names = itertools.count(1)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http", "ws", 1) + "/v1/ws"

    async def account(self, username: str | None = None) -> Account:
        username = username or f"user{next(self._names)}"
        r = await self.http.post(
            "/v1/auth/register", json={"username": username, "password": "password1"}
        )
        assert r.status_code == 201, r.text
        body = r.json()
        return Account(id=body["user"]["id"], username=username, token=body["token"])

    def auth(self, account: Account) -> dict[str, str]:
        return {"Authorization": f"Bearer {account.token}"}

    async def post(self, who: Account, conversation_id: str, body: str) -> int:
        """Send `body` over REST (`POST …/messages`, a fresh client_id); its seq."""
        r = await self.http.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"client_id": uuid.uuid4().hex, "body": body},
            headers=self.auth(who),
        )
        assert r.status_code == 201, r.text
        seq: int = r.json()["seq"]
        return seq

    async def post_upload(
        self, who: Account, conversation_id: str, body: str, content: bytes, content_type: str
    ) -> dict[str, Any]:
        """Upload `content`, then send `body` attaching it over REST; the upload's record."""
        r = await self.http.post(
            "/v1/media", content=content, headers={**self.auth(who), "Content-Type": content_type}
        )
        assert r.status_code == 201, r.text
        media: dict[str, Any] = r.json()
        r = await self.http.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"client_id": uuid.uuid4().hex, "body": body, "attachments": [media["id"]]},
            headers=self.auth(who),
        )
        assert r.status_code == 201, r.text
        return media

    async def direct(self, a: Account, b: Account) -> str:
        r = await self.http.post(
            "/v1/conversations", json={"kind": "direct", "member_ids": [b.id]}, headers=self.auth(a)
        )
        assert r.status_code in (200, 201), r.text
        cid: str = r.json()["id"]
        return cid

    async def group(self, creator: Account, *others: Account, title: str = "Team") -> str:
        r = await self.http.post(
            "/v1/conversations",
            json={"kind": "group", "title": title, "member_ids": [o.id for o in others]},
            headers=self.auth(creator),
        )
        assert r.status_code == 201, r.text
        cid: str = r.json()["id"]
        return cid

    @contextlib.asynccontextmanager
    async def ws(self, account: Account | None = None, *, query: str = "") -> AsyncIterator[WS]:
        """A WebSocket connection as `account` (bearer header)."""
        assert self.server.port is not None
        token = account.token if account else None
        async with connect_ws(self.server.port, token=token, query=query) as conn:
            yield WS(conn)


@contextlib.asynccontextmanager
async def connect_ws(
    port: int, *, token: str | None = None, query: str = ""
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A client WebSocket to /v1/ws on 127.0.0.1:`port`, bearer header if `token`.

    The TCP stream is ours so that it is closed however the WebSocket ends
    (trio-websocket's client leaves it open when the server closes first).
    """
    headers = [(b"Authorization", f"Bearer {token}".encode("ascii"))] if token else []
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            conn = await trio_websocket.wrap_client_stream(
                nursery, stream, "127.0.0.1", "/v1/ws" + query, extra_headers=headers
            )
            try:
                yield conn
            finally:
                await conn.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


@contextlib.asynccontextmanager
async def harness(config: Config) -> AsyncIterator[Harness]:
    async with (
        running_server(config) as server,
        httpx.AsyncClient(base_url=server.url, verify=CLIENT_TLS) as http,
    ):
        yield Harness(server, http)


def without_general(conversations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A conversation list less the `general` channel, which every user is in (v1.1)."""
    return [c for c in conversations if not (c["kind"] == "channel" and c["title"] == "general")]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is a PROTOCOL.md REST error: `status` and `{"error": {"code", "message"}}`."""
    assert response.status_code == status, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body


async def raw_websocket_handshake(
    url: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Send a WebSocket upgrade request over a plain TCP stream; return the HTTP status
    and the response body. (trio-websocket's client leaks its socket on a rejection.)"""
    host, _, port = url.removeprefix("http://").rpartition(":")
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while status != 101 and len(body) < length:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            body += chunk
    return status, body


class ServerProcess:
    """`python -m messageai serve` as a real child process (for kill -9 and signals)."""

    def __init__(self, data_dir: Path, config_file: Path, module: str = "messageai") -> None:
        """`module` is what `python -m` runs: `tests.jobserver` adds the test job kinds."""
        self.data_dir = data_dir
        self.config_file = config_file
        self.module = module
        self.process: trio.Process | None = None
        self.port: int | None = None
        self.output = b""

    @staticmethod
    def write_config(path: Path, extra: str = "") -> Path:
        # No model to load at each start (tests/test_embeddings.py runs it in-process).
        path.write_text(
            '[server]\nhost = "127.0.0.1"\nport = 0\n[auth]\nscrypt_n = 16\n'
            "[embeddings]\nenabled = false\n" + extra
        )
        return path

    async def start(self, nursery: trio.Nursery) -> int:
        env, log = child_log("server")
        # The secrets grep reads it (tests/secret_logs.py); else inherited.
        stderr = log.open("ab") if log else None
        try:
            self.process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [
                        sys.executable,
                        "-m",
                        *([self.module, "serve"] if self.module == "messageai" else [self.module]),
                        "--config",
                        str(self.config_file),
                        "--data-dir",
                        str(self.data_dir),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env={**os.environ, **env},
                    check=False,
                )
            )
        finally:
            if stderr is not None:
                stderr.close()
        assert self.process is not None and self.process.stdout is not None
        line = b""
        with trio.fail_after(20):
            while b"\n" not in line:
                chunk = await self.process.stdout.receive_some(4096)
                assert chunk, "server exited before printing its URL"
                line += chunk
        self.output = line
        match = re.search(rb"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        self.port = int(match.group(1))
        return self.port

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.terminate()

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()


async def run_messageai(*args: str) -> subprocess.CompletedProcess[str]:
    """`messageai ARGS` in a child process (this interpreter), its output as text."""
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "messageai", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )
