"""The committed web export, served by `scripts/serve` at `/`, runs in Chromium under the
server's Content-Security-Policy: it renders, logs no error and no CSP violation, and a
client-side route opened directly (a bookmark, a reload) loads the same app; and the
policy's connect-src keeps the app from talking to any other server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.harness import Person, Served, Shots


def wait_rendered(person: Person) -> None:
    # The app has rendered when React has put something with text into #root.
    person.page.wait_for_function(
        "() => (document.getElementById('root')?.innerText || '').trim().length > 0"
    )


def test_the_app_runs_under_the_csp_without_console_errors(
    people: Callable[[str], Person], served: Served, shots: Shots
) -> None:
    ada = people("ada")
    response = ada.page.goto(served.url + "/")
    assert response is not None and response.status == 200
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-cache"
    wait_rendered(ada)
    # Every script the page runs came from this origin, under the policy.
    scripts = ada.page.evaluate("[...document.scripts].map(s => s.src)")
    assert scripts and all(src.startswith(served.url + "/_expo/static/") for src in scripts)
    shots.take(ada.page, "first-start")


def test_a_client_route_opened_directly_loads_the_app(
    people: Callable[[str], Person], served: Served
) -> None:
    ada = people("ada")
    response = ada.page.goto(served.url + "/some/deep/route")
    assert response is not None and response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    wait_rendered(ada)


def test_the_csp_keeps_the_app_to_the_server_that_served_it(
    people: Callable[[str], Person], served: Served, tmp_path: Path
) -> None:
    other = Served(tmp_path / "other-data", tmp_path / "other.log")
    other.start()  # another origin: the same host, another port
    try:
        ada = people("ada")
        # What the browser says when the policy blocks it: the point of this test.
        blocked = re.escape(other.url)
        ada.watch.expect(blocked + r"/healthz.*(Refused to connect|directive: \"connect-src)")
        ada.watch.expect(r"CSP violation: connect-src " + blocked)
        ada.page.get_by_role("link", name="Change server").click()
        field = ada.page.get_by_test_id("server-url")
        expect(field).to_have_value(served.url)
        field.fill(other.url)
        ada.page.get_by_test_id("server-continue").click()
        expect(ada.page.get_by_text("No MessageAI server answers")).to_be_visible()
        violations = ada.page.evaluate("window.__cspViolations")
        assert any(v.startswith("connect-src") and other.url in v for v in violations), violations
    finally:
        other.stop()
