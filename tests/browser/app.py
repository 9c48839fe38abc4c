"""What a person does in the app, as the browser tests say it: sign in, open a
conversation, send, read statuses. Written against the screens' testIDs (react-native-web
renders `testID` as `data-testid`) and accessibility labels, never against styles.

`statuses_seen` reads what harness.STATUS_RECORDER kept: every text the status line under
a message of mine ever showed, so a test sees "Sending…" even when the ack came at once.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
from playwright.sync_api import Locator, Page, expect

from tests.browser.harness import Person

PASSWORD = "password1"


def statuses_seen(page: Page, stored: dict[str, Any]) -> list[str]:
    """Every text the status line of my message `stored` (as the server has it: its
    `client_id` and `seq`) showed, in order: while in the outbox, then once acknowledged."""
    log: dict[str, list[str]] = page.evaluate("window.__statuses")
    seen: list[str] = []
    for text in log.get(f"status-{stored['client_id']}", []) + log.get(
        f"status-{stored['seq']}", []
    ):
        if not seen or seen[-1] != text:
            seen.append(text)
    return seen


def register(person: Person, username: str, password: str = PASSWORD) -> None:
    """From the first screen to the conversation list, with a new account."""
    page = person.page
    page.get_by_test_id("sign-in-toggle").click()
    page.get_by_test_id("username").fill(username)
    page.get_by_test_id("password").fill(password)
    page.get_by_test_id("sign-in-submit").click()
    expect(page.get_by_text(f"Signed in as {username}")).to_be_visible()


def sign_in(person: Person, username: str, password: str = PASSWORD) -> None:
    page = person.page
    page.get_by_test_id("username").fill(username)
    page.get_by_test_id("password").fill(password)
    page.get_by_test_id("sign-in-submit").click()


def conversation_row(page: Page, conversation_id: str) -> Locator:
    return page.get_by_test_id(f"conversation-{conversation_id}")


CONVERSATION_URL = re.compile(r"/c/(c_[A-Za-z0-9_-]+)$")


def opened_conversation_id(page: Page) -> str:
    """The id of the conversation the page shows (from its URL, `/c/<id>`)."""
    expect(page).to_have_url(CONVERSATION_URL)
    found = CONVERSATION_URL.search(page.url)
    assert found is not None
    return found.group(1)


def pick_person(page: Page, username: str) -> None:
    page.get_by_test_id("user-search").fill(username)
    page.get_by_test_id(f"user-{username}").click()


def start_direct(person: Person, username: str) -> str:
    """Start a direct conversation with `username` from the "New conversation" screen; its id."""
    page = person.page
    page.get_by_test_id("new-conversation").click()
    page.get_by_test_id("tab-direct").click()
    pick_person(page, username)
    conversation_id = opened_conversation_id(page)
    expect(page.get_by_test_id("composer")).to_be_visible()
    return conversation_id


def start_group(person: Person, title: str, usernames: list[str]) -> str:
    page = person.page
    page.get_by_test_id("new-conversation").click()
    page.get_by_test_id("tab-group").click()
    page.get_by_test_id("group-title").fill(title)
    for username in usernames:
        pick_person(page, username)
    page.get_by_test_id("create-group").click()
    conversation_id = opened_conversation_id(page)
    expect(page.get_by_test_id("composer")).to_be_visible()
    return conversation_id


def general_id(person: Person) -> str:
    """The id of the `#general` channel every user is in, from its row in the list."""
    row = person.page.locator('[data-testid^="conversation-"]', has_text="#general")
    testid = row.get_attribute("data-testid")
    assert testid is not None
    return testid.removeprefix("conversation-")


def open_conversation(person: Person, conversation_id: str) -> None:
    conversation_row(person.page, conversation_id).click()
    expect(person.page.get_by_test_id("composer")).to_be_visible()


def send(person: Person, text: str) -> None:
    """Type `text` in the composer and press Enter (which sends on the web)."""
    composer = person.page.get_by_test_id("composer")
    composer.fill(text)
    composer.press("Enter")
    expect(composer).to_have_value("")


def pending_status(page: Page) -> Locator:
    """The status line of my message still in the outbox (there must be one only)."""
    return page.locator('[data-testid^="message-pending-"] [data-testid^="status-"]')


def message(page: Page, seq: int) -> Locator:
    return page.get_by_test_id(f"message-{seq}")


def status(page: Page, seq: int) -> Locator:
    return page.get_by_test_id(f"status-{seq}")


def bodies(page: Page) -> list[str]:
    """The text of every message row on screen, oldest first."""
    rows = page.locator('[data-testid^="message-"]')
    return [re.sub(r"\s+", " ", text).strip() for text in rows.all_inner_texts()]


class Api:
    """The test's own REST client, to check what the server stored (or for set-up a test
    is not about): real HTTP to the same server, signed in with the same password."""

    def __init__(self, url: str) -> None:
        self._http = httpx.Client(base_url=url, timeout=10)

    def close(self) -> None:
        self._http.close()

    def token(self, username: str, password: str = PASSWORD) -> str:
        r = self._http.post("/v1/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token

    def register(self, username: str, password: str = PASSWORD) -> str:
        """A new account (for people the test needs only on the server); its token."""
        r = self._http.post("/v1/auth/register", json={"username": username, "password": password})
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token

    def post(self, token: str, conversation_id: str, body: str) -> int:
        """Send `body` over REST (as bots and scripts do); its seq."""
        r = self._http.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"client_id": uuid.uuid4().hex, "body": body},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 201, r.text
        seq: int = r.json()["seq"]
        return seq

    def members(self, token: str, conversation_id: str) -> list[str]:
        r = self._http.get(
            f"/v1/conversations/{conversation_id}", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200, r.text
        member_ids: list[str] = r.json()["member_ids"]
        return member_ids

    def user_id(self, token: str) -> str:
        r = self._http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        user_id: str = r.json()["id"]
        return user_id

    def conversation(self, token: str, kind: str, member_ids: list[str], title: str = "") -> str:
        body: dict[str, Any] = {"kind": kind, "member_ids": member_ids}
        if title:
            body["title"] = title
        r = self._http.post(
            "/v1/conversations", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code in (200, 201), r.text
        conversation_id: str = r.json()["id"]
        return conversation_id

    def messages(self, token: str, conversation_id: str) -> list[dict[str, Any]]:
        r = self._http.get(
            f"/v1/conversations/{conversation_id}/messages",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        found: list[dict[str, Any]] = r.json()["messages"]
        return found
