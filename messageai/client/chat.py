"""`messageai chat`: the terminal client, a full-screen prompt_toolkit app over the SDK.

`ChatCore` holds everything a screen shows and every command a person types,
with no terminal in it: tests drive it directly (under Trio or asyncio).
`ChatApp` lays it out with prompt_toolkit (which runs on asyncio, like the
SDK underneath) and redraws on every SDK event (and when a typist expires).
`run_chat` is called by `messageai chat`; it signs in first if the store has
no account.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shlex
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeAlias

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from prompt_toolkit.formatted_text import StyleAndTextTuples

from messageai.client.chat_ai import HELP as AI_HELP
from messageai.client.chat_ai import Assistant
from messageai.client.errors import ClientError, Forbidden, NotSignedIn
from messageai.client.events import (
    AiSettingsChanged,
    ChangeRefused,
    ConnectionChanged,
    ConversationsChanged,
    Event,
    MessageAdded,
    Overflowed,
    StoreChanged,
    TypingChanged,
)
from messageai.client.sdk import MAX_BODY_CHARS, Client
from messageai.client.store import LocalConversation, LocalMessage, MediaInfo

# Every command, one a line: shown by /help in the message pane.
HELP = (
    """\
type to send · Alt-Enter or Ctrl-J: a new line · @username mentions a member
M is the number beside a message: #12, or #q3 while it is queued
/reply M TEXT          reply to a message (shown with a quoted line of it)
/edit M TEXT           change the text of your message
/delete M              delete a message (yours; any in a group you created)
/react M EMOJI         add a reaction; the same again removes it (or /unreact M EMOJI)
/save M [PATH]         save a message's attachment (to a file or folder; default here)
/upload PATH [CAPTION] send a file
/search WORDS          search your conversations ("quoted words": a phrase); /go K opens one
/channels [PREFIX]     list channels · /join NAME joins one
/topic [TEXT]          show or set the topic · /rename TITLE renames a group or channel
/open N                open conversation N (numbers stay put while the chat runs)
/new USER              a direct conversation · /group "TITLE" USER… a group
/members · /who [PREFIX] · /add USER… · /remove USER · /leave
/retry                 send failed messages again · /reconnect · /quit
Ctrl-N/Ctrl-P switch conversations · PageUp/PageDown scroll · /help this list
"""
    + AI_HELP
)
# The notice when nothing else is to say.
HINT = "type to send · /help lists every command · /open N · /search WORDS · /quit"
NO_CONVERSATION = "no conversation open: /new USER starts one, /open N opens one from the list"
# Seconds between typing notices while a person keeps typing: well inside the
# expiry below, so a steady typist never flickers off on the other screens.
TYPING_EVERY_SECONDS = 3.0
# A typist not renewed for this long is shown as no longer typing (PROTOCOL.md
# v1.1 "Typing expires": the server clears them after 6 s too; this covers a
# server without that rule, and a "false" lost with a dropped connection).
TYPING_EXPIRES_SECONDS = 6.0
# Most lines the input grows to (a longer draft scrolls inside it).
INPUT_LINES = 6
# Most lines the status and the notice each take when they wrap.
STATUS_LINES = 3
# Messages kept on screen per conversation (older ones: `messageai tail`).
SCREEN_MESSAGES = 500
# Search results asked for and shown (the server clamps to 50).
SEARCH_RESULTS = 20
# Characters of a replied-to message quoted above a reply.
QUOTE_CHARS = 60
# Channels listed by /channels.
CHANNELS_SHOWN = 20
# Attachments looked up (name, type, size) per conversation opened or message shown.
MEDIA_LOOKUPS = 20
# Work the screen's callbacks hand to ChatApp.run()'s task group (see ChatApp._spawn).
Job: TypeAlias = Callable[[], Coroutine[Any, Any, None]]
JOB_QUEUE = 64

# prompt_toolkit's formatted text: (style, text) pairs.
Line = StyleAndTextTuples


class ChatCore:
    """The terminal client's state and commands, without a terminal."""

    def __init__(self, client: Client, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.current: str | None = None
        self.notice = HINT
        self.scroll = 0  # lines scrolled back from the newest
        # (conversation, user) -> when their latest `typing: true` arrived (clock time).
        # One entry per typist of my conversations at most; removed on "false", on
        # their message and on expiry.
        self.typing: dict[tuple[str, str], float] = {}
        self.connection_note = ""
        self.rejected = False  # the last submitted line was refused or failed
        self._clock = clock
        # Where I last announced `typing: true` and have not yet withdrawn it.
        self._typing_in: str | None = None
        self._typing_sent_at = 0.0
        # Conversation ids in the order of their numbers: the list as it was at start
        # (most recent first), then each conversation as it arrives. Numbers never
        # move while the chat runs, so `/open N` opens what the screen showed as N.
        # One entry per conversation of the store.
        self._order: list[str] = []
        # `/search` results shown instead of the conversation until one is opened
        # (`/go K`) or another conversation is (at most SEARCH_RESULTS of them).
        self.results: list[dict[str, Any]] | None = None
        self.help_shown = False  # /help's list replaces the conversation until one opens
        # The message `/go K` opened its conversation at (shown marked), by seq.
        self.found: int | None = None
        self.results_query = ""
        # Messages of others that arrived in conversations not on screen since the
        # last look: the screen rings the bell and puts the count in the title.
        self.elsewhere = 0
        self.bell = False
        # Repaints the screen between events (an answer streaming in); ChatApp sets it.
        self.redraw: Callable[[], None] = lambda: None
        # `/ask`, `/catchup`, `/todo`, `/ai`, and the view they show in the pane.
        self.ai = Assistant(self)
        convs = self.numbered()
        if convs:
            self.current = convs[0].id

    # ------------------------------------------------------------ commands

    def refusal(self, text: str) -> str | None:
        """Why a line cannot be sent as it is (shown as the notice, the line stays in
        the input); None if it can, or if it is a command or empty."""
        text = text.strip()
        if not text or text.startswith("/"):
            return None
        if self.current is None:
            return NO_CONVERSATION
        if not self.is_member(self.current):
            return self._not_a_member(self.current)
        if len(text) > MAX_BODY_CHARS:
            return f"a message is at most {MAX_BODY_CHARS} characters; this one has {len(text)}"
        return None

    async def submit(self, text: str) -> bool:
        """Handle one input line; False means quit. `rejected` says afterwards whether
        the line was refused or failed (the screen then gives it back to the input)."""
        text = text.strip()
        self.rejected = bool(text)  # until it is done
        if not text:
            return True
        try:
            if text.startswith("/"):
                return await self._command(text)
            refusal = self.refusal(text)
            if refusal is not None or self.current is None:
                self.notice = refusal or NO_CONVERSATION
                return True
            # The SDK also moves my read cursor: replying means what came before was read.
            await self.client.send(
                self.current, text, mentions=self.client.mentions_in(self.current, text)
            )
            self.rejected = False
            await self.stop_typing()
            self.scroll = 0
            # What was sent is on screen, in place of a list that was.
            self.help_shown, self.results, self.ai.view = False, None, None
        except ClientError as exc:
            self.notice = f"error: {exc.message}"
        return True

    async def _command(self, text: str) -> bool:
        name, _, rest = text.partition(" ")
        try:
            args = shlex.split(rest)  # '/group "Weekend plans" bob'
        except ValueError as exc:
            self.notice = f"cannot read that command ({exc}): close the quotes"
            return True
        if name in ("/quit", "/exit", "/q"):
            await self.stop_typing()
            return False
        if name == "/help":
            self.help_shown, self.ai.view = True, None
            self.scroll = 0
            self.notice = "the commands: /open N (or Ctrl-N) goes back to a conversation"
        elif name == "/open" and len(args) == 1:
            if not await self.open(args[0]):
                return True
        elif name == "/new" and len(args) == 1:
            await self._show(await self.client.create_direct(args[0]))
            self.notice = f"direct conversation with {args[0]}"
        elif name == "/group" and len(args) >= 2:
            await self._show(await self.client.create_group(args[0], args[1:]))
            self.notice = f"group {args[0]!r} created"
        elif name == "/members" and not args:
            self.notice = self.members()
        elif name == "/who" and len(args) <= 1:
            self.notice = await self.who(args[0] if args else "")
        elif name in ("/add", "/remove", "/leave"):
            return await self._membership(name, args)
        elif name == "/retry" and self.current is not None and not self.is_member(self.current):
            self.notice = self._not_a_member(self.current)
            return True
        elif name == "/retry" and self.current is not None:
            failed = [m for m in self.client.messages(self.current) if m.status == "failed"]
            for message in failed:
                await self.client.retry(message)
            self.notice = f"{len(failed)} failed message(s) queued again"
        elif name == "/reconnect":
            self.client.reconnect_now()
            self.notice = "reconnecting…"
        elif name in _MESSAGE_COMMANDS:
            return await self._message_command(name, rest.strip())
        elif name == "/search":
            return await self.search(rest.strip())
        elif name == "/go" and len(args) == 1 and self.ai.view is not None:
            if not await self.ai.go(args[0]):
                return True
        elif name == "/go" and len(args) == 1:
            return await self.go(args[0])
        elif name in ("/ask", "/catchup", "/todo", "/ai"):
            if not await self.ai.command(name, rest):
                return True
        elif name == "/channels" and len(args) <= 1:
            self.notice = await self.channels(args[0] if args else "")
        elif name == "/join" and len(args) == 1:
            cid = await self.client.join(args[0])
            await self._show(cid)
            self.notice = f"joined {self.title(cid)}"
        elif name in ("/topic", "/rename", "/upload"):
            return await self._conversation_command(name, args)
        else:
            self.notice = f"unknown command or wrong arguments: {text!r} (/help lists them)"
            return True
        self.rejected = False
        return True

    async def _membership(self, name: str, args: list[str]) -> bool:
        """`/add USER…`, `/remove USER`, `/leave`: groups only, in the open conversation.
        Every refusal is a notice (the line goes back to the input); nothing ends the
        screen."""
        cid = self.current
        usage = {"/add": "/add USER…", "/remove": "/remove USER", "/leave": "/leave"}[name]
        wanted = {"/add": len(args) >= 1, "/remove": len(args) == 1, "/leave": not args}[name]
        conv = self.client.conversation(cid) if cid is not None else None
        if not wanted:
            self.notice = f"usage: {usage}"
        elif cid is None:
            self.notice = NO_CONVERSATION
        elif not self.is_member(cid):
            self.notice = self._not_a_member(cid)
        elif conv is not None and conv.kind is not None and conv.kind != "group":
            self.notice = f"{name} works in groups only; this is a direct conversation"
        elif name == "/add":
            await self.client.add_members(cid, args)
            self.notice = f"added {', '.join(a.lstrip('@') for a in args)} to {self.title(cid)}"
            self.rejected = False
        elif name == "/remove" and self.client.member_id(cid, args[0]) != self.client.me:
            await self.client.remove_member(cid, args[0])
            self.notice = f"removed {args[0].lstrip('@')} from {self.title(cid)}"
            self.rejected = False
        else:  # /leave, or /remove of myself
            await self.stop_typing()
            await self.client.leave(cid)
            self.notice = f"you left {self.title(cid)}: its history stays here, read-only"
            self.rejected = False
        return True

    async def _message_command(self, name: str, rest: str) -> bool:
        """`/reply M TEXT`, `/edit M TEXT`, `/delete M`, `/react M EMOJI`, `/unreact M
        EMOJI`, `/save M [PATH]`: M is the number shown beside the message (#12, or
        #q3 for one still queued). A refusal is a notice; the line goes back."""
        usage = _MESSAGE_COMMANDS[name]
        ref, _, arg = rest.partition(" ")
        arg = arg.strip()
        cid = self.current
        needs_arg = name in ("/reply", "/edit", "/react", "/unreact")
        if not ref or (needs_arg and not arg) or (name == "/delete" and arg):
            self.notice = f"usage: {usage}"
            return True
        if cid is None:
            self.notice = NO_CONVERSATION
            return True
        if name != "/save" and not self.is_member(cid):
            self.notice = self._not_a_member(cid)
            return True
        message = self.find(ref)
        if message is None:
            self.notice = f"no message {ref} here: use the #number shown beside it"
            return True
        label = self.label(message)
        if name == "/reply":
            if message.seq is None:
                self.notice = f"{label} is not delivered yet: reply once it has a #number"
                return True
            await self.client.send(
                cid, arg, reply_to=message.seq, mentions=self.client.mentions_in(cid, arg)
            )
            await self.stop_typing()
            self.notice = f"replied to {label}"
        elif name == "/edit":
            await self.client.edit(message, arg)
            self.notice = f"edited {label}"
        elif name == "/delete":
            gone = await self.client.delete(message)
            self.notice = f"deleted {label}" + (" (it was never sent)" if gone is None else "")
        elif name in ("/react", "/unreact"):
            on = name == "/react" and not self.client.reacted(message, arg)
            await self.client.react(message, arg, on)
            self.notice = (
                f"{'reacted' if on else 'removed your'} {arg} {'to' if on else 'on'} {label}"
            )
        else:  # /save
            if not message.attachments:
                self.notice = f"{label} has no attachment"
                return True
            if len(message.attachments) > 1 and arg and not await anyio.Path(arg).is_dir():
                self.notice = f"{label} has {len(message.attachments)} files: /save {ref} FOLDER"
                return True
            saved = []
            for media_id in message.attachments:
                saved.append(str(await self.client.save_attachment(media_id, arg or None)))
            self.notice = "saved " + ", ".join(saved)
        self.rejected = False
        self.scroll = 0
        return True

    async def _conversation_command(self, name: str, args: list[str]) -> bool:
        """`/topic [TEXT]`, `/rename TITLE`, `/upload PATH [CAPTION]` in the open one."""
        cid = self.current
        if cid is None:
            self.notice = NO_CONVERSATION
            return True
        conv = self.client.conversation(cid)
        if name == "/topic" and not args:
            topic = conv.topic if conv is not None else None
            self.notice = f"topic: {topic}" if topic else "no topic: /topic TEXT sets one"
            self.rejected = False
            return True
        if not self.is_member(cid):
            self.notice = self._not_a_member(cid)
            return True
        if name == "/upload":
            message = await self.client.upload(cid, args[0], " ".join(args[1:]))
            self.notice = f"uploaded {Path(args[0]).name} ({self.label(message)})"
            self.rejected = False
            return True
        if conv is not None and conv.kind == "direct":
            self.notice = f"{name} works in groups and channels; this is a direct conversation"
            return True
        text = " ".join(args)
        if not text.strip():
            self.notice = "usage: /rename TITLE"
            return True
        if name == "/topic":
            await self.client.set_topic(cid, text)
            self.notice = f"topic set: {text}"
        else:
            await self.client.rename(cid, text)
            self.notice = f"renamed to {text}"
        self.rejected = False
        return True

    def label(self, message: LocalMessage) -> str:
        """The number shown beside a message: `#seq`, or `#qN` (its local row) while it
        has no seq. Both stay put while the screen runs."""
        return f"#{message.seq}" if message.seq is not None else f"#q{message.local_id}"

    def find(self, ref: str) -> LocalMessage | None:
        """The message of the open conversation that `ref` (`12`, `#12`, `q3`, `#q3`)
        names."""
        ref = ref.lstrip("#").lower()
        cid = self.current
        if cid is None:
            return None
        if ref.startswith("q") and ref[1:].isdigit():
            found = self.client.message_by_local_id(int(ref[1:]))
            # Acknowledged since it was shown as #qN: still the same message.
            return found if found is not None and found.conversation_id == cid else None
        if ref.isdigit():
            return self.client.message_by_seq(cid, int(ref))
        return None

    async def search(self, words: str) -> bool:
        """`/search WORDS`: the results replace the conversation on screen, numbered;
        `/go K` opens the conversation of result K."""
        if not words:
            self.notice = "usage: /search WORDS"
            return True
        self.results = await self.client.search(words, limit=SEARCH_RESULTS)
        self.help_shown, self.ai.view = False, None
        self.results_query = words
        self.scroll = 0
        found = len(self.results)
        self.notice = (
            f"{found} result(s) for {words!r}: /go K opens one, /open N goes back"
            if found
            else f"nothing found for {words!r}"
        )
        if not found:
            self.results = None
        self.rejected = False
        return True

    async def go(self, which: str) -> bool:
        results = self.results or []
        if not which.isdigit() or not 1 <= int(which) <= len(results):
            self.notice = f"no search result {which!r}: /search WORDS first"
            return True
        result = results[int(which) - 1]
        cid = result["conversation_id"]
        await self._show(cid)
        self.found = result["message"].get("seq")
        self.notice = f"{self.title(cid)}: result #{self.found} is marked ▶"
        self.rejected = False
        return True

    async def channels(self, prefix: str) -> str:
        found = (await self.client.channels(prefix))[:CHANNELS_SHOWN]
        if not found:
            return "no channels" + (f" starting with {prefix!r}" if prefix else "")
        mine = {c.id for c in self.client.conversations() if c.active}
        parts = []
        for c in found:
            joined = " (joined)" if c["id"] in mine else ""
            topic = f" — {c['topic']}" if c.get("topic") else ""
            parts.append(f"{c.get('title')} ({c.get('member_count', '?')}){joined}{topic}")
        return "channels (/join NAME): " + " · ".join(parts)

    def _person(self, user_id: str, username: str, display: str) -> str:
        """One person for /members and /who: name, handle, presence where known."""
        who = f"{display} (@{username})" if display and display != username else f"@{username}"
        if user_id == self.client.me:
            return f"{who} (you)"
        online = self.client.is_online(user_id)
        return who if online is None else f"{who} {'online' if online else 'offline'}"

    def members(self) -> str:
        """`/members`: who is in the open conversation (as the store knows it)."""
        cid = self.current
        if cid is None:
            return NO_CONVERSATION
        known = self.client.display_names()
        people = [self._person(u, *known.get(u, (u, ""))) for u in self.client.member_ids(cid)]
        left = "" if self.is_member(cid) else " (you are no longer a member)"
        return f"members of {self.title(cid)}{left} ({len(people)}): " + " · ".join(people)

    async def who(self, prefix: str) -> str:
        """`/who [PREFIX]`: users whose username or display name starts with PREFIX."""
        users = await self.client.find_users(prefix.lstrip("@"))
        if not users:
            return f"no users matching {prefix!r}"
        people = [self._person(u["id"], u["username"], u["display_name"]) for u in users]
        return f"users matching {prefix!r} ({len(people)}): " + " · ".join(people)

    async def open(self, which: str) -> bool:
        """`/open N` or `/open ID`; False (and a notice) if there is no such one."""
        convs = self.numbered()
        if which.isdigit() and 1 <= int(which) <= len(convs):
            target = convs[int(which) - 1].id
        elif which in {c.id for c in convs}:
            target = which
        else:
            self.notice = f"no conversation {which!r}: pick a number from the list"
            return False
        self.notice = HINT
        await self._show(target)
        return True

    async def switch(self, step: int) -> None:
        """Ctrl-N / Ctrl-P: the next or previous conversation in the list."""
        ids = [c.id for c in self.numbered()]
        if not ids:
            return
        index = ids.index(self.current) if self.current in ids else -1
        await self._show(ids[(index + step) % len(ids)])

    def numbered(self) -> list[LocalConversation]:
        """The conversations in the order of their numbers (1 first)."""
        convs = {c.id: c for c in self.client.conversations()}
        known = set(self._order)
        self._order = [cid for cid in self._order if cid in convs]  # deleted locally
        self._order += [cid for cid in convs if cid not in known]
        return [convs[cid] for cid in self._order]

    async def _show(self, conversation_id: str) -> None:
        # `current` changes before the first await, so input that follows goes here.
        previous, self.current = self.current, conversation_id
        self.scroll = 0
        self.results = None
        self.help_shown = False
        self.ai.view = None
        self.found = None
        self.elsewhere = 0
        if previous != conversation_id:
            await self.stop_typing()
        if not self.is_member(conversation_id):
            self.notice = self._not_a_member(conversation_id)
        await self.mark_read()
        await self.ai.learn_settings(conversation_id)
        await self.learn_media(self.client.messages(conversation_id, SCREEN_MESSAGES))

    async def learn_media(self, messages: list[LocalMessage]) -> None:
        """Look up the name, type and size of attachments on screen not known yet (at
        most MEDIA_LOOKUPS per call; one the server will not describe stays an id)."""
        unknown = [
            media_id
            for m in messages
            for media_id in m.attachments
            if self.client.media(media_id) is None
        ]
        for media_id in unknown[-MEDIA_LOOKUPS:]:
            with contextlib.suppress(ClientError):
                await self.client.learn_media(media_id)

    async def mark_read(self) -> None:
        """The open conversation is on screen: move my read cursor to its newest message
        (the badge goes at once; the server is told now, or at the next connection).

        A conversation I am no longer in is left alone. A `forbidden` answer (a removal
        the store had not heard of yet) makes it one: the SDK marks it inactive and the
        screen shows it as left; never an error that ends the screen."""
        cid = self.current
        if cid is None or not self.is_member(cid):
            return
        try:
            await self.client.mark_read(cid)
        except Forbidden:
            self.notice = self._not_a_member(cid)
        except ClientError as exc:
            self.notice = f"error: {exc.message}"

    def is_member(self, conversation_id: str) -> bool:
        """Am I (as far as this client knows) still in the conversation?"""
        conv = self.client.conversation(conversation_id)
        return conv is None or conv.active  # unknown (a stub): the server will say

    def _not_a_member(self, conversation_id: str) -> str:
        return (
            f"you are no longer a member of {self.title(conversation_id)}: its history stays"
            " here, nothing you type is sent (/open another)"
        )

    async def typed(self, draft: str) -> None:
        """The input now holds `draft`: tell the others I am typing (at most every few
        seconds), or that I stopped once the draft is empty or a command."""
        draft = draft.strip()
        if not draft or draft.startswith("/") or self.current is None:
            await self.stop_typing()
            return
        if not self.is_member(self.current):
            self.notice = self._not_a_member(self.current)
            return
        now = self._clock()
        if self._typing_in != self.current:
            await self.stop_typing()
        elif now - self._typing_sent_at < TYPING_EVERY_SECONDS:
            return
        self._typing_in, self._typing_sent_at = self.current, now
        await self.client.set_typing(self.current, True)

    async def stop_typing(self) -> None:
        """Withdraw my typing notice, if one is out (sent, switched away, quitting)."""
        conversation_id, self._typing_in = self._typing_in, None
        if conversation_id is not None:
            await self.client.set_typing(conversation_id, False)

    def expire_typing(self) -> bool:
        """Forget typists not renewed in TYPING_EXPIRES_SECONDS; True if any were (the
        screen redraws then)."""
        cutoff = self._clock() - TYPING_EXPIRES_SECONDS
        stale = [key for key, at in self.typing.items() if at <= cutoff]
        for key in stale:
            del self.typing[key]
        return bool(stale)

    async def on_event(self, event: Event) -> None:
        """Keep the open conversation read, and track who is typing."""
        if isinstance(event, ConnectionChanged):
            retry = event.retry_in_seconds
            self.connection_note = (
                f"{event.error}; retrying in {retry:.0f}s (/reconnect)" if retry is not None else ""
            )
        if isinstance(event, ConversationsChanged):
            if event.left and self.current in event.conversation_ids:
                self.notice = self._not_a_member(self.current)
            elif not event.left:
                convs = self.numbered()
                if self.current is None and convs:
                    # A fresh client: its list just arrived; show the first one.
                    await self._show(convs[0].id)
        if isinstance(event, TypingChanged):
            key = (event.conversation_id, event.user_id)
            if event.typing:
                self.typing[key] = self._clock()
            else:
                self.typing.pop(key, None)
        elif isinstance(event, MessageAdded):
            # Their message ends their typing (the server may not say so).
            self.typing.pop((event.message.conversation_id, event.message.sender_id), None)
            message = event.message
            if message.attachments and message.conversation_id == self.current:
                await self.learn_media([message])
            if message.sender_id != self.client.me and (
                message.conversation_id != self.current
                or self.results is not None
                or self.ai.view is not None
            ):
                self.elsewhere += 1
                self.bell = True
        elif isinstance(event, AiSettingsChanged):
            self.ai.changed(event.conversation_id, event.enabled, event.changed_by)
        elif isinstance(event, ChangeRefused):
            what = {"edit": "edit of", "delete": "delete of", "react": "reaction on"}
            self.notice = (
                f"the server refused your {what.get(event.action, event.action)}"
                f" {self.label(event.message)}: {event.error} (undone)"
            )
        self.expire_typing()
        if self._brings_news(event):
            await self.mark_read()

    def _brings_news(self, event: Event) -> bool:
        """The open conversation may have unread messages after this event."""
        if isinstance(event, MessageAdded):
            message = event.message
            return message.conversation_id == self.current and message.sender_id != self.client.me
        if isinstance(event, StoreChanged):  # another process sharing the store merged some
            return event.conversation_id == self.current
        # Overflowed: the detail is lost. Back online: the catch-up may have brought some.
        return isinstance(event, Overflowed) or (
            isinstance(event, ConnectionChanged) and event.state == "online"
        )

    # ------------------------------------------------------------ what the screen shows

    def names(self) -> dict[str, str]:
        """user id -> the name to show: the display name, else the username."""
        return {
            user_id: display or username
            for user_id, (username, display) in self.client.display_names().items()
        }

    def title(self, conversation_id: str) -> str:
        for conv in self.client.conversations():
            if conv.id == conversation_id:
                return self._title(conv, self.names())
        return conversation_id

    def _title(self, conv: LocalConversation, names: dict[str, str]) -> str:
        if conv.title:
            return conv.title
        others = [names.get(u, u) for u in conv.member_ids if u != self.client.me]
        return ", ".join(others) or "(just you)"

    def header(self) -> str:
        """The line above the messages: the conversation, and who is in it by username
        (display names need not be unique)."""
        cid = self.current
        if cid is None:
            return " MessageAI "
        known = self.client.display_names()
        handles = []
        for user_id in self.client.member_ids(cid):
            username, display = known.get(user_id, (user_id, ""))
            if user_id != self.client.me:
                handles.append(
                    f"{display} (@{username})" if display != username else f"@{username}"
                )
        conv = next((c for c in self.client.conversations() if c.id == cid), None)
        title = self.title(cid)
        who = ", ".join(handles)
        text = f"{title} · {who}" if conv is not None and conv.title else who or title
        left = "" if self.is_member(cid) else " · you are no longer a member (read-only)"
        topic = f" · {conv.topic}" if conv is not None and conv.topic else ""
        return f" {text}{topic}{self.ai.header_note(cid)}{left} "

    def sidebar(self) -> Line:
        out: Line = []
        names = self.names()  # one read of the store per redraw, not one per row
        for i, conv in enumerate(self.numbered(), 1):
            style = "reverse" if conv.id == self.current else ""
            unread = f" ({conv.unread_count})" if conv.unread_count else ""
            left = " (left)" if not conv.active else ""
            out.append((style, f"{i:>2} {self._title(conv, names)}{unread}{left}\n"))
        if not out:
            out.append(("italic", "no conversations\n/new USER\n"))
        return out

    def mark(self, message: LocalMessage) -> str:
        if message.sender_id != self.client.me:
            return ""
        if message.status == "sending":
            return " … sending" if self.client.state == "online" else " ⏸ queued"
        if message.status == "failed":
            return f" ✗ failed: {message.error} (/retry)"
        if message.status == "read":
            return " ✓✓ read"
        others = self.client.readers_of(message)
        read_by = len(self.client.read_by(message))
        if others > 1 and read_by:
            return f" ✓ sent, read by {read_by} of {others}"
        return " ✓ sent"

    def message_lines(self) -> Line:
        if self.help_shown:
            return [("", HELP + "\n")]
        if self.results is not None:
            return self.result_lines()
        if self.ai.view is not None:
            return self.ai.lines()
        if self.current is None:
            return [("italic", NO_CONVERSATION + "\n")]
        names = self.names()
        messages = self.client.messages(self.current, SCREEN_MESSAGES)
        by_seq = {m.seq: m for m in messages if m.seq is not None}
        out: Line = []
        for message in messages:
            out += self._message_line(message, names, by_seq)
        return out

    def _message_line(
        self, message: LocalMessage, names: dict[str, str], by_seq: dict[int, LocalMessage]
    ) -> Line:
        when = time.strftime("%H:%M", time.localtime(message.created_at / 1000))
        who = names.get(message.sender_id, message.sender_id)
        mine = message.sender_id == self.client.me
        lead = f"{self.label(message)} {when} "
        # Every later line of a message is indented past its number and time.
        indent = "\n" + " " * len(lead)
        out: Line = []
        if message.reply_to is not None:
            quoted = by_seq.get(message.reply_to) or self.client.message_by_seq(
                message.conversation_id, message.reply_to
            )
            out.append(("class:quote", " " * len(lead) + "╭ " + self._quote(quoted, names)))
            out.append(("", "\n"))
        if message.seq is not None and message.seq == self.found:
            out.append(("class:mention", "▶"))
        out.append(("class:time", lead))
        out.append(("class:me" if mine else "class:them", f"{who}: "))
        if message.deleted:
            out.append(("class:deleted", "message deleted"))
        else:
            out += self._body(
                message.body.replace("\n", indent), self.client.me in message.mentions
            )
            if message.edited_at is not None:
                out.append(("class:mark", " (edited)"))
            for i, media_id in enumerate(message.attachments):
                sep = indent if message.body or i else ""
                out.append(
                    ("class:file", f"{sep}{_attachment(media_id, self.client.media(media_id))}")
                )
        out.append(("class:mark", self.mark(message)))
        if message.pending:
            out.append(("class:mark", " (changing…)"))
        if message.reactions:
            out.append(("", indent))
            for emoji, users in message.reactions.items():
                style = "class:reacted" if self.client.me in users else "class:reaction"
                out.append((style, f"[{emoji} {len(users)}]"))
                out.append(("", " "))
        out.append(("", "\n"))
        return out

    def _body(self, text: str, mentions_me: bool) -> Line:
        """The text, with `@me` highlighted in a message that mentions me."""
        if not mentions_me:
            return [("", text)]
        handle = "@" + self.client.account.username
        out: Line = []
        for i, part in enumerate(text.split(handle)):
            if i:
                out.append(("class:mention", handle))
            if part:
                out.append(("class:mentioned", part))
        return out

    def _quote(self, quoted: LocalMessage | None, names: dict[str, str]) -> str:
        if quoted is None:
            return "(an earlier message)"
        who = names.get(quoted.sender_id, quoted.sender_id)
        if quoted.deleted:
            return f"{self.label(quoted)} {who}: message deleted"
        first = quoted.body.strip().splitlines()[0] if quoted.body.strip() else "[attachment]"
        if len(first) > QUOTE_CHARS:
            first = first[: QUOTE_CHARS - 1] + "…"
        return f"{self.label(quoted)} {who}: {first}"

    def result_lines(self) -> Line:
        """The `/search` view: one numbered line per result, the matches highlighted."""
        names = self.names()
        out: Line = [("class:header", f"search: {self.results_query} (/go K opens one)\n")]
        for k, result in enumerate(self.results or [], 1):
            message = result["message"]
            who = names.get(message.get("sender_id"), message.get("sender_id"))
            where = self.title(result["conversation_id"])
            out.append(("class:time", f"{k:>2}. {where} #{message.get('seq')} "))
            out.append(("class:them", f"{who}: "))
            snippet = str(result.get("snippet") or message.get("body") or "")
            at = 0
            for pair in result.get("highlights") or []:
                if isinstance(pair, list) and len(pair) == 2 and at <= pair[0] <= pair[1]:
                    out.append(("", snippet[at : pair[0]]))
                    out.append(("class:mention", snippet[pair[0] : pair[1]]))
                    at = pair[1]
            out.append(("", snippet[at:].replace("\n", " ") + "\n"))
        return out

    def terminal_title(self) -> str:
        """The terminal's title: the count of messages that came elsewhere, if any."""
        return f"({self.elsewhere}) MessageAI" if self.elsewhere else "MessageAI"

    def status(self) -> str:
        """The status line, most important first (a narrow terminal cuts the end, and
        the screen wraps it onto at most STATUS_LINES lines): the connection state, the
        queue, who is typing, who is online, then the last connection error."""
        client = self.client
        parts: list[str] = [client.state]
        queued = client.outbox_size()
        if queued:
            parts.append(f"{queued} queued")
        if self.current is not None:
            names = self.names()
            others = [u for u in client.member_ids(self.current) if u != client.me]
            typing = [names.get(u, u) for u in others if self._is_typing(self.current, u)]
            if typing:
                parts.append(", ".join(typing) + " typing…")
            online = [names.get(u, u) for u in others if client.is_online(u)]
            if online:
                parts.append("online: " + ", ".join(online))
        if client.state == "offline" and self.connection_note:
            parts.append(self.connection_note)
        return " · ".join(parts)

    def _is_typing(self, conversation_id: str, user_id: str) -> bool:
        at = self.typing.get((conversation_id, user_id))
        return at is not None and self._clock() - at < TYPING_EXPIRES_SECONDS


_MESSAGE_COMMANDS = {
    "/reply": "/reply M TEXT",
    "/edit": "/edit M TEXT",
    "/delete": "/delete M",
    "/react": "/react M EMOJI",
    "/unreact": "/unreact M EMOJI",
    "/save": "/save M [PATH]",
}


def _size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def _attachment(media_id: str, info: MediaInfo | None) -> str:
    """An attachment as the history shows it: name, type and size where known."""
    if info is None:
        return f"[file {media_id} · /save]"
    name = info.filename or media_id
    return f"[file {name} · {info.content_type or 'unknown type'} · {_size(info.size)}]"


class ChatApp:
    """The full-screen layout over a ChatCore."""

    def __init__(self, core: ChatCore, **app_options: Any) -> None:
        from prompt_toolkit.application import Application
        from prompt_toolkit.filters import has_focus
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.layout import Dimension, HSplit, Layout, VSplit, Window
        from prompt_toolkit.layout.controls import FormattedTextControl
        from prompt_toolkit.styles import Style
        from prompt_toolkit.widgets import TextArea

        self.core = core
        # Multi-line, so a pasted message shows every line (up to INPUT_LINES, then it
        # scrolls); Enter sends, Alt-Enter or Ctrl-J starts a new line.
        self.input = TextArea(
            height=Dimension(min=1, max=INPUT_LINES),
            prompt="> ",
            multiline=True,
            accept_handler=self._accept,
        )
        self.input.buffer.on_text_changed += self._typed
        self.messages = Window(
            FormattedTextControl(self._messages_text),
            wrap_lines=True,
            get_vertical_scroll=self._scroll,
        )
        keys = KeyBindings()

        @keys.add("enter", filter=has_focus(self.input))
        def _send(event: Any) -> None:
            self.input.buffer.validate_and_handle()

        @keys.add("escape", "enter", filter=has_focus(self.input))
        @keys.add("c-j", filter=has_focus(self.input))
        def _newline(event: Any) -> None:
            self.input.buffer.newline(copy_margin=False)

        @keys.add("c-c")
        @keys.add("c-d")
        def _quit(event: Any) -> None:
            event.app.exit()

        @keys.add("c-n")
        def _next(event: Any) -> None:
            self._spawn(functools.partial(core.switch, 1))

        @keys.add("c-p")
        def _prev(event: Any) -> None:
            self._spawn(functools.partial(core.switch, -1))

        @keys.add("pageup")
        def _up(event: Any) -> None:
            core.scroll += 10

        @keys.add("pagedown")
        def _down(event: Any) -> None:
            core.scroll = max(0, core.scroll - 10)

        body = HSplit(
            [
                Window(FormattedTextControl(self._header), height=1, style="class:header"),
                self.messages,
                # Long lines wrap rather than being cut (status() puts what matters first).
                Window(
                    FormattedTextControl(lambda: core.status()),
                    height=Dimension(min=1, max=STATUS_LINES),
                    wrap_lines=True,
                    style="class:status",
                ),
                Window(
                    FormattedTextControl(lambda: core.notice),
                    height=Dimension(min=1, max=STATUS_LINES),
                    wrap_lines=True,
                    style="class:notice",
                ),
                self.input,
            ]
        )
        root = VSplit(
            [
                Window(FormattedTextControl(core.sidebar), width=26),
                Window(width=1, char="│", style="class:line"),
                body,
            ]
        )
        style = Style.from_dict(
            {
                "header": "bold reverse",
                "status": "reverse",
                "notice": "italic",
                "time": "#888888",
                "me": "bold #5fafff",
                "them": "bold #87d787",
                "mark": "#888888",
                "line": "#444444",
                "quote": "italic #888888",
                "deleted": "italic #888888",
                "mention": "bold reverse #ffaf00",
                "mentioned": "#ffaf00",
                "reaction": "#aaaaaa",
                "reacted": "bold #5fafff",
                "file": "underline #87afd7",
                "link": "underline #87afd7",
            }
        )
        self.app: Application[None] = Application(
            layout=Layout(root, focused_element=self.input),
            key_bindings=keys,
            style=style,
            full_screen=True,
            **app_options,
        )
        core.redraw = self.app.invalidate
        # The screen's callbacks hand their work to run()'s task group, its owner: they
        # are called outside any task, where anyio cannot start one (on asyncio it
        # raises NoEventLoopError). Input comes at human speed, so a full channel means
        # the loop is stuck; a job beyond it is refused with a notice (a typed line stays).
        self._jobs: MemoryObjectSendStream[Job] | None = None

    def _spawn(self, job: Job) -> bool:
        """Have run()'s task group run `job` (an error in it ends the screen, it is not
        lost); False if the queue is full."""
        if self._jobs is None:
            raise RuntimeError("the screen's callbacks run only while ChatApp.run() runs")
        try:
            self._jobs.send_nowait(job)
        except anyio.WouldBlock:
            self.core.notice = "busy: try again"
            return False
        return True

    def _typed(self, buffer: Any) -> None:
        # The draft as it is now: a later change spawns its own job.
        # A notice refused while busy is not worth keeping.
        self._spawn(functools.partial(self.core.typed, buffer.text))

    def _header(self) -> str:
        return self.core.header()

    def _messages_text(self) -> Line:
        return self.core.message_lines()

    def _scroll(self, window: Any) -> int:
        info = window.render_info
        if info is None:
            return 0
        # Show the newest lines unless the person scrolled back.
        bottom = max(0, info.content_height - info.window_height)
        self.core.scroll = min(self.core.scroll, bottom)
        return int(bottom - self.core.scroll)

    def _accept(self, buffer: Any) -> bool:
        """Enter: True keeps the line in the input (refused now, or not queued)."""
        text = buffer.text
        refusal = self.core.refusal(text)
        if refusal is not None:
            self.core.notice = refusal
            return True

        async def go() -> None:
            if not await self.core.submit(text):
                self.app.exit()
            elif self.core.rejected and not buffer.text:
                # Refused or failed later (an unknown user, a server error): give the
                # line back unless a new one was started meanwhile.
                buffer.text = text
                buffer.cursor_position = len(text)
            self.app.invalidate()

        return not self._spawn(go)  # clear the input line once it is queued

    async def run(self) -> None:
        """Run the screen and the connection until the person quits."""
        client = self.core.client
        self._jobs, jobs = anyio.create_memory_object_stream[Job](JOB_QUEUE)
        async with (
            self._jobs,
            jobs,
            anyio.create_task_group() as tg,
            client.events() as events,
        ):
            tg.start_soon(self._connection)

            async def redraw() -> None:
                title = ""
                async for event in events:
                    await self.core.on_event(event)
                    if self.core.bell:
                        # A message in a conversation not on screen: ring once per event.
                        self.core.bell = False
                        self.app.output.bell()
                    if self.core.terminal_title() != title:
                        title = self.core.terminal_title()
                        self.app.output.set_title(title)
                    self.app.invalidate()

            async def start_jobs() -> None:
                async for job in jobs:
                    tg.start_soon(job)

            async def expire_typing() -> None:
                # No event says a typist went quiet: look once a second.
                while True:
                    await anyio.sleep(1)
                    if self.core.expire_typing():
                        self.app.invalidate()

            tg.start_soon(redraw)
            tg.start_soon(start_jobs)
            tg.start_soon(expire_typing)
            tg.start_soon(self.core.mark_read)  # the conversation open at start is on screen
            await self.app.run_async()
            # However the person quit (/quit, Ctrl-C, Ctrl-D), the others stop seeing
            # "typing…" now rather than when the server notices.
            with anyio.move_on_after(2):
                await self.core.stop_typing()
            tg.cancel_scope.cancel()

    async def _connection(self) -> None:
        try:
            await self.core.client.run()
        except ClientError as exc:
            self.core.notice = f"signed out: {exc.message}; quit and run `messageai login`"
            self.app.invalidate()


async def _sign_in(store_dir: str | None) -> Client:
    from prompt_toolkit import PromptSession

    session: PromptSession[str] = PromptSession()
    print("No account in this store yet. Sign in or register.")
    server = await session.prompt_async("server URL: ", default="http://127.0.0.1:8080")
    username = await session.prompt_async("username: ")
    register = (await session.prompt_async("new account? [y/N]: ")).strip().lower() == "y"
    password = await session.prompt_async("password: ", is_password=True)
    if register and await session.prompt_async("again: ", is_password=True) != password:
        raise ClientError("passwords do not match")
    return await Client.login(
        server, username.strip(), password, store_dir=store_dir, register=register
    )


async def _main(store_dir: str | None, make_app: Callable[[ChatCore], ChatApp]) -> None:
    try:
        client = Client.open(store_dir)
    except NotSignedIn:
        client = await _sign_in(store_dir)
    async with client:
        await make_app(ChatCore(client)).run()


def run_chat(store_dir: str | Path | None) -> int:
    """`messageai chat`: the exit status."""
    with contextlib.suppress(KeyboardInterrupt, EOFError):
        asyncio.run(_main(str(store_dir) if store_dir else None, ChatApp))
    return 0
