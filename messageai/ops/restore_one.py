"""One conversation back to its state in a backup: `messageai conversation restore ID
--from BACKUP`. The file work, for the server (`services.admin`, with the
conversation's actor stopped) and the offline command (`cli.ops`, holding the data
directory's lock).

`stage` checks the backup's copy first (its size and SHA-256 against the manifest,
SQLite's `integrity_check`, and the backup's directory the same way), copies it
beside the live file, and makes it a continuation of the live conversation rather
than a step back: seqs and revs never go down, because clients hold them.

- Every message whose state differs from the live file's (compared by `(seq, rev)`:
  a rev names one state of one message) takes a new rev above the live `last_rev`,
  in seq order: edits, deletes and reactions made after the backup are undone, and
  a message deleted after the backup comes back.
- Each message the live file has beyond the backup's `last_seq` stays as a tombstone
  (same seq, id, sender, `client_id` and time; no content), also with a new rev: the
  next send gets the seq after the live `last_seq`, never one a client already holds,
  and a resend of one of those `client_id`s finds its tombstone.
- Read cursors keep the higher of the two (nobody has to read again).

So a client that catches up with `get_changes` from any rev it holds gets every
message the restore changed, in their restored state (`docs/protocol.md`,
"Restored conversations"). `install` then swaps the staged file in (the live file's
`-wal` and `-shm` removed first: the stopped actor checkpointed and closed it), and
`put_back_rows` makes the directory match: a conversation deleted since the backup
gets its row and its members (those whose accounts still exist) back, and the
uploads its messages attach get their records, bytes (from the backup) and references.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import apsw
import attrs
import orjson

from messageai.model import now_ms
from messageai.ops.backup import BackupError, fsync_path, integrity, read_manifest, sha256_of
from messageai.services.directory import DIRECTORY_FILE, open_directory_db
from messageai.sqlite import open_db, transaction
from messageai.store import conversation as conversation_sql
from messageai.store.db import Db
from messageai.store.paths import conversation_path

STAGED = ".restoring"


@attrs.frozen
class Staged:
    path: Path  # the staged file, beside the live one
    backup_dir: Path
    last_seq: int
    last_rev: int
    restamped: int  # messages given a new rev
    kept_as_tombstones: int  # live messages newer than the backup
    before_rev: int  # the live file's last_rev (0 without one)


def _checked(backup_dir: Path, rel: str) -> Path:
    """`rel` of the backup, after its manifest checksum and integrity check."""
    entries = {entry.path: entry for entry in read_manifest(backup_dir)}
    entry = entries.get(rel)
    path = backup_dir / rel
    if entry is None or not path.is_file():
        raise BackupError(f"{backup_dir} has no {rel}: the conversation is not in this backup")
    if path.stat().st_size != entry.size or sha256_of(path) != entry.sha256:
        raise BackupError(f"{rel}: its checksum differs from the manifest's; nothing restored")
    problem = integrity(path)
    if problem is not None:
        raise BackupError(f"{rel}: integrity check failed ({problem}); nothing restored")
    return path


def check_backup(backup_dir: Path, conversation_id: str) -> Path:
    """The backup's copy of the conversation, checked (and its directory): BackupError
    before anything is touched."""
    rel = conversation_path(Path(), conversation_id).as_posix()
    _checked(backup_dir, DIRECTORY_FILE)
    return _checked(backup_dir, rel)


def _same_bytes(backup_dir: Path, conversation_id: str, copy: Path) -> None:
    """The staged copy is the file the manifest names (its checksum): what was checked
    before is what gets installed."""
    rel = conversation_path(Path(), conversation_id).as_posix()
    entry = {e.path: e for e in read_manifest(backup_dir)}.get(rel)
    if entry is None or sha256_of(copy) != entry.sha256:
        raise BackupError(f"{rel} changed in the backup while it was restored; nothing restored")


def _checkpoint(path: Path) -> None:
    """Whatever the live file's WAL still holds goes into it (after a kill -9)."""
    conn = open_db(path, "FULL", create=False)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def stage(
    backup_dir: Path,
    data_dir: Path,
    conversation_id: str,
    synchronous: str,
    *,
    checked: bool = False,
) -> Staged:
    """Check and copy the backup's file beside the live one and adjust it (see the
    module). Nothing may write the live file meanwhile (its actor stopped, or no
    server). `checked`: `check_backup` passed just before (the server runs it before
    stopping the conversation), so only the copy's checksum is compared here, which
    keeps SQLite's integrity check of the whole file out of the time the conversation
    is stopped. Raises BackupError, leaving the live file as it was."""
    from messageai.conversations.actor import _open

    if checked:
        source = backup_dir / conversation_path(Path(), conversation_id)
    else:
        source = check_backup(backup_dir, conversation_id)
    live = conversation_path(data_dir, conversation_id)
    staged = live.with_name(live.name + STAGED)
    live.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, staged)
    if checked:
        try:
            _same_bytes(backup_dir, conversation_id, staged)
        except BackupError:
            staged.unlink()
            raise
    has_live = live.is_file()
    conn = _open(staged, synchronous)  # migrated to this version's schema, WAL
    try:
        if has_live:
            _checkpoint(live)
            conn.execute("ATTACH DATABASE ? AS live", (str(live),))
        with transaction(conn):
            before_rev, restamped, kept = _continue(conn) if has_live else (0, 0, 0)
        if has_live:
            conn.execute("DETACH DATABASE live")
        last_seq, last_rev = conversation_sql.last_seq(conn), conversation_sql.last_rev(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    fsync_path(staged)
    return Staged(staged, backup_dir, last_seq, last_rev, restamped, kept, before_rev)


def _continue(conn: apsw.Connection) -> tuple[int, int, int]:
    """The staged file (main) made a continuation of the live one (attached as `live`),
    in SQL, so a large file costs its index scans rather than Python loops; returns the
    live last_rev, the messages restamped and the newer ones kept as tombstones."""
    live_rev = int(
        conn.execute("SELECT coalesce(max(coalesce(rev, seq)), 0) FROM live.messages").get or 0
    )
    rev = max(live_rev, conversation_sql.last_rev(conn))
    backup_last = conversation_sql.last_seq(conn)
    differing = [
        row[0]
        for row in conn.execute(
            "SELECT m.seq FROM main.messages m LEFT JOIN live.messages l ON l.seq = m.seq"
            " WHERE l.seq IS NULL OR coalesce(l.rev, l.seq) != coalesce(m.rev, m.seq)"
            " ORDER BY m.seq"
        )
    ]
    conn.executemany(
        "UPDATE main.messages SET rev = ? WHERE seq = ?",
        [(rev + i, seq) for i, seq in enumerate(differing, 1)],
    )
    rev += len(differing)
    conn.execute(
        "INSERT INTO main.messages(seq, id, sender_id, client_id, body, attachments,"
        " created_at, deleted_at, rev)"
        " SELECT seq, id, sender_id, client_id, '', '[]', created_at, ?,"
        " ? + row_number() OVER (ORDER BY seq) FROM live.messages WHERE seq > ? ORDER BY seq",
        (now_ms(), rev, backup_last),
    )
    kept = conn.changes()
    # The index follows its external content (`store.search.index_new`'s rule).
    conn.execute(
        "INSERT INTO main.messages_fts(rowid, body) SELECT seq, '' FROM main.messages"
        " WHERE seq > ?",
        (backup_last,),
    )
    conn.execute(
        "INSERT INTO main.read_cursors(user_id, seq) SELECT user_id, seq FROM live.read_cursors"
        " WHERE true ON CONFLICT(user_id) DO UPDATE SET seq = max(seq, excluded.seq)"
    )
    return live_rev, len(differing), kept


def install(staged: Staged, data_dir: Path, conversation_id: str) -> None:
    """Swap the staged file in, durably. The live file must be closed by everyone."""
    live = conversation_path(data_dir, conversation_id)
    for side in ("-wal", "-shm", "-journal"):
        live.with_name(live.name + side).unlink(missing_ok=True)
    os.replace(staged.path, live)
    fsync_path(live.parent)


def discard(staged: Staged) -> None:
    for each in (staged.path, *(Path(f"{staged.path}{s}") for s in ("-wal", "-shm"))):
        each.unlink(missing_ok=True)


def attached_media(path: Path) -> list[str]:
    """The media ids the (staged) file's live messages attach."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        ids: dict[str, None] = {}
        for (raw,) in conn.execute(
            "SELECT attachments FROM messages WHERE attachments != '[]' AND deleted_at IS NULL"
        ):
            ids.update(dict.fromkeys(orjson.loads(raw)))
        return list(ids)
    finally:
        conn.close()


@attrs.frozen
class BackupRows:
    """What the backup's directory says of the conversation, read before the write."""

    conversation: tuple[object, ...] | None  # id, kind, title, topic, creator_id, created_at
    memberships: list[tuple[object, ...]]  # user_id, joined_at
    direct_pair: tuple[object, ...] | None  # user_a, user_b
    media: list[
        tuple[object, ...]
    ]  # id, owner_id, sha256, content_type, size, created_at, filename


def read_backup_rows(backup_dir: Path, conversation_id: str, media: list[str]) -> BackupRows:
    conn = apsw.Connection(str(backup_dir / DIRECTORY_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        cid = (conversation_id,)
        return BackupRows(
            conn.execute(
                "SELECT id, kind, title, topic, creator_id, created_at FROM conversations"
                " WHERE id = ?",
                cid,
            ).fetchone(),
            conn.execute(
                "SELECT user_id, joined_at FROM memberships WHERE conversation_id = ?", cid
            ).fetchall(),
            conn.execute(
                "SELECT user_a, user_b FROM direct_pairs WHERE conversation_id = ?", cid
            ).fetchone(),
            [
                row
                for media_id in media
                for row in conn.execute(
                    "SELECT id, owner_id, sha256, content_type, size, created_at, filename"
                    " FROM media WHERE id = ?",
                    (media_id,),
                )
            ],
        )
    finally:
        conn.close()


def put_back_rows(
    conn: Db, rows: BackupRows, conversation_id: str, media: list[str]
) -> tuple[bool, list[str]]:
    """In the live directory's write transaction: the conversation's row and members
    from the backup if it is gone here (members whose accounts still exist), the
    uploads in `media` (records from the backup where missing here, if their owner
    still exists) referenced, and the retention mark reset (the restored file may hold
    live messages below it). Returns (recreated, the sha256s the uploads need)."""
    recreated = False
    if conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).get is None:
        if rows.conversation is None:
            raise BackupError(f"the backup's directory has no conversation {conversation_id}")
        recreated = True
        id_, kind, title, topic, creator, created_at = rows.conversation
        if conn.execute("SELECT 1 FROM users WHERE id = ?", (creator,)).get is None:
            creator = None
        conn.execute(
            "INSERT INTO conversations(id, kind, title, topic, creator_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (id_, kind, title, topic, creator, created_at),
        )
        for user_id, joined_at in rows.memberships:
            conn.execute(
                "INSERT INTO memberships(conversation_id, user_id, joined_at)"
                " SELECT ?, id, ? FROM users WHERE id = ? AND deleted_at IS NULL",
                (conversation_id, joined_at, user_id),
            )
        if rows.direct_pair is not None:
            conn.execute(
                "INSERT INTO direct_pairs(user_a, user_b, conversation_id)"
                " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (*rows.direct_pair, conversation_id),
            )
    for row in rows.media:
        conn.execute(
            "INSERT INTO media"
            "(id, owner_id, sha256, content_type, size, created_at, filename)"
            " SELECT ?, ?, ?, ?, ?, ?, ? FROM users WHERE id = ? ON CONFLICT DO NOTHING",
            (*row, row[1]),
        )
    wanted: list[str] = []
    for media_id in media:
        sha256 = conn.execute("SELECT sha256 FROM media WHERE id = ?", (media_id,)).get
        if sha256 is None:
            continue  # its owner's account is gone: the attachment stays unreadable
        wanted.append(str(sha256))
        conn.execute(
            "INSERT INTO media_refs(media_id, conversation_id) VALUES (?, ?)"
            " ON CONFLICT DO NOTHING",
            (media_id, conversation_id),
        )
    conn.execute("UPDATE conversations SET retention_upto = 0 WHERE id = ?", (conversation_id,))
    return recreated, wanted


def copy_blobs(backup_dir: Path, data_dir: Path, digests: list[str]) -> int:
    """The uploads' bytes the data directory lacks, from the backup; how many."""
    copied = 0
    for sha256 in digests:
        rel = f"media/{sha256[:2]}/{sha256}"
        if (data_dir / rel).is_file() or not (backup_dir / rel).is_file():
            continue
        (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / (rel + ".restoring")
        shutil.copyfile(backup_dir / rel, tmp)
        fsync_path(tmp)
        os.replace(tmp, data_dir / rel)
        copied += 1
    return copied


def said(conversation_id: str, staged: Staged, recreated: bool) -> str:
    again = " (its directory row and members put back)" if recreated else ""
    return (
        f"conversation {conversation_id} restored from {staged.backup_dir}{again}:"
        f" last_seq {staged.last_seq}, last_rev {staged.before_rev} -> {staged.last_rev};"
        f" {staged.restamped} messages changed back, {staged.kept_as_tombstones} newer"
        " messages kept as tombstones"
    )


def offline_restore(data_dir: Path, synchronous: str, conversation_id: str, backup: Path) -> str:
    """`conversation restore ID --from BACKUP` with no server running."""
    staged = stage(backup, data_dir, conversation_id, synchronous)
    conn = open_directory_db(data_dir, synchronous)
    try:
        try:
            media = attached_media(staged.path)
            rows = read_backup_rows(backup, conversation_id, media)
            known = conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).get
            if rows.conversation is None and known is None:
                raise BackupError(f"no conversation {conversation_id!r} here or in the backup")
        except BaseException:
            discard(staged)
            raise
        copy_blobs(backup, data_dir, [str(r[2]) for r in rows.media])
        install(staged, data_dir, conversation_id)
        with transaction(conn):
            recreated, _ = put_back_rows(conn, rows, conversation_id, media)
    finally:
        conn.close()
    return said(conversation_id, staged, recreated)
