"""`logging.format`: the text and JSON handlers, and the connection and request ids
they carry (`messageai.logs`). The whole-server check is tests/test_log_secrets.py."""

from __future__ import annotations

import io
import logging

import orjson
import pytest
import trio

from messageai import logs
from messageai.config import ConfigError, parse_config


def emit(format: str, message: str, *args: object, exc: bool = False) -> str:
    out = io.StringIO()
    logger = logging.getLogger("messageai.test_logs")
    handler = logs.handler(format, out)
    logger.addHandler(handler)
    try:
        if exc:
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception(message, *args)
        else:
            logger.warning(message, *args)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_json_is_one_object_a_line_with_time_level_logger_and_message() -> None:
    (line,) = emit("json", "a %s b", "x\ny").splitlines()
    record = orjson.loads(line)
    assert record["level"] == "warning"
    assert record["logger"] == "messageai.test_logs"
    # The newline of the message stays inside the one line, escaped.
    assert record["message"] == "a x\ny b"
    assert record["time"].endswith("Z") and "T" in record["time"]
    assert "connection" not in record and "request" not in record


def test_json_carries_the_traceback_in_one_line() -> None:
    (line,) = emit("json", "failed", exc=True).splitlines()
    record = orjson.loads(line)
    assert "ValueError: boom" in record["exception"]


async def test_ids_follow_the_task_that_set_them_and_its_children() -> None:
    lines: list[str] = []

    async def connection() -> None:
        logs.CONNECTION.set(logs.new_connection_id())
        lines.append(emit("json", "in the connection"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)

    async def child() -> None:
        logs.REQUEST.set(logs.new_request_id())
        lines.append(emit("json", "in a request"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection)
    lines.append(emit("json", "outside"))
    first, second, outside = (orjson.loads(line) for line in lines)
    assert first["connection"].startswith("c") and "request" not in first
    assert second["connection"] == first["connection"]
    assert second["request"].startswith("r")
    assert "connection" not in outside and "request" not in outside


def test_text_is_the_classic_line() -> None:
    line = emit("text", "plain %d", 5)
    assert line.endswith("WARNING messageai.test_logs: plain 5\n")


def test_logging_format_is_text_or_json() -> None:
    assert parse_config({"logging": {"format": "json"}}).logging.format == "json"
    with pytest.raises(ConfigError, match=r"logging\.format"):
        parse_config({"logging": {"format": "xml"}})
    with pytest.raises(ConfigError, match="metrics"):
        parse_config({"metrics": {"token_file": "a", "token_env": "B"}})
