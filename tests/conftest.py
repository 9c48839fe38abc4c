"""Shared fixtures: a real server per test on 127.0.0.1:0 with its data under tmp_path,
a real Redis for the cluster tests, and a real PostgreSQL (one per session, a database
per test) for the directory in both dialects."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from messageai.config import DirectoryConfig
from messageai.services.directory import open_directory_db, open_postgres_directory
from messageai.store.db import Db
from tests.helpers import Harness, harness, make_config

if TYPE_CHECKING:
    import coredis

    from tests.postgres_server import PostgresServer

# Every end-to-end test gets this absolute deadline.
TEST_TIMEOUT_SECONDS = 60

# The secrets grep over the whole run's logs.
pytest_plugins = ("tests.secret_logs",)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with harness(make_config(tmp_path / "data")) as running:
            yield running


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[coredis.Redis[str]]:
    """A client of a real `redis-server` of the test's own on 127.0.0.1 (skipped,
    saying so, without the binary). Imported here, not above: only the cluster tests
    pay for coredis."""
    from tests.redis_server import redis_server

    async with redis_server(tmp_path / "redis") as server, server.client() as client:
        yield client


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session (skipped, saying why, when it cannot start);
    started by the first test that asks for it."""
    from tests import secret_logs
    from tests.postgres_server import postgres_server as run

    with run() as server:
        # The directory's password must never reach a log line (the suite's grep).
        secret_logs.harvest_json({"password": server.password})
        yield server


@pytest.fixture
def postgres_directory(postgres_server: PostgresServer) -> Iterator[DirectoryConfig]:
    """`[directory]` naming a new empty PostgreSQL database of this test's own."""
    with postgres_server.database(f"t_{uuid.uuid4().hex[:16]}") as url:
        yield DirectoryConfig(url=url, password_file=str(postgres_server.password_file))


@pytest.fixture(params=["sqlite", "postgres"])
def directory_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """A migrated, empty directory connection in each dialect: the same `store/`
    functions run on both."""
    conn: Db
    if request.param == "sqlite":
        conn = open_directory_db(tmp_path, "NORMAL")
    else:
        config: DirectoryConfig = request.getfixturevalue("postgres_directory")
        conn = open_postgres_directory(config, serializable=True)
    try:
        yield conn
    finally:
        conn.close()
