"""A long group conversation in the browser: history paged in as Ada scrolls up, members
added and removed from its Info screen, and the assistant panel (the switch, ask with a
citation that opens the cited message far back in the history, catch-me-up, action items,
the log of what was sent to the model); then the theme radios' checked state.

The server runs with an `[ai]` endpoint: tests/llm.py's stand-in on loopback, in a thread,
choosing each reply by what the request asks (an extraction, a summary or a question).
The others are REST users (tests/browser/app.py `Api`): only Ada's page is a browser.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.app import Api, conversation_row, message, open_conversation, sign_in
from tests.browser.harness import Person, Shots
from tests.llm import FakeLLM, Reply, llm_in_thread, text, tools

# Seeded over REST: enough for three pages of the app's history (50 a page).
MESSAGES = 150
ZEPPELIN = 1  # the message the question is about, far above the first page
TICKETS = MESSAGES  # the one the action item comes from
# Posts in flight at once while seeding (the order between them does not matter).
SEED_THREADS = 8


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with llm_in_thread() as fake:
        fake.chooser = reply_for
        yield fake


@pytest.fixture
def served_config(llm: FakeLLM) -> dict[str, dict[str, str]]:
    # Extraction soon after a message, polled often: the action items show within the test.
    jobs = {"poll_seconds": "0.05", "lease_seconds": "2.0", "action_items_delay_seconds": "0.2"}
    ai = {"base_url": f'"{llm.url}"', "model": '"fake-model"'}
    return {"ai": ai, "jobs": {**jobs, "action_items_after_messages_seconds": "0.3"}}


def reply_for(body: Any) -> Reply:
    """What the stand-in model answers: items to an extraction, a summary to a catch-up,
    and to a question an answer citing the zeppelin message."""
    names = [tool["function"]["name"] for tool in body.get("tools") or []]
    if "record_action_items" in names:
        item = {"text": "Book the tickets", "owner": "bob", "due": "friday", "sources": [TICKETS]}
        return tools(("record_action_items", {"items": [item]}))
    system = body["messages"][0]["content"]
    if "Summarise" in system:
        return text("Bob planned the trip; the tickets are still to book ", f"[{TICKETS}].")
    return text("The zeppelin leaves at nine ", f"[{ZEPPELIN}].")


def test_history_members_and_the_assistant_in_a_long_group(
    people: Callable[[str], Person], api: Api, llm: FakeLLM, shots: Shots
) -> None:
    ada = people("ada")
    page = ada.page
    # Ada signs in only once the group is written: a client online while it is written
    # holds every message live, and the paging below would have nothing to page in.
    api.register("ada")
    bob, cyd = api.register("bob"), api.register("cyd")
    api.register("dan")
    # Ada's group (its creator may remove members); Bob writes most of it.
    cid = api.conversation(
        api.token("ada"), "group", [api.user_id(bob), api.user_id(cyd)], title="Trip"
    )
    assert api.post(bob, cid, "The zeppelin leaves at nine from the north field") == ZEPPELIN
    with ThreadPoolExecutor(SEED_THREADS) as pool:
        fillers = list(pool.map(lambda n: api.post(bob, cid, f"update {n}"), range(2, TICKETS)))
    assert sorted(fillers) == list(range(2, TICKETS))
    assert api.post(bob, cid, "Bob will book the tickets by friday") == TICKETS
    sign_in(ada, "ada")
    expect(page.get_by_text("Signed in as ada")).to_be_visible()

    # History: the latest page first; scrolling to the top pages the older ones in.
    expect(conversation_row(page, cid)).to_be_visible()
    open_conversation(ada, cid)
    expect(message(page, MESSAGES)).to_be_visible()
    expect(message(page, ZEPPELIN)).to_have_count(0)  # two pages up
    messages = page.get_by_test_id("messages")
    messages.evaluate("el => el.scrollTo(0, 0)")
    expect(message(page, MESSAGES - 50)).to_be_attached()
    messages.evaluate("el => el.scrollTo(0, 0)")
    expect(message(page, 1)).to_be_attached()
    # A full page does not say whether it was the last: one more scroll up finds out.
    messages.evaluate("el => el.scrollTo(0, 0)")
    expect(page.get_by_text("This is the beginning of the conversation.")).to_be_visible()
    shots.take(page, "history-paged")

    # Members: remove Cyd, add Dan, from the Info screen.
    page.get_by_test_id("open-members").click()
    page.get_by_role("button", name="Remove cyd").click()
    expect(page.get_by_text("cyd was removed.")).to_be_visible()
    page.get_by_test_id("user-search").fill("dan")
    page.get_by_test_id("user-dan").click()
    page.get_by_test_id("add-members").click()
    expect(page.get_by_text("@dan")).to_be_visible()
    expect(page.get_by_text("@cyd")).to_have_count(0)
    shots.take(page, "members")
    held = api.members(bob, cid)
    assert api.user_id(api.token("dan")) in held and api.user_id(cyd) not in held
    assert len(held) == 3
    page.get_by_role("button", name="Back to the conversation").click()

    # The assistant: off until a member turns it on; nothing was sent to the model.
    page.get_by_test_id("open-ai").click()
    expect(page.get_by_text("Nothing from this conversation has been sent.")).to_be_visible()
    assert llm.requests == []
    switch = page.get_by_role("switch", name="Assistant in this conversation")
    switch.click()
    expect(switch).to_be_checked()
    # A message Ada has not read (she is on the panel): what catch-me-up summarises; and
    # with the switch on, the action items are extracted in the background after it.
    api.post(bob, cid, "see you all on the field")
    page.get_by_test_id("ai-catch-up").click()
    expect(page.get_by_text(re.compile("Bob planned the trip"))).to_be_visible()
    item = page.get_by_role("checkbox", name="Book the tickets")
    expect(item).to_be_visible(timeout=30_000)
    expect(item).to_have_attribute("aria-checked", "false")
    item.click()
    expect(item).to_have_attribute("aria-checked", "true")
    page.reload()  # the log and the items as the server has them now
    for action in ("caught up", "action items"):
        expect(page.get_by_text(re.compile(f": {action}, ")).first).to_be_visible()
    expect(page.get_by_role("checkbox", name="Book the tickets")).to_be_checked()

    # Ask: the answer streams in with its citation, and the log shows the question.
    page.get_by_test_id("ai-question").fill("When does the zeppelin leave?")
    page.get_by_test_id("ai-ask").click()
    expect(page.get_by_text(f"The zeppelin leaves at nine [{ZEPPELIN}].")).to_be_visible()
    expect(page.get_by_text(re.compile(": asked, "))).to_be_visible()
    shots.take(page, "assistant")
    # The citation opens the conversation at the cited message, paged back to it.
    page.get_by_test_id(f"cite-{ZEPPELIN}").click()
    expect(message(page, ZEPPELIN)).to_be_in_viewport()
    expect(message(page, ZEPPELIN)).to_contain_text("zeppelin leaves at nine")

    # Settings: the theme choices are radios that say which one is checked.
    page.get_by_test_id("open-settings").click()
    radios = page.get_by_role("radiogroup", name="Theme").get_by_role("radio")
    expect(radios).to_have_count(3)
    expect(page.get_by_role("radio", name="Like the system")).to_have_attribute(
        "aria-checked", "true"
    )
    page.get_by_role("radio", name="Dark").click()
    expect(page.get_by_role("radio", name="Dark")).to_have_attribute("aria-checked", "true")
    expect(page.get_by_role("radio", name="Like the system")).to_have_attribute(
        "aria-checked", "false"
    )
    page.get_by_role("radio", name="Like the system").click()
