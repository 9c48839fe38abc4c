"""A small real OpenAI-compatible chat-completions server on 127.0.0.1:0, for tests.

`fake_llm()` starts it (hypercorn on Trio) and yields a `FakeLLM`: each test scripts
the replies (`llm.script(reply, ...)`: streamed text, tool calls whose arguments are
split across chunks, HTTP errors, 429 with Retry-After, delays, cut streams,
garbage), and every request is recorded (`llm.requests`: headers and parsed JSON
body) for the privacy assertions. With nothing scripted, `llm.chooser` (when set)
picks the reply from the request, else a request gets `DEFAULT`. `llm_in_thread()`
runs it in a thread of its own, for synchronous tests (the browser's).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs
import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

DEFAULT_ANSWER = "I found nothing more to say."


@attrs.frozen
class Reply:
    """One scripted answer. `chunks`: text deltas streamed one SSE event each;
    `tool_calls`: (name, arguments as JSON text) pairs, each one's arguments sent in
    `split` fragments; `status`/`headers`/`body`: a plain HTTP answer instead;
    `delay`: seconds before answering; `cut_after`: events sent before the stream is
    cut (no `[DONE]`); `raw`: SSE data lines sent as they are (then `[DONE]`);
    `usage`: total_tokens reported in the last event (None: no usage)."""

    chunks: tuple[str, ...] = ()
    tool_calls: tuple[tuple[str, str], ...] = ()
    split: int = 3
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    delay: float = 0.0
    cut_after: int | None = None
    raw: tuple[str, ...] = ()
    usage: int | None = 10


def text(*chunks: str, **kw: Any) -> Reply:
    return Reply(chunks=chunks, **kw)


def tools(*calls: tuple[str, dict[str, Any] | str], **kw: Any) -> Reply:
    encoded = tuple(
        (name, args if isinstance(args, str) else orjson.dumps(args).decode())
        for name, args in calls
    )
    return Reply(tool_calls=encoded, **kw)


DEFAULT = text(DEFAULT_ANSWER)


def _events(reply: Reply) -> list[bytes]:
    """The SSE events of a streamed reply, `[DONE]` last."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "fake"}
    out: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    ]
    for piece in reply.chunks:
        out.append({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
    for index, (name, arguments) in enumerate(reply.tool_calls):
        size = max(1, -(-len(arguments) // max(1, reply.split)))
        pieces = [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]
        first = {
            "index": index,
            "id": f"call_{index}",
            "type": "function",
            "function": {"name": name, "arguments": pieces[0]},
        }
        out.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [first]}}]})
        for piece in pieces[1:]:
            fragment = {"index": index, "function": {"arguments": piece}}
            out.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [fragment]}}]})
    finish = "tool_calls" if reply.tool_calls else "stop"
    last: dict[str, Any] = {
        **base,
        "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
    }
    if reply.usage is not None:
        last["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": reply.usage}
    out.append(last)
    events = [b"data: " + orjson.dumps(event) + b"\n\n" for event in out]
    return [*events, b"data: [DONE]\n\n"]


class _Cut(Exception):
    """Raised inside the ASGI app to cut a response mid-stream."""


class FakeLLM:
    def __init__(self) -> None:
        self._script: deque[Reply] = deque()
        # Every request: {"headers": {...}, "json": body} in arrival order.
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self.started = 0
        self.any_request = trio.Event()
        # Chooses the reply from the request's JSON body when nothing is scripted
        # (None: DEFAULT): for callers that cannot know the order of requests.
        self.chooser: Callable[[Any], Reply | None] | None = None

    def script(self, *replies: Reply) -> None:
        self._script.extend(replies)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [request["json"] for request in self.requests]

    def texts(self) -> list[str]:
        """Each recorded request as one string (its JSON), for "is X in any request"."""
        return [orjson.dumps(request["json"]).decode() for request in self.requests]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            parsed: Any = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        if scope["path"] != "/v1/chat/completions" or scope["method"] != "POST":
            await _plain(send, 404, b'{"error": "not found"}', ())
            return
        self.requests.append({"headers": headers, "json": parsed})
        self.any_request.set()
        if self._script:
            reply = self._script.popleft()
        else:
            reply = (self.chooser(parsed) if self.chooser else None) or DEFAULT
        if reply.delay:
            await trio.sleep(reply.delay)
        if reply.status != 200 or reply.body is not None:
            await _plain(send, reply.status, reply.body or b"{}", reply.headers)
            return
        events = (
            [b"data: " + line.encode() + b"\n\n" for line in reply.raw] + [b"data: [DONE]\n\n"]
            if reply.raw
            else _events(reply)
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), *_encode(reply.headers)],
            }
        )
        for number, event in enumerate(events):
            if reply.cut_after is not None and number >= reply.cut_after:
                raise _Cut  # hypercorn drops the connection without ending the body
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _encode(headers: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers]


async def _plain(send: Any, status: int, body: bytes, headers: tuple[tuple[str, str], ...]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *_encode(headers)],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def fake_llm() -> AsyncIterator[FakeLLM]:
    """The fake endpoint on 127.0.0.1:0; its `url` is the base URL for `ai.base_url`."""
    llm = FakeLLM()
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            lambda task_status: serve(
                llm,  # type: ignore[arg-type]
                config,
                shutdown_trigger=shutdown.wait,
                task_status=task_status,
            )
        )
        llm.url = binds[0] + "/v1"
        try:
            yield llm
        finally:
            shutdown.set()


@contextlib.contextmanager
def llm_in_thread() -> Iterator[FakeLLM]:
    """`fake_llm()` on its own Trio loop in a thread; stopped when the block ends."""
    ready: queue.Queue[tuple[FakeLLM, trio.lowlevel.TrioToken, trio.Event]] = queue.Queue()

    async def main() -> None:
        async with fake_llm() as llm:
            stop = trio.Event()
            ready.put((llm, trio.lowlevel.current_trio_token(), stop))
            await stop.wait()

    thread = threading.Thread(target=trio.run, args=(main,), name="fake-llm", daemon=True)
    thread.start()
    llm, token, stop = ready.get(timeout=30)
    try:
        yield llm
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout=10)
