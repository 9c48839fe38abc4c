"""The secrets grep of a whole suite run (a pytest plugin, loaded by tests/conftest.py).

No token, password or message text may reach a log line at any level. For the whole
session this plugin:

- logs every `messageai.*` logger of this process (the in-process servers of the
  `h` fixture and `harness`, the SDK) at DEBUG into `<basetemp>/logs/inprocess.log`,
  each test's lines after a line naming it;
- has the server children of `ServerProcess` and `ServerChild` log at DEBUG (through
  `child_log`: `MESSAGEAI_LOGGING__LEVEL=debug`, their stderr in a file of that folder
  named after the test);
- keeps each test's captured stderr (other children, inheriting it) in
  `captured-stderr.log` there;
- harvests the secrets the tests use, from the traffic of this process: passwords,
  message bodies, questions and push tokens in JSON request bodies (httpx and
  trio-websocket sends), bearer tokens in `Authorization` headers and `access_token`
  query parameters, tokens in JSON responses;

and at the end greps every file of the folder for every secret of `MIN_LENGTH`
characters or more (shorter ones, "hi", would match by chance), failing the run with
the file, line and secret of each hit. `find_leaks` is that grep: one pass over the
text, whatever the number of secrets (a chaos run sends thousands of bodies).

Under pytest-xdist each worker logs into its own basetemp (`<basetemp>/popen-gwN/logs`) and
hands its secrets and folder to the controller (`workeroutput`), which greps every
worker's folder for every worker's secrets once the workers are done: a secret used by
one worker and logged by another is found too, and a leak fails the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio_websocket

from messageai.logs import TEXT_FORMAT
from tests.helpers import LOG_DIR_VARIABLE

MIN_LENGTH = 8
# JSON fields whose values are secrets, in requests and in responses.
SECRET_FIELDS = frozenset(
    {"password", "old_password", "new_password", "body", "question", "token", "access_token"}
)
_KEY = MIN_LENGTH  # secrets are found by their last `_KEY` characters

_secrets: set[str] = set()
_log_dir: Path | None = None
_handler: logging.FileHandler | None = None
# The folders the controller of an xdist run greps besides its own: each worker's.
_worker_log_dirs: list[Path] = []
# The keys of a worker's `workeroutput` that carry its part of the grep.
_SECRETS_KEY = "messageai_secrets"
_LOG_DIR_KEY = "messageai_log_dir"


def harvest_json(value: Any) -> None:
    """Every string under a secret field of a decoded JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in SECRET_FIELDS and isinstance(item, str):
                _secrets.add(item)
            else:
                harvest_json(item)
    elif isinstance(value, list):
        for item in value:
            harvest_json(item)


def _harvest_bytes(content: bytes | str) -> None:
    if content[:1] in (b"{", "{", b"[", "["):
        with contextlib.suppress(orjson.JSONDecodeError):
            harvest_json(orjson.loads(content))


def _harvest_request(request: httpx.Request) -> None:
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        _secrets.add(authorization[7:])
    for key, value in request.url.params.multi_items():
        if key in SECRET_FIELDS:
            _secrets.add(value)
    if "json" in request.headers.get("content-type", ""):
        _harvest_bytes(request.content)


def _harvest_response(response: httpx.Response) -> None:
    if "json" in response.headers.get("content-type", "") and "token" in response.text:
        _harvest_bytes(response.content)


def find_leaks(texts: Iterable[tuple[str, str]], secrets: Iterable[str]) -> Iterator[str]:
    """`where: secret in line` for each (where, line) holding one of `secrets`."""
    by_key: dict[str, list[str]] = {}
    for secret in secrets:
        if len(secret) >= MIN_LENGTH:
            by_key.setdefault(secret[-_KEY:], []).append(secret)
    for where, line in texts:
        for end in range(_KEY, len(line) + 1):
            for secret in by_key.get(line[end - _KEY : end], ()):
                if line.startswith(secret, end - len(secret)):
                    yield f"{where}: {secret!r} in {line.strip()[:300]!r}"


# A line's time stamp (text or JSON format): lines that differ only by it are one.
_STAMP = re.compile(r'^\d{4}-\d\d-\d\d[ T][\d:.,]+Z? |"time":"[^"]*",')


def _lines(folders: Iterable[Path]) -> Iterator[tuple[str, str]]:
    """Each distinct line of the folders' files once (most are the same request lines
    at other times), with where it was first seen."""
    seen: set[str] = set()
    for path in sorted(path for folder in folders for path in folder.iterdir()):
        test = ""  # a server child's file is named after its test
        with path.open(encoding="utf-8", errors="replace") as file:
            for number, line in enumerate(file, 1):
                if line.startswith("=== "):
                    test = line[4:].strip()
                    continue
                line = _STAMP.sub("", line, count=1)
                if line not in seen:
                    seen.add(line)
                    where = (
                        f"{path.parent.parent.name}/{path.name}" if _worker_log_dirs else path.name
                    )
                    yield f"{where}:{number}" + (f" ({test})" if test else ""), line


def pytest_sessionstart(session: pytest.Session) -> None:
    global _log_dir, _handler
    factory = session.config._tmp_path_factory  # type: ignore[attr-defined]
    _log_dir = Path(factory.getbasetemp()) / "logs"
    _log_dir.mkdir(exist_ok=True)
    os.environ[LOG_DIR_VARIABLE] = str(_log_dir)
    _handler = logging.FileHandler(_log_dir / "inprocess.log", encoding="utf-8")
    _handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    _handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("messageai")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(_handler)

    async_send = httpx.AsyncClient.send
    sync_send = httpx.Client.send
    ws_send = trio_websocket.WebSocketConnection.send_message

    async def send_async(self: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> Any:
        _harvest_request(request)
        response = await async_send(self, request, **kw)
        if not kw.get("stream"):
            _harvest_response(response)
        return response

    def send_sync(self: httpx.Client, request: httpx.Request, **kw: Any) -> Any:
        _harvest_request(request)
        response = sync_send(self, request, **kw)
        if not kw.get("stream"):
            _harvest_response(response)
        return response

    async def send_ws(self: trio_websocket.WebSocketConnection, message: str | bytes) -> None:
        _harvest_bytes(message)
        await ws_send(self, message)

    httpx.AsyncClient.send = send_async  # type: ignore[method-assign]
    httpx.Client.send = send_sync  # type: ignore[method-assign]
    trio_websocket.WebSocketConnection.send_message = send_ws  # type: ignore[method-assign]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _handler is not None:
        with _handler.lock or contextlib.nullcontext():
            if _handler.stream is not None:
                _handler.stream.write(f"=== {item.nodeid}\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _log_dir is not None and report.capstderr:
        with (_log_dir / "captured-stderr.log").open("a", encoding="utf-8") as file:
            file.write(f"=== {report.nodeid} ({report.when})\n{report.capstderr}\n")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist's controller: a worker is done; its secrets and folder join the grep."""
    output = getattr(node, "workeroutput", {})
    if _LOG_DIR_KEY in output:
        _secrets.update(output[_SECRETS_KEY])
        _worker_log_dirs.append(Path(output[_LOG_DIR_KEY]))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _log_dir is None or _handler is None:
        return
    _handler.flush()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller greps
        workeroutput[_SECRETS_KEY] = sorted(_secrets)
        workeroutput[_LOG_DIR_KEY] = str(_log_dir)
        return
    started = time.monotonic()
    leaks = list(find_leaks(_lines([_log_dir, *_worker_log_dirs]), _secrets))
    seconds = time.monotonic() - started
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        where = str(_log_dir)
        if _worker_log_dirs:
            workers = ", ".join(sorted(folder.parent.name for folder in _worker_log_dirs))
            where += f" and of its workers ({workers})"
        reporter.write_line(
            f"secrets grep: {len(_secrets)} secrets used, {len(leaks)} found in the logs"
            f" of {where} ({seconds:.1f} s)"
        )
        for leak in leaks[:20]:
            reporter.write_line(f"  LEAK {leak}", red=True)
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
