"""The terminal client: its core driven end to end against the real server, and the
real prompt_toolkit screen driven by keystrokes through a pipe.

Rules: a real server on 127.0.0.1:0, real stores under tmp_path, waits on SDK
events only; the screen test runs the app on asyncio (as `messageai chat`
does) with the server in a thread, under an absolute deadline.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import trio

from messageai.client import Client
from messageai.client.chat import HELP, ChatApp, ChatCore
from messageai.client.events import EventStream, TypingChanged
from messageai.client.sdk import MAX_BODY_CHARS
from tests.client.netproxy import Proxy
from tests.client.support import FAST, PASSWORD, bodies, leave_channels, live, sign_in, until
from tests.helpers import WS, Account, Harness, make_config, running_server

if TYPE_CHECKING:
    from prompt_toolkit.buffer import Buffer
    from prompt_toolkit.input import PipeInput
    from prompt_toolkit.output import Output


def screen(core: ChatCore) -> str:
    return "".join(fragment[1] for fragment in core.message_lines())


async def test_chat_core_sends_and_shows_sending_sent_read_marks_and_typing(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        core = ChatCore(client)
        assert core.current == cid
        assert "bob" in "".join(fragment[1] for fragment in core.sidebar())
        assert await core.submit("hello from the terminal") is True
        assert "ada: hello from the terminal … sending" in screen(core)
        await until(client, lambda: "✓ sent" in screen(core))
        new = await b.next_event("new_message")
        await b.request("mark_read", conversation_id=cid, seq=new["message"]["seq"])
        await until(client, lambda: "ada: hello from the terminal ✓✓ read" in screen(core))
        await b.request("typing", conversation_id=cid, typing=True)
        async with client.events() as events:
            while "bob typing…" not in core.status():
                await core.on_event(await events.receive())
        await b.send_message(cid, "hi ada")
        # The open conversation is marked read as messages arrive. Both conditions: the
        # message may be in the store before its event reaches the core.
        async with client.events() as events:
            while "bob: hi ada" not in screen(core) or _unread(client, cid):
                await core.on_event(await events.receive())
        assert "online: bob" in core.status()
        assert await core.submit("/nonsense") is True and "unknown command" in core.notice
        assert await core.submit("/quit") is False


async def test_chat_core_starts_a_conversation_and_marks_queued_messages_offline(
    h: Harness, tmp_path: Path
) -> None:
    await h.account("ada"), await h.account("bob")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client:
        core = ChatCore(client)
        assert core.current is None
        await core.submit("/new bob")
        assert core.current is not None and core.title(core.current) == "bob"
        await core.submit("nobody is connected")  # not running: offline
        assert "nobody is connected ⏸ queued" in screen(core)
        async with live(client):
            await until(client, lambda: "✓ sent" in screen(core))


def test_chat_screen_sends_what_is_typed(tmp_path: Path) -> None:
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    config = make_config(tmp_path / "data")
    started = threading.Event()
    stop = threading.Event()
    urls: list[str] = []

    async def serve() -> None:
        async with running_server(config) as server:
            urls.append(server.url)
            started.set()
            await trio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=trio.run, args=(serve,))
    thread.start()
    try:
        assert started.wait(30)
        asyncio.run(
            asyncio.wait_for(_drive_screen(urls[0], tmp_path, create_pipe_input, DummyOutput), 60)
        )
    finally:
        stop.set()
        thread.join(30)


async def _drive_screen(
    url: str,
    tmp_path: Path,
    create_pipe_input: Callable[[], AbstractContextManager[PipeInput]],
    dummy_output: Callable[[], Output],
) -> None:
    bob = await Client.login(
        url, "bob", PASSWORD, store_dir=tmp_path / "bob", register=True, settings=FAST
    )
    ada = await Client.login(
        url, "ada", PASSWORD, store_dir=tmp_path / "ada", register=True, settings=FAST
    )
    async with bob, ada:
        cid = await ada.create_direct("bob")
        with create_pipe_input() as pipe:
            app = ChatApp(ChatCore(ada), input=pipe, output=dummy_output())
            runner = asyncio.ensure_future(app.run())
            # Bob stays live on asyncio too: the SDK's claim that it runs there.
            async with anyio.create_task_group() as tg:
                await tg.start(bob.run)
                pipe.send_text("hello through the screen\r")
                await _until_async(
                    bob, lambda: [m.body for m in bob.messages(cid)] == ["hello through the screen"]
                )
                assert bob.messages(cid)[0].sender_id == ada.me
                tg.cancel_scope.cancel()
            await _until_async(ada, lambda: ada.messages(cid)[-1].status == "sent")
            pipe.send_text("/quit\r")
            await runner
        assert [m.body for m in ada.messages(cid)] == ["hello through the screen"]


async def _until_async(client: Client, condition: Callable[[], bool]) -> None:
    async with client.events() as events:
        while not condition():
            await events.receive()


async def _next_typing(events: EventStream, conversation_id: str) -> bool | None:
    """What the stream says next about typing in a conversation; None if nothing in 10 s."""
    with anyio.move_on_after(10):
        async for event in events:
            if isinstance(event, TypingChanged) and event.conversation_id == conversation_id:
                return event.typing
    return None


async def _until_text(buffer: Buffer, text: str) -> None:
    """Wait until the screen's input holds `text` (woken by the buffer's own event)."""
    changed = asyncio.Event()

    def wake(_buffer: Buffer) -> None:
        changed.set()

    buffer.on_text_changed += wake
    try:
        while buffer.text != text:
            await changed.wait()
            changed.clear()
    finally:
        buffer.on_text_changed -= wake


class _FailingCore(ChatCore):
    """A core whose typing notice fails: the error a screen callback must not lose."""

    async def typed(self, draft: str = "") -> None:
        raise RuntimeError("typing notice failed")


async def test_an_error_in_a_screen_callback_ends_the_screen_instead_of_being_lost(
    h: Harness, tmp_path: Path
) -> None:
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    await h.account("bob")
    async with await sign_in(h.url, "bob", tmp_path / "bob"):
        pass

    async def drive() -> BaseException | None:
        async with Client.open(tmp_path / "bob", settings=FAST) as client:
            with create_pipe_input() as pipe:
                app = ChatApp(_FailingCore(client), input=pipe, output=DummyOutput())
                pipe.send_text("h")  # the input changes: typed() runs from the callback
                try:
                    # Without the error surfacing, the screen would wait for /quit forever.
                    await asyncio.wait_for(app.run(), 30)
                except BaseException as exc:
                    return exc
        return None

    raised = await trio.to_thread.run_sync(asyncio.run, drive())
    assert isinstance(raised, BaseExceptionGroup), repr(raised)
    assert raised.subgroup(RuntimeError) is not None


# ---------------------------------------------------------------- typing (issue 9, bug 2)


async def test_typing_is_announced_for_real_drafts_only_and_withdrawn_when_it_ends(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    await leave_channels(h, ada)  # no `general`: this test counts
    direct = await h.direct(ada, bob)
    group = await h.group(ada, bob, title="Team")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        for cid in (direct, group):
            await b.request("subscribe", conversation_id=cid)
        core = ChatCore(client)
        await core.open(direct)
        # A slash command is not typing: the first typing frame bob gets is the
        # SDK's own "false", sent after it on the same connection.
        await core.typed("/open 2")
        await client.set_typing(direct, False)
        assert (await b.next_event("typing"))["typing"] is False
        # The draft deleted.
        await core.typed("hel")
        assert (await b.next_event("typing"))["typing"] is True
        await core.typed("")
        assert (await b.next_event("typing"))["typing"] is False
        # The draft sent.
        await core.typed("hello")
        assert (await b.next_event("typing"))["typing"] is True
        await core.submit("hello")
        assert (await b.next_event("typing"))["typing"] is False
        # Switching to another conversation: typing stops where it was.
        await core.typed("half a thought")
        assert (await b.next_event("typing"))["typing"] is True
        await core.switch(1)
        assert core.current == group
        stopped = await b.next_event("typing")
        assert (stopped["conversation_id"], stopped["typing"]) == (direct, False)
        # Quitting.
        await core.typed("a draft in the group")
        started = await b.next_event("typing")
        assert (started["conversation_id"], started["typing"]) == (group, True)
        assert await core.submit("/quit") is False
        stopped = await b.next_event("typing")
        assert (stopped["conversation_id"], stopped["typing"]) == (group, False)


class _Clock:
    """The core's clock for typing expiry, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_typist_is_cleared_by_typing_false_and_after_six_seconds_without_renewal(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    clock = _Clock()
    async with client, live(client), h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        core = ChatCore(client, clock=clock)
        async with client.events() as events:
            await b.request("typing", conversation_id=cid, typing=True)
            while "bob typing…" not in core.status():
                await core.on_event(await events.receive())
            await b.request("typing", conversation_id=cid, typing=False)
            while "typing…" in core.status():
                await core.on_event(await events.receive())
            # Renewed within six seconds it stays; silent for six it is gone.
            await b.request("typing", conversation_id=cid, typing=True)
            while "bob typing…" not in core.status():
                await core.on_event(await events.receive())
            clock.now += 5
            await b.request("typing", conversation_id=cid, typing=True)
            while not isinstance(event := await events.receive(), TypingChanged):
                await core.on_event(event)
            await core.on_event(event)
            clock.now += 5
            assert "bob typing…" in core.status()
            clock.now += 1.5
            assert "typing…" not in core.status()
            assert core.expire_typing() is True  # the screen redraws once when one expires
            assert core.expire_typing() is False


async def test_the_screen_withdraws_typing_when_the_draft_is_erased_and_on_quit(
    h: Harness, tmp_path: Path
) -> None:
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    for name in ("ada", "bob"):
        async with await sign_in(h.url, name, tmp_path / name) as signed_in:
            await signed_in.sync()  # the conversation is in the store: the screen opens it

    async def drive() -> list[bool | None]:
        seen: list[bool | None] = []
        async with (
            Client.open(tmp_path / "ada", settings=FAST) as ada_client,
            Client.open(tmp_path / "bob", settings=FAST) as bob_client,
            anyio.create_task_group() as tg,
        ):
            await tg.start(bob_client.run)
            await _until_async(bob_client, lambda: bob_client.state == "online")
            with create_pipe_input() as pipe:
                async with bob_client.events() as bob_events:
                    app = ChatApp(ChatCore(ada_client), input=pipe, output=DummyOutput())
                    runner = asyncio.ensure_future(app.run())
                    await _until_async(ada_client, lambda: ada_client.state == "online")

                    pipe.send_text("hi")
                    seen.append(await _next_typing(bob_events, cid))
                    pipe.send_text("\x7f\x7f")  # backspace twice: the draft is gone
                    seen.append(await _next_typing(bob_events, cid))
                    pipe.send_text("bye")
                    seen.append(await _next_typing(bob_events, cid))
                    pipe.send_text("\x04")  # Ctrl-D: quit with a draft in the input
                    await runner
                    seen.append(await _next_typing(bob_events, cid))
            tg.cancel_scope.cancel()
        return seen

    seen = await trio.to_thread.run_sync(asyncio.run, asyncio.wait_for(drive(), 50))
    assert seen == [True, False, True, False]


# ---------------------------------------------------------------- read on open (issue 9, bug 3)


def _unread(client: Client, conversation_id: str) -> int:
    return next(c.unread_count for c in client.conversations() if c.id == conversation_id)


async def _read_cursor(b: WS, conversation_id: str, user_id: str) -> int:
    """The next read cursor the server announces for `user_id` in a conversation."""
    while True:
        frame = await b.next_event("message_read")
        if (frame["conversation_id"], frame["user_id"]) == (conversation_id, user_id):
            seq: int = frame["seq"]
            return seq


async def test_opening_switching_to_and_replying_in_a_conversation_marks_it_read(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob, carol = await h.account("ada"), await h.account("bob"), await h.account("carol")
    await leave_channels(h, ada)  # no `general`: this test counts
    direct = await h.direct(ada, bob)
    group = await h.group(ada, bob, carol, title="Team")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        for cid in (direct, group):
            await b.request("subscribe", conversation_id=cid)
        core = ChatCore(client)
        await core.open(group)
        await b.send_message(direct, "one")
        await b.send_message(direct, "two")
        await until(client, lambda: _unread(client, direct) == 2)
        # /open: the badge goes at once, and bob is told (his "✓ sent" becomes "✓✓ read").
        await core.submit(f"/open {_numbers(core)['bob']}")
        assert core.current == direct and _unread(client, direct) == 0
        assert await _read_cursor(b, direct, ada.id) == 2
        # Ctrl-N / Ctrl-P.
        await b.send_message(group, "three")
        await until(client, lambda: _unread(client, group) == 1)
        await core.switch(1)
        assert core.current == group and _unread(client, group) == 0
        assert await _read_cursor(b, group, ada.id) == 1
        # A message arriving in the open conversation.
        await b.send_message(group, "four")
        async with client.events() as events:
            while "bob: four" not in screen(core):
                await core.on_event(await events.receive())
        assert _unread(client, group) == 0
        assert await _read_cursor(b, group, ada.id) == 2
        # Replying reads what came before the reply, even if the screen had not yet.
        await b.send_message(group, "five")
        await until(client, lambda: _unread(client, group) == 1)
        await core.submit("a reply")
        assert _unread(client, group) == 0
        assert await _read_cursor(b, group, ada.id) == 3


# ---------------------------------------------------------------- removed from a group (bug 4)


async def test_a_group_one_was_removed_from_shows_as_such_refuses_input_and_never_crashes(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob, carol = await h.account("ada"), await h.account("bob"), await h.account("carol")
    direct = await h.direct(ada, bob)
    group = await h.group(carol, ada, bob, title="Team")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        core = ChatCore(client)
        await core.open(direct)
        await b.send_message(group, "unread when ada is removed")
        await until(client, lambda: _unread(client, group) == 1)
        r = await h.http.delete(
            f"/v1/conversations/{group}/members/{ada.id}", headers=h.auth(carol)
        )
        assert r.status_code == 204, r.text
        await until(
            client, lambda: not next(c.active for c in client.conversations() if c.id == group)
        )
        # Opening it: the history stays readable, marked as no longer mine.
        await core.open(group)
        assert core.current == group
        assert "unread when ada is removed" in screen(core)
        assert "no longer a member" in core.notice
        row = next(f[1] for f in core.sidebar() if "Team" in f[1])
        assert "(left)" in row
        assert "no longer a member" in core.header()
        # Typing into it is refused with a notice, and nothing is queued or sent.
        core.notice = ""
        await core.typed("are you still")
        assert "no longer a member" in core.notice
        core.notice = ""
        assert await core.submit("are you still there?") is True
        assert "no longer a member" in core.notice
        assert bodies(client, group) == ["unread when ada is removed"]
        assert client.outbox_size() == 0
        # Any message arriving now (the crash: mark_read → forbidden).
        await b.send_message(direct, "still friends")
        async with client.events() as events:
            while "still friends" not in [m.body for m in client.messages(direct)]:
                await core.on_event(await events.receive())
        assert core.current == group and "unread when ada is removed" in screen(core)


# ---------------------------------------------------------------- usability (issue 9, bug 8)


def _numbers(core: ChatCore) -> dict[str, int]:
    """Sidebar title -> the number shown beside it."""
    out: dict[str, int] = {}
    for fragment in core.sidebar():
        number, _, rest = fragment[1].strip().partition(" ")
        if number.isdigit():
            out[rest.split(" (")[0]] = int(number)
    return out


async def test_conversation_numbers_stay_put_when_the_list_re_sorts(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob, carol = await h.account("ada"), await h.account("bob"), await h.account("carol")
    await leave_channels(h, ada)  # no `general`: this test counts
    direct = await h.direct(ada, bob)
    group = await h.group(ada, bob, carol, title="Team")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        core = ChatCore(client)
        before = _numbers(core)
        assert sorted(before.values()) == [1, 2]
        # New activity in whichever is listed last would move it to the top of a
        # most-recent-first list, and every number with it.
        last = direct if before["bob"] == 2 else group
        await b.send_message(last, "bump")
        await until(client, lambda: _unread(client, last) == 1)
        assert _numbers(core) == before
        await core.submit(f"/open {before['bob']}")
        assert core.current == direct
        await core.submit(f"/open {before['Team']}")
        assert core.current == group
        assert "numbers stay" in core.notice or "numbers stay" in HELP


async def test_a_fresh_client_opens_its_first_conversation_once_the_list_arrives(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    direct = await h.direct(ada, bob)
    client = await sign_in(h.url, "ada", tmp_path / "ada")  # nothing synced yet
    async with client:
        core = ChatCore(client)
        assert core.current is None
        assert "/new USER" in screen(core)  # says how to start one
        with trio.fail_after(10):
            async with client.events() as events, live(client):
                while core.current is None:
                    await core.on_event(await events.receive())
        assert core.current == direct


async def test_group_titles_may_contain_spaces_in_quotes(h: Harness, tmp_path: Path) -> None:
    ada, *_ = (await h.account("ada"), await h.account("bob"), await h.account("carol"))
    await leave_channels(h, ada)  # no `general`: this test counts
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client):
        core = ChatCore(client)
        await core.submit('/group "Weekend plans" bob carol')
        assert core.current is not None, core.notice
        assert core.title(core.current) == "Weekend plans"
        assert len(client.member_ids(core.current)) == 3
        # An unbalanced quote is a clear error and creates nothing.
        await core.submit('/group "Oops bob')
        assert "quot" in core.notice
        assert len(client.conversations()) == 1


async def test_the_screen_keeps_refused_input_in_the_input_line(h: Harness, tmp_path: Path) -> None:
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    ada, *_ = (await h.account("ada"), await h.account("bob"))

    await leave_channels(h, ada)  # no `general`: this test counts
    async with await sign_in(h.url, "ada", tmp_path / "ada"):
        pass

    async def drive() -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        async with Client.open(tmp_path / "ada", settings=FAST) as client:
            with create_pipe_input() as pipe:
                app = ChatApp(ChatCore(client), input=pipe, output=DummyOutput())
                runner = asyncio.ensure_future(app.run())
                await _until_async(client, lambda: client.state == "online")
                buffer = app.input.buffer
                buffer.text = "hello?"  # no conversation open yet
                buffer.validate_and_handle()  # what Enter does
                seen.append((buffer.text, app.core.notice))
                await app.core.submit("/new bob")
                buffer.text = "x" * (MAX_BODY_CHARS + 1)
                buffer.validate_and_handle()
                seen.append((buffer.text, app.core.notice))
                buffer.text = "/quit"
                buffer.validate_and_handle()
                await runner
        return seen

    seen = await trio.to_thread.run_sync(asyncio.run, asyncio.wait_for(drive(), 30))
    assert seen[0][0] == "hello?" and "no conversation open" in seen[0][1]
    assert seen[1][0] == "x" * (MAX_BODY_CHARS + 1) and "at most" in seen[1][1]


async def test_display_names_are_shown(h: Harness, tmp_path: Path) -> None:
    ada = await h.account("ada")
    r = await h.http.post(
        "/v1/auth/register",
        json={"username": "bob", "password": PASSWORD, "display_name": "Bob Builder"},
    )
    assert r.status_code == 201, r.text
    bob = Account(id=r.json()["user"]["id"], username="bob", token=r.json()["token"])
    cid = await h.direct(ada, bob)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        await b.send_message(cid, "can we fix it?")
        await until(client, lambda: bodies(client, cid) == ["can we fix it?"])
        core = ChatCore(client)
        assert "Bob Builder: can we fix it?" in screen(core)
        assert "Bob Builder" in "".join(fragment[1] for fragment in core.sidebar())
        assert "Bob Builder (@bob)" in core.header()
        assert "online: Bob Builder" in core.status()


async def test_the_status_line_puts_the_queue_before_the_connection_error(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    await h.direct(ada, bob)
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(h.server.port or 0).run)
        client = await sign_in(proxy.url, "ada", tmp_path / "ada")
        async with client, live(client):
            core = ChatCore(client)
            async with client.events() as events:
                proxy.cut()
                await until(client, lambda: client.state != "online")
                await core.submit("first while offline")
                await core.submit("second while offline")
                # Between two attempts to reconnect, with the last error to show.
                while not (client.state == "offline" and core.connection_note):
                    await core.on_event(await events.receive())
                status = core.status()
            # A narrow terminal cuts the end: the queue count comes before the long error.
            assert status.startswith("offline · 2 queued"), status
            assert status.index("2 queued") < status.index("retrying"), status
        nursery.cancel_scope.cancel()


async def test_a_pasted_multi_line_message_shows_every_line(h: Harness, tmp_path: Path) -> None:
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with await sign_in(h.url, "ada", tmp_path / "ada") as signed_in:
        await signed_in.sync()
    pasted = "first line\nsecond line\nthird line"

    async def drive() -> tuple[int, str]:
        async with Client.open(tmp_path / "ada", settings=FAST) as client:
            with create_pipe_input() as pipe:
                app = ChatApp(ChatCore(client), input=pipe, output=DummyOutput())
                runner = asyncio.ensure_future(app.run())
                await _until_async(client, lambda: client.state == "online")
                # A bracketed paste, as a terminal sends it.
                pipe.send_text("\x1b[200~first line\r\nsecond line\r\nthird line\x1b[201~")
                await _until_text(app.input.buffer, pasted)
                input_lines = app.input.window.preferred_height(80, 24).preferred
                pipe.send_text("\r")  # Enter sends it
                # Until acked: the screen is read as it shows a sent message (`#1`, not
                # the wider `#q1` of one still queued).
                await _until_async(
                    client,
                    lambda: (
                        [(m.body, m.seq is not None) for m in client.messages(cid)]
                        == [(pasted, True)]
                    ),
                )
                pipe.send_text("typed\x1b\ron two lines")  # Alt-Enter starts a new line
                await _until_text(app.input.buffer, "typed\non two lines")
                app.input.buffer.text = "/quit"
                pipe.send_text("\r")
                await runner
                return input_lines, screen(app.core)

    input_lines, shown = await trio.to_thread.run_sync(asyncio.run, asyncio.wait_for(drive(), 30))
    assert input_lines == 3  # the input grows to show the whole paste
    assert "ada: first line\n" in shown
    # Under the text, not the number and time.
    assert "\n         second line\n         third line" in shown


async def test_a_message_typed_offline_keeps_the_time_it_was_typed(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(h.server.port or 0).run)
        client = await sign_in(proxy.url, "ada", tmp_path / "ada")
        async with client, live(client):
            core = ChatCore(client)
            proxy.cut()
            await until(client, lambda: client.state != "online")
            await core.submit("typed on the train")
            typed = client.messages(cid)[-1]
            assert typed.status == "sending"
            proxy.restore()
            client.reconnect_now()
            await until(client, lambda: client.messages(cid)[-1].status == "sent")
            delivered = client.messages(cid)[-1]
            shown = screen(core)
        nursery.cancel_scope.cancel()
    r = await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(bob))
    [on_server] = r.json()["messages"]
    assert on_server["created_at"] > typed.created_at  # the server's time is the delivery's
    # The screen shows the time it was typed.
    assert delivered.created_at == typed.created_at
    when = time.strftime("%H:%M", time.localtime(typed.created_at / 1000))
    assert f"{when} ada: typed on the train" in shown


# ---------------------------------------------------------------- people and membership (issue 9)


async def _register(h: Harness, username: str, display_name: str) -> Account:
    r = await h.http.post(
        "/v1/auth/register",
        json={"username": username, "password": PASSWORD, "display_name": display_name},
    )
    assert r.status_code == 201, r.text
    return Account(id=r.json()["user"]["id"], username=username, token=r.json()["token"])


async def _server_members(h: Harness, conversation_id: str, who: Account) -> list[str]:
    r = await h.http.get(f"/v1/conversations/{conversation_id}", headers=h.auth(who))
    assert r.status_code == 200, r.text
    return sorted(r.json()["member_ids"])


async def test_members_and_who_show_display_names_and_presence(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await _register(h, "bob", "Bob Builder")
    await _register(h, "bert", "Bert")
    group = await h.group(ada, bob, title="Team")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob):
        core = ChatCore(client)
        await core.open(group)
        await until(client, lambda: client.is_online(bob.id) is True)
        assert await core.submit("/members") is True and not core.rejected
        assert core.notice.startswith("members of Team (2): "), core.notice
        assert "@ada (you)" in core.notice and "Bob Builder (@bob) online" in core.notice
        await core.submit("/who b")
        assert "Bob Builder (@bob) online" in core.notice and "Bert (@bert)" in core.notice
        assert "@ada" not in core.notice
        await core.submit("/who zz")
        assert core.notice == "no users matching 'zz'"
        await core.submit("/members extra")
        assert core.rejected and "unknown command or wrong arguments" in core.notice
        assert "/members" in HELP and "/who" in HELP and "/leave" in HELP


async def test_add_remove_and_leave_change_the_group_and_refusals_are_notices(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob, carol = await h.account("ada"), await h.account("bob"), await h.account("carol")
    await leave_channels(h, ada)  # no `general`: this test counts
    direct = await h.direct(ada, bob)
    team = await h.group(ada, bob, title="Team")
    bobs = await h.group(bob, ada, carol, title="Bobs")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client):
        core = ChatCore(client)
        await until(client, lambda: len(client.conversations()) == 3)
        await core.open(team)
        await core.submit("/add carol")
        assert not core.rejected and core.notice == "added carol to Team", core.notice
        assert carol.id in client.member_ids(team)
        assert await _server_members(h, team, bob) == sorted([ada.id, bob.id, carol.id])
        # An unknown user: nobody is added.
        await core.submit("/add @nobody bob")
        assert core.rejected and "no user named 'nobody'" in core.notice
        await core.submit("/remove carol")
        assert not core.rejected and core.notice == "removed carol from Team", core.notice
        assert carol.id not in client.member_ids(team)
        assert await _server_members(h, team, bob) == sorted([ada.id, bob.id])
        await core.submit("/remove carol")  # no longer in it
        assert core.rejected and "'carol' is not a member" in core.notice
        for wrong in ("/add", "/remove", "/remove bob carol", "/leave now"):
            await core.submit(wrong)
            assert core.rejected and core.notice.startswith("usage: "), (wrong, core.notice)
        # Not allowed: only the group's creator removes others.
        await core.open(bobs)
        await core.submit("/remove carol")
        assert core.rejected and "forbidden" in core.notice, core.notice
        assert await _server_members(h, bobs, bob) == sorted([ada.id, bob.id, carol.id])
        # Not a group.
        await core.open(direct)
        for line in ("/add carol", "/remove bob", "/leave"):
            await core.submit(line)
            assert core.rejected and "groups only" in core.notice, (line, core.notice)
        assert sorted(client.member_ids(direct)) == sorted([ada.id, bob.id])
        # Leaving: the read-only "(left)" state; nothing typed is sent, nothing crashes.
        await core.open(team)
        await core.submit("/leave")
        assert not core.rejected and core.notice.startswith("you left Team"), core.notice
        assert not core.is_member(team)
        assert "(left)" in next(f[1] for f in core.sidebar() if "Team" in f[1])
        assert await _server_members(h, team, bob) == [bob.id]
        await core.submit("still here?")
        assert core.rejected and "no longer a member" in core.notice
        await core.submit("/add carol")
        assert core.rejected and "no longer a member" in core.notice
        assert "no longer a member" in core.members()
        assert client.outbox_size() == 0


async def test_attachments_are_shown_as_such_in_the_history(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    png = b"\x89PNG\r\n\x1a\n" + bytes(500)
    r = await h.http.post(
        "/v1/media", content=png, headers={**h.auth(bob), "Content-Type": "image/png"}
    )
    assert r.status_code == 201, r.text
    media_id = r.json()["id"]
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": "c1", "body": "look", "attachments": [media_id]},
        headers=h.auth(bob),
    )
    assert r.status_code == 201, r.text
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client):
        await until(client, lambda: bodies(client, cid) == ["look"])
        core = ChatCore(client)
        await core.open("1")  # what is on screen is looked up: name, type, size
        assert "bob: look\n         [file " in screen(core), screen(core)
        assert "· image/png · 508 bytes]" in screen(core), screen(core)
