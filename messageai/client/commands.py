"""The client subcommands of `messageai`: login, send, sync, tail, conversations, new, chat,
for v1.1 edit, delete, react (queued like sends) and search (needs the server), and the
assistant's ask, catch-up, todo and ai (its switch and log) (need the server; answers
are never stored).

Their arguments are defined in `messageai.cli.client_args` (kept light, so that
`messageai serve` does not import the SDK); `run` is called by `messageai.cli.main`.
These forms are a public interface for scripts: exit status 0 on
success, 1 for a failure the message explains, 2 for bad usage. Every command
works on the local store first (`--store DIR`, `$MESSAGEAI_STORE`, or the
per-user data directory) and reaches the server only through the SDK.
"""

from __future__ import annotations

import argparse
import getpass
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import trio

from messageai.client.errors import AuthError, ClientError, Unreachable
from messageai.client.events import MessageAdded, MessageUpdated, StoreChanged
from messageai.client.sdk import Client
from messageai.client.store import LocalMessage
from messageai.client.sync import SyncReport


def run(args: argparse.Namespace) -> int:
    """Run a client subcommand; the exit status."""
    try:
        if args.command == "chat":
            # prompt_toolkit runs on asyncio; the SDK runs there too.
            from messageai.client.chat import run_chat

            return run_chat(args.store)
        if args.command == "login":
            password = _read_password(args)  # before the event loop: it may prompt
            return trio.run(_login, args, password)
        return trio.run(_until_signal, _HANDLERS[args.command], args)
    except AuthError as exc:
        print(
            f"messageai: {_one_line(exc.message)}; sign in again with `messageai login`",
            file=sys.stderr,
        )
        return 1
    except ClientError as exc:
        print(f"messageai: {_one_line(exc.message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"messageai: {exc}", file=sys.stderr)
        return 1


async def _until_signal(handler: Callable[[argparse.Namespace], Awaitable[int]], args: Any) -> int:
    # SIGINT/SIGTERM end a command (`tail --follow` above all) cleanly, with status 0.
    result = 0
    failure: ClientError | OSError | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def main() -> None:
                nonlocal result, failure
                try:
                    result = await handler(args)
                except (ClientError, OSError) as exc:
                    # Raised out of the nursery it would arrive wrapped in an
                    # ExceptionGroup; `run` reports it as one clear line.
                    failure = exc
                except BaseExceptionGroup as group:
                    # A handler's own nursery (`tail --follow` runs the connection in
                    # one) wraps the failure too: one that holds only ClientErrors and
                    # OSErrors is reported by its first; anything else stays a bug.
                    found, rest = group.split((ClientError, OSError))
                    if found is None or rest is not None:
                        raise
                    leaf = _first_leaf(found)
                    assert isinstance(leaf, (ClientError, OSError))  # split() kept only these
                    failure = leaf
                nursery.cancel_scope.cancel()

            nursery.start_soon(main)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    if failure is not None:
        raise failure
    return result


def _one_line(text: str) -> str:
    """A server's message as one line of stderr, whatever it holds."""
    return " ".join(text.split())


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file == "-":
        line = sys.stdin.readline()
    elif args.password_file is not None:
        try:
            lines = Path(args.password_file).read_text("utf-8").splitlines()
        except OSError as exc:
            raise ClientError(f"cannot read the password file: {exc}") from None
        line = lines[0] if lines else ""
    elif sys.stdin.isatty():
        line = getpass.getpass("password: ")
        if args.register and getpass.getpass("again: ") != line:
            raise ClientError("passwords do not match")
    else:
        raise ClientError("no password: use --password-file F (or '-' for stdin)")
    password = line.rstrip("\r\n")
    if not password:
        raise ClientError("the password is empty")
    return password


async def _login(args: argparse.Namespace, password: str) -> int:
    async with await Client.login(
        args.server,
        args.user,
        password,
        store_dir=args.store,
        register=args.register,
        display_name=args.display_name,
    ) as client:
        what = "registered and signed in" if args.register else "signed in"
        print(f"{what} as {client.account.username} ({client.me}) on {client.account.server_url}")
    return 0


async def _logout(args: argparse.Namespace) -> int:
    async with Client.open(args.store) as client:
        await client.logout()
        print(f"signed out {client.account.username}")
    return 0


async def _try_sync(client: Client, limit_seconds: float) -> SyncReport | str:
    """A sync pass, or the reason the server could not be reached."""
    try:
        with trio.fail_after(limit_seconds):
            return await client.sync()
    except Unreachable as exc:
        return exc.message
    except trio.TooSlowError:
        return f"no answer within {limit_seconds:g}s"


def _emit(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


async def _send(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    async with Client.open(args.store) as client:
        body = text.rstrip("\n")
        replied = args.reply_to
        if replied is not None and client.message_by_seq(args.conversation_id, replied) is None:
            await _try_sync(client, args.timeout)  # the message replied to, if it is new here
        message = await client.send(
            args.conversation_id,
            body,
            reply_to=args.reply_to,
            mentions=client.mentions_in(args.conversation_id, body),
        )
        outcome = await _try_sync(client, args.timeout)
        final = client.message(args.conversation_id, message.client_id) or message
        if args.json:
            _emit(final.to_json())
        elif final.status == "failed":
            pass
        elif final.seq is not None:
            print(f"sent: seq {final.seq} in {final.conversation_id} (client_id {final.client_id})")
        else:
            print(
                f"queued: client_id {final.client_id};"
                " it is delivered by a later send, sync or chat"
            )
        if isinstance(outcome, str):
            print(
                f"messageai: server unreachable ({outcome}); the message is queued", file=sys.stderr
            )
        if final.status == "failed":
            print(f"messageai: the server refused the message: {final.error}", file=sys.stderr)
            return 1
    return 0


async def _sync(args: argparse.Namespace) -> int:
    async with Client.open(args.store) as client:
        outcome = await _try_sync(client, args.timeout)
        if isinstance(outcome, str):
            queued = client.outbox_size()
            if args.json:
                _emit({"ok": False, "error": outcome, "queued": queued})
            print(
                f"messageai: cannot sync: {outcome}; {queued} message(s) stay queued",
                file=sys.stderr,
            )
            return 1
        report = outcome
        ok = not report.failed and report.queued == 0
        if args.json:
            _emit(
                {
                    "ok": ok,
                    "fetched": report.fetched,
                    "delivered": [m.to_json() for m in report.delivered],
                    "failed": [m.to_json() for m in report.failed],
                    "queued": report.queued,
                }
            )
        else:
            print(
                f"fetched {report.fetched} new message(s), delivered {len(report.delivered)},"
                f" {len(report.failed)} failed, {report.queued} still queued"
            )
        for message in report.failed:
            print(
                f"messageai: not delivered to {message.conversation_id}: {message.error}"
                f" (client_id {message.client_id})",
                file=sys.stderr,
            )
        return 0 if ok else 1


def _line(client: Client, message: LocalMessage, names: dict[str, str]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(message.created_at / 1000))
    who = names.get(message.sender_id, message.sender_id)
    seq = f"#{message.seq}" if message.seq is not None else "#-"
    mark = {"sending": " [queued]", "failed": f" [failed: {message.error}]", "read": " [read]"}
    reply = f"(reply to #{message.reply_to}) " if message.reply_to is not None else ""
    body = "[message deleted]" if message.deleted else message.body
    if message.attachments and not message.deleted:
        files = [client.media(m) for m in message.attachments]
        body += "".join(
            f" [file {(info.filename if info and info.filename else m)}]"
            for m, info in zip(message.attachments, files, strict=True)
        )
    edited = " (edited)" if message.edited_at is not None and not message.deleted else ""
    reactions = "".join(f" [{e} {len(u)}]" for e, u in message.reactions.items())
    return f"{seq} {when} {who}: {reply}{body}{edited}{reactions}{mark.get(message.status, '')}"


async def _tail(args: argparse.Namespace) -> int:
    async with Client.open(args.store) as client:
        outcome = await _try_sync(client, args.timeout)
        if isinstance(outcome, str):
            print(f"messageai: offline ({outcome}); showing the local store", file=sys.stderr)
        cid = args.conversation_id
        if cid not in {c.id for c in client.conversations()} and not client.messages(cid, 1):
            print(f"messageai: no conversation {cid!r} in the local store", file=sys.stderr)
            return 1
        names = client.user_names()

        def show(message: LocalMessage) -> None:
            if args.json:
                _emit(message.to_json())
            else:
                print(_line(client, message, names), flush=True)

        # The cursor before the snapshot: what is stored after it is then either in
        # the snapshot (and remembered as shown) or shown by the follower.
        follower = _Follower(client, cid, show)
        snapshot = client.messages(cid, args.lines)
        for message in snapshot:
            show(message)
        if not args.follow:
            return 0
        follower.shown(snapshot)
        async with trio.open_nursery() as nursery, client.events() as events:
            nursery.start_soon(client.run)
            async for event in events:
                if (
                    isinstance(event, (MessageAdded, MessageUpdated))
                    and event.message.conversation_id != cid
                ) or (isinstance(event, StoreChanged) and event.conversation_id != cid):
                    continue
                follower.catch_up()
    return 0


# Messages a follower reads from the store at a time (after a long catch-up).
FOLLOW_PAGE = 500


class _Follower:
    """What `tail --follow` has shown of one conversation, so it shows every message
    exactly once, whichever process stored it (`messageai chat` sharing the store
    merges most live messages before this one hears of them).

    A message is shown when the store holds it and every message before it (in seq
    order, up to the store's catch-up cursor), or, not yet acknowledged, as
    `[queued]`. A message shown as `[queued]` is shown once more when the server
    acknowledges it (with its seq; in `--json` the object again, same `client_id`,
    `local_only` false), or when it is refused (`[failed: …]`).
    """

    def __init__(self, client: Client, cid: str, show: Callable[[LocalMessage], None]) -> None:
        self._client = client
        self._cid = cid
        self._show = show
        # Every seq at or below this is shown or predates the tail.
        self._floor, _ = client.messages_since(cid, 0, 0)
        # Seqs above the floor that the snapshot showed (beyond a gap in the store).
        self._above: set[int] = set()
        # Local ids shown `[queued]` and not yet shown delivered; and shown `[failed]`.
        self._queued: set[int] = set()
        self._failed: set[int] = set()

    def shown(self, snapshot: list[LocalMessage]) -> None:
        for message in snapshot:
            if message.seq is not None and message.seq > self._floor:
                self._above.add(message.seq)
            elif message.status == "sending":
                self._queued.add(message.local_id)
            elif message.status == "failed":
                self._failed.add(message.local_id)

    def catch_up(self) -> None:
        """Show what the store holds that was not shown yet (no I/O but the store)."""
        while True:
            upto, page = self._client.messages_since(self._cid, self._floor, FOLLOW_PAGE)
            for message in page:
                if message.seq not in self._above:
                    self._show(message)
                self._queued.discard(message.local_id)
            if len(page) < FOLLOW_PAGE or page[-1].seq is None:
                self._floor = max(self._floor, upto)
                break
            self._floor = page[-1].seq  # more below the cursor: the next page
        self._above = {seq for seq in self._above if seq > self._floor}
        for message in self._client.unacknowledged(self._cid):
            if message.status == "sending":
                self._failed.discard(message.local_id)  # retried
                if message.local_id not in self._queued:
                    self._queued.add(message.local_id)
                    self._show(message)
            elif message.status == "failed" and message.local_id not in self._failed:
                self._queued.discard(message.local_id)
                self._failed.add(message.local_id)
                self._show(message)


async def _conversations(args: argparse.Namespace) -> int:
    async with Client.open(args.store) as client:
        outcome = await _try_sync(client, args.timeout)
        if isinstance(outcome, str):
            print(f"messageai: offline ({outcome}); showing the local store", file=sys.stderr)
        names = client.user_names()
        for conv in client.conversations():
            others = [names.get(u, u) for u in conv.member_ids if u != client.me]
            if args.json:
                _emit(
                    {
                        "id": conv.id,
                        "kind": conv.kind,
                        "title": conv.title,
                        "member_ids": conv.member_ids,
                        "last_seq": conv.last_seq,
                        "unread_count": conv.unread_count,
                        "active": conv.active,
                        "topic": conv.topic,
                    }
                )
            else:
                name = conv.title or ", ".join(others) or "(just you)"
                left = "" if conv.active else " (left)"
                print(f"{conv.id}\t{conv.kind}\t{name}\t{conv.unread_count} unread{left}")
    return 0


async def _new(args: argparse.Namespace) -> int:
    async with Client.open(args.store) as client:
        if args.title is None and len(args.users) != 1:
            raise ClientError("a direct conversation has one other user; give --title for a group")
        if args.title is None:
            cid = await client.create_direct(args.users[0])
        else:
            cid = await client.create_group(args.title, args.users)
        if args.json:
            _emit({"id": cid})
        else:
            print(cid)
    return 0


async def _change(args: argparse.Namespace) -> int:
    """`edit`, `delete` and `react`: optimistic and queued like `send`, then delivered
    now if the server answers; exit 1 if it refused (the change is undone)."""
    async with Client.open(args.store) as client:
        cid, seq = args.conversation_id, args.seq
        message = client.message_by_seq(cid, seq)
        if message is None:
            # Not in the store yet: a sync may bring it.
            outcome = await _try_sync(client, args.timeout)
            message = client.message_by_seq(cid, seq)
            if message is None:
                offline = f" (offline: {outcome})" if isinstance(outcome, str) else ""
                raise ClientError(f"no message #{seq} in conversation {cid!r}{offline}")
        if args.command == "edit":
            text = sys.stdin.read() if args.text == "-" else args.text
            await client.edit(message, text.rstrip("\n"))
        elif args.command == "delete":
            await client.delete(message)
        else:
            await client.react(message, args.emoji, not args.off)
        outcome = await _try_sync(client, args.timeout)
        final = client.message_by_local_id(message.local_id) or message
        refused = (
            [r for r in outcome.refused if r.message.local_id == message.local_id]
            if isinstance(outcome, SyncReport)
            else []
        )
        if args.json:
            _emit({**final.to_json(), "error": refused[0].error if refused else None})
        elif not refused and final.pending:
            print(f"queued: the {args.command} of #{seq} is delivered by a later sync or chat")
        elif not refused:
            done = {"edit": "edited", "delete": "deleted", "react": "reacted to"}[args.command]
            if args.command == "react" and args.off:
                done = "removed the reaction from"
            print(f"{done} #{seq} in {cid} (rev {final.rev})")
        if isinstance(outcome, str):
            print(
                f"messageai: server unreachable ({outcome}); the change is queued", file=sys.stderr
            )
        if refused:
            print(
                f"messageai: the server refused the {args.command}: {refused[0].error}"
                " (undone locally)",
                file=sys.stderr,
            )
            return 1
    return 0


async def _search(args: argparse.Namespace) -> int:
    async with Client.open(args.store) as client:
        try:
            with trio.fail_after(args.timeout):
                results = await client.search(
                    args.query, conversation_id=args.conversation, limit=args.limit
                )
        except trio.TooSlowError:
            raise Unreachable(f"no answer within {args.timeout:g}s") from None
        known = {c.id for c in client.conversations()}
        if not args.json and any(r["conversation_id"] not in known for r in results):
            # Titles and names to print come from the store: fill it first (failures
            # only cost the names; ids are printed instead).
            await _try_sync(client, args.timeout)
        names = client.user_names()
        titles = {c.id: c.title or "" for c in client.conversations()}
        for result in results:
            if args.json:
                _emit(result)
                continue
            m = result["message"]
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.get("created_at", 0) / 1000))
            cid = result["conversation_id"]
            where = f"{cid} ({titles[cid]})" if titles.get(cid) else cid
            who = names.get(m.get("sender_id"), m.get("sender_id"))
            snippet = str(result.get("snippet") or m.get("body") or "").replace("\n", " ")
            print(f"{where} #{m.get('seq')} {when} {who}: {snippet}")
        if not results and not args.json:
            print(f"messageai: nothing found for {args.query!r}", file=sys.stderr)
    return 0


async def _cited(client: Client, cid: str, seqs: list[int], seconds: float) -> None:
    """The messages an answer cites, one line each as `tail` prints them (from the
    store, synced first if it lacks one of them)."""
    if not seqs:
        return
    if any(client.message_by_seq(cid, s) is None for s in seqs):
        await _try_sync(client, seconds)
    names = client.user_names()
    print("cited:")
    for seq in seqs:
        message = client.message_by_seq(cid, seq)
        print("  " + (_line(client, message, names) if message is not None else f"#{seq}"))


async def _ai_call(seconds: float, call: Awaitable[Any]) -> Any:
    try:
        with trio.fail_after(seconds):
            return await call
    except trio.TooSlowError:
        raise Unreachable(f"no answer within {seconds:g}s") from None


async def _ask(args: argparse.Namespace) -> int:
    """`ask CONV QUESTION`: the answer, streamed to a terminal as it is generated
    (`ai_ask`); to a pipe or file only once complete, so a script never reads an
    answer that an error voided. `--json`: one REST call, one object."""
    question = sys.stdin.read() if args.question == "-" else args.question
    async with Client.open(args.store) as client:
        cid = args.conversation_id
        if args.json:
            _emit(await _ai_call(args.timeout, client.ask(cid, question)))
            return 0
        streaming = sys.stdout.isatty()
        shown = False

        def delta(text: str) -> None:
            nonlocal shown
            if streaming:
                sys.stdout.write(text)
                sys.stdout.flush()
                shown = True

        try:
            answer = await _ai_call(args.timeout, client.ask(cid, question, on_delta=delta))
        except ClientError:
            if shown:
                print(flush=True)  # end the answer's line on the terminal
                print("messageai: the answer above was cut off: disregard it", file=sys.stderr)
            raise
        if shown:
            print()
        else:
            print(answer["answer"])
        if answer["cached"]:
            print("(from the cache: nothing was sent to the model)")
        await _cited(client, cid, answer["citations"], args.timeout)
    return 0


async def _catch_up(args: argparse.Namespace) -> int:
    async with Client.open(args.store) as client:
        cid = args.conversation_id
        body = await _ai_call(args.timeout, client.catch_up(cid))
        if args.json:
            _emit(body)
        elif body["summary"] is None:
            print(f"nothing unread in {cid}")
        else:
            print(f"catch-up of #{body['from_seq']} to #{body['to_seq']} in {cid}:")
            print(body["summary"])
            await _cited(client, cid, body["citations"], args.timeout)
    return 0


def _item_line(item: dict[str, Any], names: dict[str, str]) -> str:
    box = "[x]" if item["status"] == "done" else "[ ]"
    extra = []
    if item.get("owner_id"):
        extra.append(names.get(item["owner_id"], item["owner_id"]))
    if item.get("due"):
        extra.append(f"due {_one_line(item['due'])}")
    sources = " ".join(f"#{s}" for s in item.get("source_seqs") or [])
    more = f" ({', '.join(extra)})" if extra else ""
    return f"{item['id']}\t{box} {_one_line(item['text'])}{more}" + (
        f"\tfrom {sources}" if sources else ""
    )


async def _todo(args: argparse.Namespace) -> int:
    """`todo CONV`: the action items; `--done ID` / `--reopen ID` mark one."""
    async with Client.open(args.store) as client:
        cid = args.conversation_id
        names = client.user_names()
        marked = args.done or args.reopen
        if marked is not None:
            item = await _ai_call(
                args.timeout, client.set_action_item(cid, marked, done=args.done is not None)
            )
            if args.json:
                _emit(item)
            else:
                print(_item_line(item, names))
            return 0
        items = await _ai_call(args.timeout, client.action_items(cid))
        for item in items:
            if args.json:
                _emit(item)
            else:
                print(_item_line(item, names))
        if not items and not args.json:
            print(f"messageai: no action items in {cid}", file=sys.stderr)
    return 0


async def _ai(args: argparse.Namespace) -> int:
    """`ai CONV [on|off|log]`: the switch (works without an endpoint), or the log."""
    async with Client.open(args.store) as client:
        cid = args.conversation_id
        names = client.user_names()
        if args.action == "log":
            entries = await _ai_call(args.timeout, client.ai_log(cid))
            for entry in entries:
                if args.json:
                    _emit(entry)
                    continue
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["at"] / 1000))
                user = entry.get("user_id")
                who = "(background)" if user is None else names.get(user, user)
                seqs = " ".join(f"#{s}" for s in entry["seqs"])
                print(f"{when}\t{who}\t{entry['action']}\t{seqs}")
            if not entries and not args.json:
                print(f"nothing of {cid} was ever sent to the model")
            return 0
        if args.action is None:
            settings = await _ai_call(args.timeout, client.ai_settings(cid))
        else:
            settings = await _ai_call(args.timeout, client.set_ai(cid, args.action == "on"))
        if args.json:
            _emit(settings)
            return 0
        by = settings.get("changed_by")
        at = settings.get("changed_at")
        when = (
            time.strftime(" at %Y-%m-%d %H:%M", time.localtime(at / 1000))
            if isinstance(at, int)
            else ""
        )
        changed = f"changed by {names.get(by, by)}{when}" if by is not None else "never changed"
        proactive = ", proactive" if settings["proactive"] else ""
        state = "on" if settings["enabled"] else "off"
        print(f"assistant {state}{proactive} in {cid} ({changed})")
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "logout": _logout,
    "send": _send,
    "sync": _sync,
    "tail": _tail,
    "conversations": _conversations,
    "new": _new,
    "edit": _change,
    "delete": _change,
    "react": _change,
    "search": _search,
    "ask": _ask,
    "catch-up": _catch_up,
    "todo": _todo,
    "ai": _ai,
}
