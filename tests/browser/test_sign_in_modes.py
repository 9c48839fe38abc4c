"""The sign-in screen follows the server's public settings (`GET /v1/settings`): with
registration closed there is no "create an account"; in Clerk mode the page mounts
Clerk's provider with the publishable key the server publishes (at run time: the same
export as every other server), signs in with Clerk's SDK (clerk-js, loaded from the
instance's Frontend API, which the CSP allows and nothing else), hands the session JWT
to the engine, and signs out of both.

Each test starts its own server (`scripts/serve` with the config set from the
environment, as an operator can). Clerk's Frontend API is tests/browser/clerk_fapi.py's
stand-in on loopback.
"""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.clerk_fapi import HOST, PASSWORD, FrontendApi
from tests.browser.harness import People, Served, Shots

# Short-lived session tokens, so that the one the app holds has expired by the reload.
TOKEN_SECONDS = 3


def test_closed_registration_offers_sign_in_only(people: People, tmp_path: Path) -> None:
    closed = Served(
        tmp_path / "closed",
        tmp_path / "closed.log",
        env={"MESSAGEAI_AUTH__ALLOW_REGISTRATION": "false"},
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


def test_clerk_sign_in_with_clerks_sdk_signs_in_reloads_and_signs_out(
    people: People, tmp_path: Path, shots: Shots
) -> None:
    fapi = FrontendApi(token_seconds=TOKEN_SECONDS)
    fapi.start()
    clerk = Served(tmp_path / "clerk", tmp_path / "clerk.log", env=fapi.server_env())
    clerk.start()
    try:
        fapi.app_origin = clerk.url
        ada = people("ada", at=clerk)
        page = ada.page
        fapi.route(page.context)
        # The first load went to the never-resolving host before the route was set.
        ada.watch.expect(rf"net::ERR_[A-Z_]+ \(https://{re.escape(HOST)}/")
        ada.watch.expect(r"Failed to load Clerk JS")
        # Clerk's own words for development instances, and its wrong-password answer.
        ada.watch.expect(r"Clerk has been loaded with development keys")
        ada.watch.expect(r"status of 422 .*/v1/client/sign_ins")
        page.reload()
        expect(page.get_by_test_id("clerk-identifier")).to_be_visible()
        expect(page.get_by_test_id("username")).to_have_count(0)
        expect(page.get_by_test_id("sign-in-toggle")).to_have_count(0)

        page.get_by_test_id("clerk-identifier").fill("ada")
        page.get_by_test_id("clerk-password").fill("not her password")
        page.get_by_test_id("clerk-submit").click()
        expect(page.get_by_text("Password is incorrect.")).to_be_visible()
        shots.take(page, "clerk-sign-in")
        page.get_by_test_id("clerk-password").fill(PASSWORD)
        page.get_by_test_id("clerk-submit").click()
        # The server took Clerk's session JWT: the user made from its claims is signed in.
        expect(page.get_by_text("Signed in as Ada Lovelace")).to_be_visible()
        assert "POST /v1/client/sign_ins" in fapi.requests
        assert any(r.startswith("GET /npm/@clerk/clerk-js@6/") for r in fapi.requests)

        # A reload once the app's token has expired: the server refuses it (the WebSocket
        # handshake and /v1/me, both logged), the engine asks Clerk for a new one, which
        # waits for clerk-js to load, and the app stays signed in.
        ada.watch.expect(r"WebSocket connection to .*/v1/ws\?access_token=.* failed")
        ada.watch.expect(r"status of 401 .*/v1/me\)$")
        page.wait_for_timeout(TOKEN_SECONDS * 1000 + 500)
        renewed = fapi.requests.count("POST /v1/client/sessions/sess_ada/tokens")
        page.reload()
        expect(page.get_by_text("Signed in as Ada Lovelace")).to_be_visible()
        expect(page.get_by_test_id("connection-banner")).to_have_count(0)
        assert fapi.requests.count("POST /v1/client/sessions/sess_ada/tokens") > renewed

        page.goto(clerk.url + "/settings")
        page.get_by_test_id("sign-out").click()
        expect(page.get_by_test_id("clerk-identifier")).to_be_visible()
        for _ in range(50):  # Clerk's session ends too, right after the app's
            if not fapi.signed_in:
                break
            page.wait_for_timeout(100)
        assert not fapi.signed_in, fapi.requests
        # The policy let clerk-js and its calls through to the Frontend API only.
        assert page.evaluate("window.__cspViolations") == []
    finally:
        # clerk-js keeps polling its client: those requests must not outlive the stand-in.
        if "ada" in locals():
            ada.page.context.unroute_all(behavior="ignoreErrors")
        clerk.stop()
        fapi.stop()
