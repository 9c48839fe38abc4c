"""The app's engine (`app/src/engine`) tested with jest-expo against the real server.

One pytest test starts the server on 127.0.0.1:0 with a fresh data directory
and runs the whole jest suite once with the server's URL in MESSAGEAI_TEST_URL;
jest's own report says which engine test failed. `npm ci` runs first when
`app/node_modules` is missing or stale (tests/app_env.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from tests.app_env import ensure_node_modules
from tests.helpers import make_config, running_server

# The jest suite takes well under a minute; a cold jest transform cache a bit more.
JEST_TIMEOUT_SECONDS = 600


async def test_engine_jest_suite_passes_against_the_real_server(tmp_path: Path) -> None:
    app_dir = ensure_node_modules()
    with trio.fail_after(JEST_TIMEOUT_SECONDS):
        async with running_server(make_config(tmp_path / "data")) as server:
            result = await trio.run_process(
                [str(app_dir / "node_modules" / ".bin" / "jest"), "--ci", "--colors=false"],
                cwd=app_dir,
                env={**os.environ, "MESSAGEAI_TEST_URL": server.url, "CI": "1"},
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    report = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, report[-20000:]
