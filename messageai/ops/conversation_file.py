"""One conversation as one portable file: `export` and `import_file`.

Called by `messageai conversation export ID FILE [--media]` and `messageai conversation
import FILE` (`cli.ops`), in their own process beside a running server or without one,
and by `rest.export` for a member's own download (`GET /v1/conversations/{id}/export`).

The file is the conversation's own SQLite file (`VACUUM INTO`: one consistent
snapshot, compact, no free pages holding old content) in its schema, with the
assistant's data taken out (vectors, the AI log, action items, the switch: a model
may see a conversation only where it was allowed, so the switch starts off again
wherever the file goes) and a cluster's `fence` (docs/SCALE.md §4: an imported file
starts unclaimed, whatever epoch its cluster had reached), plus three tables that
make it self-contained:

    export_info(key, value)       format, the conversation (id, kind, title, topic,
                                  creator, created_at), exported_at, the version
    export_users(id, username, display_name, bot, member, joined_at)
                                  members, and everyone else who sent, reacted or
                                  read there: public profiles only
    export_media(id, owner_id, sha256, content_type, size, filename, created_at, data)
                                  the uploads its messages attach (with --media)

Import places it into another server's data directory: each user is matched by
username, else created as a placeholder (no password: an operator can reset one);
the conversation keeps its id unless the target has it (then a new one); user ids
that differ are rewritten in the file (senders, mentions, reactions, read cursors).
The file is written first and the directory's rows after, in one transaction, so a
crash leaves at most a file the server ignores.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import apsw
import attrs
import orjson

from messageai.model import ConversationRecord, MediaRecord, User, new_id, now_ms
from messageai.ops.backup import fsync_path
from messageai.services.directory import DIRECTORY_FILE, open_directory_db
from messageai.services.media import blob_path
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import conversation as conversation_sql
from messageai.store import directory as directory_sql
from messageai.store import media as media_sql
from messageai.store.paths import conversation_path

FORMAT = "messageai-conversation/1"
# The assistant's tables, emptied in an export (see the module).
_AI_TABLES = (
    "vectors",
    "vector_queue",
    "vector_models",
    "ai_log",
    "ai_settings",
    "action_item_sources",
    "action_items",
    "action_item_runs",
    "proactive_state",
)


class TransferError(Exception):
    """An export or import that cannot go on; the message says why, nothing changed."""


@attrs.frozen
class Summary:
    conversation_id: str
    messages: int
    users: int
    media: int
    created_users: tuple[str, ...] = ()  # usernames made as placeholders (import)


def _version() -> str:
    try:
        return metadata.version("messageai")
    except metadata.PackageNotFoundError:
        return "unknown"


def _tables(conn: apsw.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}


# ------------------------------------------------------------------ export


def export(data_dir: Path, conversation_id: str, dest: Path, *, media: bool = False) -> Summary:
    """Write conversation `conversation_id` of `data_dir` as one file at `dest`."""
    if dest.exists():
        raise TransferError(f"{dest} exists already")
    if not (data_dir / DIRECTORY_FILE).is_file():
        raise TransferError(f"no MessageAI data in {data_dir} (no {DIRECTORY_FILE})")
    directory = open_db(data_dir / DIRECTORY_FILE, "FULL", create=False)
    try:
        record = directory_sql.conversation(directory, conversation_id)
        if record is None:
            raise TransferError(f"no conversation {conversation_id!r} in {data_dir}")
        partial = dest.with_name(dest.name + ".partial")
        partial.unlink(missing_ok=True)
        source_path = conversation_path(data_dir, conversation_id)
        source = open_db(source_path, "FULL")  # a conversation never written to: made empty
        try:
            migrate(source, conversation_sql.MIGRATIONS)
            source.execute("VACUUM INTO ?", (str(partial),))
        finally:
            source.close()
        out = apsw.Connection(str(partial))
        try:
            summary = _fill_export(out, directory, record, data_dir, media)
            out.execute("VACUUM")
        finally:
            out.close()
    finally:
        directory.close()
    fsync_path(partial)
    partial.replace(dest)
    return summary


def _fill_export(
    out: apsw.Connection,
    directory: apsw.Connection,
    record: ConversationRecord,
    data_dir: Path,
    media: bool,
) -> Summary:
    with transaction(out):
        present = _tables(out)
        for table in _AI_TABLES:
            if table in present:
                out.execute(f"DELETE FROM {table}")
        if "vector_meta" in present:
            out.execute("UPDATE vector_meta SET model = NULL, embedded_upto = 0")
        if "fence" in present:
            out.execute("DROP TABLE fence")
        out.execute(
            """
            CREATE TABLE export_info(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
            CREATE TABLE export_users(
                id TEXT PRIMARY KEY,
                username TEXT NOT NULL,
                display_name TEXT NOT NULL,
                bot INTEGER NOT NULL,
                member INTEGER NOT NULL,
                joined_at INTEGER
            ) WITHOUT ROWID;
            CREATE TABLE export_media(
                id TEXT PRIMARY KEY,
                owner_id TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                content_type TEXT NOT NULL,
                size INTEGER NOT NULL,
                filename TEXT,
                created_at INTEGER NOT NULL,
                data BLOB NOT NULL
            ) WITHOUT ROWID;
            """
        )
        info = {
            "format": FORMAT,
            "conversation_id": record.id,
            "kind": record.kind,
            "title": record.title,
            "topic": record.topic,
            "creator_id": record.creator_id,
            "created_at": record.created_at,
            "exported_at": now_ms(),
            "messageai_version": _version(),
        }
        out.executemany("INSERT INTO export_info(key, value) VALUES (?, ?)", info.items())
        joined = directory_sql.members_joined_at(directory, record.id)
        people = dict.fromkeys([*joined, *_user_ids_in(out)])
        if record.creator_id is not None:
            people.setdefault(record.creator_id)
        users = 0
        for user_id in people:
            user = directory_sql.user_by_id(directory, user_id)
            if user is None:
                continue  # a deleted account: its messages keep its id
            out.execute(
                "INSERT INTO export_users(id, username, display_name, bot, member, joined_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    user.id,
                    user.username,
                    user.display_name,
                    int(user.bot),
                    int(user_id in joined),
                    joined.get(user_id),
                ),
            )
            users += 1
        count = 0
        if media:
            for media_id in _attachment_ids(out):
                found = media_sql.get(directory, media_id)
                path = blob_path(data_dir / "media", found.sha256) if found else None
                if found is None or path is None or not path.is_file():
                    continue  # erased: the message keeps the id, as on the server
                out.execute(
                    "INSERT INTO export_media(id, owner_id, sha256, content_type, size,"
                    " filename, created_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        found.id,
                        found.owner_id,
                        found.sha256,
                        found.content_type,
                        found.size,
                        found.filename,
                        found.created_at,
                        path.read_bytes(),
                    ),
                )
                count += 1
        messages = out.execute("SELECT count(*) FROM messages").get
    return Summary(record.id, int(messages or 0), users, count)


def _user_ids_in(conn: apsw.Connection) -> list[str]:
    """Everyone the file names: senders, readers, reactors, the mentioned."""
    found: dict[str, None] = {}
    for sql in (
        "SELECT DISTINCT sender_id FROM messages",
        "SELECT user_id FROM read_cursors",
        "SELECT DISTINCT user_id FROM reactions",
    ):
        found.update((row[0], None) for row in conn.execute(sql))
    for (mentions,) in conn.execute("SELECT mentions FROM messages WHERE mentions IS NOT NULL"):
        found.update((user_id, None) for user_id in orjson.loads(mentions))
    return list(found)


def _attachment_ids(conn: apsw.Connection) -> list[str]:
    found: dict[str, None] = {}
    for (attachments,) in conn.execute(
        "SELECT attachments FROM messages WHERE attachments != '[]'"
    ):
        found.update((media_id, None) for media_id in orjson.loads(attachments))
    return list(found)


# ------------------------------------------------------------------ import


def import_file(data_dir: Path, file: Path, synchronous: str = "FULL") -> Summary:
    """Import the exported conversation `file` into `data_dir` (see the module)."""
    info, users, media = _read_export(file)
    data_dir.mkdir(parents=True, exist_ok=True)
    directory = open_directory_db(data_dir, synchronous)
    try:
        # Reads only: what to map and whether it fits (checked again as it is written).
        plan = _plan(directory, data_dir, info, users)
        # The bytes, then the file, then the rows that name them.
        write_media_blobs(data_dir, file)
        staged = _stage_file(file, data_dir, plan)
        try:
            with transaction(directory):
                _write_directory(directory, data_dir, info, users, media, plan)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
    finally:
        directory.close()
    messages_conn = apsw.Connection(str(staged), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        messages = int(messages_conn.execute("SELECT count(*) FROM messages").get or 0)
    finally:
        messages_conn.close()
    return Summary(
        plan.conversation_id,
        messages,
        len(users),
        len(media),
        tuple(sorted(user.username for user in plan.new_users)),
    )


@attrs.frozen
class _Plan:
    conversation_id: str
    user_ids: dict[str, str]  # exported id -> id here
    new_users: list[User]


def _read_export(
    file: Path,
) -> tuple[dict[str, Any], list[tuple[str, str, str, int, int, int | None]], list[MediaRecord]]:
    try:
        conn = apsw.Connection(str(file), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as exc:
        raise TransferError(f"{file}: not a conversation file ({exc})") from None
    try:
        try:
            info = dict(conn.execute("SELECT key, value FROM export_info"))
            users = list(
                conn.execute(
                    "SELECT id, username, display_name, bot, member, joined_at FROM export_users"
                )
            )
            media = [
                MediaRecord(*row)
                for row in conn.execute(
                    "SELECT id, owner_id, sha256, content_type, size, created_at, filename"
                    " FROM export_media"
                )
            ]
        except apsw.Error:
            raise TransferError(f"{file}: not a MessageAI conversation export") from None
        if info.get("format") != FORMAT:
            raise TransferError(f"{file}: format {info.get('format')!r}, not {FORMAT!r}")
        if info.get("kind") not in ("direct", "group", "channel"):
            raise TransferError(f"{file}: an unknown kind of conversation")
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise TransferError(f"{file}: damaged ({problems[0]})")
    finally:
        conn.close()
    return info, users, media


def _plan(
    directory: apsw.Connection,
    data_dir: Path,
    info: dict[str, Any],
    users: list[tuple[str, str, str, int, int, int | None]],
) -> _Plan:
    mapping: dict[str, str] = {}
    new_users: list[User] = []
    now = now_ms()
    for user_id, username, display_name, bot, _member, _joined in users:
        found = directory_sql.user_and_hash_by_name(directory, username)
        if found is not None:
            mapping[user_id] = found[0].id
            continue
        free = directory_sql.user_by_id(directory, user_id) is None
        user = User(user_id if free else new_id("u_"), username, display_name, now, bool(bot))
        mapping[user_id] = user.id
        new_users.append(user)
    cid = str(info["conversation_id"])
    if (
        directory_sql.conversation(directory, cid) is not None
        or conversation_path(data_dir, cid).exists()
    ):
        cid = new_id("c_")
    kind = info["kind"]
    members = [mapping[u[0]] for u in users if u[4]]
    if kind == "direct":
        if len(members) != 2:
            raise TransferError("a direct conversation needs its two members")
        other = directory_sql.direct_conversation_id(directory, members[0], members[1])
        if other is not None:
            raise TransferError(f"these two have a direct conversation here already ({other})")
    if kind == "channel" and directory_sql.channel_title_taken(directory, str(info["title"])):
        raise TransferError(f"a channel named {info['title']!r} exists here already")
    return _Plan(cid, mapping, new_users)


def _stage_file(file: Path, data_dir: Path, plan: _Plan) -> Path:
    """The conversation's file in place, export tables dropped, user ids mapped."""
    target = conversation_path(data_dir, plan.conversation_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".importing")
    shutil.copyfile(file, partial)
    conn = open_db(partial, "FULL")
    try:
        migrate(conn, conversation_sql.MIGRATIONS)  # a file of an older release
        with transaction(conn):
            conn.execute("DROP TABLE export_info; DROP TABLE export_users; DROP TABLE export_media")
            changed = {old: new for old, new in plan.user_ids.items() if old != new}
            if changed:
                _remap(conn, changed)
        conn.execute("VACUUM")
    finally:
        conn.close()
    fsync_path(partial)
    partial.replace(target)
    return target


def _remap(conn: apsw.Connection, changed: dict[str, str]) -> None:
    for old, new in changed.items():
        conn.execute("UPDATE messages SET sender_id = ? WHERE sender_id = ?", (new, old))
        conn.execute("UPDATE reactions SET user_id = ? WHERE user_id = ?", (new, old))
        conn.execute("UPDATE read_cursors SET user_id = ? WHERE user_id = ?", (new, old))
    rows = list(conn.execute("SELECT seq, mentions FROM messages WHERE mentions IS NOT NULL"))
    for seq, mentions in rows:
        ids = [changed.get(user_id, user_id) for user_id in orjson.loads(mentions)]
        conn.execute(
            "UPDATE messages SET mentions = ? WHERE seq = ?", (orjson.dumps(ids).decode(), seq)
        )


def _write_directory(
    directory: apsw.Connection,
    data_dir: Path,
    info: dict[str, Any],
    users: list[tuple[str, str, str, int, int, int | None]],
    media: Iterable[MediaRecord],
    plan: _Plan,
) -> None:
    now = now_ms()
    for user in plan.new_users:
        if not directory_sql.insert_user(directory, user, None):
            raise TransferError(f"the username {user.username!r} was taken meanwhile")
    creator = info.get("creator_id")
    record = ConversationRecord(
        plan.conversation_id,
        str(info["kind"]),
        info["title"] if isinstance(info.get("title"), str) else None,
        plan.user_ids.get(creator) if isinstance(creator, str) else None,
        int(info["created_at"]),
        info["topic"] if isinstance(info.get("topic"), str) else None,
    )
    directory_sql.insert_conversation(directory, record, [], now)
    for user_id, _username, _display, _bot, member, joined_at in users:
        if member:
            directory.execute(
                "INSERT OR IGNORE INTO memberships(conversation_id, user_id, joined_at)"
                " VALUES (?, ?, ?)",
                (record.id, plan.user_ids[user_id], joined_at or now),
            )
    if record.kind == "direct":
        a, b = (plan.user_ids[u[0]] for u in users if u[4])
        directory_sql.insert_direct_pair(directory, a, b, record.id)
    _import_media(directory, data_dir, media, plan, record.id)


def _import_media(
    directory: apsw.Connection,
    data_dir: Path,
    media: Iterable[MediaRecord],
    plan: _Plan,
    conversation_id: str,
) -> None:
    ids = []
    for found in media:
        ids.append(found.id)
        if media_sql.get(directory, found.id) is not None:
            continue  # the same upload, here already (an export of this server)
        owner = plan.user_ids.get(found.owner_id)
        if owner is None:
            raise TransferError(f"upload {found.id!r}: its owner is not in the file")
        media_sql.insert(directory, attrs.evolve(found, owner_id=owner))
    if ids:
        media_sql.add_refs(directory, conversation_id, ids)


def write_media_blobs(data_dir: Path, file: Path) -> int:
    """The bytes of the file's uploads into `data_dir`'s media folder (content-addressed,
    each checked against its SHA-256); returns how many were written."""
    conn = apsw.Connection(str(file), flags=apsw.SQLITE_OPEN_READONLY)
    written = 0
    try:
        for sha256, data in conn.execute("SELECT sha256, data FROM export_media"):
            if hashlib.sha256(data).hexdigest() != sha256:
                raise TransferError(f"{file}: an upload's bytes do not match its checksum")
            path = blob_path(data_dir / "media", sha256)
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            fsync_path(tmp)
            tmp.replace(path)
            written += 1
    finally:
        conn.close()
    return written
