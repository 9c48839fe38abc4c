"""Shared fixtures: a real server per test on 127.0.0.1:0 with its data under tmp_path,
a real Redis for the cluster tests, and a real PostgreSQL (one per session, a database
per test) for the directory in both dialects; and the order and grouping of the run.

`./scripts/test` runs the suite in pytest-xdist workers (`--dist loadgroup`). Every test
must be able to run beside any other: ports from the kernel (port 0), files under its
`tmp_path`, no process-wide state it does not restore. What cannot (one machine-wide
resource, a heavy load, a browser) shares an xdist group, whose tests one worker runs
one after the other: `XDIST_GROUPS` gives them by file or folder, a test can name its
own with `@pytest.mark.xdist_group("name")`. The groups, then the modules holding a
`slow` test, run first, so that the longest work is not left for the end of a run.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pytest
import trio

from messageai.config import DirectoryConfig
from messageai.services.directory import open_directory_db, open_postgres_directory
from messageai.store.db import Db
from tests.browser import SCREENSHOTS_KEY, screenshots_line
from tests.helpers import Harness, harness, make_config

if TYPE_CHECKING:
    import coredis

    from tests.postgres_server import PostgresServer

TESTS_DIR = Path(__file__).parent
# Every end-to-end test gets this absolute deadline.
TEST_TIMEOUT_SECONDS = 60

# The secrets grep over the whole run's logs.
pytest_plugins = ("tests.secret_logs",)

# The xdist groups, by the path of a test's file under tests/ (a folder, or a file name
# pattern); a test's own `@pytest.mark.xdist_group` mark comes first.
XDIST_GROUPS = {
    # The tests that load the machine hardest or count the work done in a time (kill -9
    # and power-cut chaos, the bench, the README's processes), one at a time; and the
    # other heavy loads (the Node builds, jest, Autobahn), one at a time beside them.
    "heavy": (
        "test_chaos.py",
        "test_power_loss.py",
        "test_durability.py",
        "test_changes_durability.py",
        "test_jobs_durability.py",
        "test_bench_smoke.py",
        "test_readme.py",
    ),
    "node": ("test_app_engine.py", "test_webapp_native.py", "test_autobahn.py"),
    # One Chromium and one `scripts/serve` at a time: two of them on 2 cores race
    # Playwright's action timeouts.
    "browser": ("browser/*",),
    # Tests that start Redis or PostgreSQL (and so real leases with short TTLs): one
    # server of theirs at a time.
    "cluster": ("test_cluster_*", "test_replica*", "test_pg*", "*postgres*"),
}
# The fixtures that start Redis or PostgreSQL put a test in the cluster group too (so one
# worker starts the session's PostgreSQL, not each of them).
CLUSTER_FIXTURES = frozenset(
    {"redis", "postgres", "pg", "postgres_server", "postgres_directory", "directory_db"}
)


def xdist_group(item: pytest.Item) -> str | None:
    """The xdist group of `item`, or None: it may run beside anything."""
    marked = item.get_closest_marker("xdist_group")
    if marked is not None:
        return str(marked.args[0] if marked.args else marked.kwargs.get("name", "default"))
    if not item.path.is_relative_to(TESTS_DIR):
        return None
    relative = PurePosixPath(item.path.relative_to(TESTS_DIR).as_posix())
    for group, patterns in XDIST_GROUPS.items():
        if any(relative.match(pattern) for pattern in patterns):
            return group
    if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "cluster"
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups of the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = {item: xdist_group(item) for item in items}
    for item, group in groups.items():
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    # The groups first (each runs one test at a time), in XDIST_GROUPS' order, then the
    # modules holding a slow test; stable: each module's tests stay together, in order.
    order = [group for group in XDIST_GROUPS if group in groups.values()]
    order += sorted({g for g in groups.values() if g is not None} - set(order))
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[int, int]:
        group = groups[item]
        if group is not None:
            return 0, order.index(group)
        return (1 if item.path in slow_modules else 2), 0

    items.sort(key=rank)


@pytest.hookimpl(trylast=True)  # after xdist has written the groups into the node ids
def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail an xdist run whose groups were lost (see pytest's pin in pyproject.toml)."""
    if not session.config.getoption("loadgroup", False):
        return
    lost = [
        i.nodeid
        for i in session.items
        if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
    ]
    if lost:
        raise pytest.UsageError(
            f"--dist loadgroup lost the xdist_group of {len(lost)} tests ({lost[0]}):"
            " this pytest and pytest-xdist do not work together (pyproject.toml)"
        )


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
