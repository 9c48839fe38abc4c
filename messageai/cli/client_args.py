"""Arguments of the client subcommands of `messageai` (login, send, sync, tail, ...).

Called by `messageai.cli.build_parser`. Kept free of SDK imports so that the
server's own commands start fast; the work is done in `messageai.client.commands`.
"""

from __future__ import annotations

import argparse
from typing import Any

CLIENT_COMMANDS = (
    "login",
    "logout",
    "send",
    "sync",
    "tail",
    "conversations",
    "new",
    "chat",
    "edit",
    "delete",
    "react",
    "search",
    "ask",
    "catch-up",
    "todo",
    "ai",
)
DEFAULT_TIMEOUT_SECONDS = 10.0
# The assistant's answers take up to the server's `ai.timeout_seconds` (default 30).
AI_TIMEOUT_SECONDS = 60.0


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError("seconds must be above 0 and at most 3600")
    return seconds


def _seq(value: str) -> int:
    value = value.lstrip("#")
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a message number (its seq, 1 or more): {value!r}")
    return int(value)


def _limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 50:
        raise argparse.ArgumentTypeError(f"not a count from 1 to 50: {value!r}")
    return int(value)


def _count(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"not a count from 1 to 1000000: {value!r}")
    return int(value)


def add_client_commands(sub: Any) -> None:
    """Register the client subcommands on `messageai`'s subparsers."""

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
        p.add_argument(
            "--store",
            metavar="DIR",
            help="the local store (default: $MESSAGEAI_STORE or the per-user data directory)",
        )
        return p

    def with_timeout(p: argparse.ArgumentParser, default: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        p.add_argument(
            "--timeout",
            type=_positive_seconds,
            default=default,
            metavar="SECONDS",
            help=f"give up on the server after this long (default {default:g})",
        )

    p = command("login", "sign in (or register) and keep the session in the local store")
    p.add_argument("--server", required=True, metavar="URL", help="e.g. http://127.0.0.1:8080")
    p.add_argument("--user", required=True, metavar="NAME", help="username")
    p.add_argument(
        "--password-file",
        metavar="F",
        help="read the password from this file's first line ('-': stdin)",
    )
    p.add_argument("--register", action="store_true", help="create the account first")
    p.add_argument("--display-name", help="shown name when registering")

    command("logout", "revoke the session and forget it locally")

    p = command("send", "store a message locally, then deliver it (or leave it queued)")
    p.add_argument("conversation_id", metavar="CONVERSATION_ID")
    p.add_argument("text", metavar="TEXT", help="the message ('-': read it from stdin)")
    p.add_argument("--reply-to", type=_seq, metavar="SEQ", help="reply to message #SEQ")
    p.add_argument("--json", action="store_true", help="print the message object")
    with_timeout(p)

    p = command("sync", "catch up every conversation and deliver the queued messages")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    with_timeout(p)

    p = command("tail", "print a conversation from the local store (after a sync), oldest first")
    p.add_argument("conversation_id", metavar="CONVERSATION_ID")
    p.add_argument("--json", action="store_true", help="one message object per line")
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing new messages (one shown [queued] again once delivered)",
    )
    p.add_argument("-n", "--lines", type=_count, metavar="N", help="only the newest N messages")
    with_timeout(p)

    p = command("conversations", "list conversations with unread counts (after a sync)")
    p.add_argument("--json", action="store_true", help="one conversation object per line")
    with_timeout(p)

    p = command("new", "start a direct conversation (one user) or a group (--title)")
    p.add_argument("users", nargs="+", metavar="USER", help="usernames (or user ids)")
    p.add_argument("--title", help="make a group with this title")
    p.add_argument("--json", action="store_true", help="print the conversation id as JSON")

    command("chat", "the terminal client")

    def message_command(name: str, help_: str) -> argparse.ArgumentParser:
        p = command(name, help_)
        p.add_argument("conversation_id", metavar="CONVERSATION_ID")
        p.add_argument("seq", type=_seq, metavar="SEQ", help="the message's number (#seq)")
        return p

    p = message_command("edit", "change the text of one of my messages (queued like a send)")
    p.add_argument("text", metavar="TEXT", help="the new text ('-': read it from stdin)")
    p.add_argument("--json", action="store_true", help="print the message object")
    with_timeout(p)

    p = message_command("delete", "delete a message: mine, or any in a group I created")
    p.add_argument("--json", action="store_true", help="print the message object")
    with_timeout(p)

    p = message_command("react", "add an emoji reaction to a message (--off removes it)")
    p.add_argument("emoji", metavar="EMOJI", help="1-32 bytes, no spaces, e.g. 👍 or :+1:")
    p.add_argument("--off", action="store_true", help="remove my reaction instead")
    p.add_argument("--json", action="store_true", help="print the message object")
    with_timeout(p)

    p = command("search", "keyword search over my conversations (needs the server)")
    p.add_argument(
        "query", metavar="QUERY", help='words (all must match); "quoted words": a phrase'
    )
    p.add_argument("--conversation", metavar="ID", help="only this conversation")
    p.add_argument("--limit", type=_limit, metavar="N", help="at most N results (default 20)")
    p.add_argument("--json", action="store_true", help="one result object per line")
    with_timeout(p)

    p = command(
        "ask",
        "ask the assistant about one conversation (the answer is yours only; needs the server)",
    )
    p.add_argument("conversation_id", metavar="CONVERSATION_ID")
    p.add_argument("question", metavar="QUESTION", help="1-2000 characters ('-': stdin)")
    p.add_argument("--json", action="store_true", help="print {answer, citations, cached}")
    with_timeout(p, AI_TIMEOUT_SECONDS)

    p = command("catch-up", "a summary of what I have not read in one conversation")
    p.add_argument("conversation_id", metavar="CONVERSATION_ID")
    p.add_argument(
        "--json", action="store_true", help="print {summary, citations, from_seq, to_seq}"
    )
    with_timeout(p, AI_TIMEOUT_SECONDS)

    p = command("todo", "the action items the assistant found in one conversation")
    p.add_argument("conversation_id", metavar="CONVERSATION_ID")
    mark = p.add_mutually_exclusive_group()
    mark.add_argument("--done", metavar="ITEM_ID", help="mark this item done")
    mark.add_argument("--reopen", metavar="ITEM_ID", help="mark this item open again")
    p.add_argument("--json", action="store_true", help="one item object per line")
    with_timeout(p)

    p = command("ai", "show or set the assistant's switch of one conversation, or its log")
    p.add_argument("conversation_id", metavar="CONVERSATION_ID")
    p.add_argument(
        "action",
        nargs="?",
        choices=("on", "off", "log"),
        help="on/off: for every member; log: every request that sent its content",
    )
    p.add_argument("--json", action="store_true", help="print the settings (log: one entry a line)")
    with_timeout(p)
