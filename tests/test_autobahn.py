"""Autobahn|Testsuite's fuzzing client (`tests/autobahn.py`, also `scripts/autobahn`)
against the real server, where pyenv's Python 2.7.18 is installed; skipped, saying
why, where it is not. The first run installs autobahntestsuite into .venv/autobahn
(about a minute); the cases themselves take about half a minute. All of 1.x-10.x run:
the 9.x messages larger than the 64 KiB frame limit are refused at their first frame
header, so even the 16 MiB ones are quick. 12.x and 13.x (permessage-deflate) are
excluded: the server negotiates no extension.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from messageai.server import Server
from tests.autobahn import ROOT, echo_config, python27
from tests.helpers import connect_ws, make_config


@pytest.mark.slow
def test_autobahn_fuzzing_client_passes_every_case() -> None:
    python, why = python27()
    if python is None:
        pytest.skip(why)
    run = subprocess.run(
        [sys.executable, "-m", "tests.autobahn"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "cases in" in run.stdout, run.stdout


async def test_echo_session_is_only_on_when_the_server_is_built_with_it(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(
                Server(echo_config(tmp_path / "e"), echo_websockets=True).run
            )
            chat = await nursery.start(Server(make_config(tmp_path / "c")).run)
            for server in (echo, chat):
                async with httpx.AsyncClient(base_url=server.url) as http:
                    r = await http.post(
                        "/v1/auth/register", json={"username": "ada", "password": "password1"}
                    )
                    token = r.json()["token"]
                async with connect_ws(server.port, token=token) as ws:
                    await ws.send_message("not json €")
                    reply = await ws.get_message()
                    if server is echo:
                        assert reply == "not json €"
                        await ws.send_message(b"\x00\xff")
                        assert await ws.get_message() == b"\x00\xff"
                    else:
                        assert orjson.loads(reply)["code"] == "bad_request"
            echo.shutdown()
            chat.shutdown()
