"""Shared fixtures: a real server per test on 127.0.0.1:0 with its data under tmp_path,
and a real Redis for the cluster tests; and the order and grouping of the run.

`./scripts/test` runs the suite in pytest-xdist workers (`--dist loadgroup`). Every test
must be able to run beside any other: ports from the kernel (port 0), files under its
`tmp_path`, no process-wide state it does not restore. What cannot (one machine-wide
resource, or a heavy browser) shares an xdist group, whose tests one worker runs one
after the other: `XDIST_GROUPS` gives whole folders one, a test can name its own with
`@pytest.mark.xdist_group("name")`. The groups, then the modules holding a `slow` test,
run first, so that the longest work is not left for the end of a parallel run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests.browser import SCREENSHOTS_KEY, screenshots_line
from tests.helpers import Harness, harness, make_config

if TYPE_CHECKING:
    import coredis

# Every end-to-end test gets this absolute deadline.
TEST_TIMEOUT_SECONDS = 60

# The secrets grep over the whole run's logs.
pytest_plugins = ("tests.secret_logs",)

# Folders (under tests/) whose tests form one xdist group. The browser tests: one
# Chromium and one `scripts/serve` at a time, so that two of them on 2 cores do not
# race Playwright's action timeouts.
XDIST_GROUPS = {"browser": "browser"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups of the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        folder = item.path.parent.relative_to(tests_dir).parts[:1]
        if folder and folder[0] in XDIST_GROUPS:
            item.add_marker(pytest.mark.xdist_group(XDIST_GROUPS[folder[0]]))
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("xdist_group"):
            return 0
        return 1 if item.path in slow_modules else 2

    # Stable: each module's tests stay together, in their order (module fixtures once).
    items.sort(key=rank)


# The screenshots the browser tests took in xdist workers, as the controller heard.
_worker_screenshots: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    _worker_screenshots.extend(getattr(node, "workeroutput", {}).get(SCREENSHOTS_KEY, ()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _worker_screenshots:
        folder = Path(_worker_screenshots[0]).parent
        terminalreporter.write_line(screenshots_line(len(_worker_screenshots), folder))


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
