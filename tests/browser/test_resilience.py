"""The app under trouble: the server stopped and started again under open pages (the
messages written meanwhile wait in the outbox and are delivered once, in order)."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import expect

from tests.browser.app import (
    Api,
    message,
    open_conversation,
    pending_status,
    register,
    send,
    status,
)
from tests.browser.harness import Person, Served, Shots

# The engine's reconnect backoff is capped; a restart is noticed within about this long.
RECONNECT_TIMEOUT_MS = 60_000
# What Chromium logs while the server is away (these are the point of the test).
SERVER_AWAY = [
    r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/v1/ws.*' failed",
    r"net::ERR_CONNECTION_REFUSED",
]


def test_the_server_stopped_and_restarted_under_open_pages(
    people: Callable[[str], Person], api: Api, served: Served, shots: Shots
) -> None:
    ada, bob = people("ada"), people("bob")
    register(ada, "ada")
    register(bob, "bob")
    cid = api.conversation(api.token("ada"), "direct", [api.user_id(api.token("bob"))])
    open_conversation(ada, cid)
    open_conversation(bob, cid)
    send(ada, "Before the restart")
    expect(message(bob.page, 1)).to_contain_text("Before the restart")

    served.stop()
    for person in (ada, bob):
        for pattern in SERVER_AWAY:
            person.watch.expect(pattern)
    banner = ada.page.get_by_test_id("connection-banner").first
    expect(banner).to_be_visible()
    send(ada, "Written while the server was away")
    send(ada, "And a second one")
    expect(pending_status(ada.page).first).to_have_text("Queued (offline)")
    expect(banner).to_contain_text("2 waiting to be sent")
    shots.take(ada.page, "server-away")

    served.start()  # the same port, the same data directory
    expect(message(bob.page, 3)).to_contain_text("And a second one", timeout=RECONNECT_TIMEOUT_MS)
    expect(message(bob.page, 2)).to_contain_text("Written while the server was away")
    expect(status(ada.page, 3)).to_have_text("Read")
    expect(ada.page.get_by_test_id("connection-banner")).to_have_count(0)
    bodies = [m["body"] for m in api.messages(api.token("bob"), cid)]
    assert bodies == ["Before the restart", "Written while the server was away", "And a second one"]


# What Chromium logs while the context is offline (the point of the test).
OFFLINE = [r"net::ERR_INTERNET_DISCONNECTED", r"WebSocket connection to .* failed"]


def test_offline_sends_survive_a_reload_and_arrive_once_in_order(
    people: Callable[[str], Person], api: Api, shots: Shots
) -> None:
    ada, bob = people("ada"), people("bob")
    register(ada, "ada")
    register(bob, "bob")
    cid = api.conversation(api.token("ada"), "direct", [api.user_id(api.token("bob"))])
    open_conversation(ada, cid)
    open_conversation(bob, cid)
    send(ada, "Online first")
    expect(message(bob.page, 1)).to_contain_text("Online first")
    # The app shell is kept by its service worker once that controls the page.
    ada.page.wait_for_function("navigator.serviceWorker && navigator.serviceWorker.controller")

    for pattern in OFFLINE:
        ada.watch.expect(pattern)
    ada.context.set_offline(True)
    expect(ada.page.get_by_test_id("connection-banner").first).to_be_visible()
    texts = ["Offline one", "Offline two", "Offline three"]
    for text in texts:
        send(ada, text)
    expect(pending_status(ada.page)).to_have_count(3)
    for line in pending_status(ada.page).all():
        expect(line).to_have_text("Queued (offline)")

    # A reload while offline: the page comes from the service worker, the history and the
    # three queued messages from the browser's own database.
    response = ada.page.reload()
    assert response is not None and response.from_service_worker
    expect(message(ada.page, 1)).to_contain_text("Online first")
    expect(pending_status(ada.page)).to_have_count(3)
    for text in texts:
        expect(ada.page.get_by_text(text, exact=True)).to_be_visible()
    shots.take(ada.page, "offline-after-reload")
    # Nothing reached the server meanwhile.
    assert [m["body"] for m in api.messages(api.token("bob"), cid)] == ["Online first"]

    ada.context.set_offline(False)
    expect(message(bob.page, 4)).to_contain_text("Offline three", timeout=RECONNECT_TIMEOUT_MS)
    expect(message(bob.page, 2)).to_contain_text("Offline one")
    expect(message(bob.page, 3)).to_contain_text("Offline two")
    expect(pending_status(ada.page)).to_have_count(0)
    expect(status(ada.page, 4)).to_have_text("Read")
    bodies = [m["body"] for m in api.messages(api.token("bob"), cid)]
    assert bodies == ["Online first", *texts]
