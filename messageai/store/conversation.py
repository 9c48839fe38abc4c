"""SQL for one conversation's own database: its messages, their changes (edit history,
reactions, tombstones, the `rev` counter) and its read cursors. (Its keyword index:
`store/search.py`; its action items: `store/action_items.py`.)

Only the conversation's actor calls these, on the connection it owns; the one
exception is the bench's seeding (`bulk_insert`), which writes a stopped server's file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias, cast

import apsw
import orjson

from messageai.model import Message
from messageai.sqlite import Migration
from messageai.store import action_items, ai, proactive, search, vectors


def _v1(conn: apsw.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE messages(
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            sender_id TEXT NOT NULL,
            client_id TEXT NOT NULL,
            body TEXT NOT NULL,
            attachments TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            UNIQUE(sender_id, client_id)
        );
        CREATE TABLE read_cursors(
            user_id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL
        ) WITHOUT ROWID;
        """
    )


def _v2_sender_seq_index(conn: apsw.Connection) -> None:
    # Lets `unread_count` count only the caller's own recent messages instead of
    # scanning everything after the cursor (82 ms for 1M messages, on the loop).
    conn.execute("CREATE INDEX messages_sender_seq ON messages(sender_id, seq)")


def _v3_changes(conn: apsw.Connection) -> None:
    # PROTOCOL.md v1.1 "Messages change". Every ADD COLUMN is nullable without a default,
    # so SQLite changes only the schema and rewrites no row (a 1M-message file migrates
    # in the time of the two index builds below, measured in the README).
    # `rev` NULL means "= seq": a message never changed since it was sent (every message
    # of the previous release, and every send while no change came before it).
    # `mentions` NULL means none.
    conn.execute(
        """
        ALTER TABLE messages ADD COLUMN reply_to INTEGER;
        ALTER TABLE messages ADD COLUMN mentions TEXT;
        ALTER TABLE messages ADD COLUMN edited_at INTEGER;
        ALTER TABLE messages ADD COLUMN deleted_at INTEGER;
        ALTER TABLE messages ADD COLUMN rev INTEGER;
        -- get_changes and last_rev: messages by their rev, never a scan.
        CREATE INDEX messages_rev ON messages(coalesce(rev, seq));
        -- unread_count leaves out other members' tombstones: only tombstones are in it.
        CREATE INDEX messages_tombstones ON messages(seq, sender_id)
            WHERE deleted_at IS NOT NULL;
        -- One row per (message, emoji, user); `rev` is the change that added it, which
        -- orders the users of an emoji and the emoji of a message.
        CREATE TABLE reactions(
            seq INTEGER NOT NULL,
            emoji TEXT NOT NULL,
            user_id TEXT NOT NULL,
            rev INTEGER NOT NULL,
            PRIMARY KEY(seq, emoji, user_id)
        ) WITHOUT ROWID;
        -- Earlier bodies of edited messages (as stored: trimmed) and when each was
        -- replaced, oldest first by rowid. A tombstone's rows are deleted.
        CREATE TABLE edits(
            seq INTEGER NOT NULL,
            body TEXT NOT NULL,
            replaced_at INTEGER NOT NULL
        );
        CREATE INDEX edits_seq ON edits(seq);
        """
    )


# `search.MIGRATIONS_STEP` creates the keyword index (engineer "search"'s module).
MIGRATIONS: list[Migration] = [
    _v1,
    _v2_sender_seq_index,
    _v3_changes,
    search.MIGRATIONS_STEP,
    # the assistant's switch and log (store/ai.py)
    ai.migration,
    # `action_items.MIGRATIONS_STEP`: the action items (engineer "jobs"'s module).
    action_items.MIGRATIONS_STEP,
    vectors.MIGRATIONS_STEP,  # embeddings (engineer "embed"'s module)
    proactive.migration,  # proactive scheduling's state (store/proactive.py)
]

_COLUMNS = (
    "seq, id, sender_id, client_id, body, attachments, created_at,"
    " reply_to, mentions, edited_at, deleted_at, rev"
)
_INSERT_COLUMNS = (
    "seq, id, sender_id, client_id, body, attachments, created_at, reply_to, mentions, rev"
)
# The one insert statement of a message, for the actor (`insert_message`) and the
# bench's seeding (`bulk_insert`), so a seeded file cannot drift from the schema.
_INSERT = (
    f"INSERT INTO messages({_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(sender_id, client_id) DO NOTHING"
)
# A message's rev, as the index `messages_rev` holds it.
_REV = "coalesce(rev, seq)"

# A row of `SELECT {_COLUMNS}`, as the schema above types it.
MessageRow: TypeAlias = tuple[
    int, str, str, str, str, str, int, int | None, str | None, int | None, int | None, int | None
]
InsertRow: TypeAlias = tuple[int, str, str, str, str, str, int, int | None, str | None, int | None]
Reactions: TypeAlias = dict[str, list[str]]


def _message(
    conversation_id: str, row: tuple[object, ...], reactions: Reactions | None = None
) -> Message:
    # APSW rows are untyped; the schema above makes them this shape.
    (
        seq,
        id_,
        sender_id,
        client_id,
        body,
        attachments,
        created_at,
        reply_to,
        mentions,
        edited_at,
        deleted_at,
        rev,
    ) = cast(MessageRow, row)
    return Message(
        id=id_,
        conversation_id=conversation_id,
        seq=seq,
        sender_id=sender_id,
        client_id=client_id,
        body=body,
        attachments=orjson.loads(attachments) if attachments != "[]" else [],
        created_at=created_at,
        reply_to=reply_to,
        mentions=orjson.loads(mentions) if mentions is not None else [],
        edited_at=edited_at,
        deleted_at=deleted_at,
        reactions=reactions if reactions is not None else {},
        rev=rev if rev is not None else seq,
    )


def _row(message: Message) -> InsertRow:
    return (
        message.seq,
        message.id,
        message.sender_id,
        message.client_id,
        message.body,
        orjson.dumps(message.attachments).decode() if message.attachments else "[]",
        message.created_at,
        message.reply_to,
        orjson.dumps(message.mentions).decode() if message.mentions else None,
        message.rev if message.rev != message.seq else None,
    )


# For store/ai.py, which reads the same rows.
COLUMNS = _COLUMNS


def rows_to_messages(conn: apsw.Connection, conversation_id: str, rows: list[Any]) -> list[Message]:
    return _messages(conn, conversation_id, rows)


def _messages(conn: apsw.Connection, conversation_id: str, rows: list[Any]) -> list[Message]:
    """Messages of `rows` with their reactions, read in one query for the lot."""
    if not rows:
        return []
    found = reactions_of(conn, [row[0] for row in rows])
    return [_message(conversation_id, row, found.get(row[0])) for row in rows]


def reactions_of(conn: apsw.Connection, seqs: list[int]) -> dict[int, Reactions]:
    """The reactions of the messages `seqs` (those that have any): emoji in the order
    of their first current reaction, users in the order they reacted."""
    out: dict[int, Reactions] = {}
    low, high = min(seqs), max(seqs)
    if high - low + 1 == len(seqs):
        # A history page (or one message): a range of the primary key.
        rows = conn.execute(
            "SELECT seq, emoji, user_id FROM reactions WHERE seq BETWEEN ? AND ? ORDER BY seq, rev",
            (low, high),
        )
    else:
        rows = conn.execute(
            "SELECT seq, emoji, user_id FROM reactions"
            " WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY seq, rev",
            (orjson.dumps(seqs).decode(),),
        )
    for seq, emoji, user_id in rows:
        out.setdefault(seq, {}).setdefault(emoji, []).append(user_id)
    return out


def last_seq(conn: apsw.Connection) -> int:
    value = conn.execute("SELECT max(seq) FROM messages").get
    return int(value) if value is not None else 0


def last_rev(conn: apsw.Connection) -> int:
    """The conversation's latest change (0: no message), from the `messages_rev` index."""
    value = conn.execute(f"SELECT {_REV} FROM messages ORDER BY {_REV} DESC LIMIT 1").get
    return int(value) if value is not None else 0


def read_cursors(conn: apsw.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT user_id, seq FROM read_cursors"))


def insert_message(conn: apsw.Connection, message: Message) -> Message | None:
    """Insert `message` and index its body; return the stored original instead if
    (sender, client_id) exists (nothing is stored or indexed then).

    The uniqueness check is the UNIQUE constraint itself, inside the caller's
    transaction, so a resend can never slip in beside its original.
    """
    conn.execute(_INSERT, _row(message))
    if conn.changes():
        search.index_new(conn, message.seq, message.body)  # search: same transaction
        return None
    original = find_by_client_id(
        conn, message.conversation_id, message.sender_id, message.client_id
    )
    assert original is not None, "a conflict without an original"
    return original


def bulk_insert(conn: apsw.Connection, messages: Iterable[Message]) -> None:
    """Insert `messages` in the caller's transaction with the actor's own statement.

    For the bench, which fills a stopped server's conversation file; a message whose
    (sender, client_id) is already stored is skipped, as `insert_message` skips it.
    Each row is indexed for search as `insert_message` indexes it (search: every row
    above the index's watermark must be indexed, or a later edit would corrupt it).
    """
    for message in messages:
        conn.execute(_INSERT, _row(message))
        if conn.changes():
            search.index_new(conn, message.seq, message.body)  # search: as insert_message


def find_by_client_id(
    conn: apsw.Connection, conversation_id: str, sender_id: str, client_id: str
) -> Message | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE sender_id = ? AND client_id = ?",
        (sender_id, client_id),
    ).fetchone()
    return _messages(conn, conversation_id, [row])[0] if row is not None else None


def message(conn: apsw.Connection, conversation_id: str, seq: int) -> Message | None:
    """The message `seq` as it is now, or None."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE seq = ?", (seq,)).fetchone()
    return _messages(conn, conversation_id, [row])[0] if row is not None else None


def is_live(conn: apsw.Connection, seq: int) -> bool:
    """Whether `seq` names a message that is not a tombstone (what `reply_to` may name)."""
    row = conn.execute("SELECT deleted_at IS NULL FROM messages WHERE seq = ?", (seq,)).get
    return bool(row)


def messages_by_seq(
    conn: apsw.Connection, conversation_id: str, seqs: list[int]
) -> dict[int, Message]:
    """The messages of these seqs that exist, by seq (for search's results)."""
    marks = ",".join("?" * len(seqs))
    rows = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE seq IN ({marks})", seqs)
    found = _messages(conn, conversation_id, list(rows)) if seqs else []
    return {message.seq: message for message in found}


def latest_message(conn: apsw.Connection, conversation_id: str) -> Message | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM messages ORDER BY seq DESC LIMIT 1").fetchone()
    return _messages(conn, conversation_id, [row])[0] if row is not None else None


def history(
    conn: apsw.Connection,
    conversation_id: str,
    *,
    after_seq: int | None,
    before_seq: int | None,
    limit: int,
) -> tuple[list[Message], bool]:
    """A page of messages, ascending by seq, and whether more remain (see PROTOCOL.md)."""
    upper = before_seq if before_seq is not None else 2**63 - 1
    if after_seq is not None:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
            (after_seq, upper, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE seq < ? ORDER BY seq DESC LIMIT ?",
            (upper, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        rows.reverse()
    return _messages(conn, conversation_id, rows), more


def changes(
    conn: apsw.Connection, conversation_id: str, after_rev: int, limit: int
) -> tuple[list[Message], bool]:
    """Every message whose rev is above `after_rev`, in its state now, ascending by rev
    (at most `limit`), and whether more remain. A range of the `messages_rev` index."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE {_REV} > ? ORDER BY {_REV} LIMIT ?",
        (after_rev, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    return _messages(conn, conversation_id, rows[:limit]), more


# ---------------------------------------------------------------- changes


def _set_rev(conn: apsw.Connection, seq: int, rev: int) -> None:
    conn.execute("UPDATE messages SET rev = ? WHERE seq = ?", (rev, seq))


def edit(
    conn: apsw.Connection, seq: int, old_body: str, new_body: str, edited_at: int, rev: int
) -> None:
    """Replace the body of live message `seq`, keeping the old one in its edit history,
    and the keyword index in step."""
    conn.execute(
        "INSERT INTO edits(seq, body, replaced_at) VALUES (?, ?, ?)", (seq, old_body, edited_at)
    )
    conn.execute(
        "UPDATE messages SET body = ?, edited_at = ?, rev = ? WHERE seq = ?",
        (new_body, edited_at, rev, seq),
    )
    search.index_replace(conn, seq, old_body, new_body)
    vectors.invalidate(conn, seq)  # embeddings: the old body's vector goes


def tombstone(conn: apsw.Connection, seq: int, old_body: str, deleted_at: int, rev: int) -> None:
    """Make live message `seq` a tombstone: its body, attachments, mentions, reactions
    and edit history are gone (the file runs with `secure_delete`, so their bytes are
    overwritten, not left in free pages), and so are its words in the keyword index.
    `reply_to` and `edited_at` stay (PROTOCOL.md v1.1 details)."""
    conn.execute(
        "UPDATE messages SET body = '', attachments = '[]', mentions = NULL,"
        " deleted_at = ?, rev = ? WHERE seq = ?",
        (deleted_at, rev, seq),
    )
    conn.execute("DELETE FROM reactions WHERE seq = ?", (seq,))
    conn.execute("DELETE FROM edits WHERE seq = ?", (seq,))
    search.index_replace(conn, seq, old_body, "")
    action_items.source_deleted(conn, seq)  # no item keeps a deleted source
    vectors.forget(conn, seq)  # embeddings: the vector goes in the delete's transaction


def add_reaction(conn: apsw.Connection, seq: int, emoji: str, user_id: str, rev: int) -> None:
    conn.execute(
        "INSERT INTO reactions(seq, emoji, user_id, rev) VALUES (?, ?, ?, ?)",
        (seq, emoji, user_id, rev),
    )
    _set_rev(conn, seq, rev)


def remove_reaction(conn: apsw.Connection, seq: int, emoji: str, user_id: str, rev: int) -> None:
    conn.execute(
        "DELETE FROM reactions WHERE seq = ? AND emoji = ? AND user_id = ?", (seq, emoji, user_id)
    )
    _set_rev(conn, seq, rev)


def attachment_in_use(conn: apsw.Connection, media_id: str) -> bool:
    """Whether a live message references `media_id`. Called only when a message with
    attachments is deleted: a scan of the messages that have attachments (no index
    holds them; deletes of attachments are rare, and it runs in the commit's thread)."""
    needle = orjson.dumps(media_id).decode()  # the quoted id: no prefix of another
    row = conn.execute(
        "SELECT 1 FROM messages WHERE attachments != '[]' AND deleted_at IS NULL"
        " AND instr(attachments, ?) LIMIT 1",
        (needle,),
    ).fetchone()
    return row is not None


def edits(conn: apsw.Connection, seq: int) -> list[tuple[str, int]]:
    """The earlier bodies of message `seq` and when each was replaced, oldest first."""
    rows = conn.execute(
        "SELECT body, replaced_at FROM edits WHERE seq = ? ORDER BY rowid", (seq,)
    ).fetchall()
    return cast(list[tuple[str, int]], rows)


# ---------------------------------------------------------------- read cursors


def set_read_cursor(conn: apsw.Connection, user_id: str, seq: int) -> None:
    conn.execute(
        "INSERT INTO read_cursors(user_id, seq) VALUES (?, ?)"
        " ON CONFLICT(user_id) DO UPDATE SET seq = excluded.seq",
        (user_id, seq),
    )


def unread_count(conn: apsw.Connection, user_id: str, cursor: int, last_seq: int) -> int:
    """Messages from others above `cursor`, tombstones left out. Seqs are gapless, so
    that is every message above the cursor less the caller's own there (the
    (sender_id, seq) index counts them without touching anyone else's) and less the
    others' tombstones there (the partial index `messages_tombstones` holds only those)."""
    own = conn.execute(
        "SELECT count(*) FROM messages WHERE sender_id = ? AND seq > ?", (user_id, cursor)
    ).get
    deleted = conn.execute(
        "SELECT count(*) FROM messages INDEXED BY messages_tombstones"
        " WHERE deleted_at IS NOT NULL AND seq > ? AND sender_id != ?",
        (cursor, user_id),
    ).get
    return max(0, last_seq - cursor - int(own) - int(deleted))


# ---------------------------------------------------------------- the assistant's reads


def read_cursor_of(conn: apsw.Connection, user_id: str) -> int:
    value = conn.execute("SELECT seq FROM read_cursors WHERE user_id = ?", (user_id,)).get
    return int(value) if isinstance(value, int) else 0


def live_by_seq(conn: apsw.Connection, conversation_id: str, seqs: list[int]) -> list[Message]:
    """The messages of these seqs that exist and are not deleted, ascending."""
    if not seqs:
        return []
    found = messages_by_seq(conn, conversation_id, sorted(set(seqs)))
    return [m for _, m in sorted(found.items()) if m.deleted_at is None]


def live_range(
    conn: apsw.Connection, conversation_id: str, low: int, high: int, limit: int
) -> list[Message]:
    """Live messages with low <= seq <= high, the first `limit` of them, ascending."""
    messages, _ = history(
        conn, conversation_id, after_seq=low - 1, before_seq=high + 1, limit=limit * 2 + 10
    )
    return [m for m in messages if m.deleted_at is None][:limit]


def live_recent(conn: apsw.Connection, conversation_id: str, limit: int) -> list[Message]:
    """The newest `limit` live messages, ascending."""
    messages, _ = history(
        conn, conversation_id, after_seq=None, before_seq=None, limit=limit * 2 + 10
    )
    return [m for m in messages if m.deleted_at is None][-limit:]


def live_unread(
    conn: apsw.Connection, conversation_id: str, user_id: str, limit: int
) -> list[Message]:
    """What `unread_count` counts for `user_id` (messages of others above the caller's
    read cursor, tombstones left out): the newest `limit` of them, ascending."""
    cursor = read_cursor_of(conn, user_id)
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM messages WHERE seq > ? AND sender_id != ?"
        " AND deleted_at IS NULL ORDER BY seq DESC LIMIT ?",
        (cursor, user_id, limit),
    ).fetchall()
    return list(reversed(rows_to_messages(conn, conversation_id, rows)))
