"""The assistant in `messageai chat`: `/ask`, `/catchup`, `/todo`, `/ai` and what they show.

`Assistant` is owned by `chat.ChatCore`, which hands it these commands and asks it
for the message pane while one of its views is open. A view (an answer, a
catch-up, the action items, the AI log) replaces the conversation on screen until
a conversation is opened or a message sent, like `/search`; it lives in memory
only: answers are private to the asker and never stored as messages. An answer
grows as its `ai_delta` frames arrive (`ChatCore.redraw` repaints); `/go #N`
opens the conversation at a message the view cites.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from prompt_toolkit.formatted_text import StyleAndTextTuples

from messageai.client.errors import ClientError, ServerError

if TYPE_CHECKING:
    from messageai.client.chat import ChatCore

Line = StyleAndTextTuples

# Every AI command, one a line, for /help.
HELP = """\
/ask QUESTION          ask the assistant about this conversation (only you see the answer)
/catchup [N]           a summary of what is unread here (or in conversation N, then open it)
/todo                  action items found here · /todo done K (or open K) marks item K
/ai · /ai on|off       the assistant's switch here, for every member · /ai log: what was sent
/ai proactive on|off   let it propose meeting times to vote on · /go #N opens a cited message"""
# Seqs shown per log entry (a catch-up of a long absence may send hundreds).
MAX_SEQS_SHOWN = 20
# Seconds the chat waits for the AI settings of a conversation it opens (for the header).
SETTINGS_WAIT_SECONDS = 5.0


@attrs.define
class View:
    """One AI view of one conversation. `text` grows while `streaming`."""

    kind: str  # "ask", "catchup", "todo", "log"
    conversation_id: str
    heading: str
    text: str = ""
    citations: list[int] = attrs.Factory(list)
    streaming: bool = False
    cached: bool = False
    items: list[dict[str, Any]] = attrs.Factory(list)
    entries: list[dict[str, Any]] = attrs.Factory(list)

    def seqs(self) -> set[int]:
        """Every seq the view shows as a link (`/go #N` opens it)."""
        found = set(self.citations)
        for item in self.items:
            found.update(item.get("source_seqs") or [])
        for entry in self.entries:
            found.update(entry.get("seqs") or [])
        return found


def refusal(exc: ClientError) -> str:
    """One notice line for an assistant request that failed."""
    if isinstance(exc, ServerError) and exc.code == "unavailable":
        return f"the assistant is unavailable: {exc.detail or 'no model configured'}"
    if isinstance(exc, ServerError) and exc.code == "forbidden":
        return f"the assistant refused: {exc.detail} (/ai shows its switch here)"
    if isinstance(exc, ServerError) and exc.code == "not_found" and exc.status == 404:
        if exc.detail.startswith("no route"):  # a server older than the route
            return "this server does not offer that yet (no route for it)"
        return f"the assistant refused: {exc.detail}"
    if isinstance(exc, ServerError) and exc.code == "rate_limited":
        return f"the assistant is rate limited: {exc.detail}"
    return f"the assistant failed: {exc.message}"


def one_line(text: str) -> str:
    return " ".join(text.split())


class Assistant:
    def __init__(self, core: ChatCore) -> None:
        self.core = core
        self.client = core.client
        self.view: View | None = None

    # ------------------------------------------------------------ commands

    async def command(self, name: str, rest: str) -> bool:
        """Handle `/ask`, `/catchup`, `/todo` or `/ai`; True if it succeeded (the line is
        not given back to the input). Failures are a notice."""
        core = self.core
        cid = core.current
        args = rest.split()
        if name == "/catchup" and len(args) == 1:
            cid = cid or ""  # `/catchup N` names its conversation
        if cid is None:
            core.notice = "no conversation open: /open N first"
            return False
        try:
            if name == "/ask":
                return await self.ask(cid, rest)
            if name == "/catchup" and len(args) <= 1:
                return await self.catch_up(args[0] if args else None)
            if name == "/todo" and not args:
                return await self.todo(cid)
            if name == "/todo" and len(args) == 2 and args[0] in ("done", "open"):
                return await self.mark(cid, args[1], args[0] == "done")
            if name == "/ai" and not args:
                return await self.show_settings(cid)
            if name == "/ai" and args in (["on"], ["off"]):
                settings = await self.client.set_ai(cid, args[0] == "on")
                core.notice = self._settings_notice(cid, settings)
                return True
            if name == "/ai" and len(args) == 2 and args[0] == "proactive":
                if args[1] not in ("on", "off"):
                    core.notice = "usage: /ai proactive on|off"
                    return False
                known = self.client.ai_settings_known(cid) or await self.client.ai_settings(cid)
                settings = await self.client.set_ai(cid, bool(known["enabled"]), args[1] == "on")
                core.notice = self._settings_notice(cid, settings)
                return True
            if name == "/ai" and args == ["log"]:
                return await self.log(cid)
        except ClientError as exc:
            core.notice = refusal(exc)
            return False
        core.notice = {
            "/ask": "usage: /ask QUESTION",
            "/catchup": "usage: /catchup [N]",
            "/todo": "usage: /todo, or /todo done K (open K)",
        }.get(name, "usage: /ai, /ai on, /ai off, /ai log, /ai proactive on|off")
        return False

    async def ask(self, cid: str, question: str) -> bool:
        """The answer streams into the pane as it is generated; on failure it goes."""
        question = question.strip()
        if not question:
            self.core.notice = "usage: /ask QUESTION"
            return False
        view = View("ask", cid, f"you asked: {one_line(question)}", streaming=True)
        self._open(view)
        self.core.notice = "the assistant is answering… (only you see it)"

        def delta(text: str) -> None:
            view.text += text
            self.core.redraw()

        try:
            answer = await self.client.ask(cid, question, on_delta=delta)
        except ClientError as exc:
            # PROTOCOL.md: after an error the deltas are dropped.
            if self.view is view:
                self.view = None
            self.core.notice = refusal(exc)
            self.core.redraw()
            return False
        view.text, view.citations = answer["answer"], answer["citations"]
        view.cached, view.streaming = answer["cached"], False
        self.core.redraw()
        if self.view is view:
            cited = ", ".join(f"#{s}" for s in view.citations)
            self.core.notice = (
                f"answered{' from the cache' if view.cached else ''}"
                + (f"; /go {cited.split(',')[0]} opens a cited message" if cited else "")
                + " · /open N goes back"
            )
        return True

    async def catch_up(self, which: str | None) -> bool:
        """`/catchup`: the open conversation; `/catchup N`: conversation N of the list,
        summarised before it is opened (opening marks it read)."""
        core = self.core
        cid = core.current
        if which is not None:
            convs = core.numbered()
            if not which.isdigit() or not 1 <= int(which) <= len(convs):
                core.notice = f"no conversation {which!r}: pick a number from the list"
                return False
            cid = convs[int(which) - 1].id
        assert cid is not None
        core.notice = "the assistant is reading what you have not…"
        body = await self.client.catch_up(cid)
        if which is not None and cid != core.current:
            await core.open(cid)
        if body["summary"] is None:
            core.notice = f"nothing unread in {core.title(cid)} to catch up on"
            return True
        view = View(
            "catchup",
            cid,
            f"catch-up of #{body['from_seq']} to #{body['to_seq']} in {core.title(cid)}",
            text=body["summary"],
            citations=body["citations"],
        )
        self._open(view)
        core.notice = "caught up (only you see it) · /go #N opens a cited message"
        return True

    async def todo(self, cid: str) -> bool:
        items = await self.client.action_items(cid)
        self._open(View("todo", cid, f"action items in {self.core.title(cid)}", items=items))
        self.core.notice = (
            f"{len(items)} action item(s) · /todo done K marks one done"
            if items
            else "no action items found here (yet)"
        )
        return True

    async def mark(self, cid: str, which: str, done: bool) -> bool:
        """`/todo done K` / `/todo open K`: K as numbered by the list on screen (fetched
        now if it is not on screen)."""
        view = self.view
        if view is None or view.kind != "todo" or view.conversation_id != cid:
            view = View("todo", cid, f"action items in {self.core.title(cid)}")
            view.items = await self.client.action_items(cid)
            self._open(view)
        k = which.lstrip("#")
        if not k.isdigit() or not 1 <= int(k) <= len(view.items):
            self.core.notice = f"no action item {which!r}: a number from /todo's list"
            return False
        item = view.items[int(k) - 1]
        view.items[int(k) - 1] = await self.client.set_action_item(cid, item["id"], done=done)
        self.core.notice = f"item {k} marked {'done' if done else 'open'}: {one_line(item['text'])}"
        return True

    async def show_settings(self, cid: str) -> bool:
        self.core.notice = self._settings_notice(cid, await self.client.ai_settings(cid))
        return True

    async def log(self, cid: str) -> bool:
        entries = await self.client.ai_log(cid)
        self._open(View("log", cid, f"what was sent to the model from {self.core.title(cid)}"))
        assert self.view is not None
        self.view.entries = entries
        self.core.notice = (
            f"{len(entries)} request(s) carried this conversation's messages"
            if entries
            else "nothing of this conversation was ever sent to the model"
        )
        return True

    def _open(self, view: View) -> None:
        core = self.core
        core.results, core.help_shown, core.scroll = None, False, 0
        self.view = view

    async def go(self, ref: str) -> bool:
        """`/go #N` while a view is open: the conversation, at message N (marked)."""
        view = self.view
        assert view is not None
        seq = ref.lstrip("#")
        if not seq.isdigit() or int(seq) not in view.seqs():
            shown = " ".join(f"#{s}" for s in sorted(view.seqs())[:MAX_SEQS_SHOWN]) or "none"
            self.core.notice = f"{ref} is not cited here (cited: {shown})"
            return False
        self.view = None
        if self.core.current != view.conversation_id:
            await self.core.open(view.conversation_id)
        self.core.found = int(seq)
        self.core.scroll = 0
        held = self.client.message_by_seq(view.conversation_id, int(seq)) is not None
        self.core.notice = (
            f"#{seq} is marked ▶" if held else f"#{seq} is not in the local store yet"
        )
        return True

    # ------------------------------------------------------------ the switch

    async def learn_settings(self, cid: str) -> None:
        """Ask for a conversation's settings once (for the header), when connected;
        a server without the assistant's routes, or a slow one, only costs the header."""
        if self.client.ai_settings_known(cid) is not None or self.client.state != "online":
            return
        with anyio.move_on_after(SETTINGS_WAIT_SECONDS):
            try:
                await self.client.ai_settings(cid)
            except ClientError:
                return  # a server without the routes: the header says nothing of AI

    def header_note(self, cid: str) -> str:
        known = self.client.ai_settings_known(cid)
        if known is None:
            return ""
        return " · AI on" if known["enabled"] else " · AI off"

    def changed(self, cid: str, enabled: bool, changed_by: str | None) -> None:
        """The settings changed: said in the notice when it is the open conversation and
        someone else changed them (my own `/ai on|off` says so itself)."""
        if cid != self.core.current or changed_by == self.client.me:
            return
        who = self._who(changed_by)
        self.core.notice = (
            f"{who} turned the assistant {'on' if enabled else 'off'} in {self.core.title(cid)}"
        )

    def _who(self, user_id: str | None) -> str:
        if user_id is None:
            return "nobody"
        if user_id == self.client.me:
            return "you"
        return self.core.names().get(user_id, user_id)

    def _settings_notice(self, cid: str, settings: dict[str, Any]) -> str:
        title = self.core.title(cid)
        state = "on" if settings["enabled"] else "off"
        proactive = " (proposes meeting times)" if settings["proactive"] else ""
        at = settings.get("changed_at")
        when = (
            time.strftime(" at %Y-%m-%d %H:%M", time.localtime(at / 1000))
            if isinstance(at, int)
            else ""
        )
        by = settings.get("changed_by")
        changed = f"changed by {self._who(by)}{when}" if by is not None else "never changed"
        what = (
            "its messages may be sent to the model when a member asks"
            if settings["enabled"]
            else "nothing of it is sent to the model"
        )
        flip = "/ai off" if settings["enabled"] else "/ai on"
        return (
            f"assistant {state}{proactive} in {title}: {what}; {changed}"
            f" · {flip} (for every member) · /ai log"
        )

    # ------------------------------------------------------------ what the pane shows

    def lines(self) -> Line:
        view = self.view
        assert view is not None
        out: Line = [("class:header", f"assistant · {view.heading} (only you see this)\n")]
        if view.kind in ("ask", "catchup"):
            text = view.text or ("…" if view.streaming else "(no answer)")
            out.append(("", text + ("▌" if view.streaming else "") + "\n"))
            if view.citations:
                out.append(("class:time", "cited: "))
                for seq in view.citations:
                    out += self._link(view.conversation_id, seq)
                out.append(("", "\n"))
            if view.cached:
                out.append(("class:mark", "(from the cache: nothing was sent to the model)\n"))
        elif view.kind == "todo":
            out += self._items(view)
        else:
            out += self._entries(view)
        return out

    def _link(self, cid: str, seq: int) -> Line:
        """`#seq` as a link, with the first words of the message where the store has it."""
        message = self.client.message_by_seq(cid, seq)
        out: Line = [("class:link", f"#{seq}")]
        if message is not None and not message.deleted and message.body:
            words = one_line(message.body)
            out.append(("class:mark", f" ({words[:40] + '…' if len(words) > 40 else words})"))
        out.append(("", "  "))
        return out

    def _items(self, view: View) -> Line:
        names = self.core.names()
        out: Line = []
        for k, item in enumerate(view.items, 1):
            box = "[x]" if item["status"] == "done" else "[ ]"
            style = "class:mark" if item["status"] == "done" else ""
            out.append(("class:time", f"{k:>2}. {box} "))
            out.append((style, one_line(item["text"])))
            extra = []
            if item.get("owner_id"):
                extra.append(names.get(item["owner_id"], item["owner_id"]))
            if item.get("due"):
                extra.append(f"due {one_line(item['due'])}")
            if extra:
                out.append(("class:them", " — " + ", ".join(extra)))
            if item.get("source_seqs"):
                out.append(("class:time", " · from "))
                for seq in item["source_seqs"]:
                    out.append(("class:link", f"#{seq} "))
            out.append(("", "\n"))
        if not view.items:
            out.append(("italic", "no action items found here (yet)\n"))
        return out

    def _entries(self, view: View) -> Line:
        names = self.core.names()
        out: Line = []
        for entry in view.entries:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["at"] / 1000))
            user = entry.get("user_id")
            who = "(background)" if user is None else names.get(user, user)
            out.append(("class:time", f"{when} "))
            out.append(("class:them", f"{who} "))
            seqs = entry.get("seqs") or []
            out.append(("", f"{entry['action']}: "))
            for seq in seqs[:MAX_SEQS_SHOWN]:
                out.append(("class:link", f"#{seq} "))
            if len(seqs) > MAX_SEQS_SHOWN:
                out.append(("class:mark", f"and {len(seqs) - MAX_SEQS_SHOWN} more"))
            out.append(("", "\n"))
        if not view.entries:
            out.append(("italic", "nothing of this conversation was ever sent to the model\n"))
        return out
