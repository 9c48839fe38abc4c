"""The assistant in the SDK and the terminal client: `/ask` streaming into the message
pane, citations that `/go #N` opens, `/catchup`, `/todo`, `/ai on|off` (live on every
open chat), `/ai log`; `unavailable` and `forbidden` as one notice line.

Rules: the real `ChatCore` (and the real `ChatApp` on asyncio, as `messageai chat`
runs, for the repaint as an answer streams) against the real server on
127.0.0.1:0; its `[ai]` endpoint, where there is one, is `tests/llm.py`'s loopback
fake, scripted per test, every request recorded; real stores under tmp_path; waits
on SDK events; an absolute deadline per test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import trio

from messageai.client import Client
from messageai.client.chat import HELP, ChatApp, ChatCore
from messageai.client.errors import Forbidden, ServerError
from tests.client.support import FAST, leave_channels, live, sign_in, until
from tests.conftest import TEST_TIMEOUT_SECONDS
from tests.helpers import Harness, harness, make_config
from tests.llm import FakeLLM, fake_llm, text


def screen(core: ChatCore) -> str:
    return "".join(fragment[1] for fragment in core.message_lines())


async def settle(core: ChatCore, condition: Callable[[], bool]) -> None:
    """Feed the core the SDK's events until `condition()` holds."""
    with trio.fail_after(20):
        async with core.client.events() as events:
            while not condition():
                await core.on_event(await events.receive())


@pytest.fixture
async def ai(tmp_path: Path) -> AsyncIterator[tuple[Harness, FakeLLM]]:
    """A server whose `[ai]` endpoint is the loopback fake."""
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with fake_llm() as llm:
            config = make_config(tmp_path / "data", ai={"base_url": llm.url, "model": "fake"})
            async with harness(config) as running:
                yield running, llm


async def test_without_an_endpoint_each_ai_command_is_one_notice_and_the_switch_still_works(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with h.ws(bob) as b:
        await b.send_message(cid, "the meeting is on friday")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    other = await sign_in(h.url, "bob", tmp_path / "bob")
    async with client, other, live(client, other):
        core, theirs = ChatCore(client), ChatCore(other)
        await core.open(cid)
        await theirs.open(cid)
        before = screen(core)
        for line in ("/ask when is the meeting?", "/catchup"):
            await core.submit(line)
            assert core.rejected, line
            assert core.notice.startswith("the assistant is unavailable: "), core.notice
            assert "\n" not in core.notice and "Traceback" not in core.notice
            assert core.ai.view is None and screen(core) == before
        # Action items: unavailable as well where the server serves them, else said so.
        await core.submit("/todo")
        assert core.rejected, core.notice
        if _serves_action_items():
            assert core.notice.startswith("the assistant is unavailable: "), core.notice
        else:
            assert core.notice == "this server does not offer that yet (no route for it)"
        # The settings and the log work without an endpoint (PROTOCOL.md).
        await core.submit("/ai")
        assert not core.rejected, core.notice
        assert core.notice.startswith("assistant off in bob: nothing of it is sent"), core.notice
        assert "never changed" in core.notice
        async with other.events() as heard:
            await core.submit("/ai on")
            assert not core.rejected and core.notice.startswith("assistant on in bob"), core.notice
            # Every open chat hears of it: bob's (ada's own connection gets it too).
            with trio.fail_after(20):
                while "turned the assistant on" not in theirs.notice:
                    await theirs.on_event(await heard.receive())
        assert theirs.notice == "ada turned the assistant on in ada", theirs.notice
        assert "AI on" in theirs.header() and "AI on" in core.header()
        await theirs.submit("/ai")
        assert "changed by ada at " in theirs.notice, theirs.notice
        await core.submit("/ai proactive on")
        assert core.notice.startswith("assistant on (proposes meeting times) in bob"), core.notice
        assert (await other.ai_settings(cid))["proactive"] is True
        # With the switch on, still unavailable: no endpoint comes first.
        await core.submit("/ask when is the meeting?")
        assert core.rejected and core.notice.startswith("the assistant is unavailable"), core.notice
        with pytest.raises(ServerError) as streamed:
            await client.ask(cid, "when?", on_delta=lambda piece: None)
        assert streamed.value.code == "unavailable"
        await core.submit("/ai log")
        assert not core.rejected, core.notice
        assert "nothing of this conversation was ever sent to the model" in screen(core)
        async with client.events() as heard:
            await theirs.submit("/ai off")
            with trio.fail_after(20):
                while "bob turned the assistant off" not in core.notice:
                    await core.on_event(await heard.receive())
        assert "AI off" in core.header()
        # Answers are never messages: nothing was stored or posted.
        assert [m.body for m in client.messages(cid)] == ["the meeting is on friday"]
        r = await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(ada))
        assert [m["body"] for m in r.json()["messages"]] == ["the meeting is on friday"]
        for command in ("/ask", "/catchup", "/todo", "/ai on|off", "/ai log", "/go #N"):
            assert command in HELP, command


async def test_usage_of_the_ai_commands_is_a_notice_and_nothing_is_asked(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with await sign_in(h.url, "ada", tmp_path / "ada") as client:
        await client.sync()
        core = ChatCore(client)
        await core.open(cid)
        for line, said in (
            ("/ask", "usage: /ask QUESTION"),
            ("/ask    ", "usage: /ask QUESTION"),
            ("/ai maybe", "usage: /ai"),
            ("/ai proactive sometimes", "usage: /ai proactive on|off"),
            ("/todo finish 1", "usage: /todo"),
            ("/catchup 99", "no conversation '99'"),
            (f"/ask {'x' * 2001}", "at most 2000 characters"),
        ):
            await core.submit(line)
            assert core.rejected and said in core.notice, (line, core.notice)


async def test_ask_streams_into_the_pane_cites_messages_that_go_opens_and_stores_nothing(
    ai: tuple[Harness, FakeLLM], tmp_path: Path
) -> None:
    h, llm = ai
    ada, bob = await h.account("ada"), await h.account("bob")
    await leave_channels(h, ada, bob)
    cid = await h.direct(ada, bob)
    async with h.ws(bob) as b:
        await b.send_message(cid, "lunch is at noon")
        await b.send_message(cid, "the meeting moved to friday at 3")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client):
        core = ChatCore(client)
        await core.open(cid)
        # The switch is off: forbidden, one line, and nothing reached the endpoint.
        await core.submit("/ask when is the meeting?")
        assert core.rejected and core.notice.startswith("the assistant refused: "), core.notice
        assert "\n" not in core.notice and llm.requests == []
        await core.submit("/ai on")
        assert not core.rejected, core.notice
        painted: list[str] = []
        core.redraw = lambda: painted.append(screen(core))
        # A stream cut short: the pieces shown so far go, and one notice says why.
        llm.script(text("The meeting ", "is on ", "monday", cut_after=3))
        await core.submit("/ask when is the meeting?")
        assert core.rejected and core.notice.startswith("the assistant is unavailable")
        assert any("The meeting ▌" in p for p in painted), painted
        assert core.ai.view is None and "The meeting" not in screen(core), screen(core)
        # The answer streams: every piece is painted as it comes.
        llm.script(text("The meeting ", "is on friday ", "at 3 [2]."))
        painted.clear()
        await core.submit("/ask when is the meeting?")
        assert not core.rejected, core.notice
        assert len(painted) >= 3, painted
        assert "The meeting ▌" in painted[0] and "at 3." not in painted[0], painted
        shown = screen(core)
        assert "The meeting is on friday at 3 [2]." in shown and "▌" not in shown, shown
        assert "only you see this" in shown
        assert "cited: #2 (the meeting moved to friday at 3)" in shown, shown
        # Asked again over unchanged messages: the cache, no request, no deltas.
        sent = len(llm.requests)
        painted.clear()
        await core.submit("/ask when is the meeting?")
        assert len(llm.requests) == sent and not any("▌" in p for p in painted), painted
        assert "from the cache" in screen(core)
        # Cited messages are links: /go #N opens the conversation at it (marked).
        await core.submit("/go #2")
        assert not core.rejected and core.ai.view is None, core.notice
        assert "▶#2 " in screen(core), screen(core)
        await core.submit("/ask when is the meeting?")
        await core.submit("/go #77")
        assert core.rejected and "not cited here" in core.notice
        # The log lists what was sent, with its seqs.
        await core.submit("/ai log")
        assert "ask: " in screen(core) and "#2" in screen(core), screen(core)
        # Private: nothing stored, nothing posted.
        assert [m.body for m in client.messages(cid)] == [
            "lunch is at noon",
            "the meeting moved to friday at 3",
        ]
        r = await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(bob))
        assert len(r.json()["messages"]) == 2


async def test_the_sdk_asks_over_rest_and_the_websocket_alike(
    ai: tuple[Harness, FakeLLM], tmp_path: Path
) -> None:
    h, llm = ai
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with h.ws(bob) as b:
        await b.send_message(cid, "the report is due monday")
    async with await sign_in(h.url, "ada", tmp_path / "ada") as client:
        await client.sync()
        assert (await client.ai_settings(cid))["enabled"] is False
        settings = await client.set_ai(cid, True)
        assert (settings["enabled"], settings["changed_by"]) == (True, client.me)
        assert client.ai_settings_known(cid) == settings
        llm.script(text("Monday."), text("It is ", "due monday."))
        rest = await client.ask(cid, "when is the report due?")
        assert (rest["answer"], rest["cached"]) == ("Monday.", False)
        # Offline (no running connection): `ask` opens its own for the question.
        pieces: list[str] = []
        streamed = await client.ask(cid, "when is the report due, exactly?", on_delta=pieces.append)
        assert pieces == ["It is ", "due monday."] and streamed["answer"] == "It is due monday."
        assert set(streamed["citations"]) <= {1}
        log = await client.ai_log(cid)
        assert [e["action"] for e in log] == ["ask", "ask"] and log[0]["user_id"] == client.me
        assert all(1 in e["seqs"] for e in log)
        # A refusal on that connection is the server's error itself, not a group of it.
        await client.set_ai(cid, False)
        with pytest.raises(Forbidden) as refused:
            await client.ask(cid, "and now?", on_delta=pieces.append)
        assert refused.value.detail == "the assistant is switched off in this conversation"


async def test_catch_up_summarises_the_unread_range_or_says_nothing_is_unread(
    ai: tuple[Harness, FakeLLM], tmp_path: Path
) -> None:
    h, llm = ai
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    await leave_channels(h, ada, bob, cat)
    cid = await h.direct(ada, bob)
    elsewhere = await h.direct(ada, cat)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        core = ChatCore(client)
        await core.open(cid)
        await core.submit("/ai on")
        await core.submit("/catchup")
        assert not core.rejected and core.notice.startswith("nothing unread"), core.notice
        assert llm.requests == [] and core.ai.view is None
        # Bob writes while ada looks elsewhere: `/catchup N` summarises, then opens it.
        await core.open(elsewhere)
        await b.send_message(cid, "I booked the room for thursday")
        await b.send_message(cid, "and ordered pizza")
        await until(client, lambda: len(client.messages(cid)) == 2)
        llm.script(text("Bob booked a room for thursday and ordered pizza."))
        number = [c.id for c in core.numbered()].index(cid) + 1
        await core.submit(f"/catchup {number}")
        assert not core.rejected, core.notice
        assert core.current == cid
        shown = screen(core)
        assert "catch-up of #1 to #2" in shown and "ordered pizza." in shown, shown
        assert any("booked the room" in t for t in llm.texts())


async def test_the_chat_app_repaints_as_an_answer_streams(
    ai: tuple[Harness, FakeLLM], tmp_path: Path
) -> None:
    """The real screen: `/ask` typed into the input, the answer painted in the pane."""
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    h, llm = ai
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with h.ws(bob) as b:
        await b.send_message(cid, "the deadline is the 12th")
    async with await sign_in(h.url, "ada", tmp_path / "ada") as signed_in:
        await signed_in.sync()
        await signed_in.set_ai(cid, True)
    llm.script(text("The ", "12th."))

    async def drive() -> tuple[list[str], str]:
        async with Client.open(tmp_path / "ada", settings=FAST) as client:
            with create_pipe_input() as pipe:
                app = ChatApp(ChatCore(client), input=pipe, output=DummyOutput())
                painted: list[str] = []
                repainted = asyncio.Event()
                repaint = app.core.redraw

                def record() -> None:
                    painted.append(screen(app.core))
                    repainted.set()
                    repaint()

                app.core.redraw = record
                runner = asyncio.ensure_future(app.run())
                async with client.events() as events:
                    while client.state != "online":
                        await events.receive()
                await app.core.open(cid)
                pipe.send_text("/ask what is the deadline?\r")
                while "The 12th." not in screen(app.core) or "▌" in screen(app.core):
                    await repainted.wait()
                    repainted.clear()
                shown = screen(app.core)
                app.input.buffer.text = "/quit"
                pipe.send_text("\r")
                await runner
                return painted, shown

    def run() -> tuple[list[str], str]:
        return asyncio.run(asyncio.wait_for(drive(), 30))

    painted, shown = await trio.to_thread.run_sync(run)
    assert "The 12th." in shown and "only you see this" in shown, shown
    assert any("The ▌" in p for p in painted), painted
    async with httpx.AsyncClient(base_url=h.url) as http:
        r = await http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(bob))
    assert len(r.json()["messages"]) == 1


async def test_the_todo_and_log_views_show_owners_dues_and_seqs_that_go_opens(
    h: Harness, tmp_path: Path
) -> None:
    """The views as drawn from the server's objects (PROTOCOL.md's shapes), set here
    directly: no server on any branch serves action items yet."""
    from messageai.client.chat_ai import View

    ada, bob = (
        await h.account(
            "ada",
        ),
        await h.account("bob"),
    )
    cid = await h.direct(ada, bob)
    async with h.ws(bob) as b:
        await b.send_message(cid, "ada will send the slides by friday")
    async with await sign_in(h.url, "ada", tmp_path / "ada") as client:
        await client.sync()
        core = ChatCore(client)
        await core.open(cid)
        core.ai.view = View(
            "todo",
            cid,
            "action items in bob",
            items=[
                {"id": "i1", "text": "send the slides", "owner_id": ada.id, "due": "friday",
                 "source_seqs": [1], "status": "open"},
                {"id": "i2", "text": "book\na room", "owner_id": None, "due": None,
                 "source_seqs": [], "status": "done"},
            ],
        )  # fmt: skip
        shown = screen(core)
        assert " 1. [ ] send the slides — ada, due friday · from #1" in shown, shown
        assert " 2. [x] book a room\n" in shown, shown
        await core.submit("/go #1")
        assert not core.rejected and "▶#1 " in screen(core), core.notice
        core.ai.view = View(
            "log",
            cid,
            "what was sent",
            entries=[
                {"at": 1764150000000, "user_id": None, "action": "action_items",
                 "seqs": list(range(1, 30))},
                {"at": 1764150000000, "user_id": bob.id, "action": "ask", "seqs": [1]},
            ],
        )  # fmt: skip
        shown = screen(core)
        assert "(background) action_items: #1 #2" in shown and "and 9 more" in shown, shown
        assert "bob ask: #1" in shown, shown
        await core.submit("/go 40")
        assert core.rejected and "not cited here" in core.notice


def _serves_action_items() -> bool:
    """Action items are served by the `jobs` branch's server (its `[jobs]` config)."""
    from messageai.config import Config

    return "jobs" in {a.name for a in Config.__attrs_attrs__}


@pytest.mark.skipif(not _serves_action_items(), reason="no action items in this server yet")
async def test_todo_lists_the_items_found_and_marks_one_done(tmp_path: Path) -> None:
    from tests.llm import tools

    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with fake_llm() as llm:
            jobs = {"poll_seconds": 0.05, "action_items_delay_seconds": 0.2}
            config = make_config(
                tmp_path / "data", ai={"base_url": llm.url, "model": "fake"}, jobs=jobs
            )
            async with harness(config) as h:
                ada, bob = await h.account("ada"), await h.account("bob")
                cid = await h.direct(ada, bob)
                async with h.ws(bob) as b:
                    await b.send_message(cid, "ada, can you send the slides by friday?")
                client = await sign_in(h.url, "ada", tmp_path / "ada")
                async with client, live(client):
                    core = ChatCore(client)
                    await core.open(cid)
                    await core.submit("/todo")
                    assert core.rejected and core.notice.startswith("the assistant refused: ")
                    await core.submit("/ai on")
                    found = {"text": "Send the slides", "owner": "ada", "due": "friday",
                             "sources": [1]}  # fmt: skip
                    llm.script(tools(("record_action_items", {"items": [found]})))
                    # The first read starts the extraction: look again until it is done.
                    while "[ ] Send the slides" not in screen(core):
                        await core.submit("/todo")
                        assert not core.rejected, core.notice
                        await trio.sleep(0.05)
                    shown = screen(core)
                    assert " 1. [ ] Send the slides — ada, due friday · from #1" in shown, shown
                    await core.submit("/todo done 1")
                    assert not core.rejected and "item 1 marked done" in core.notice
                    assert " 1. [x] Send the slides" in screen(core)
                    [item] = await client.action_items(cid)
                    assert item["status"] == "done"
                    await core.submit("/todo open 1")
                    assert (await client.action_items(cid))[0]["status"] == "open"
                    await core.submit("/todo done 2")
                    assert core.rejected and "no action item '2'" in core.notice
                    await core.submit("/go #1")
                    assert not core.rejected and "▶#1 " in screen(core)


async def test_proactive_scheduling_posts_a_vote_into_the_chat(tmp_path: Path) -> None:
    """`/ai proactive on`, members talk of times, the assistant's post shows in the pane
    under its name (a member of nothing, learned from its message), and `/react` votes."""
    from tests.llm import tools

    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with fake_llm() as llm:
            ai = {"base_url": llm.url, "model": "fake", "proactive_delay_seconds": 0.2}
            jobs = {"poll_seconds": 0.05, "action_items_after_messages_seconds": 3600}
            config = make_config(tmp_path / "data", ai=ai, jobs=jobs)
            async with harness(config) as h:
                ada, bob = await h.account("ada"), await h.account("bob")
                cid = await h.direct(ada, bob)
                client = await sign_in(h.url, "ada", tmp_path / "ada")
                async with client, live(client):
                    core = ChatCore(client)
                    await core.open(cid)
                    await core.submit("/ai on")
                    await core.submit("/ai proactive on")
                    assert not core.rejected, core.notice
                    times = {
                        "times": [
                            {"text": "Friday 3pm", "sources": [1]},
                            {"text": "Saturday 10am", "sources": [2]},
                        ]
                    }
                    llm.script(tools(("record_meeting_times", times)))
                    async with h.ws(bob) as b:
                        await b.send_message(cid, "can we meet friday at 3pm?")
                        await b.send_message(cid, "or saturday 10am")
                    await settle(core, lambda: "Assistant" in screen(core))
                    shown = screen(core)
                    assert "Times proposed. Vote with a reaction:" in shown, shown
                    assert "1\ufe0f\u20e3 Friday 3pm" in shown and "Saturday 10am" in shown
                    await core.submit("/react 3 1\ufe0f\u20e3")
                    assert not core.rejected, core.notice
                    await until(
                        client,
                        lambda: (
                            (m := client.message_by_seq(cid, 3)) is not None
                            and m.reactions == {"1\ufe0f\u20e3": [ada.id]}
                        ),
                    )
