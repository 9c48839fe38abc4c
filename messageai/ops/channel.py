"""The operator's channel into a running server, and the lock that says one runs.

A running server holds an exclusive `flock` on `server.lock` in its data directory
for its whole life (the kernel drops it when the process dies, even by kill -9), and
listens on `admin.sock` beside it: a Unix domain socket made with mode 0600, whose
peer must also be the server's own uid (`SO_PEERCRED`). So only the account that
runs the server (or root) can reach it, and nothing listens on the network.

The operator's commands (`cli.ops`: `user delete`, `conversation delete|restore`)
first try the lock themselves (`offline_lock`): got it, no server runs and they work
on the files directly, holding the lock so that no server starts under them; not
got, they send their request over the socket (`request`) and the server does the
work itself (`services.admin`), so it never sees its files changed under it.

One request per connection: a JSON object on one line (at most
`MAX_REQUEST_BYTES`), answered by one line `{"ok": true, "said": "..."}` or
`{"ok": false, "error": "..."}`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from messageai.errors import MessageAIError, StartupError

log = logging.getLogger(__name__)

SOCKET = "admin.sock"
LOCK = "server.lock"
MAX_REQUEST_BYTES = 64 * 1024
# Commands waiting for the server at once; more wait in the kernel's backlog.
MAX_CONCURRENT = 4
# A client that sends no complete request within this long is dropped.
READ_TIMEOUT_SECONDS = 10.0
# AF_UNIX paths are at most 108 bytes with the terminating NUL (Linux).
MAX_SOCKET_PATH = 107

Handler = Callable[[dict[str, Any]], Awaitable[str]]


class ChannelError(Exception):
    """The running server refused or failed the request; the message says why."""


def _lock_fd(data_dir: Path, shared: bool = False, name: str = LOCK) -> int | None:
    """An fd holding the exclusive (`shared`: the shared) lock on `data_dir`'s
    `name` (`server.lock`), or None when another process holds it in a conflicting way."""
    fd = os.open(data_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def offline_lock(data_dir: Path) -> Iterator[bool]:
    """True (and the lock held for the block) when no server runs on `data_dir`;
    False when one does (or another offline command holds it)."""
    fd = _lock_fd(data_dir)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def socket_path(data_dir: Path, name: str = SOCKET) -> Path:
    return data_dir.resolve() / name


def node_files(node_id: str) -> tuple[str, str]:
    """A cluster node's own lock and socket in a shared data directory."""
    return f"node-{node_id}.lock", f"admin-{node_id}.sock"


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """The address to bind or connect `path` by: itself, or where it is longer than
    AF_UNIX allows, the same file reached through an fd of its folder
    (`/proc/self/fd/N/admin.sock`), so that any data directory can hold the socket."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def request(
    data_dir: Path, body: dict[str, Any], timeout: float = 600.0, *, name: str = SOCKET
) -> str:
    """Send `body` to the server running on `data_dir` (`name`: a cluster node's own
    socket there); what it said. Raises ChannelError with the server's refusal, or
    when it cannot be reached."""
    path = socket_path(data_dir, name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _address(path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ChannelError(
                f"another process holds {data_dir / LOCK} and nothing answers on {path}"
                f" ({exc.strerror}): a server still starting, or another operator's"
                " command at work; try again"
            ) from None
        sock.sendall(json.dumps(body).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    try:
        said = json.loads(answer)
    except ValueError:
        raise ChannelError("the server closed the admin channel without an answer") from None
    if not said.get("ok"):
        raise ChannelError(str(said.get("error")))
    return str(said.get("said", ""))


class Channel:
    """The server's end: the lock, then the socket; `run` serves until cancelled.

    `node_id`: a cluster node, one of several processes on one data directory
    (docs/SCALE.md §7a). They share the lock, so neither a single-node server nor an
    offline command starts under them; each holds its own `node-<id>.lock` and
    listens on its own `admin-<id>.sock` (`node drain`), not on `admin.sock` (the
    live operator commands are not built for a cluster yet)."""

    def __init__(self, data_dir: Path, handle: Handler, *, node_id: str | None = None) -> None:
        self._shared = node_id is not None
        self._node_lock, self._socket = node_files(node_id) if node_id else ("", SOCKET)
        self._node_fd: int | None = None
        self._data_dir = data_dir
        self._handle = handle
        self._lock: int | None = None
        self._limit = trio.CapacityLimiter(MAX_CONCURRENT)

    def lock(self) -> None:
        """Take the data directory's lock (StartupError if another process has it)."""
        path = socket_path(self._data_dir, self._socket)
        self._lock = _lock_fd(self._data_dir, self._shared)
        if self._lock is None:
            raise StartupError(
                f"another MessageAI server (or an operator's command) is using"
                f" {self._data_dir.resolve()} ({LOCK} is locked)"
            )
        if self._shared:
            self._node_fd = _lock_fd(self._data_dir, name=self._node_lock)
            if self._node_fd is None:
                raise StartupError(
                    f"another cluster node with this node_id uses {self._data_dir.resolve()}"
                    f" ({self._node_lock} is locked)"
                )
        # Left by a server that died: nobody can be listening on it (we hold the lock).
        path.unlink(missing_ok=True)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            socket_path(self._data_dir, self._socket).unlink(missing_ok=True)
        if self._node_fd is not None:
            os.close(self._node_fd)
            self._node_fd = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = socket_path(self._data_dir, self._socket)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Made 0600 from the start (umask at bind), never briefly open to others.
        old = os.umask(0o177)
        try:
            with _address(path) as address:
                await sock.bind(address)
        finally:
            os.umask(old)
        sock.listen(MAX_CONCURRENT)
        listener = trio.SocketListener(sock)
        task_status.started()
        async with listener, trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._serve, stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            uid = struct.unpack(
                "3i", stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            )[1]
            if uid not in (os.getuid(), 0):
                log.warning("admin channel: refused a peer of uid %d", uid)
                return
            raw = b""
            with trio.move_on_after(READ_TIMEOUT_SECONDS):
                while not raw.endswith(b"\n") and len(raw) <= MAX_REQUEST_BYTES:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    raw += chunk
            answer: dict[str, Any]
            try:
                body = json.loads(raw) if raw.endswith(b"\n") else None
                if not isinstance(body, dict):
                    raise MessageAIError("not one JSON object on one line")
                async with self._limit:
                    answer = {"ok": True, "said": await self._handle(body)}
            except MessageAIError as exc:
                answer = {"ok": False, "error": exc.message}
            except ValueError as exc:
                answer = {"ok": False, "error": f"not JSON: {exc}"}
            except Exception as exc:
                log.exception("admin channel: the command failed")
                answer = {"ok": False, "error": f"the command failed: {type(exc).__name__}"}
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                await stream.send_all(json.dumps(answer).encode() + b"\n")
