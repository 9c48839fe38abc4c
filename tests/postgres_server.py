"""A real PostgreSQL for the directory tests, started once per test session and torn
down at its end; each test gets a database of its own.

Debian's PostgreSQL (`apt-get install postgresql`: `./scripts/test` installs it where it
can): `initdb` into a fresh temporary directory, then `postgres` on 127.0.0.1 and a
free port, no Unix socket, password authentication (scram) for a superuser
`messageai` whose password is in a file, as a deployment would give it
(`[directory] password_file`). PostgreSQL refuses to run as root, so when the tests are
root it runs as the `postgres` OS user (the package makes it). `fsync = off`: the data
dies with the session anyway. The database's locale is C.UTF-8, whose `lower()`
folds more than ASCII, so the schema's `COLLATE "C"` is what the tests check. A test that needs it skips, saying why, when it cannot
start.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.redis_server import free_port

START_TIMEOUT_SECONDS = 30.0
SUPERUSER = "messageai"


def postgres_bindir() -> Path | None:
    """Where `initdb` and `postgres` are: Debian keeps them off PATH, per version."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@attrs.frozen
class PostgresServer:
    port: int
    password_file: Path
    password: str

    def url(self, database: str = "postgres") -> str:
        """The URL of `database`, without the password (it is in `password_file`)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.url(), password=self.password, autocommit=True)

    @contextlib.contextmanager
    def database(self, name: str) -> Iterator[str]:
        """A new empty database for one test (its URL), dropped afterwards."""
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self.url(name)
        finally:
            with self.admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Run a PostgreSQL of the tests' own until the block ends (skips when it cannot)."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL (initdb): the PostgreSQL directory tests need it"
            " (apt-get install postgresql)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("no psycopg: install the test extra (pip install -e '.[test]')")
    run_as: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="messageai-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(workdir, ignore_errors=True)
            pytest.skip("running as root and no `postgres` OS user to run PostgreSQL as")
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
        run_as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    password = os.urandom(12).hex()
    password_file = workdir / "password"
    password_file.write_text(password + "\n")
    if run_as:
        os.chown(password_file, run_as["user"], run_as["group"])
    data = workdir / "data"
    log = workdir / "postgres.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        initdb = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D", str(data),
                "-U", SUPERUSER,
                "--pwfile", str(password_file),
                "--auth", "scram-sha-256",
                "--encoding", "UTF8",
                # Not "C": its lower() would fold ASCII only whatever the schema says,
                # and the schema's own COLLATE "C" would go untested.
                "--locale", "C.UTF-8",
                "--no-sync",
            ],
            capture_output=True,
            check=False,
            **run_as,
        )  # fmt: skip
        if initdb.returncode != 0:
            pytest.skip(f"initdb failed: {initdb.stderr.decode(errors='replace')[-500:]}")
        port = free_port("127.0.0.1")
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    str(bindir / "postgres"),
                    "-D", str(data),
                    "-c", "listen_addresses=127.0.0.1",
                    "-c", f"port={port}",
                    "-c", "unix_socket_directories=",
                    "-c", "fsync=off",
                    "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off",
                    "-c", "max_connections=200",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                **run_as,
            )  # fmt: skip
        server = PostgresServer(port, password_file, password)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                pytest.skip(f"postgres exited {process.returncode}: {log.read_text()[-500:]}")
            try:
                server.admin().close()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield server
    finally:
        if process is not None:
            # SIGINT: PostgreSQL's fast shutdown (SIGTERM's smart one waits for clients).
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
