"""Signing in from the browser: a wrong password is refused with words a person
understands, the right one then gets in, and the session survives a reload; the form
works from the keyboard alone, and every control has a name for screen readers."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import expect

from tests.browser.app import register, sign_in
from tests.browser.harness import Person, Shots


def test_a_wrong_password_is_refused_then_the_right_one_signs_in(
    people: Callable[[str], Person], shots: Shots
) -> None:
    ada = people("ada")
    register(ada, "ada")
    # Another browser: no session there yet.
    other = people("ada-elsewhere")
    # The server answers the wrong password 401, which the browser logs as a failed load.
    other.watch.expect(r"status of 401 .*/v1/auth/login\)$")
    expect(other.page.get_by_test_id("username")).to_be_visible()
    sign_in(other, "ada", "not her password")
    expect(other.page.get_by_text("Wrong username or password.")).to_be_visible()
    shots.take(other.page, "wrong-password")
    sign_in(other, "ada")
    expect(other.page.get_by_text("Signed in as ada")).to_be_visible()
    shots.take(other.page, "chats")
    # A reload keeps the session (the token is in the browser's storage).
    other.page.reload()
    expect(other.page.get_by_text("Signed in as ada")).to_be_visible()


def test_keyboard_alone_signs_up_and_every_control_is_named(
    people: Callable[[str], Person],
) -> None:
    ada = people("ada")
    page = ada.page
    toggle = page.get_by_test_id("sign-in-toggle")
    toggle.focus()
    page.keyboard.press("Enter")
    username = page.get_by_test_id("username")
    username.focus()
    page.keyboard.type("ada")
    # Tab moves on through the form (display name, then password).
    page.keyboard.press("Tab")
    expect(page.get_by_test_id("display-name")).to_be_focused()
    page.keyboard.type("Ada Lovelace")
    page.keyboard.press("Tab")
    expect(page.get_by_test_id("password")).to_be_focused()
    page.keyboard.type("password1")
    page.keyboard.press("Enter")
    expect(page.get_by_text("Signed in as Ada Lovelace")).to_be_visible()
    # Every button, link, tab and field on the list screen has a name a screen reader says.
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll(
              '[role=button],[role=link],[role=tab],[role=radio],[role=checkbox],button,a,input,textarea')]
            .filter((el) => el.offsetParent !== null)
            .filter((el) => !(el.getAttribute('aria-label') || el.textContent.trim()
                              || el.getAttribute('placeholder') || el.labels?.length))
            .map((el) => el.outerHTML.slice(0, 120))"""
    )
    assert unnamed == []
