"""The sign-in screen follows the server's public settings (`GET /v1/settings`): with
registration closed there is no "create an account", and in Clerk mode the page mounts
Clerk's provider with the publishable key the server publishes (at run time: the same
export as every other server) and shows Clerk's sign-in form, under a CSP that lets
clerk-js come from that instance's Frontend API and nowhere else.

Each test starts its own server (`scripts/serve` with the config set from the
environment, as an operator can). The Frontend API host is a name that never resolves
(`.test`): the browser's requests to it are answered by Playwright's router, which
refuses them, so what is checked is the page's own wiring and policy.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.sync_api import Route, expect

from tests.browser.harness import People, Served

FRONTEND_API = "clerk.chat.example.test"
PUBLISHABLE_KEY = "pk_test_" + base64.b64encode(f"{FRONTEND_API}$".encode()).decode()


def clerk_env() -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "MESSAGEAI_AUTH__MODE": "clerk",
        "MESSAGEAI_CLERK__ISSUER": f"https://{FRONTEND_API}",
        "MESSAGEAI_CLERK__JWT_PUBLIC_KEY": pem.decode(),
        "MESSAGEAI_CLERK__PUBLISHABLE_KEY": PUBLISHABLE_KEY,
    }


def test_closed_registration_offers_sign_in_only(people: People, tmp_path: Path) -> None:
    closed = Served(
        tmp_path / "closed",
        tmp_path / "closed.log",
        {"MESSAGEAI_AUTH__ALLOW_REGISTRATION": "false"},
    )
    closed.start()
    try:
        ada = people("ada", at=closed)
        page = ada.page
        expect(page.get_by_test_id("registration-closed")).to_have_text(
            "This server does not take new accounts: ask whoever runs it to make one for you."
        )
        expect(page.get_by_test_id("username")).to_be_visible()
        expect(page.get_by_test_id("sign-in-toggle")).to_have_count(0)
    finally:
        closed.stop()


def test_clerk_mode_shows_clerks_sign_in_and_the_csp_allows_only_its_frontend_api(
    people: People, tmp_path: Path
) -> None:
    clerk = Served(tmp_path / "clerk", tmp_path / "clerk.log", clerk_env())
    clerk.start()
    try:
        ada = people("ada", at=clerk)
        page = ada.page
        asked: list[str] = []

        def refuse(route: Route) -> None:
            asked.append(route.request.url)
            route.abort("connectionrefused")

        page.context.route(re.compile(rf"https://{re.escape(FRONTEND_API)}/.*"), refuse)
        # Routed after the first load: load the page again, now with the Frontend API
        # refusing (as it does offline), which the page logs as failed loads.
        ada.watch.expect(
            rf"net::ERR_[A-Z_]+ \(https://{re.escape(FRONTEND_API)}/|Failed to load Clerk JS"
        )
        page.reload()
        expect(page.get_by_test_id("clerk-identifier")).to_be_visible()
        expect(page.get_by_test_id("clerk-password")).to_be_visible()
        expect(page.get_by_test_id("username")).to_have_count(0)
        expect(page.get_by_test_id("sign-in-toggle")).to_have_count(0)
        # clerk-js was asked for from the Frontend API the key names, and the policy let
        # the request go (a blocked one never reaches the router).
        assert any(
            url.startswith(f"https://{FRONTEND_API}/npm/@clerk/clerk-js@") for url in asked
        ), asked
        violations = page.evaluate("window.__cspViolations")
        assert violations == [], violations
    finally:
        clerk.stop()
