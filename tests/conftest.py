"""Shared fixtures: a real server per test on 127.0.0.1:0 with its data under tmp_path,
and a real Redis for the cluster tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from tests.helpers import Harness, harness, make_config

if TYPE_CHECKING:
    import coredis

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
