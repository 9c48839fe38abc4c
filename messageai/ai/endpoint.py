"""The OpenAI-compatible chat-completions client: one streamed request at a time.

`Endpoint.complete` posts `{base_url}/chat/completions` with `"stream": true` and
reads the server-sent events (`data: {...}` lines, then `data: [DONE]`): text
deltas go to the caller's `on_delta` as they arrive, tool calls are assembled from
their fragments (the arguments of one call may arrive split over many chunks) and
parsed once the stream has ended. Called by `ai.assistant.Assistant` only, which
bounds the whole answer by `ai.timeout_seconds` around its calls.

Every failure is one error, `EndpointError` (an `Unavailable`): the endpoint down
or refusing, a 429 (with `retry_after_seconds` when it said), a non-2xx status, a
stream cut before `[DONE]` or a finish reason, a response over
`ai.max_response_bytes`, JSON that does not parse, tool arguments that are not a
JSON object. Its message never holds the API key, the request or the response body.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import attrs
import httpx
import orjson
import trio

from messageai.config import AiConfig, read_secret
from messageai.counters import COUNTS
from messageai.errors import Unavailable

log = logging.getLogger(__name__)

# A tool call's arguments, and a tool call's count, past which the answer is garbage.
MAX_TOOL_CALLS = 16
MAX_ARGUMENT_BYTES = 16_384


class EndpointError(Unavailable):
    """The endpoint gave no usable answer; the asker gets `unavailable`."""


@attrs.frozen
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@attrs.frozen
class Completion:
    """One response: its text, the tool calls it asks for, the tokens it cost."""

    content: str
    tool_calls: list[ToolCall]
    # As the endpoint counted them (prompt and answer); estimated when it did not say.
    tokens: int


def load_api_key(config: AiConfig) -> str | None:
    """The API key from `ai.api_key_file` (its first line) or `ai.api_key_env`; None when
    neither is set. Called once at start-up by the server."""
    return read_secret("ai", "api_key_file", config.api_key_file, "api_key_env", config.api_key_env)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, min(seconds, 86400.0))


class _Call:
    """A tool call being assembled from its stream fragments."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class Endpoint:
    """A chat-completions endpoint: `complete` is one streamed request."""

    def __init__(self, config: AiConfig, api_key: str | None) -> None:
        self._config = config
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # No retries, no redirects: a failure is the asker's `unavailable` at once.
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_seconds),
            follow_redirects=False,
            trust_env=False,
        )
        self._limiter = trio.CapacityLimiter(config.max_concurrent_requests)

    @property
    def model(self) -> str:
        return self._config.model

    async def aclose(self) -> None:
        await self._client.aclose()

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_delta: Callable[[str], None] | None = None,
    ) -> Completion:
        """Send one request and read its streamed answer. Raises EndpointError. Cancelled
        (the caller's deadline, the switch turned off), the connection is closed and
        nothing more is read; waits its turn among `ai.max_concurrent_requests`."""
        body: dict[str, Any] = {
            "model": self._config.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": self._config.max_answer_tokens,
        }
        if tools:
            body["tools"] = tools
        async with self._limiter:
            content = orjson.dumps(body)
            started = time.perf_counter()
            try:
                completion = await self._stream(content, on_delta)
            except httpx.HTTPError as exc:
                COUNTS.ai_requests_failed += 1
                # The class only: an httpx message can hold the URL, never needed here.
                raise EndpointError(f"the AI endpoint failed ({type(exc).__name__})") from None
            except EndpointError:
                COUNTS.ai_requests_failed += 1
                raise
            finally:
                # Every request, answered, failed or cancelled: the endpoint's latency.
                COUNTS.ai_request_seconds.observe(time.perf_counter() - started)
        if completion.tokens <= 0:
            # An endpoint that reports no usage: about four characters a token, both ways.
            tokens = max(1, (len(content) + len(completion.content)) // 4)
            completion = attrs.evolve(completion, tokens=tokens)
        return completion

    async def _stream(self, content: bytes, on_delta: Callable[[str], None] | None) -> Completion:
        limit = self._config.max_response_bytes
        async with self._client.stream(
            "POST", self._url, content=content, headers={"Content-Type": "application/json"}
        ) as response:
            if response.status_code == 429:
                raise EndpointError(
                    "the AI endpoint is rate limited; retry later",
                    _retry_after(response.headers.get("retry-after")),
                )
            if not 200 <= response.status_code < 300:
                raise EndpointError(f"the AI endpoint answered HTTP {response.status_code}")
            kind = response.headers.get("content-type", "")
            if "text/event-stream" not in kind:
                # A server that ignored `stream`: one JSON object.
                raw = b""
                with trio.CancelScope() as reading:  # as in `_events`
                    async for chunk in response.aiter_bytes():
                        if len(raw) <= limit:
                            raw += chunk
                        else:
                            reading.cancel()
                if len(raw) > limit:
                    raise EndpointError("the AI endpoint's answer is too large")
                return self._whole(raw, on_delta)
            return await self._events(response, limit, on_delta)

    async def _events(
        self, response: httpx.Response, limit: int, on_delta: Callable[[str], None] | None
    ) -> Completion:
        # Line by line, so each text delta reaches `on_delta` as it arrives.
        parser = _Events(on_delta)
        error: EndpointError | None = None
        size = 0
        # httpx's line iterator nests generators that only an exception from inside
        # closes: to stop early, cancel and read on, so the Cancelled rises from the
        # socket read through all of them.
        with trio.CancelScope() as reading:
            async for line in response.aiter_lines():
                if error is not None:
                    continue
                size += len(line) + 1
                try:
                    if size > limit:
                        raise EndpointError("the AI endpoint's answer is too large")
                    parser.feed(line)
                except EndpointError as exc:
                    error = exc
                    reading.cancel()
        if error is not None:
            raise error
        return parser.completion()

    def _whole(self, raw: bytes, on_delta: Callable[[str], None] | None) -> Completion:
        obj = _json(raw)
        choices = _list(obj.get("choices"))
        if not choices or not isinstance(choices[0], dict):
            raise EndpointError("the AI endpoint's answer is malformed")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise EndpointError("the AI endpoint's answer is malformed")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise EndpointError("the AI endpoint's answer is malformed")
        calls: dict[int, _Call] = {}
        for index, call in enumerate(_list(message.get("tool_calls"))):
            if isinstance(call, dict):
                call = {**call, "index": index}
            _merge_call(calls, call)
        if content and on_delta is not None:
            on_delta(content)
        usage = obj.get("usage")
        tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
        return Completion(
            content,
            _parse_calls(calls),
            tokens if isinstance(tokens, int) else 0,
        )


class _Events:
    """The state of one streamed answer, fed one SSE line at a time."""

    def __init__(self, on_delta: Callable[[str], None] | None) -> None:
        self._on_delta = on_delta
        self._text: list[str] = []
        self._calls: dict[int, _Call] = {}
        self._tokens = 0
        self._finished = self._done = False

    def feed(self, line: str) -> bool:
        """Take one line; True at `[DONE]`."""
        if not line.startswith("data:"):
            return False  # comments, `event:`, `id:` and blank separators
        data = line[5:].strip()
        if data == "[DONE]":
            self._done = True
            return True
        chunk = _json(data)
        if "error" in chunk:
            raise EndpointError("the AI endpoint reported an error")
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
            self._tokens = usage["total_tokens"]
        for choice in _list(chunk.get("choices")):
            if not isinstance(choice, dict):
                raise EndpointError("the AI endpoint's answer is malformed")
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise EndpointError("the AI endpoint's answer is malformed")
            piece = delta.get("content")
            if isinstance(piece, str) and piece:
                self._text.append(piece)
                if self._on_delta is not None:
                    self._on_delta(piece)
            for fragment in _list(delta.get("tool_calls")):
                _merge_call(self._calls, fragment)
            if choice.get("finish_reason"):
                self._finished = True
        return False

    def completion(self) -> Completion:
        if not (self._done or self._finished):
            raise EndpointError("the AI endpoint's stream was cut")
        return Completion("".join(self._text), _parse_calls(self._calls), self._tokens)


def _json(data: str | bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise EndpointError("the AI endpoint's answer is not JSON") from None
    if not isinstance(obj, dict):
        raise EndpointError("the AI endpoint's answer is malformed")
    return obj


def _list(value: object) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise EndpointError("the AI endpoint's answer is malformed")
    return value


def _merge_call(calls: dict[int, _Call], fragment: object) -> None:
    """One fragment of a streamed tool call: its `index` names the call; `id` and the
    function's `name` come once, `arguments` in pieces to be joined."""
    if not isinstance(fragment, dict):
        raise EndpointError("the AI endpoint's tool call is malformed")
    index = fragment.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < MAX_TOOL_CALLS:
        raise EndpointError("the AI endpoint's tool call is malformed")
    call = calls.setdefault(index, _Call())
    if isinstance(fragment.get("id"), str):
        call.id = fragment["id"]
    function = fragment.get("function") or {}
    if not isinstance(function, dict):
        raise EndpointError("the AI endpoint's tool call is malformed")
    if isinstance(function.get("name"), str):
        call.name += function["name"]
    piece = function.get("arguments")
    if isinstance(piece, str):
        call.arguments.append(piece)
        if sum(map(len, call.arguments)) > MAX_ARGUMENT_BYTES:
            raise EndpointError("the AI endpoint's tool arguments are too large")
    elif isinstance(piece, dict):  # some servers send the object itself
        call.arguments.append(orjson.dumps(piece).decode())


def _parse_calls(calls: dict[int, _Call]) -> list[ToolCall]:
    out = []
    for index in sorted(calls):
        call = calls[index]
        raw = "".join(call.arguments).strip() or "{}"
        try:
            arguments = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise EndpointError("the AI endpoint's tool arguments are not JSON") from None
        if not isinstance(arguments, dict) or not call.name:
            raise EndpointError("the AI endpoint's tool call is malformed")
        out.append(ToolCall(call.id or f"call_{index}", call.name, arguments))
    return out
