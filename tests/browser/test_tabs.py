"""Two tabs of one browser: two pages in ONE context share its origin's IndexedDB, Web Locks
and BroadcastChannel (app/src/engine/tabs.ts). The first tab leads: it alone opens a
WebSocket and delivers the outbox. A message written in the second tab is sent once, both
tabs show its statuses move, and when the leading tab closes the second one connects and
sends on its own.
"""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import WebSocket, expect

from tests.browser.app import (
    Api,
    conversation_row,
    message,
    open_conversation,
    register,
    send,
    start_direct,
    status,
)
from tests.browser.harness import Person, Served, Shots, Watch


def test_two_tabs_share_one_connection_and_hand_it_over_when_the_first_closes(
    people: Callable[[str], Person], api: Api, served: Served, shots: Shots
) -> None:
    ada, bob = people("ada"), people("bob")
    first_sockets: list[str] = []
    ada.page.on("websocket", lambda ws: first_sockets.append(ws.url))
    register(ada, "ada")
    register(bob, "bob")

    # A second tab of Ada's browser: signed in already, from the shared database.
    second = ada.context.new_page()
    second_watch = Watch.on(second)
    second_watch.expect(r"status of 400 .*/v1/auth/login\)$")
    second_sockets: list[WebSocket] = []
    second.on("websocket", lambda ws: second_sockets.append(ws))
    second.goto(served.url + "/")
    expect(second.get_by_text("Signed in as ada")).to_be_visible()
    tab2 = Person("ada-2", ada.context, second, second_watch)

    # A conversation started in the first tab shows up in the second without a reload.
    cid = start_direct(ada, "bob")
    expect(conversation_row(second, cid)).to_be_visible()
    open_conversation(tab2, cid)
    send(tab2, "Written in the second tab")
    expect(conversation_row(bob.page, cid)).to_be_visible()
    for page in (ada.page, second):
        expect(message(page, 1)).to_contain_text("Written in the second tab")
        expect(status(page, 1)).to_have_text("Sent")
    open_conversation(bob, cid)
    expect(message(bob.page, 1)).to_contain_text("Written in the second tab")
    for page in (ada.page, second):
        expect(status(page, 1)).to_have_text("Read")
    shots.take(second, "second-tab")
    # One connection for the two tabs: the first one's.
    assert first_sockets, "the leading tab opened no WebSocket"
    assert second_sockets == [], [ws.url for ws in second_sockets]

    # The first tab closes: the second takes the connection over and sends by itself.
    assert ada.watch.unexpected() == []
    ada.page.close()
    expect(second.get_by_test_id("composer")).to_be_enabled()
    send(tab2, "After the first tab closed")
    expect(message(bob.page, 2)).to_contain_text("After the first tab closed")
    expect(status(second, 2)).to_have_text("Read")
    assert len(second_sockets) >= 1

    stored = api.messages(api.token("bob"), cid)
    assert [m["body"] for m in stored] == [
        "Written in the second tab",
        "After the first tab closed",
    ]
    assert second_watch.unexpected() == []
