"""Fixtures of the browser tests: Debian's Chromium (one per test package), the real server
started with `scripts/serve` on a free port with a fresh data directory (one per test),
people each in a browser context of their own, and the screenshots folder, printed at the
end of the run.

Rules: every page is watched (harness.Watch) and a test fails on any console error, uncaught
exception or CSP violation it did not declare; every Playwright action has a timeout
(`ACTION_TIMEOUT_MS`); the server's log is printed when a test fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ViewportSize, expect, sync_playwright

from tests.browser import SCREENSHOTS_KEY, screenshots_line
from tests.browser.app import Api
from tests.browser.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    People,
    Person,
    Served,
    Shots,
    Watch,
    config_with,
)

ACTION_TIMEOUT_MS = 15_000
# `expect(...)` retries its assertion for this long (Playwright's default is 5 s).
expect.set_options(timeout=ACTION_TIMEOUT_MS)
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
# A phone's screen (the narrow layout: the list, then the conversation on its own).
PHONE: ViewportSize = {"width": 390, "height": 844}
SCREENSHOTS: list[Path] = []


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = (
            f"no {CHROMIUM}: ./scripts/test installs Debian's chromium (as root, with"
            " apt-get); or set MESSAGEAI_CHROMIUM to a Chromium binary"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("MESSAGEAI_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots", numbered=False)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SCREENSHOTS:
        terminalreporter.write_line(screenshots_line(len(SCREENSHOTS), SCREENSHOTS[0].parent))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its screenshots to the controller, which prints the line
    (tests/conftest.py: a worker's own terminal shows nothing)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and SCREENSHOTS:
        workeroutput[SCREENSHOTS_KEY] = [str(path) for path in SCREENSHOTS]


@pytest.fixture
def served_config() -> dict[str, dict[str, str]]:
    """Changes to the shipped messageai.toml for the test's server (harness.config_with);
    a test module overrides this fixture to make some."""
    return {}


@pytest.fixture
def served(
    tmp_path: Path, request: pytest.FixtureRequest, served_config: dict[str, dict[str, str]]
) -> Iterator[Served]:
    config = None
    if served_config:
        config = tmp_path / "messageai.toml"
        config.write_text(config_with(served_config))
    server = Served(tmp_path / "data", tmp_path / "serve.log", config)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"--- scripts/serve output ---\n{server.log_tail()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"rep_{call.when}", report)
    return report


@pytest.fixture
def shots(screenshot_dir: Path, request: pytest.FixtureRequest) -> Shots:
    return Shots(screenshot_dir, request.node.name.removeprefix("test_"), SCREENSHOTS)


@pytest.fixture
def people(browser: Browser, served: Served) -> Iterator[People]:
    """`people("ada")` opens the app at the server's URL in a new context (`phone=True`:
    on a phone-sized, touch screen; `at`: another server's); at teardown each page must
    have logged nothing unexpected."""
    opened: list[Person] = []

    def open_person(name: str, *, phone: bool = False, at: Served | None = None) -> Person:
        context = browser.new_context(
            viewport=PHONE if phone else VIEWPORT,
            color_scheme="light",
            has_touch=phone,
            is_mobile=phone,
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        page = context.new_page()
        person = Person(name, context, page, Watch.on(page))
        opened.append(person)
        page.goto((at or served).url + "/")
        return person

    yield open_person
    problems = {p.name: p.watch.unexpected() for p in opened}
    for person in opened:
        person.context.close()
    problems = {name: found for name, found in problems.items() if found}
    assert not problems, f"pages logged errors: {problems}"


@pytest.fixture
def api(served: Served) -> Iterator[Api]:
    client = Api(served.url)
    yield client
    client.close()
