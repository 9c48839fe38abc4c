"""A small real S3 server on loopback for the replica tests, and a TCP proxy that stalls it.

`s3_server()` runs `S3StandIn` (the standard library's threading HTTP server, HTTP/1.1
with keep-alive) on 127.0.0.1 and a free port, in a thread: path-style buckets,
PutObject (with `If-None-Match: *`, refused with 412 atomically when the key exists,
as S3 does, and user metadata), GetObject, ListObjectsV2 (prefix, pages of `max-keys`
with a continuation token), DeleteObject. Every request's SigV4 signature is checked
(recomputed with `messageai.cluster.s3.sign`, which `test_sigv4_is_botocores` compares
with botocore's), and so is its body's SHA-256: a wrong one is 403, as S3 answers. It
plays S3 the way `tests/llm.py` plays an LLM. `overwrite=True` makes it ignore
`If-None-Match`, as stores without conditional writes do (the start-up check refuses
them); `unanswered_puts` stores the next PUTs and closes their connections unanswered.

Why not moto's S3 server: moto 5.2 does answer `If-None-Match: *` with 412, but its check
is a read then a write with no lock between (two owners racing could both win), it
checks no signatures, and under `bench/replica_cost.py` it stopped answering a GET
(docs/SCALE.md §7).

`Stall` sits between a node and the store: it forwards bytes both ways until told to
hold one direction; then it drops what arrives that way and says so (`held`). Holding
requests is "the commit happened, its PUT never reached the store"; holding responses
is "the PUT landed, the node never heard": a kill -9 at that moment is a crash between
the commit and the replica, or between the replica and the ack.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.server
import re
import threading
import urllib.parse
from collections.abc import Iterator
from xml.sax.saxutils import escape

import attrs
import httpx
import trio

from messageai.cluster.s3 import sign

ACCESS_KEY, SECRET_KEY = "test-key", "test-secret"
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/\d{8}/(?P<region>[^/]+)/s3/aws4_request,"
    r" SignedHeaders=(?P<signed>[^,]+), Signature=[0-9a-f]{64}$"
)
_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


@attrs.frozen
class _Object:
    body: bytes
    metadata: tuple[tuple[str, str], ...]
    etag: str


class S3StandIn(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *, overwrite: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.overwrite = overwrite
        # PUTs still to be stored and then left unanswered (the connection closed): an
        # answer lost in transit.
        self.unanswered_puts = 0
        self.buckets: dict[str, dict[str, _Object]] = {}
        self.lock = threading.Lock()
        # Requests answered, by method (the bench and tests count round trips with it).
        self.requests: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per answer (the handler flushes after each request), and no Nagle: a
    # head and a body written apart wait out the client's delayed ACK (40 ms a GET).
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server: S3StandIn

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str) -> None:
        self._answer(status, f"<Error><Code>{code}</Code></Error>".encode())

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with self.server.lock:
            self.server.requests[self.command] = self.server.requests.get(self.command, 0) + 1
        if not self._signed(body):
            return
        url = urllib.parse.urlsplit(self.path)
        bucket, _, key = urllib.parse.unquote(url.path).lstrip("/").partition("/")
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        with self.server.lock:
            if self.command == "PUT" and not key:
                self.server.buckets.setdefault(bucket, {})
                self._answer(200)
                return
            objects = self.server.buckets.get(bucket)
            if objects is None:
                self._error(404, "NoSuchBucket")
            elif self.command == "PUT":
                if (
                    self.headers.get("if-none-match") == "*"
                    and key in objects
                    and not self.server.overwrite
                ):
                    self._error(412, "PreconditionFailed")
                    return
                etag = f'"{hashlib.md5(body).hexdigest()}"'
                metadata = tuple(
                    (name.lower(), value)
                    for name, value in self.headers.items()
                    if name.lower().startswith("x-amz-meta-")
                )
                objects[key] = _Object(body, metadata, etag)
                if self.server.unanswered_puts > 0:
                    self.server.unanswered_puts -= 1
                    self.close_connection = True
                    return
                self._answer(200, headers={"etag": etag})
            elif self.command == "GET" and not key:
                self._list(objects, query)
            elif self.command == "GET":
                found = objects.get(key)
                if found is None:
                    self._error(404, "NoSuchKey")
                else:
                    self._answer(200, found.body, {"etag": found.etag, **dict(found.metadata)})
            elif self.command == "DELETE":
                objects.pop(key, None)
                self._answer(204)
            else:
                self._error(405, "MethodNotAllowed")

    do_PUT = do_GET = do_DELETE = _handle

    def _signed(self, body: bytes) -> bool:
        match = _AUTH.match(self.headers.get("authorization", ""))
        payload = self.headers.get("x-amz-content-sha256", "")
        if match is None or match["key"] != ACCESS_KEY:
            self._error(403, "InvalidAccessKeyId")
            return False
        if payload != hashlib.sha256(body).hexdigest():
            self._error(400, "XAmzContentSHA256Mismatch")
            return False
        names = match["signed"].split(";")
        headers = {
            name: self.headers.get(name, "")
            for name in names
            if name not in ("host", "x-amz-date", "x-amz-content-sha256")
        }
        when = datetime.datetime.strptime(self.headers.get("x-amz-date", ""), "%Y%m%dT%H%M%SZ")
        expected = sign(
            self.command,
            httpx.URL(f"http://{self.headers.get('host', '')}{self.path}"),
            headers,
            payload,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=match["region"],
            now=when.replace(tzinfo=datetime.UTC),
        )
        if expected["authorization"] != self.headers.get("authorization"):
            self._error(403, "SignatureDoesNotMatch")
            return False
        return True

    def _list(self, objects: dict[str, _Object], query: dict[str, str]) -> None:
        prefix = query.get("prefix", "")
        after = query.get("continuation-token", "")
        page = int(query.get("max-keys", "1000"))
        keys = sorted(k for k in objects if k.startswith(prefix) and k > after)
        shown, more = keys[:page], len(keys) > page
        parts = [f'<ListBucketResult xmlns="{_NS}"><IsTruncated>{str(more).lower()}</IsTruncated>']
        parts += [f"<Contents><Key>{escape(key)}</Key></Contents>" for key in shown]
        if more:
            parts.append(f"<NextContinuationToken>{escape(shown[-1])}</NextContinuationToken>")
        parts.append("</ListBucketResult>")
        self._answer(200, "".join(parts).encode(), {"content-type": "application/xml"})


@contextlib.contextmanager
def s3_server(*, overwrite: bool = False) -> Iterator[S3StandIn]:
    """An `S3StandIn` serving until the block ends."""
    server = S3StandIn(overwrite=overwrite)
    # A short poll: shutdown() waits for it.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="s3 stand-in", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@attrs.define(eq=False)
class Stall:
    """A loopback TCP proxy to `target` (host, port); `endpoint` is where to connect."""

    target: tuple[str, int]
    endpoint: str = ""
    # None: forward both ways; "requests" or "responses": drop that direction.
    hold: str | None = None
    held: trio.Event = attrs.Factory(trio.Event)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream(*self.target) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._pipe, client, server, "requests", nursery.cancel_scope)
            nursery.start_soon(self._pipe, server, client, "responses", nursery.cancel_scope)

    async def _pipe(
        self, source: trio.SocketStream, sink: trio.SocketStream, what: str, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                if self.hold == what:
                    self.held.set()
                    continue
                await sink.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()


def main() -> None:
    """`python -m tests.s3_server`: serve until killed, printing the endpoint first (the
    bench runs the store in a process of its own, so that its CPU is not the node's)."""
    with s3_server() as server:
        print(server.endpoint, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
