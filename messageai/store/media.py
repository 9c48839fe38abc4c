"""SQL for media records and their references, in the directory database.

Called only by `messageai.services.media.Media` through the directory's connections
(`Directory.read` inline, `Directory.write` on its write thread); no file I/O here.
The tables are created by the directory's migrations (`store/directory.py`).
"""

from __future__ import annotations

from messageai.model import MediaRecord
from messageai.store.db import Db

# In MediaRecord's field order (`filename`, v1.1, last).
_COLUMNS = "id, owner_id, sha256, content_type, size, created_at, filename"


def insert(conn: Db, record: MediaRecord) -> None:
    conn.execute(
        f"INSERT INTO media({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            record.id,
            record.owner_id,
            record.sha256,
            record.content_type,
            record.size,
            record.created_at,
            record.filename,
        ),
    )


def insert_within_quota(conn: Db, record: MediaRecord, quota: int) -> bool:
    """Record an upload unless it would take its owner past `quota` bytes; False then.
    In one write transaction, so concurrent uploads cannot both slip under it."""
    if used_bytes(conn, record.owner_id) + record.size > quota:
        return False
    insert(conn, record)
    return True


def get(conn: Db, media_id: str) -> MediaRecord | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM media WHERE id = ?", (media_id,)).fetchone()
    return MediaRecord(*row) if row is not None else None


def used_bytes(conn: Db, owner_id: str) -> int:
    """Bytes counted against the owner's quota: every upload, even of bytes stored before."""
    value = conn.execute(
        "SELECT coalesce(sum(size), 0) FROM media WHERE owner_id = ?", (owner_id,)
    ).get
    return int(value)


def readable(conn: Db, media_id: str, user_id: str) -> MediaRecord | None:
    """The record if `user_id` uploaded it or is a member of a conversation referencing it."""
    record = get(conn, media_id)
    if record is None or record.owner_id == user_id:
        return record
    shared = conn.execute(
        "SELECT 1 FROM media_refs r JOIN memberships m"
        " ON m.conversation_id = r.conversation_id AND m.user_id = ?"
        " WHERE r.media_id = ? LIMIT 1",
        (user_id, media_id),
    ).fetchone()
    return record if shared is not None else None


def add_refs(conn: Db, conversation_id: str, media_ids: list[str]) -> None:
    """Record that a message of the conversation references each id; idempotent.
    An id whose record is gone (deleted as unreferenced) is skipped."""
    conn.executemany(
        "INSERT INTO media_refs(media_id, conversation_id)"
        " SELECT id, ? FROM media WHERE id = ? ON CONFLICT DO NOTHING",
        [(conversation_id, media_id) for media_id in media_ids],
    )


def remove_refs(conn: Db, conversation_id: str, media_ids: list[str]) -> None:
    conn.executemany(
        "DELETE FROM media_refs WHERE media_id = ? AND conversation_id = ?",
        [(media_id, conversation_id) for media_id in media_ids],
    )


def unreferenced_before(conn: Db, created_before: int, limit: int) -> list[MediaRecord]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM media WHERE created_at < ? AND NOT EXISTS"
        " (SELECT 1 FROM media_refs r WHERE r.media_id = media.id)"
        " ORDER BY created_at LIMIT ?",
        (created_before, limit),
    ).fetchall()
    return [MediaRecord(*row) for row in rows]


def delete_unreferenced(conn: Db, created_before: int, limit: int) -> list[str]:
    """Delete up to `limit` unreferenced records made before `created_before`; the
    sha256s they named (some may still be named by other records)."""
    records = unreferenced_before(conn, created_before, limit)
    for record in records:
        delete(conn, record.id)
    return [record.sha256 for record in records]


def delete(conn: Db, media_id: str) -> None:
    conn.execute("DELETE FROM media WHERE id = ?", (media_id,))


def sha256_in_use(conn: Db, sha256: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM media WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone()
        is not None
    )
