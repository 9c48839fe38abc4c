"""The terminal client's protocol v1.1 commands and what it shows: replies, edits,
tombstones, reactions, mentions, search, channels, topics, renames, files, the bell.

Rules: the real `ChatCore` (and for the bell the real `ChatApp` on asyncio, as
`messageai chat` runs) against the real server on 127.0.0.1:0; real stores under
tmp_path; waits on SDK events; the `h` fixture's deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from messageai.client import Client
from messageai.client.chat import HELP, ChatApp, ChatCore
from tests.client.support import FAST, live, sign_in, until
from tests.helpers import Harness


def screen(core: ChatCore) -> str:
    return "".join(fragment[1] for fragment in core.message_lines())


def styled(core: ChatCore, style: str) -> list[str]:
    return [fragment[1] for fragment in core.message_lines() if fragment[0] == style]


async def settle(core: ChatCore, condition: Callable[[], bool]) -> None:
    """Feed the core the SDK's events until `condition()` holds."""
    with trio.fail_after(20):
        async with core.client.events() as events:
            while not condition():
                await core.on_event(await events.receive())


async def test_reply_edit_delete_react_and_mentions_in_the_chat(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        await b.request("subscribe", conversation_id=cid)
        await b.send_message(cid, "lunch at noon, @ada?")
        await until(client, lambda: bool(client.messages(cid)))
        core = ChatCore(client)
        await core.open(cid)
        # Numbered; a mention of me is highlighted.
        assert screen(core).startswith("#1 "), screen(core)
        assert "@ada" not in styled(core, "class:mention")  # bob declared no mentions
        await core.submit("/reply 1 yes, see you there @bob")
        assert not core.rejected, core.notice
        await settle(core, lambda: client.outbox_size() == 0)
        shown = screen(core)
        assert "╭ #1 bob: lunch at noon, @ada?" in shown, shown
        assert "#2 " in shown and "ada: yes, see you there @bob" in shown
        new = await b.next_event("new_message")
        assert (new["message"]["reply_to"], new["message"]["mentions"]) == (1, [bob.id])
        # bob mentions me properly: highlighted.
        await b.request(
            "send_message",
            conversation_id=cid,
            client_id="m",
            body="thanks @ada",
            mentions=[ada.id],
        )
        await settle(core, lambda: "thanks" in screen(core))
        assert "@ada" in styled(core, "class:mention")
        # Edit, shown at once and confirmed.
        await core.submit("/edit 2 yes, see you at noon")
        assert "yes, see you at noon (edited)" in screen(core)
        await settle(core, lambda: client.outbox_size() == 0 and "changing" not in screen(core))
        updated = await b.next_event("message_updated")
        assert updated["message"]["body"] == "yes, see you at noon"
        # React, and the same command again removes it; /unreact too.
        await core.submit("/react 1 👍")
        assert "[👍 1]" in screen(core) and "reacted 👍 to #1" in core.notice
        await settle(core, lambda: client.outbox_size() == 0)
        await core.submit("/react 1 👍")
        assert "[👍" not in screen(core)
        await core.submit("/react 1 🎉")
        await core.submit("/unreact 1 🎉")
        await settle(core, lambda: client.outbox_size() == 0)
        assert "[🎉" not in screen(core)
        await b.request("react", conversation_id=cid, seq=1, emoji="🎉", on=True)
        await settle(core, lambda: "[🎉 1]" in screen(core))
        assert "[🎉 1]" in styled(core, "class:reaction")  # not mine: plain
        # Delete my reply: a tombstone, and the quote of it says so.
        await core.submit("/delete 2")
        await settle(core, lambda: client.outbox_size() == 0)
        assert "ada: message deleted" in screen(core)
        await core.submit("/reply 2 too late")
        assert core.rejected and "deleted" in core.notice
        # Wrong numbers and usage: a notice, the line goes back.
        for line in ("/edit 99 x", "/edit", "/react 1", "/delete 1 2", "/react 1 two words"):
            await core.submit(line)
            assert core.rejected, line
        assert "/reply M TEXT" in HELP and "/unreact" in HELP


async def test_a_refused_change_is_undone_and_said_in_the_notice(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with h.ws(bob) as b:
        await b.send_message(cid, "mine, says bob")
        client = await sign_in(h.url, "ada", tmp_path / "ada")
        async with client, live(client):
            await until(client, lambda: bool(client.messages(cid)))
            core = ChatCore(client)
            await core.submit("/edit 1 nope")
            assert core.rejected and "only its sender" in core.notice
            await core.submit("/delete 1")
            await settle(core, lambda: "refused" in core.notice)
            assert "refused your delete of #1: forbidden" in core.notice, core.notice
            assert "bob: mine, says bob" in screen(core)


async def test_queued_messages_have_a_number_that_commands_take(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with await sign_in(h.url, "ada", tmp_path / "ada") as client:
        await client.sync()
        core = ChatCore(client)
        await core.submit("draft with a typo")  # offline: queued
        queued = client.messages(cid)[0]
        label = f"#q{queued.local_id}"
        assert screen(core).startswith(label), screen(core)
        await core.submit(f"/edit {label} draft without a typo")
        assert "draft without a typo (edited)" in screen(core)
        await core.submit("second, to be taken back")
        second = client.messages(cid)[-1]
        await core.submit(f"/delete q{second.local_id}")
        assert "never sent" in core.notice and "taken back" not in screen(core)
        await client.sync()
    messages = (await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(bob))).json()[
        "messages"
    ]
    assert [m["body"] for m in messages] == ["draft without a typo"]


async def test_search_shows_results_and_go_opens_the_conversation(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    direct = await h.direct(ada, bob)
    group = await h.group(ada, bob, cat, title="Planning")
    async with h.ws(bob) as b:
        await b.send_message(direct, "nothing to see")
        await b.send_message(group, "the quarterly meetings move to friday")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client):
        core = ChatCore(client)
        await core.open(direct)
        await core.submit("/search meeting")
        assert not core.rejected and "1 result(s)" in core.notice, core.notice
        shown = screen(core)
        assert "1. Planning #1 bob:" in shown and "quarterly" in shown, shown
        assert "meetings" in styled(core, "class:mention")  # the match is highlighted
        await core.submit("/go 1")
        assert core.current == group and core.results is None
        assert "▶#1 " in screen(core) and "bob: the quarterly meetings move to friday" in screen(
            core
        )
        await core.submit("/search zebra")
        assert "nothing found" in core.notice and core.results is None
        await core.submit("/go 5")
        assert core.rejected


async def test_channels_join_topic_and_rename(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    r = await h.http.post(
        "/v1/conversations",
        json={"kind": "channel", "title": "random", "topic": "anything goes"},
        headers=h.auth(bob),
    )
    assert r.status_code == 201, r.text
    channel = r.json()["id"]
    group = await h.group(ada, bob, title="Old name")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        core = ChatCore(client)
        await core.submit("/channels")
        assert "random (1)" in core.notice and "anything goes" in core.notice, core.notice
        await core.submit("/join random")
        assert not core.rejected and core.current == channel, core.notice
        assert "anything goes" in core.header()
        await core.submit("/topic lunch plans only")
        assert "lunch plans only" in core.header()
        await core.submit("/topic")
        assert core.notice == "topic: lunch plans only"
        await core.open(group)
        await core.submit("/rename New name")
        assert not core.rejected and core.title(group) == "New name"
        # The others hear of it; and a rename by them reaches this screen.
        frame = await b.next_event("conversation_updated")
        assert frame["conversation"]["title"] in ("New name", "random")
        r = await h.http.patch(
            f"/v1/conversations/{group}", json={"title": "Bob's name"}, headers=h.auth(bob)
        )
        assert r.status_code == 200, r.text
        await settle(core, lambda: core.title(group) == "Bob's name")
        direct = await client.create_direct("bob")
        await core.open(direct)
        await core.submit("/rename Nope")
        assert core.rejected and "direct" in core.notice


async def test_upload_and_save_an_attachment(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    picture = tmp_path / "holiday photo.png"
    png = b"\x89PNG\r\n\x1a\n" + bytes(2000)
    picture.write_bytes(png)
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    other = await sign_in(h.url, "bob", tmp_path / "bob")
    async with client, other, live(client, other):
        core = ChatCore(client)
        await core.open(cid)
        await core.submit(f'/upload "{picture}" from the beach')
        assert not core.rejected, core.notice
        assert "[file holiday photo.png · image/png · 2.0 KB]" in screen(core), screen(core)
        await until(client, lambda: client.outbox_size() == 0)
        # Bob's screen learns its name, type and size, and saves it.
        await until(other, lambda: bool(other.messages(cid)))
        theirs = ChatCore(other)
        await theirs.open(cid)
        assert "from the beach" in screen(theirs)
        assert "holiday photo.png · image/png · 2.0 KB]" in screen(theirs), screen(theirs)
        saved = tmp_path / "saved"
        saved.mkdir()
        await theirs.submit(f"/save 1 {saved}")
        assert not theirs.rejected, theirs.notice
        assert (saved / "holiday photo.png").read_bytes() == png
        await theirs.submit(f"/save 1 {saved}")  # never overwrites
        assert theirs.rejected and "exists" in theirs.notice
        # A captionless file is a message too.
        await core.submit(f'/upload "{picture}"')
        assert not core.rejected, core.notice
        await until(client, lambda: client.outbox_size() == 0)
        await core.submit("/upload /nonexistent/file")
        assert core.rejected and "cannot read" in core.notice


def _recording_output() -> Any:
    """prompt_toolkit's DummyOutput, keeping the bells rung and the titles set."""
    from prompt_toolkit.output import DummyOutput

    class Recording(DummyOutput):
        def __init__(self) -> None:
            super().__init__()
            self.bells = 0
            self.titles: list[str] = []
            self.changed = asyncio.Event()

        def bell(self) -> None:
            self.bells += 1
            self.changed.set()

        def set_title(self, title: str) -> None:
            self.titles.append(title)
            self.changed.set()

    return Recording()


async def _until_output(output: Any, condition: Callable[[], bool]) -> None:
    while not condition():
        await output.changed.wait()
        output.changed.clear()


async def test_a_message_in_another_conversation_rings_the_bell_and_titles_the_terminal(
    h: Harness, tmp_path: Path
) -> None:
    from prompt_toolkit.input import create_pipe_input

    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    with_bob = await h.direct(ada, bob)
    with_cat = await h.direct(ada, cat)
    async with await sign_in(h.url, "ada", tmp_path / "ada") as signed_in:
        await signed_in.sync()
    url = h.url

    async def drive() -> tuple[int, list[str], str | None]:
        async with Client.open(tmp_path / "ada", settings=FAST) as client:
            with create_pipe_input() as pipe:
                output = _recording_output()
                app = ChatApp(ChatCore(client), input=pipe, output=output)
                runner = asyncio.ensure_future(app.run())
                await _until_async(client, lambda: client.state == "online")
                await app.core.open(with_bob)
                # Cat writes in the other conversation (REST, from this loop's thread).
                async with httpx.AsyncClient(base_url=url) as http:
                    r = await http.post(
                        f"/v1/conversations/{with_cat}/messages",
                        json={"client_id": "x", "body": "psst"},
                        headers=h.auth(cat),
                    )
                    assert r.status_code == 201
                await _until_output(
                    output, lambda: output.bells >= 1 and "(1) MessageAI" in output.titles
                )
                await app.core.open(with_cat)
                current = app.core.current
                app.input.buffer.text = "/quit"
                pipe.send_text("\r")
                await runner
                bells: int = output.bells
                return bells, list(output.titles), current

    bells, titles, current = await trio.to_thread.run_sync(
        asyncio.run, asyncio.wait_for(drive(), 30)
    )
    assert bells == 1 and "(1) MessageAI" in titles and current == with_cat


async def _until_async(client: Client, condition: Callable[[], bool]) -> None:
    async with client.events() as events:
        while not condition():
            await events.receive()


async def test_help_lists_every_command_in_the_message_pane(h: Harness, tmp_path: Path) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    async with await sign_in(h.url, "ada", tmp_path / "ada") as client:
        await client.sync()
        core = ChatCore(client)
        assert "/help" in core.notice  # the short hint, not the whole list
        await core.open(cid)
        await core.submit("/help")
        shown = screen(core)
        for command in ("/reply", "/edit", "/delete", "/react", "/unreact", "/save", "/upload",
                        "/search", "/go", "/channels", "/join", "/topic", "/rename", "/open"):  # fmt: skip
            assert command in shown, command
        await core.submit("back to work")  # sending shows the conversation again
        assert "back to work" in screen(core) and "/unreact" not in screen(core)
        await core.submit("/bogus")
        assert core.rejected and "/help lists them" in core.notice


async def test_read_by_n_of_m_leaves_out_members_added_after_the_message(
    h: Harness, tmp_path: Path
) -> None:
    ada, bob, cat = await h.account("ada"), await h.account("bob"), await h.account("cat")
    await h.account("dan")
    group = await h.group(ada, bob, cat, title="Team")
    client = await sign_in(h.url, "ada", tmp_path / "ada")
    async with client, live(client), h.ws(bob) as b:
        core = ChatCore(client)
        await core.open(group)
        await core.submit("before dan came")
        await until(client, lambda: client.outbox_size() == 0)
        await client.add_members(group, ["dan"])  # dan joins after the message
        seq = client.messages(group)[0].seq
        await b.request("mark_read", conversation_id=group, seq=seq)
        await settle(core, lambda: "read by 1 of 2" in screen(core))
        await core.submit("after dan came")
        await until(client, lambda: client.outbox_size() == 0)
        await settle(core, lambda: "after dan came ✓ sent" in screen(core))
        # The second message counts dan: bob's earlier read does not cover it.
        assert "before dan came ✓ sent, read by 1 of 2" in screen(core), screen(core)


def test_an_attachment_is_described_by_its_download_headers_without_the_info_route() -> None:
    from messageai.client.sdk import _media_info

    headers = httpx.Headers(
        {
            "content-type": "application/pdf",
            "content-range": "bytes 0-0/123456",
            "content-disposition": "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
        }
    )
    info = _media_info("md_1", headers)
    assert (info.filename, info.content_type, info.size) == (
        "résumé.pdf",
        "application/pdf",
        123456,
    )
    plain = _media_info("md_2", httpx.Headers({"content-length": "7"}))
    assert (plain.filename, plain.content_type, plain.size) == (None, None, 7)
