"""The admin CLI and the server process, run as real subprocesses.

`messageai` is the console script next to the test interpreter (.venv/bin);
`python -m messageai serve` is what `./scripts/serve` runs. Every test has an
absolute deadline; the server processes are stopped by the signals under test.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.helpers import harness, make_config

ROOT = Path(__file__).resolve().parent.parent
MESSAGEAI = Path(sys.executable).parent / "messageai"
URL_RE = re.compile(r"http://127\.0\.0\.1:(\d+)")


async def cli(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            [str(MESSAGEAI), *map(str, args)],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def password_file(tmp_path: Path, password: str = "correct horse") -> Path:
    path = tmp_path / "password.txt"
    path.write_text(password + "\n", "utf-8")
    return path


def listed_usernames(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [line.split("\t")[1] for line in out(result).splitlines()]


# ---------------------------------------------------------------- user add / list


async def test_user_add_then_list_shows_it_and_the_user_logs_in_over_rest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = await cli(
        "user",
        "add",
        "ada",
        "--display-name",
        "Ada L.",
        "--password-file",
        password_file(tmp_path),
        "--data-dir",
        data,
    )
    assert added.returncode == 0, err(added)
    assert "ada" in out(added)
    listed = await cli("user", "list", "--data-dir", data)
    assert listed.returncode == 0, err(listed)
    (line,) = out(listed).splitlines()
    user_id, username, display_name = line.split("\t")
    assert (username, display_name) == ("ada", "Ada L.")

    with trio.fail_after(30):
        async with harness(make_config(data)) as h:
            r = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "correct horse"}
            )
            assert r.status_code == 200, r.text
            user = r.json()["user"]
            assert (user["id"], user["username"], user["display_name"]) == (
                user_id,
                "ada",
                "Ada L.",
            )
            wrong = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "correct horsf"}
            )
            assert wrong.status_code == 401


async def test_user_added_while_the_server_runs_can_log_in_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(30):
        async with harness(make_config(data)) as h:
            await h.account("bob")
            added = await cli(
                "user", "add", "ada", "--password-file", password_file(tmp_path), "--data-dir", data
            )
            assert added.returncode == 0, err(added)
            r = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "correct horse"}
            )
            assert r.status_code == 200, r.text
            assert r.json()["user"]["display_name"] == "ada"
            listed = await cli("user", "list", "--data-dir", data)
            assert listed_usernames(listed) == ["ada", "bob"]


async def test_user_add_with_a_taken_name_fails_clearly_and_keeps_the_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = await cli(
        "user", "add", "ada", "--password-file", password_file(tmp_path), "--data-dir", data
    )
    assert first.returncode == 0
    again = await cli(
        "user",
        "add",
        "ada",
        "--password-file",
        password_file(tmp_path, "other password"),
        "--data-dir",
        data,
    )
    assert again.returncode != 0
    assert "ada" in err(again) and "taken" in err(again)
    listed = await cli("user", "list", "--data-dir", data)
    assert listed_usernames(listed) == ["ada"]
    with trio.fail_after(30):
        async with harness(make_config(data)) as h:
            r = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "correct horse"}
            )
            assert r.status_code == 200


async def test_user_add_with_bad_input_fails_clearly_and_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = password_file(tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("short\n", "utf-8")
    cases: list[tuple[list[str | Path], str]] = [
        (["user", "add", name, "--password-file", good], "username")
        for name in ["Ada", "has space", "x" * 33, "ada/../x"]
    ]
    cases += [
        (["user", "add", "ada", "--password-file", short], "password"),
        (["user", "add", "ada", "--password-file", tmp_path / "nope.txt"], "nope.txt"),
    ]
    results: dict[int, subprocess.CompletedProcess[bytes]] = {}

    async def run(index: int, args: list[str | Path]) -> None:
        results[index] = await cli(*args, "--data-dir", data)

    # Independent invocations: run them side by side to keep the suite fast.
    async with trio.open_nursery() as nursery:
        for index, (args, _) in enumerate(cases):
            nursery.start_soon(run, index, args)
    for index, (args, expected) in enumerate(cases):
        result = results[index]
        assert result.returncode != 0, (args, out(result))
        assert expected in err(result), (args, err(result))
    listed = await cli("user", "list", "--data-dir", data)
    assert listed.returncode == 0 and out(listed) == ""


# ---------------------------------------------------------------- config check


async def test_config_check_accepts_the_shipped_config() -> None:
    result = await cli("config", "check", "--config", "messageai.toml")
    assert result.returncode == 0, err(result)
    assert "OK" in out(result)


async def test_config_check_rejects_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage]\nsynchronous = 'OFF'\n", "utf-8")
    result = await cli("config", "check", "--config", bad)
    assert result.returncode == 2
    assert "storage.synchronous" in err(result) and out(result) == ""


# ---------------------------------------------------------------- the server process


async def read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"stdout closed before a full line: {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_serve_prints_one_startup_line_and_exits_0_on_signal(
    tmp_path: Path, signum: int
) -> None:
    data = tmp_path / "data"
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "messageai",
                "serve",
                "--config",
                "messageai.toml",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(data),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        try:
            buffer = bytearray()
            line = (await read_line(process.stdout, buffer)).decode()
            found = URL_RE.search(line)
            assert found, line
            assert str(data) in line
            port = int(found.group(1))
            # --port 0 overrode the file's 8080; the line shows the real port.
            assert port not in (0, 8080)
            async with httpx.AsyncClient(base_url=found.group(0)) as http:
                r = await http.get("/healthz")
                assert r.status_code == 200 and r.json() == {"status": "ok"}
                r = await http.post(
                    "/v1/auth/register", json={"username": "ada", "password": "password1"}
                )
                assert r.status_code == 201
            assert (data / "directory.sqlite3").exists()
            process.send_signal(signum)
            with trio.fail_after(10):
                code = await process.wait()
            assert code == 0
            rest = bytearray(buffer)
            while chunk := await process.stdout.receive_some(4096):
                rest += chunk
            assert bytes(rest) == b"", f"more than one line on stdout: {bytes(rest)!r}"
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()


async def test_serve_on_a_port_in_use_fails_with_a_clear_message(tmp_path: Path) -> None:
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await cli("serve", "--port", str(port), "--data-dir", tmp_path / "data")
    assert result.returncode == 1, err(result)
    assert "in use" in err(result) and "Traceback" not in err(result), err(result)
    assert out(result) == ""
