"""The one-shot commands as a script uses them: the real `messageai` console script
against a real server process, each with its own store directory.

Rules: the server runs as `messageai serve` on 127.0.0.1 (port 0 first, then
the same port when it "comes back"), data and stores under tmp_path; every
subprocess has a timeout; outputs are parsed, never timed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).with_name("messageai")
MESSAGEAI = [str(BIN)] if BIN.exists() else [shutil.which("messageai") or "messageai"]
TIMEOUT = 30


@contextlib.contextmanager
def server_process(tmp_path: Path, port: int = 0, extra: str = "") -> Iterator[str]:
    """`messageai serve` on 127.0.0.1; `extra` is TOML appended to its config."""
    config = tmp_path / "server.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nshutdown_timeout_seconds = 2.0\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        "[auth]\nscrypt_n = 16\n"
        '[logging]\nlevel = "warning"\n' + extra
    )
    proc = subprocess.Popen(
        [*MESSAGEAI, "serve", "--config", str(config)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"serving (http://127\.0\.0\.1:\d+)", line)
        assert found, f"unexpected first line from the server: {line!r}"
        yield found.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


def cli(
    store: Path, *args: str, ok: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESSAGEAI_STORE": str(store)}
    result = subprocess.run(
        [*MESSAGEAI, *args], capture_output=True, text=True, timeout=TIMEOUT, env=env, input=stdin
    )
    if ok:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def password(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text("password1\n")
    return path


def test_queued_sends_are_delivered_once_and_in_order_by_sync(
    tmp_path: Path, password: Path
) -> None:
    ada, bob = tmp_path / "ada-store", tmp_path / "bob-store"
    with server_process(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
        for store, name in ((ada, "ada"), (bob, "bob")):
            out = cli(
                store,
                "login",
                "--server",
                url,
                "--user",
                name,
                "--password-file",
                str(password),
                "--register",
            )
            assert f"as {name}" in out.stdout
        cid = json.loads(cli(ada, "new", "bob", "--json").stdout)["id"]
        sent = lines(cli(ada, "send", cid, "while online", "--json"))
        assert [(m["seq"], m["status"], m["local_only"]) for m in sent] == [(1, "sent", False)]
    # The server is down: each send still exits 0, and says the message is queued.
    queued = []
    for i in range(3):
        result = cli(ada, "send", cid, f"queued {i}", "--json")
        [message] = lines(result)
        assert (message["status"], message["seq"], message["local_only"]) == ("sending", None, True)
        assert "queued" in result.stderr
        queued.append(message["client_id"])
    human = cli(ada, "send", cid, "queued 3")
    assert human.stdout.startswith("queued: client_id ")
    queued.append(human.stdout.split()[2].rstrip(";"))
    down = cli(ada, "sync", ok=False)
    assert down.returncode == 1 and "4 message(s) stay queued" in down.stderr
    with server_process(tmp_path, port):
        report = json.loads(cli(ada, "sync", "--json").stdout)
        assert report["ok"] is True and report["queued"] == 0 and report["failed"] == []
        assert [m["client_id"] for m in report["delivered"]] == queued
        again = json.loads(cli(ada, "sync", "--json").stdout)
        assert (again["delivered"], again["fetched"], again["queued"]) == ([], 0, 0)
        seen = lines(cli(bob, "tail", cid, "--json"))
        assert [(m["seq"], m["body"]) for m in seen] == [
            (1, "while online"),
            (2, "queued 0"),
            (3, "queued 1"),
            (4, "queued 2"),
            (5, "queued 3"),
        ]
        assert [m["client_id"] for m in seen[1:]] == queued
        assert {m["status"] for m in seen} == {"received"}
        text = cli(bob, "tail", cid).stdout.splitlines()
        assert text[0].startswith("#1 ") and text[0].endswith("ada: while online")


def test_tail_follow_prints_new_messages_as_they_arrive(tmp_path: Path, password: Path) -> None:
    ada, bob = tmp_path / "ada-store", tmp_path / "bob-store"
    with server_process(tmp_path) as url:
        for store, name in ((ada, "ada"), (bob, "bob")):
            cli(
                store,
                "login",
                "--server",
                url,
                "--user",
                name,
                "--password-file",
                str(password),
                "--register",
            )
        cid = cli(ada, "new", "bob").stdout.strip()
        cli(ada, "send", cid, "first")
        env = {**os.environ, "MESSAGEAI_STORE": str(bob)}
        follow = subprocess.Popen(
            [*MESSAGEAI, "tail", cid, "--json", "--follow"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert follow.stdout is not None
            assert json.loads(follow.stdout.readline())["body"] == "first"
            cli(ada, "send", cid, "second")
            assert json.loads(follow.stdout.readline())["body"] == "second"
        finally:
            follow.send_signal(signal.SIGTERM)
            status = follow.wait(timeout=TIMEOUT)
            if follow.stdout is not None:
                follow.stdout.close()
        assert status == 0


def test_bad_input_gets_a_clear_error_and_nonzero_exit(tmp_path: Path, password: Path) -> None:
    store = tmp_path / "store"
    result = cli(store, "send", "c_1", "hi", ok=False)
    assert result.returncode == 1 and "messageai login" in result.stderr
    result = cli(
        store,
        "login",
        "--server",
        "ftp://x",
        "--user",
        "ada",
        "--password-file",
        str(password),
        ok=False,
    )
    assert result.returncode == 1 and "not a server URL" in result.stderr
    assert cli(store, "tail", ok=False).returncode == 2
    assert cli(store, "sync", "--timeout", "-1", ok=False).returncode == 2
    with server_process(tmp_path) as url:
        cli(
            store,
            "login",
            "--server",
            url,
            "--user",
            "ada",
            "--password-file",
            str(password),
            "--register",
        )
        wrong = tmp_path / "wrong"
        wrong.write_text("not the password\n")
        result = cli(
            store,
            "login",
            "--server",
            url,
            "--user",
            "ada",
            "--password-file",
            str(wrong),
            ok=False,
        )
        assert result.returncode == 1 and "unauthorized" in result.stderr
        result = cli(store, "send", "c_nope", "hello", ok=False)
        assert result.returncode == 1 and "refused" in result.stderr
        result = cli(store, "send", "c_nope2", "   ", ok=False)
        assert result.returncode == 1 and "needs some text" in result.stderr
        result = cli(store, "tail", "c_unknown", ok=False)
        assert result.returncode == 1 and "no conversation" in result.stderr


def test_command_before_login_says_so_in_one_line(tmp_path: Path) -> None:
    store = tmp_path / "empty-store"
    for argv in (["new", "someone"], ["sync"], ["tail", "c_x"], ["send", "c_x", "hi"]):
        done = subprocess.run(
            [sys.executable, "-m", "messageai", *argv, "--store", str(store)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, (argv, done.stderr)
        assert "Traceback" not in done.stderr and "messageai login" in done.stderr, done.stderr
