"""What a person does to messages in the browser: edit one, react to one, send an image
that the other sees inline, and find a message with search (which opens it in place)."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.browser.app import (
    Api,
    message,
    open_conversation,
    register,
    send,
    start_direct,
)
from tests.browser.harness import Person, Shots


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour (the server checks an upload's bytes against its type)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\0" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def select(page: Page, seq: int) -> None:
    """Press a message's bubble: its actions appear under it."""
    message(page, seq).get_by_role("button", name=re.compile(r", \d")).first.click()


def test_edit_react_and_an_image_shown_inline(
    people: Callable[[str], Person], api: Api, shots: Shots
) -> None:
    ada, bob = people("ada"), people("bob")
    register(ada, "ada")
    register(bob, "bob")
    cid = start_direct(ada, "bob")
    open_conversation(bob, cid)
    send(ada, "See you at 12")
    expect(message(bob.page, 1)).to_contain_text("See you at 12")

    # Ada edits it; Bob sees the new text, marked edited.
    select(ada.page, 1)
    ada.page.get_by_role("button", name="Edit", exact=True).click()
    composer = ada.page.get_by_test_id("composer")
    expect(composer).to_have_value("See you at 12")
    composer.fill("See you at 12:30")
    composer.press("Enter")
    expect(message(bob.page, 1)).to_contain_text("See you at 12:30")
    expect(message(bob.page, 1)).to_contain_text("edited")

    # Bob reacts; Ada sees the reaction and its count.
    select(bob.page, 1)
    bob.page.get_by_role("button", name="React with 👍").click()
    expect(ada.page.get_by_test_id("reaction-1-👍")).to_contain_text("👍 1")

    # Ada sends an image; Bob sees it inline, its bytes loaded.
    with ada.page.expect_file_chooser() as chooser:
        ada.page.get_by_test_id("attach-image").click()
    chooser.value.set_files(
        {"name": "lunch.png", "mimeType": "image/png", "buffer": png(64, 48, (230, 120, 40))}
    )
    send(ada, "The place")
    image = bob.page.locator('[data-testid^="image-"]')
    expect(image).to_be_visible()
    bob.page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid^="image-"] img')]
                 .some((img) => img.complete && img.naturalWidth === 64)"""
    )
    shots.take(bob.page, "conversation-with-image")

    stored = api.messages(api.token("bob"), cid)
    assert [m["body"] for m in stored] == ["See you at 12:30", "The place"]
    assert stored[0]["edited_at"] is not None
    assert stored[0]["reactions"] == {"👍": [api.user_id(api.token("bob"))]}
    assert len(stored[1]["attachments"]) == 1


def test_search_finds_a_message_and_opens_it_in_place(
    people: Callable[[str], Person], shots: Shots
) -> None:
    ada, bob = people("ada"), people("bob")
    register(ada, "ada")
    register(bob, "bob")
    cid = start_direct(ada, "bob")
    for text in ("The quarterly report is due Friday", "Lunch first?", "Yes, then the report"):
        send(ada, text)
    expect(message(ada.page, 3)).to_be_visible()

    open_conversation(bob, cid)
    bob.page.get_by_test_id("open-search").first.click()
    field = bob.page.get_by_test_id("search-input")
    field.fill("quarterly")
    field.press("Enter")
    result = bob.page.get_by_test_id("result-1")
    expect(result).to_contain_text("quarterly")
    expect(bob.page.locator('[data-testid^="result-"]')).to_have_count(1)
    shots.take(bob.page, "search")
    result.click()
    expect(bob.page).to_have_url(re.compile(f"/c/{cid}"))
    # (The conversation under the search screen stays mounted: look at the one shown.)
    expect(bob.page.locator('[data-testid="message-1"]:visible')).to_be_in_viewport()
