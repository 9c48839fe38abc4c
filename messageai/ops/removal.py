"""Deleting a user or a conversation: the directory's SQL and the file work, shared by
the server (`services.admin`, run over the admin channel) and the offline commands
(`offline_delete_user`, `offline_delete_conversation`, run by `cli.ops` holding the
data directory's lock when no server runs).

A deleted user is anonymised, not removed: the row stays (their id is in every message
they sent, and must never sign in or be reused), with the username freed (it becomes
the id), the display name "Deleted user", no password, `deleted_at` set; every
session token and push token goes, and so do their memberships of groups and channels
(a direct conversation keeps them, so the other person's stays whole). Their messages
stay, shown as the deleted user's, unless erased (`--erase-messages`): then each
becomes a tombstone through the delete path (body, edit history, reactions, search
index, vectors and action items gone from the file) and their uploads are deleted,
records and bytes.

A deleted conversation's directory row goes (its memberships, direct pair and media
references with it, by foreign keys), then the uploads no other conversation
references, then its file with its `-wal`, `-shm` and `-journal`: messages, cursors,
the search index, vectors, action items and the AI log all live in that file.
"""

from __future__ import annotations

from pathlib import Path

import apsw

from messageai.errors import NotFound
from messageai.model import User, now_ms
from messageai.ops.backup import fsync_path
from messageai.services.directory import open_directory_db
from messageai.services.media import blob_path
from messageai.sqlite import transaction
from messageai.store import clerk as clerk_sql
from messageai.store import conversation as conversation_sql
from messageai.store import directory as sql
from messageai.store.db import Db
from messageai.store.paths import conversation_path

SIDE_FILES = ("-wal", "-shm", "-journal")


def user_named(conn: Db, name: str) -> User:
    found = sql.user_and_hash_by_name(conn, name)
    if found is None:
        raise NotFound(f"no user named {name!r}")
    return found[0]


def anonymise_user(conn: Db, user_id: str) -> list[str]:
    """In one directory transaction: the account anonymised (see the module), tokens
    and push tokens gone; the groups and channels it leaves (their ids)."""
    left = [
        row[0]
        for row in conn.execute(
            "SELECT m.conversation_id FROM memberships m JOIN conversations c"
            " ON c.id = m.conversation_id WHERE m.user_id = ? AND c.kind != 'direct'",
            (user_id,),
        )
    ]
    now = now_ms()
    clerk_sql.mark_deleted(conn, user_id, now)
    # Disabled too: no token can be good for it (`user_by_token`), whatever raced.
    conn.execute(
        "UPDATE users SET disabled_at = coalesce(disabled_at, ?) WHERE id = ?", (now, user_id)
    )
    conn.execute("DELETE FROM push_tokens WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM ai_spent WHERE user_id = ?", (user_id,))
    for conversation_id in left:
        sql.remove_member(conn, conversation_id, user_id)
    return left


def delete_uploads_of(conn: Db, user_id: str) -> list[str]:
    """Every upload of `user_id` deleted (their references with them); the sha256s no
    upload names any more, whose files the caller unlinks after the commit."""
    digests = [
        row[0] for row in conn.execute("SELECT sha256 FROM media WHERE owner_id = ?", (user_id,))
    ]
    conn.execute("DELETE FROM media WHERE owner_id = ?", (user_id,))
    return _unused(conn, digests)


def delete_conversation_rows(conn: Db, conversation_id: str) -> list[str]:
    """The conversation's row gone (memberships, direct pair, references by cascade),
    and the uploads nothing else references now; the sha256s no upload names any more."""
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT media_id FROM media_refs WHERE conversation_id = ?", (conversation_id,)
        )
    ]
    conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
    digests = []
    for media_id in ids:
        row = conn.execute(
            "SELECT sha256 FROM media WHERE id = ? AND NOT EXISTS"
            " (SELECT 1 FROM media_refs r WHERE r.media_id = media.id)",
            (media_id,),
        ).fetchone()
        if row is not None:
            conn.execute("DELETE FROM media WHERE id = ?", (media_id,))
            digests.append(row[0])
    return _unused(conn, digests)


def _unused(conn: Db, digests: list[str]) -> list[str]:
    return [
        d
        for d in dict.fromkeys(digests)
        if conn.execute("SELECT 1 FROM media WHERE sha256 = ? LIMIT 1", (d,)).fetchone() is None
    ]


def unlink_blobs(data_dir: Path, digests: list[str]) -> None:
    for sha256 in digests:
        blob_path(data_dir / "media", sha256).unlink(missing_ok=True)


def remove_conversation_file(data_dir: Path, conversation_id: str) -> None:
    """The file and its side files gone, the removal made durable. Nothing may have
    the file open (the server: its actor stopped and the search readers closed)."""
    path = conversation_path(data_dir, conversation_id)
    for each in (path, *(path.with_name(path.name + side) for side in SIDE_FILES)):
        each.unlink(missing_ok=True)
    if path.parent.is_dir():
        fsync_path(path.parent)


def live_messages_of(data_dir: Path, conversation_id: str, user_id: str) -> list[int]:
    """Seqs of `user_id`'s messages that are not tombstones, read-only (beside a writer:
    WAL). The sender index makes it one range."""
    path = conversation_path(data_dir, conversation_id)
    if not path.is_file():
        return []
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [
            row[0]
            for row in conn.execute(
                "SELECT seq FROM messages WHERE sender_id = ? AND deleted_at IS NULL ORDER BY seq",
                (user_id,),
            )
        ]
    except apsw.SQLError:
        return []  # a file made before the first message's schema: nothing in it
    finally:
        conn.close()


def _tombstone_offline(path: Path, synchronous: str, seqs: list[int]) -> None:
    """The delete path of the actor (`store.conversation.tombstone`: body, history,
    reactions, search index, action items, vectors) for each seq, in one transaction,
    then the WAL truncated so that no old frame keeps the content."""
    from messageai.conversations.actor import _open

    conn = _open(path, synchronous)
    try:
        with transaction(conn):
            rev = conversation_sql.last_rev(conn)
            now = now_ms()
            for seq in seqs:
                body = conn.execute("SELECT body FROM messages WHERE seq = ?", (seq,)).get
                rev += 1
                conversation_sql.tombstone(conn, seq, str(body), now, rev)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def offline_delete_user(data_dir: Path, synchronous: str, name: str, *, erase: bool) -> str:
    """`user delete NAME [--erase-messages]` with no server running."""
    conn = open_directory_db(data_dir, synchronous)
    try:
        user = user_named(conn, name)
        erased = 0
        if erase:
            for conversation_id in sql.conversation_ids(conn):
                seqs = live_messages_of(data_dir, conversation_id, user.id)
                if seqs:
                    path = conversation_path(data_dir, conversation_id)
                    _tombstone_offline(path, synchronous, seqs)
                    erased += len(seqs)
        with transaction(conn):
            left = anonymise_user(conn, user.id)
            digests = delete_uploads_of(conn, user.id) if erase else []
    finally:
        conn.close()
    unlink_blobs(data_dir, digests)
    return deleted_user_said(user, len(left), erased if erase else None)


def deleted_user_said(user: User, left: int, erased: int | None) -> str:
    kept = "messages kept" if erased is None else f"{erased} messages erased, uploads deleted"
    return f"{user.username} deleted ({user.id}): left {left} groups and channels; {kept}"


def offline_delete_conversation(data_dir: Path, synchronous: str, conversation_id: str) -> str:
    """`conversation delete ID` with no server running."""
    conn = open_directory_db(data_dir, synchronous)
    try:
        if sql.conversation(conn, conversation_id) is None:
            raise NotFound(f"no conversation {conversation_id!r}")
        with transaction(conn):
            digests = delete_conversation_rows(conn, conversation_id)
    finally:
        conn.close()
    remove_conversation_file(data_dir, conversation_id)
    unlink_blobs(data_dir, digests)
    return deleted_conversation_said(conversation_id, len(digests))


def deleted_conversation_said(conversation_id: str, uploads: int) -> str:
    return f"conversation {conversation_id} deleted; {uploads} uploads only it used erased"
