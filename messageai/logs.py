"""Log lines as text or JSON, each with the connection and request it belongs to.

`configure` is called once by the CLI with `[logging]` (`level`, `format`). The front
door sets `CONNECTION` for each TCP connection and the ASGI app `REQUEST` for each
HTTP request; the tasks started inside them inherit the ids (contextvars), and the
registry clears them for actors, which outlive the connection that woke them. What a
line says is decided where it is logged: no module logs a token, a password or a
message's text (`tests/test_log_secrets.py` greps a whole session's DEBUG log).
"""

from __future__ import annotations

import itertools
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

import orjson

CONNECTION: ContextVar[str | None] = ContextVar("messageai_connection", default=None)
REQUEST: ContextVar[str | None] = ContextVar("messageai_request", default=None)
# Short ids, unique in this process: a log reader follows one connection by its id.
_connections = itertools.count(1)
_requests = itertools.count(1)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def new_connection_id() -> str:
    return f"c{next(_connections)}"


def new_request_id() -> str:
    return f"r{next(_requests)}"


class ContextFilter(logging.Filter):
    """Puts the current connection and request ids on each record (None outside one),
    at the moment it is logged, in the task that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.connection = CONNECTION.get()
        record.request = REQUEST.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `time` (UTC, ISO 8601, milliseconds), `level`, `logger`,
    `message`, then `connection` and `request` when the line has them, and
    `exception` (the formatted traceback) when one was logged."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, object] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("connection", "request"):
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line).decode()


def handler(format: str, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing `format` ("text" or "json")."""
    out = logging.StreamHandler(stream if stream is not None else sys.stderr)
    out.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    out.addFilter(ContextFilter())
    return out


def configure(level: str, format: str) -> None:
    """The process's logging: every record at `level` or above, written by `handler`."""
    logging.basicConfig(level=level.upper(), handlers=[handler(format)])
