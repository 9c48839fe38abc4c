"""Shared fixtures: a real server per test on 127.0.0.1:0 with its data under tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.helpers import Harness, harness, make_config

# Every end-to-end test gets this absolute deadline.
TEST_TIMEOUT_SECONDS = 60

# The secrets grep over the whole run's logs.
pytest_plugins = ("tests.secret_logs",)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with harness(make_config(tmp_path / "data")) as running:
            yield running
