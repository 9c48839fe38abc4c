"""The chat-completions client (`messageai.ai.endpoint`) against the loopback fake
endpoint (`tests.llm`): streamed text, tool calls split across chunks, and every
failure mode as `EndpointError` (`unavailable`), with the API key never in a message."""

from __future__ import annotations

import pytest
import trio

from messageai.ai.endpoint import Endpoint, EndpointError, load_api_key
from messageai.config import AiConfig, ConfigError
from tests.llm import FakeLLM, Reply, fake_llm, text, tools

KEY = "sk-secret-key-123"


def endpoint(llm: FakeLLM, **kw: object) -> Endpoint:
    config = AiConfig(base_url=llm.url, model="fake-model", **kw)  # type: ignore[arg-type]
    return Endpoint(config, KEY)


async def test_streamed_text_arrives_as_deltas_and_whole() -> None:
    async with fake_llm() as llm:
        llm.script(text("Hel", "lo ", "there", usage=42))
        client = endpoint(llm)
        deltas: list[str] = []
        done = await client.complete([{"role": "user", "content": "hi"}], None, deltas.append)
        await client.aclose()
    assert deltas == ["Hel", "lo ", "there"]
    assert done.content == "Hello there"
    assert done.tokens == 42
    (request,) = llm.requests
    assert request["json"]["model"] == "fake-model"
    assert request["json"]["stream"] is True
    assert request["headers"]["authorization"] == f"Bearer {KEY}"


async def test_tool_call_arguments_split_across_chunks_are_joined() -> None:
    async with fake_llm() as llm:
        llm.script(
            tools(("search_messages", {"query": "friday lunch"}), ("list_members", {}), split=5)
        )
        client = endpoint(llm)
        done = await client.complete([{"role": "user", "content": "hi"}], [{"type": "function"}])
        await client.aclose()
    assert [(c.name, c.arguments) for c in done.tool_calls] == [
        ("search_messages", {"query": "friday lunch"}),
        ("list_members", {}),
    ]


async def test_no_usage_reported_is_estimated() -> None:
    async with fake_llm() as llm:
        llm.script(text("x" * 400, usage=None))
        client = endpoint(llm)
        done = await client.complete([{"role": "user", "content": "hi"}], None)
        await client.aclose()
    assert done.tokens >= 100


@pytest.mark.parametrize(
    ("reply", "retry"),
    [
        (Reply(status=500, body=b'{"error": "boom"}'), None),
        (Reply(status=429, headers=(("retry-after", "7"),), body=b"{}"), 7.0),
        (Reply(status=429, body=b"{}"), None),
        (text("a", "b", "c", cut_after=2), None),
        (Reply(raw=("{not json",)), None),
        (Reply(raw=('{"choices": "nope"}',)), None),
        (tools(("search_messages", '{"query": "unterminated')), None),
        (tools(("search_messages", "[1, 2]")), None),
        (Reply(status=200, body=b"<html>not json</html>"), None),
    ],
)
async def test_each_failure_is_endpoint_error_without_the_key(
    reply: Reply, retry: float | None
) -> None:
    async with fake_llm() as llm:
        llm.script(reply)
        client = endpoint(llm)
        with pytest.raises(EndpointError) as caught:
            await client.complete([{"role": "user", "content": "hi"}], None)
        await client.aclose()
    assert caught.value.code == "unavailable"
    assert caught.value.retry_after_seconds == retry
    assert KEY not in caught.value.message


async def test_response_over_the_size_bound_is_refused() -> None:
    async with fake_llm() as llm:
        llm.script(text(*["y" * 1000] * 10))
        client = endpoint(llm, max_response_bytes=4096)
        with pytest.raises(EndpointError, match="too large"):
            await client.complete([{"role": "user", "content": "hi"}], None)
        await client.aclose()


async def test_endpoint_down_is_endpoint_error() -> None:
    # A port nothing listens on: bound, then closed.
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    client = Endpoint(AiConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m"), KEY)
    with pytest.raises(EndpointError) as caught:
        await client.complete([{"role": "user", "content": "hi"}], None)
    await client.aclose()
    assert KEY not in caught.value.message


def test_api_key_from_file_or_environment(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key"  # type: ignore[operator]
    path.write_text(KEY + "\n")
    assert load_api_key(AiConfig(api_key_file=str(path))) == KEY
    monkeypatch.setenv("MESSAGEAI_TEST_KEY", KEY)
    assert load_api_key(AiConfig(api_key_env="MESSAGEAI_TEST_KEY")) == KEY
    assert load_api_key(AiConfig()) is None
    path.write_text("")
    with pytest.raises(ConfigError) as caught:
        load_api_key(AiConfig(api_key_file=str(path)))
    assert KEY not in str(caught.value)
    monkeypatch.delenv("MESSAGEAI_TEST_KEY")
    with pytest.raises(ConfigError, match="MESSAGEAI_TEST_KEY"):
        load_api_key(AiConfig(api_key_env="MESSAGEAI_TEST_KEY"))
