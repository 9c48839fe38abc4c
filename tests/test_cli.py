"""The admin CLI and the server process, run as real subprocesses.

`messageai` is the console script next to the test interpreter (.venv/bin);
`python -m messageai serve` is what `./scripts/serve` runs. Every test has an
absolute deadline; the server processes are stopped by the signals under test.
"""

from __future__ import annotations

import importlib.metadata
import logging
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


async def cli(
    *args: str | Path, cwd: Path = ROOT, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run `messageai ARGS` in `cwd`; stdin is /dev/null unless `stdin` is given (then
    it is a pipe holding those bytes, as in `printf ... | messageai ...`)."""
    with trio.fail_after(30):
        return await trio.run_process(
            [str(MESSAGEAI), *map(str, args)],
            cwd=cwd,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
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
    # One friendly line: no SQLite log line of the expected constraint before it.
    assert err(again) == "messageai: username 'ada' is taken\n", err(again)
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
    # Nothing was made: not even an empty directory database.
    assert not (data / "directory.sqlite3").exists()


async def test_user_add_without_data_dir_refuses_where_there_is_no_server_data(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    for command in (
        ["user", "add", "ada", "--password-file", password_file(tmp_path)],
        ["user", "list"],
    ):
        result = await cli(*command, cwd=elsewhere)
        assert result.returncode == 2, (command, err(result))
        assert "--data-dir" in err(result) and "data" in err(result), err(result)
        assert "Traceback" not in err(result) and out(result) == ""
    # Nothing was written where the user happened to be.
    assert list(elsewhere.iterdir()) == []


async def test_user_add_without_data_dir_uses_the_servers_data_in_the_current_directory(
    tmp_path: Path,
) -> None:
    # The README's set-up: the server's data is ./data where the commands run.
    with trio.fail_after(30):
        async with harness(make_config(tmp_path / "data")) as h:
            await h.account("bob")
            added = await cli(
                "user", "add", "ada", "--password-file", password_file(tmp_path), cwd=tmp_path
            )
            assert added.returncode == 0, err(added)
            # It says where the account went, and needs no note: the database was there.
            assert out(added).endswith(f" in {(tmp_path / 'data').resolve()}\n"), out(added)
            assert err(added) == "", err(added)
            r = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "correct horse"}
            )
            assert r.status_code == 200, r.text
            listed = await cli("user", "list", cwd=tmp_path)
            assert listed_usernames(listed) == ["ada", "bob"]


async def test_user_add_takes_the_data_dir_from_the_config_file(tmp_path: Path) -> None:
    served = tmp_path / "srv"
    config = tmp_path / "server.toml"
    config.write_text(f"[storage]\ndata_dir = {str(served)!r}\n", "utf-8")
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    added = await cli(
        "user",
        "add",
        "ada",
        "--password-file",
        password_file(tmp_path),
        "--config",
        config,
        cwd=elsewhere,
    )
    assert added.returncode == 0, err(added)
    assert str(served) in out(added)
    # A directory database made just now is pointed out (the server may use another).
    assert "new one was made" in err(added), err(added)
    assert (served / "directory.sqlite3").exists() and list(elsewhere.iterdir()) == []
    listed = await cli("user", "list", "--config", config, cwd=elsewhere)
    assert listed_usernames(listed) == ["ada"]


async def test_user_add_reads_a_piped_password_from_stdin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = await cli("user", "add", "ada", "--data-dir", data, stdin=b"correct horse\n")
    assert added.returncode == 0, err(added)
    assert "Traceback" not in err(added)
    short = await cli("user", "add", "bob", "--data-dir", data, stdin=b"short\n")
    assert short.returncode == 1 and "password" in err(short), err(short)
    with trio.fail_after(30):
        async with harness(make_config(data)) as h:
            r = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "correct horse"}
            )
            assert r.status_code == 200, r.text
            listed = await cli("user", "list", "--data-dir", data)
            assert listed_usernames(listed) == ["ada"]


async def test_the_server_logs_nothing_when_the_cli_changes_the_directory_schema(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `user add` opens the directory from another process, and its `PRAGMA optimize`
    # may write statistics (a schema change): the server's statements are then
    # re-prepared by SQLite, which logs SQLITE_SCHEMA. Benign; it must not alarm.
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "data"
    with trio.fail_after(30):
        async with harness(make_config(data)) as h:
            await h.account("bob")
            for name in ("ada", "cyd"):
                added = await cli(
                    "user",
                    "add",
                    name,
                    "--password-file",
                    password_file(tmp_path),
                    "--data-dir",
                    data,
                )
                assert added.returncode == 0, err(added)
                r = await h.http.post(
                    "/v1/auth/login", json={"username": name, "password": "correct horse"}
                )
                assert r.status_code == 200, r.text
            await h.account("dee")
            # The same for a taken name over REST: an expected constraint, no log line.
            r = await h.http.post(
                "/v1/auth/register", json={"username": "ada", "password": "password1"}
            )
            assert r.status_code == 409, r.text
    logged = [record.getMessage() for record in caplog.records]
    assert not [line for line in logged if "SQLITE" in line], logged


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
    assert err(result) == f"messageai: port {port} on 127.0.0.1 is in use\n", err(result)
    assert out(result) == ""


async def test_a_data_dir_that_is_a_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a directory\n", "utf-8")
    served = await cli("serve", "--port", "0", "--data-dir", data)
    added = await cli(
        "user", "add", "ada", "--password-file", password_file(tmp_path), "--data-dir", data
    )
    for result in (served, added):
        assert result.returncode == 1, err(result)
        assert f"{data} is not a directory" in err(result), err(result)
        assert "Errno" not in err(result) and "Traceback" not in err(result), err(result)
    assert data.read_text("utf-8") == "not a directory\n"


async def test_version_comes_from_the_package_metadata() -> None:
    result = await cli("--version")
    assert result.returncode == 0, err(result)
    assert out(result) == f"messageai {importlib.metadata.version('messageai')}\n"
