"""The assistant's one-shot commands as a script uses them: `messageai ask|catch-up|todo|ai`,
their output (`--json` and human) and their exit statuses (0 ok, 1 refused or
unavailable with the server's message in one line, 2 usage).

Rules as in test_commands.py: the server is a real `messageai serve` process on
127.0.0.1:0; its `[ai]` endpoint, where there is one, is `tests/llm.py`'s loopback
fake running in this test's Trio loop (the commands run in worker threads, so it
answers meanwhile); stores under tmp_path; every subprocess has a timeout.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
import trio

from tests.client.test_commands import MESSAGEAI, TIMEOUT, cli, lines, password, server_process
from tests.llm import fake_llm, text

__all__ = ["password"]  # the fixture, used by name


def _register(store: Path, url: str, name: str, password: Path) -> None:
    cli(
        store, "login", "--server", url, "--user", name, "--password-file", str(password),
        "--register",
    )  # fmt: skip


def _on_a_terminal(store: Path, *args: str) -> tuple[int, str, str]:
    """Run a command with its stdout on a pseudo-terminal: (status, stdout, stderr)."""
    main, child = pty.openpty()
    env = {**os.environ, "MESSAGEAI_STORE": str(store)}
    with subprocess.Popen(
        [*MESSAGEAI, *args], stdout=child, stderr=subprocess.PIPE, env=env, text=True
    ) as proc:
        os.close(child)
        out = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the command closed the terminal's other end
                break
            if not chunk:
                break
            out += chunk
        os.close(main)
        assert proc.stderr is not None
        err = proc.stderr.read()
        status = proc.wait(timeout=TIMEOUT)
    return status, out.decode().replace("\r\n", "\n"), err


def _one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("messageai: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def test_without_an_endpoint_the_commands_exit_1_with_the_servers_word(
    tmp_path: Path, password: Path
) -> None:
    ada = tmp_path / "ada-store"
    with server_process(tmp_path) as url:
        _register(ada, url, "ada", password)
        _register(tmp_path / "bob-store", url, "bob", password)
        cid = json.loads(cli(ada, "new", "bob", "--json").stdout)["id"]
        cli(ada, "send", cid, "hello")
        for args in (("ask", cid, "what did I say?"), ("catch-up", cid, "--json")):
            result = cli(ada, *args, ok=False)
            _one_clear_line(result, "unavailable")
            assert result.stdout == "", result.stdout
        # The switch and the log work without an endpoint.
        assert cli(ada, "ai", cid).stdout.startswith(f"assistant off in {cid} (never changed)")
        [settings] = lines(cli(ada, "ai", cid, "on", "--json"))
        assert settings["enabled"] is True and settings["changed_by"] is not None
        assert cli(ada, "ai", cid, "log", "--json").stdout == ""
        # Bad usage: 2; a question the protocol refuses: 1, said before asking.
        assert cli(ada, "ask", cid, ok=False).returncode == 2
        assert cli(ada, "ai", cid, "maybe", ok=False).returncode == 2
        _one_clear_line(cli(ada, "ask", cid, "x" * 2001, ok=False), "2000")
        _one_clear_line(cli(ada, "ask", "c_nope", "hello?", ok=False), "not_found")


async def test_ask_and_catch_up_print_the_answer_or_json_and_refuse_while_off(
    tmp_path: Path, password: Path
) -> None:
    ada, bob = tmp_path / "ada-store", tmp_path / "bob-store"

    async def run(store: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: cli(store, *args, ok=ok))

    with trio.fail_after(120):
        async with fake_llm() as llm:
            extra = f'[ai]\nbase_url = "{llm.url}"\nmodel = "fake"\ntimeout_seconds = 10.0\n'
            with server_process(tmp_path, extra=extra) as url:
                await trio.to_thread.run_sync(_register, ada, url, "ada", password)
                await trio.to_thread.run_sync(_register, bob, url, "bob", password)
                cid = json.loads((await run(ada, "new", "bob", "--json")).stdout)["id"]
                await run(bob, "send", cid, "the launch is on tuesday")
                # Off by default: refused in one line, and nothing reached the model.
                off = await run(ada, "ask", cid, "when is the launch?", ok=False)
                _one_clear_line(off, "forbidden")
                _one_clear_line(await run(ada, "catch-up", cid, ok=False), "forbidden")
                assert llm.requests == []
                on = await run(ada, "ai", cid, "on")
                assert on.stdout.startswith(f"assistant on in {cid} (changed by ada at "), on.stdout
                llm.script(text("On ", "tuesday [1]."))
                [answer] = lines(await run(ada, "ask", cid, "when is the launch?", "--json"))
                assert answer == {"answer": "On tuesday [1].", "citations": [1], "cached": False}
                assert any("the launch is on tuesday" in t for t in llm.texts())
                # The same question over unchanged messages: the cache, no request.
                sent = len(llm.requests)
                human = await run(ada, "ask", cid, "When is the launch?")
                assert human.stdout.startswith("On tuesday [1].\n(from the cache"), human.stdout
                assert len(llm.requests) == sent
                assert "cited:\n  #1 " in human.stdout, human.stdout
                assert human.stdout.rstrip().endswith("bob: the launch is on tuesday")
                # Catch-up: bob's message is ada's unread range; bob has nothing unread.
                llm.script(text("Bob says the launch is on tuesday."))
                [summary] = lines(await run(ada, "catch-up", cid, "--json"))
                assert (summary["from_seq"], summary["to_seq"]) == (1, 1), summary
                assert summary["summary"] == "Bob says the launch is on tuesday."
                nothing = await run(bob, "catch-up", cid)
                assert nothing.stdout == f"nothing unread in {cid}\n", nothing.stdout
                [empty] = lines(await run(bob, "catch-up", cid, "--json"))
                assert empty == {"summary": None, "citations": [], "from_seq": None,
                                 "to_seq": None}  # fmt: skip
                log = lines(await run(bob, "ai", cid, "log", "--json"))
                assert [e["action"] for e in log] == ["catch_up", "ask"], log
                assert all(e["seqs"] == [1] for e in log), log
                human_log = (await run(bob, "ai", cid, "log")).stdout.splitlines()
                assert human_log[0].endswith("\tada\tcatch_up\t#1"), human_log
                # On a terminal the answer streams; a stream cut short is then said void.
                llm.script(text("Still ", "tuesday [1]."), text("It is ", "tues", cut_after=3))
                status, out, err = await trio.to_thread.run_sync(
                    _on_a_terminal, ada, "ask", cid, "is it still tuesday?"
                )
                assert status == 0 and out.startswith("Still tuesday [1].\ncited:\n"), (out, err)
                status, out, err = await trio.to_thread.run_sync(
                    _on_a_terminal, ada, "ask", cid, "is it really tuesday?"
                )
                assert status == 1 and out == "It is tues\n", out
                assert (
                    err.splitlines()[0] == "messageai: the answer above was cut off: disregard it"
                )
                assert "unavailable" in err.splitlines()[1] and "Traceback" not in err
                # A pipe never gets a voided answer: nothing on stdout.
                llm.script(text("It is ", "tues", cut_after=3))
                cut = await run(ada, "ask", cid, "is it tuesday, honestly?", ok=False)
                _one_clear_line(cut, "unavailable")
                assert cut.stdout == ""
                # Nothing was posted: the conversation holds bob's one message.
                assert len(lines(await run(bob, "tail", cid, "--json"))) == 1


def _serves_action_items() -> bool:
    from messageai.config import Config

    return "jobs" in {a.name for a in Config.__attrs_attrs__}


@pytest.mark.skipif(not _serves_action_items(), reason="no action items in this server yet")
async def test_todo_lists_items_and_marks_one_done(tmp_path: Path, password: Path) -> None:
    from tests.llm import tools

    ada, bob = tmp_path / "ada-store", tmp_path / "bob-store"

    async def run(store: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: cli(store, *args, ok=ok))

    with trio.fail_after(120):
        async with fake_llm() as llm:
            extra = (
                f'[ai]\nbase_url = "{llm.url}"\nmodel = "fake"\n'
                "[jobs]\npoll_seconds = 0.05\naction_items_delay_seconds = 0.2\n"
            )
            with server_process(tmp_path, extra=extra) as url:
                await trio.to_thread.run_sync(_register, ada, url, "ada", password)
                await trio.to_thread.run_sync(_register, bob, url, "bob", password)
                cid = json.loads((await run(ada, "new", "bob", "--json")).stdout)["id"]
                await run(bob, "send", cid, "ada, can you send the slides by friday?")
                _one_clear_line(await run(ada, "todo", cid, ok=False), "forbidden")
                await run(ada, "ai", cid, "on")
                found = {"text": "Send the slides", "owner": "ada", "due": "friday",
                         "sources": [1]}  # fmt: skip
                llm.script(tools(("record_action_items", {"items": [found]})))
                items: list[dict[str, object]] = []
                while not items:  # the first read starts the extraction
                    items = lines(await run(ada, "todo", cid, "--json"))
                [item] = items
                assert (item["text"], item["status"], item["source_seqs"]) == (
                    "Send the slides", "open", [1],
                )  # fmt: skip
                human = (await run(bob, "todo", cid)).stdout
                assert human == f"{item['id']}\t[ ] Send the slides (ada, due friday)\tfrom #1\n"
                [done] = lines(await run(bob, "todo", cid, "--done", str(item["id"]), "--json"))
                assert done == {**item, "status": "done"}
                again = await run(bob, "todo", cid, "--reopen", str(item["id"]))
                assert again.stdout.startswith(f"{item['id']}\t[ ] Send the slides")
                _one_clear_line(
                    await run(bob, "todo", cid, "--done", "nope", ok=False), "not_found"
                )
