"""A tour of the screens the chat scenarios do not stop at (a group's members, the
assistant's panel, settings), each saved light and dark; the app's own theme choice,
which overrides the system's; and the narrow layout of a phone-sized screen."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.browser.app import register, send, start_direct, start_group
from tests.browser.harness import People, Person, Shots


def background_luminance(page: Page) -> float:
    """The relative luminance (0 black, 1 white) of the app's visible background."""
    rgb: list[float] = page.evaluate(
        """() => {
          let el = document.elementFromPoint(innerWidth - 20, innerHeight / 2);
          while (el) {
            const c = getComputedStyle(el).backgroundColor;
            const m = c.match(/rgba?\\(([\\d.]+), ([\\d.]+), ([\\d.]+)(?:, ([\\d.]+))?\\)/);
            if (m && (m[4] === undefined || Number(m[4]) > 0)) return [m[1], m[2], m[3]].map(Number);
            el = el.parentElement;
          }
          return [255, 255, 255];
        }"""
    )
    r, g, b = (v / 255 for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_every_other_screen_light_and_dark(people: Callable[[str], Person], shots: Shots) -> None:
    ada, bob, cara = people("ada"), people("bob"), people("cara")
    for person in (bob, cara, ada):
        register(person, person.name)
    cid = start_group(ada, "Book club", ["bob", "cara"])
    send(ada, "Next book: the one with the whale?")
    page = ada.page
    page.get_by_test_id("open-members").click()
    expect(page).to_have_url(re.compile(f"/c/{cid}/members$"))
    expect(page.get_by_test_id("add-members")).to_be_visible()
    shots.take(page, "members")
    page.goto(page.url.removesuffix("/members") + "/ai")
    expect(page.get_by_test_id("ai-switch")).to_be_visible()
    shots.take(page, "assistant")
    page.goto(page.url.split("/c/")[0] + "/settings")
    expect(page.get_by_test_id("theme-dark")).to_be_visible()
    shots.take(page, "settings")


def test_the_apps_theme_choice_overrides_the_systems(people: Callable[[str], Person]) -> None:
    ada = people("ada")
    register(ada, "ada")
    page = ada.page
    page.emulate_media(color_scheme="light")
    page.get_by_test_id("open-settings").click()
    expect(page.get_by_test_id("theme-dark")).to_be_visible()
    light = background_luminance(page)
    assert light > 0.8, light
    page.get_by_test_id("theme-dark").click()
    assert settles_dark(page), (light, background_luminance(page))
    # Kept over a reload, whatever the system says.
    page.reload()
    expect(page.get_by_test_id("theme-dark")).to_be_visible()
    assert settles_dark(page), background_luminance(page)


def settles_dark(page: Page) -> bool:
    """Whether the background turns dark within a few seconds (a re-render away)."""
    for _ in range(50):
        if background_luminance(page) < 0.2:
            return True
        page.wait_for_timeout(100)
    return False


def test_on_a_phone_sized_screen_the_list_and_the_conversation_take_turns(
    people: People, shots: Shots
) -> None:
    bob = people("bob")
    register(bob, "bob")
    ada = people("ada", phone=True)
    register(ada, "ada")
    shots.take(ada.page, "phone-list")
    cid = start_direct(ada, "bob")
    send(ada, "Sent from a phone-sized screen")
    # The conversation fills the screen: the list (mounted under it) is not shown.
    row = ada.page.locator(f'[data-testid="conversation-{cid}"]:visible')
    expect(row).to_have_count(0)
    shots.take(ada.page, "phone-conversation")
    expect(bob.page.get_by_test_id(f"conversation-{cid}")).to_be_visible()
    ada.page.locator('[data-testid="back"]:visible').tap()
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Sent from a phone-sized screen")
