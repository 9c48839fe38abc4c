"""The operator's commands on a data directory: `backup DEST`, `verify DIR`, `restore
SRC` (the work is `messageai.ops.backup`) and `conversation export ID FILE [--media]`,
`conversation import FILE` (`messageai.ops.conversation_file`), `conversation
list|show|retention`, `conversation delete|restore` (through `cli.live`: by the
running server, or on the files when none runs) and `check`
(`messageai.ops.check`). Added to the parser
and run by `cli.main`; exit 0 on success, 1 when the work fails (the reason on stderr,
each problem on its own line for `verify`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import apsw

from messageai.cli.directory_db import open_directory, refuse_in_postgres
from messageai.config import Config
from messageai.errors import MessageAIError
from messageai.ops import backup, channel, check, conversation_file
from messageai.store import directory as directory_sql
from messageai.store.db import Db, transaction
from messageai.store.paths import conversation_path

OPS_COMMANDS = ("backup", "verify", "restore", "check", "conversation", "node")


def add_ops_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    with_config: Callable[[argparse.ArgumentParser], None],
) -> None:
    make = sub.add_parser(
        "backup",
        help="back the data directory up while the server runs",
        description="Every database through SQLite's online backup API, the media files,"
        " and a manifest with checksums, into DEST (absent or empty).",
    )
    with_config(make)
    make.add_argument("dest", type=Path, help="the backup folder to create")
    check = sub.add_parser(
        "verify",
        help="check a backup: checksums and SQLite's integrity check of every file",
    )
    check.add_argument("folder", type=Path, help="a folder made by `messageai backup`")
    put = sub.add_parser(
        "restore",
        help="restore a backup into an empty data directory",
        description="Verifies the backup, then copies it into the data directory named by"
        " --data-dir or --config, which must be absent or empty.",
    )
    with_config(put)
    put.add_argument("src", type=Path, help="a folder made by `messageai backup`")
    whole = sub.add_parser(
        "check",
        help="check the data directory: every database's integrity, every upload's bytes",
    )
    with_config(whole)
    node = sub.add_parser("node", help="this cluster node (docs/SCALE.md)")
    node_sub = node.add_subparsers(dest="node_command", required=True)
    drain = node_sub.add_parser(
        "drain",
        help="hand the node's conversations to the other nodes",
        description="Asks the running node named by --config ([cluster] node_id) to stop"
        " taking conversations and to hand over each one it owns; it keeps running.",
    )
    with_config(drain)
    conversation = sub.add_parser("conversation", help="one conversation as one file")
    conversation_sub = conversation.add_subparsers(dest="conversation_command", required=True)
    out = conversation_sub.add_parser(
        "export",
        help="write one conversation as one self-contained SQLite file",
        description="Its messages, read cursors, edit history and the public profiles of"
        " everyone in it (not the assistant's data); its uploads too with --media.",
    )
    with_config(out)
    out.add_argument("conversation_id")
    out.add_argument("file", type=Path, help="the file to write (must not exist)")
    out.add_argument("--media", action="store_true", help="include the uploads it attaches")
    into = conversation_sub.add_parser(
        "import",
        help="import a conversation file into this data directory",
        description="People are matched by username, else made as placeholders without a"
        " password; the conversation keeps its id unless it is taken here.",
    )
    with_config(into)
    into.add_argument("file", type=Path, help="a file made by `conversation export`")
    listing = conversation_sub.add_parser(
        "list", help="every conversation: id, kind, members, messages, title"
    )
    with_config(listing)
    show = conversation_sub.add_parser("show", help="one conversation: its record and members")
    with_config(show)
    show.add_argument("conversation_id")
    gone = conversation_sub.add_parser(
        "delete",
        help="delete a conversation: its file, memberships, uploads only it used, AI data",
        description="Beside a running server (it does the work, and members' clients hear"
        " `unsubscribed`) or without one. Backups keep their copy: they are the operator's.",
    )
    with_config(gone)
    gone.add_argument("conversation_id")
    back = conversation_sub.add_parser(
        "restore",
        help="put one conversation back to its state in a backup, while the server runs",
        description="Checks the backup's copy (manifest checksum, integrity), then replaces"
        " the conversation's file with it; seqs and revs never go back (docs/protocol.md).",
    )
    with_config(back)
    back.add_argument("conversation_id")
    back.add_argument(
        "--from", dest="backup", type=Path, required=True, help="a folder made by `backup`"
    )
    keep = conversation_sub.add_parser(
        "retention",
        help="how many days this conversation keeps its messages (overrides retention.days)",
    )
    with_config(keep)
    keep.add_argument("conversation_id")
    keep.add_argument(
        "days", nargs="?", help="days (0: keep everything), or `default`; none: show it"
    )


def run(config: Config, args: argparse.Namespace) -> int:
    try:
        if args.command in ("backup", "restore", "check"):
            refuse_in_postgres(config, args.command)
        elif args.command == "conversation" and args.conversation_command in ("export", "import"):
            refuse_in_postgres(config, f"conversation {args.conversation_command}")
        if args.command == "backup":
            backup.backup(config.data_dir, args.dest)
            return 0
        if args.command in ("verify", "check"):
            folder = args.folder if args.command == "verify" else config.data_dir
            found = backup.verify(folder) if args.command == "verify" else check.check(folder)
            for problem in found.problems:
                print(f"messageai: {problem}", file=sys.stderr)
            if found.problems:
                print(f"{folder}: {len(found.problems)} problems", file=sys.stderr)
                return 1
            print(f"{folder}: {found.checked} files verified")
            return 0
        if args.command == "restore":
            backup.restore(args.src, config.data_dir)
            return 0
        if args.command == "node":
            return _node_drain(config)
        return _conversation(config, args)
    except (backup.BackupError, conversation_file.TransferError, MessageAIError) as exc:
        print(f"messageai: {exc}", file=sys.stderr)
        return 1


def _node_drain(config: Config) -> int:
    """`node drain`: by the running node's own admin channel."""
    if not config.cluster.enabled:
        print("messageai: node drain: cluster.enabled is false in this config", file=sys.stderr)
        return 2
    try:
        said = channel.request(
            config.data_dir,
            {"command": "node_drain"},
            name=channel.node_files(config.cluster.node_id)[1],
        )
    except channel.ChannelError as exc:
        print(f"messageai: {exc}", file=sys.stderr)
        return 1
    print(said)
    return 0


def _conversation(config: Config, args: argparse.Namespace) -> int:
    if args.conversation_command in ("list", "show"):
        return _describe(config, args)
    if args.conversation_command in ("delete", "restore"):
        return _by_the_server(config, args)
    if args.conversation_command == "retention":
        return _retention(config, args.conversation_id, args.days)
    if args.conversation_command == "export":
        summary = conversation_file.export(
            config.data_dir, args.conversation_id, args.file, media=args.media
        )
        print(
            f"exported {summary.conversation_id}: {summary.messages} messages,"
            f" {summary.users} people, {summary.media} uploads into {args.file}"
        )
        return 0
    summary = conversation_file.import_file(config.data_dir, args.file, config.storage.synchronous)
    made = (
        f"; new placeholder accounts: {', '.join(summary.created_users)}"
        if summary.created_users
        else ""
    )
    print(
        f"imported {summary.conversation_id}: {summary.messages} messages,"
        f" {summary.users} people, {summary.media} uploads{made}"
    )
    return 0


def _by_the_server(config: Config, args: argparse.Namespace) -> int:
    """`conversation delete|restore`: by the running server, else on the files."""
    # Imported here: the server-side modules they need cost every other command time.
    from messageai.cli import live
    from messageai.ops import removal, restore_one

    cid = args.conversation_id
    if args.conversation_command == "delete":
        return live.run(
            config,
            {"command": "conversation_delete", "conversation_id": cid},
            lambda: removal.offline_delete_conversation(
                config.data_dir, config.storage.synchronous, cid
            ),
        )
    src = args.backup.resolve()
    return live.run(
        config,
        {"command": "conversation_restore", "conversation_id": cid, "backup": str(src)},
        lambda: restore_one.offline_restore(config.data_dir, config.storage.synchronous, cid, src),
    )


def _retention(config: Config, conversation_id: str, days: str | None) -> int:
    """A directory write, safe beside the running server: its sweep reads the setting
    at each pass."""
    value: float | None = None
    if days not in (None, "default"):
        try:
            value = float(days)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 100_000:  # the bounds of `retention.days`
            raise backup.BackupError(f"days: a number of days >= 0, or `default`, not {days!r}")
    with open_directory(config, create=False) as conn:
        if directory_sql.conversation(conn, conversation_id) is None:
            raise backup.BackupError(f"no conversation {conversation_id!r}")
        if days is not None:
            with transaction(conn):
                directory_sql.set_retention_days(conn, conversation_id, value)
        shown = _retention_shown(conn, conversation_id, config.retention.days)
    print(f"{conversation_id}: retention {shown}")
    return 0


def _retention_shown(conn: Db, conversation_id: str, server: float) -> str:
    try:
        own = directory_sql.retention_days_of(conn, conversation_id)
    except apsw.SQLError:
        own = None  # a directory of a version before per-conversation retention
    if own is not None:
        return f"{own:g} days (its own)" if own > 0 else "kept forever (its own)"
    return f"{server:g} days (the server's)" if server > 0 else "kept forever (the server's)"


def _describe(config: Config, args: argparse.Namespace) -> int:
    """`conversation list|show`: read-only, from the directory and each file's own count."""
    with open_directory(config, create=False) as conn:
        if args.conversation_command == "list":
            ids = [
                row[0]
                for row in conn.execute("SELECT id FROM conversations ORDER BY created_at, id")
            ]
        else:
            ids = [args.conversation_id]
        for cid in ids:
            record = directory_sql.conversation(conn, cid)
            if record is None:
                raise backup.BackupError(f"no conversation {cid!r}")
            members = directory_sql.member_ids(conn, cid)
            count = _message_count(conversation_path(config.data_dir, cid))
            title = record.title or "(direct)"
            if args.conversation_command == "list":
                print(f"{cid}\t{record.kind}\t{len(members)} members\t{count} messages\t{title}")
                continue
            print(f"{cid}: {record.kind} {title!r}, {count} messages, created {record.created_at}")
            if record.topic:
                print(f"topic: {record.topic}")
            print(f"retention: {_retention_shown(conn, cid, config.retention.days)}")
            for user_id in members:
                user = directory_sql.user_by_id(conn, user_id)
                name = user.username if user is not None else "(deleted)"
                creator = " (creator)" if user_id == record.creator_id else ""
                print(f"  {user_id}\t{name}{creator}")
    return 0


def _message_count(path: Path) -> int:
    if not path.is_file():
        return 0  # nothing sent yet: the file is made by the first message
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(conn.execute("SELECT count(*) FROM messages").get or 0)
    finally:
        conn.close()
