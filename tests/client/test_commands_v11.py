"""The v1.1 one-shot commands as a script uses them: `messageai edit|delete|react|search`,
their output (`--json` and human), and their exit statuses.

Rules as in test_commands.py: the server is a real `messageai serve` process on
127.0.0.1 (port 0, then the same port when it "comes back"); stores under tmp_path;
every subprocess has a timeout; outputs are parsed, never timed.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.client.test_commands import cli, lines, password, server_process

__all__ = ["password"]  # the fixture, used by name


def _register(store: Path, url: str, name: str, password: Path) -> None:
    cli(
        store, "login", "--server", url, "--user", name, "--password-file", str(password),
        "--register",
    )  # fmt: skip


def test_edit_delete_react_print_the_message_and_exit_0(tmp_path: Path, password: Path) -> None:
    ada, bob = tmp_path / "ada-store", tmp_path / "bob-store"
    with server_process(tmp_path) as url:
        _register(ada, url, "ada", password)
        _register(bob, url, "bob", password)
        cid = json.loads(cli(ada, "new", "bob", "--json").stdout)["id"]
        for text in ("first", "second", "third"):
            cli(ada, "send", cid, text)
        [edited] = lines(cli(ada, "edit", cid, "1", "first, edited", "--json"))
        assert (edited["seq"], edited["body"], edited["pending"], edited["error"]) == (
            1,
            "first, edited",
            False,
            None,
        )
        assert edited["edited_at"] is not None and edited["rev"] == 4
        human = cli(ada, "delete", cid, "#2")
        assert human.stdout.startswith(f"deleted #2 in {cid} (rev 5)"), human.stdout
        # Bob reacts to a message his store has not seen yet: the command syncs first.
        [reacted] = lines(cli(bob, "react", cid, "3", "👍", "--json"))
        assert reacted["reactions"] == {"👍": [reacted["reactions"]["👍"][0]]}
        off = cli(bob, "react", cid, "3", "👍", "--off")
        assert off.stdout.startswith("removed the reaction from #3"), off.stdout
        cli(bob, "react", cid, "3", ":+1:")
        shown = cli(bob, "tail", cid).stdout.splitlines()
        assert shown[0].endswith("ada: first, edited (edited)"), shown
        assert shown[1].endswith("ada: [message deleted]"), shown
        assert shown[2].endswith("ada: third [:+1: 1]"), shown
        # A reply from a script, with a mention of a member.
        [reply] = lines(cli(bob, "send", cid, "agreed, @ada", "--reply-to", "3", "--json"))
        assert (reply["seq"], reply["reply_to"], reply["mentions"]) == (4, 3, [edited["sender_id"]])
        assert cli(bob, "tail", cid).stdout.splitlines()[3].endswith("(reply to #3) agreed, @ada")
        result = cli(bob, "send", cid, "x", "--reply-to", "99", ok=False)
        assert result.returncode == 1 and "no message #99" in result.stderr


def test_refusals_and_bad_input_exit_nonzero_with_one_clear_line(
    tmp_path: Path, password: Path
) -> None:
    ada, bob = tmp_path / "ada-store", tmp_path / "bob-store"
    with server_process(tmp_path) as url:
        _register(ada, url, "ada", password)
        _register(bob, url, "bob", password)
        cid = json.loads(cli(ada, "new", "bob", "--json").stdout)["id"]
        cli(ada, "send", cid, "ada's")
        # Bob may not delete ada's message: the server refuses, the change is undone.
        refused = cli(bob, "delete", cid, "1", "--json", ok=False)
        assert refused.returncode == 1
        assert "refused the delete: forbidden" in refused.stderr, refused.stderr
        [message] = lines(refused)
        assert (message["body"], message["deleted_at"], message["error"][:9]) == (
            "ada's",
            None,
            "forbidden",
        )
        result = cli(bob, "edit", cid, "1", "bob's now", ok=False)
        assert result.returncode == 1 and "only its sender" in result.stderr
        result = cli(ada, "edit", cid, "9", "nothing there", ok=False)
        assert result.returncode == 1 and "no message #9" in result.stderr
        result = cli(ada, "react", cid, "1", "two words", ok=False)
        assert result.returncode == 1 and "no spaces" in result.stderr
        result = cli(ada, "react", cid, "1", "x" * 33, ok=False)
        assert result.returncode == 1 and "32 bytes" in result.stderr
        assert cli(ada, "edit", cid, "first", "x", ok=False).returncode == 2
        assert cli(ada, "delete", cid, ok=False).returncode == 2
        assert "Traceback" not in refused.stderr + result.stderr


def test_a_change_made_while_the_server_is_down_is_queued_then_delivered(
    tmp_path: Path, password: Path
) -> None:
    ada, bob = tmp_path / "ada-store", tmp_path / "bob-store"
    with server_process(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
        _register(ada, url, "ada", password)
        _register(bob, url, "bob", password)
        cid = json.loads(cli(ada, "new", "bob", "--json").stdout)["id"]
        cli(ada, "send", cid, "hello wrold")
    result = cli(ada, "edit", cid, "1", "hello world")
    assert result.stdout.startswith("queued: the edit of #1"), result.stdout
    assert "server unreachable" in result.stderr
    [queued] = lines(cli(ada, "react", cid, "1", "🌍", "--json"))
    assert queued["pending"] is True and queued["body"] == "hello world"
    with server_process(tmp_path, port):
        report = json.loads(cli(ada, "sync", "--json").stdout)
        assert report["ok"] is True and report["queued"] == 0
        [seen] = lines(cli(bob, "tail", cid, "--json"))
        assert (seen["body"], seen["rev"], list(seen["reactions"])) == ("hello world", 3, ["🌍"])


def test_search_prints_results_and_json_lines(tmp_path: Path, password: Path) -> None:
    ada, bob = tmp_path / "ada-store", tmp_path / "bob-store"
    with server_process(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
        _register(ada, url, "ada", password)
        _register(bob, url, "bob", password)
        cid = json.loads(cli(ada, "new", "bob", "--json").stdout)["id"]
        other = json.loads(cli(ada, "new", "bob", "--title", "Planning", "--json").stdout)["id"]
        cli(ada, "send", cid, "the meeting is at noon")
        cli(ada, "send", other, "meetings move to friday")
        cli(ada, "send", other, "nothing to do with it")
        found = lines(cli(bob, "search", "meeting", "--json"))
        assert {r["conversation_id"] for r in found} == {cid, other}
        assert all({"message", "snippet", "highlights", "score"} <= set(r) for r in found)
        only = lines(cli(bob, "search", "meeting", "--conversation", other, "--json"))
        assert [r["message"]["body"] for r in only] == ["meetings move to friday"]
        human = cli(bob, "search", "friday", "--conversation", other).stdout.splitlines()
        assert len(human) == 1 and human[0].startswith(f"{other} (Planning) #1 "), human
        assert human[0].endswith("ada: meetings move to friday"), human
        none = cli(bob, "search", "zebra")
        assert none.stdout == "" and "nothing found" in none.stderr
        bad = cli(bob, "search", "x", "--conversation", "c_nope", ok=False)
        assert bad.returncode == 1 and "not_found" in bad.stderr
        assert cli(bob, "search", "x", "--limit", "0", ok=False).returncode == 2
    down = cli(bob, "search", "meeting", ok=False)
    assert down.returncode == 1 and "cannot reach" in down.stderr and str(port) in down.stderr
