"""Chatting in the browser: people in browser contexts of their own register, open a
conversation and chat, each seeing the statuses of their own messages go
`sending → sent → read` ("read by N of M" in a group).

Everything is done in the app; the REST API (tests/browser/app.py `Api`) only checks
what the server stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import expect

from tests.browser.app import (
    Api,
    conversation_row,
    general_id,
    message,
    open_conversation,
    pending_status,
    register,
    send,
    start_direct,
    start_group,
    status,
    statuses_seen,
)
from tests.browser.harness import Person, Served, Shots


def in_order(seen: list[str], wanted: list[str]) -> bool:
    """`wanted` appears in `seen` in this order (other texts may come between)."""
    rest = iter(seen)
    return all(any(text == w for text in rest) for w in wanted)


def test_two_people_chat_and_each_sees_sending_sent_read(
    people: Callable[[str], Person], api: Api, served: Served, shots: Shots
) -> None:
    ada, bob = people("ada"), people("bob")
    shots.take(ada.page, "sign-in")
    register(ada, "ada")
    register(bob, "bob")
    shots.take(ada.page, "empty-list")
    cid = start_direct(ada, "bob")
    shots.take(ada.page, "new-conversation")
    # It shows up in Bob's list without a reload; he stays on the list.
    expect(conversation_row(bob.page, cid)).to_be_visible()

    # While the server is slow to answer, the message is there at once, "Sending…".
    with served.paused():
        send(ada, "Hello Bob, lunch at noon?")
        expect(pending_status(ada.page)).to_have_text("Sending…")
    # Stored by the server, not yet read: Bob has not opened it, and it is unread for him.
    expect(status(ada.page, 1)).to_have_text("Sent")
    expect(conversation_row(bob.page, cid)).to_have_attribute("aria-label", re.compile("1 unread"))
    open_conversation(bob, cid)
    expect(message(bob.page, 1)).to_contain_text("Hello Bob, lunch at noon?")
    expect(status(ada.page, 1)).to_have_text("Read")

    # Ada closes the conversation (loads the list anew) while Bob answers.
    ada.page.goto(served.url + "/chats")
    expect(conversation_row(ada.page, cid)).to_be_visible()
    with served.paused():
        send(bob, "Noon works, see you there")
        expect(pending_status(bob.page)).to_have_text("Sending…")
    expect(status(bob.page, 2)).to_have_text("Sent")
    expect(conversation_row(ada.page, cid)).to_have_attribute("aria-label", re.compile("1 unread"))
    open_conversation(ada, cid)
    expect(message(ada.page, 2)).to_contain_text("Noon works, see you there")
    expect(status(bob.page, 2)).to_have_text("Read")
    shots.take(ada.page, "conversation")

    # What the server stored: each message once, in order; and what each sender saw.
    stored = api.messages(api.token("ada"), cid)
    for person, record in ((ada, stored[0]), (bob, stored[1])):
        seen = statuses_seen(person.page, record)
        assert in_order(seen, ["Sending…", "Sent", "Read"]), (person.name, seen)
    assert [(m["seq"], m["body"]) for m in stored] == [
        (1, "Hello Bob, lunch at noon?"),
        (2, "Noon works, see you there"),
    ]


def test_a_conversation_left_for_another_marks_nothing_read(
    people: Callable[[str], Person], api: Api
) -> None:
    ada, bob = people("ada"), people("bob")
    register(ada, "ada")
    register(bob, "bob")
    cid = api.conversation(api.token("ada"), "direct", [api.user_id(api.token("bob"))])
    open_conversation(ada, cid)
    open_conversation(bob, cid)
    general = general_id(ada)
    conversation_row(ada.page, general).click()
    expect(ada.page).to_have_url(re.compile(f"/c/{general}$"))
    send(bob, "Are you there?")
    expect(status(bob.page, 1)).to_have_text("Sent")
    # Ada has not seen it: still Sent a moment later, and unread in her list.
    bob.page.wait_for_timeout(1000)
    expect(status(bob.page, 1)).to_have_text("Sent")
    expect(conversation_row(ada.page, cid)).to_have_attribute("aria-label", re.compile("1 unread"))


def test_a_group_of_three_sees_read_by_n_of_m(
    people: Callable[[str], Person], api: Api, served: Served, shots: Shots
) -> None:
    ada, bob, cara = people("ada"), people("bob"), people("cara")
    for person in (ada, bob, cara):
        register(person, person.name)
    cid = start_group(ada, "Lunch crew", ["bob", "cara"])
    for person in (bob, cara):
        expect(conversation_row(person.page, cid)).to_be_visible()

    with served.paused():
        send(ada, "Who is in for Friday?")
        expect(pending_status(ada.page)).to_have_text("Sending…")
    expect(status(ada.page, 1)).to_have_text("Sent")
    open_conversation(bob, cid)
    expect(message(bob.page, 1)).to_contain_text("Who is in for Friday?")
    expect(status(ada.page, 1)).to_have_text("Read by 1 of 2")
    open_conversation(cara, cid)
    expect(message(cara.page, 1)).to_contain_text("Who is in for Friday?")
    expect(status(ada.page, 1)).to_have_text("Read by 2 of 2")
    shots.take(ada.page, "group")
    stored = api.messages(api.token("ada"), cid)
    assert in_order(
        statuses_seen(ada.page, stored[0]), ["Sending…", "Sent", "Read by 1 of 2", "Read by 2 of 2"]
    ), statuses_seen(ada.page, stored[0])
    # Each of the others sees who sent it.
    expect(message(cara.page, 1)).to_contain_text("ada")
