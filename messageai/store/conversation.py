"""SQL for one conversation's own database: its messages and its read cursors.

Only the conversation's actor calls these, on the connection it owns; the one
exception is the bench's seeding (`bulk_insert`), which writes a stopped server's file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias, cast

import apsw
import orjson

from messageai.model import Message
from messageai.sqlite import Migration
from messageai.store import search


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


# search: the FTS5 index and its watermark (store/search.py); merge with "changes" after theirs.
MIGRATIONS: list[Migration] = [_v1, _v2_sender_seq_index, search.MIGRATIONS_STEP]

_COLUMNS = "seq, id, sender_id, client_id, body, attachments, created_at"
# The one insert statement of a message, for the actor (`insert_message`) and the
# bench's seeding (`bulk_insert`), so a seeded file cannot drift from the schema.
_INSERT = (
    f"INSERT INTO messages({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(sender_id, client_id) DO NOTHING"
)

# A row of `SELECT {_COLUMNS}`, as the schema above types it.
MessageRow: TypeAlias = tuple[int, str, str, str, str, str, int]


def _message(conversation_id: str, row: tuple[object, ...]) -> Message:
    # APSW rows are untyped; the NOT NULL columns of `messages` make them this shape.
    seq, id_, sender_id, client_id, body, attachments, created_at = cast(MessageRow, row)
    return Message(
        id=id_,
        conversation_id=conversation_id,
        seq=seq,
        sender_id=sender_id,
        client_id=client_id,
        body=body,
        attachments=orjson.loads(attachments) if attachments != "[]" else [],
        created_at=created_at,
    )


def _row(message: Message) -> MessageRow:
    return (
        message.seq,
        message.id,
        message.sender_id,
        message.client_id,
        message.body,
        orjson.dumps(message.attachments).decode() if message.attachments else "[]",
        message.created_at,
    )


def last_seq(conn: apsw.Connection) -> int:
    value = conn.execute("SELECT max(seq) FROM messages").get
    return int(value) if value is not None else 0


def read_cursors(conn: apsw.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT user_id, seq FROM read_cursors"))


def insert_message(conn: apsw.Connection, message: Message) -> Message | None:
    """Insert `message`; return the stored original instead if (sender, client_id) exists.

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
    return _message(conversation_id, row) if row is not None else None


def messages_by_seq(
    conn: apsw.Connection, conversation_id: str, seqs: list[int]
) -> dict[int, Message]:
    """The messages of these seqs that exist, by seq (for search's results)."""
    marks = ",".join("?" * len(seqs))
    rows = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE seq IN ({marks})", seqs)
    return {message.seq: message for message in (_message(conversation_id, r) for r in rows)}


def latest_message(conn: apsw.Connection, conversation_id: str) -> Message | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM messages ORDER BY seq DESC LIMIT 1").fetchone()
    return _message(conversation_id, row) if row is not None else None


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
    return [_message(conversation_id, row) for row in rows], more


def set_read_cursor(conn: apsw.Connection, user_id: str, seq: int) -> None:
    conn.execute(
        "INSERT INTO read_cursors(user_id, seq) VALUES (?, ?)"
        " ON CONFLICT(user_id) DO UPDATE SET seq = excluded.seq",
        (user_id, seq),
    )


def unread_count(conn: apsw.Connection, user_id: str, cursor: int, last_seq: int) -> int:
    """Messages from others above `cursor`. Seqs are gapless, so that is every message
    above the cursor less the caller's own there, which the (sender_id, seq) index
    counts without touching anyone else's."""
    own = conn.execute(
        "SELECT count(*) FROM messages WHERE sender_id = ? AND seq > ?", (user_id, cursor)
    ).get
    return max(0, last_seq - cursor - int(own))
