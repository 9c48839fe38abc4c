"""The client's local database: every SQL statement the SDK runs, as plain sync functions.

One APSW database per account and server (WAL, `apsw.bestpractice`); it is the
UI's source of truth. `sdk.Client` and `sync.Syncer` call these functions with
the connection first; nothing here awaits or touches the network.

Message statuses: `sending` (stored locally, no ack yet: the outbox), `sent`
(acked, has the server's id and seq), `read` (every other member's read cursor
passed it), `received` (someone else's message), `failed` (the server refused
it for good; `error` says why).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import apsw
import attrs
import orjson

from messageai.sqlite import Migration, migrate, open_db, transaction


def _v1(conn: apsw.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE account(
            only INTEGER PRIMARY KEY CHECK (only = 1),
            server_url TEXT NOT NULL,
            user_id TEXT NOT NULL,
            username TEXT NOT NULL,
            display_name TEXT NOT NULL,
            token TEXT
        );
        CREATE TABLE users(
            id TEXT PRIMARY KEY,
            username TEXT NOT NULL,
            display_name TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE conversations(
            id TEXT PRIMARY KEY,
            kind TEXT,
            title TEXT,
            created_at INTEGER NOT NULL DEFAULT 0,
            -- every message with seq <= synced_seq is stored here: the catch-up cursor
            synced_seq INTEGER NOT NULL DEFAULT 0,
            -- my read cursor as the server last confirmed it
            read_sent_seq INTEGER NOT NULL DEFAULT 0,
            active INTEGER NOT NULL DEFAULT 1
        ) WITHOUT ROWID;
        CREATE TABLE members(
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            read_seq INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (conversation_id, user_id)
        ) WITHOUT ROWID;
        CREATE TABLE messages(
            local_id INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            client_id TEXT NOT NULL,
            id TEXT UNIQUE,
            seq INTEGER,
            sender_id TEXT NOT NULL,
            body TEXT NOT NULL,
            attachments TEXT NOT NULL DEFAULT '[]',
            created_at INTEGER NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('sending', 'sent', 'read', 'received', 'failed')),
            error TEXT,
            UNIQUE (conversation_id, seq),
            UNIQUE (conversation_id, sender_id, client_id)
        );
        CREATE INDEX messages_outbox ON messages(local_id) WHERE status = 'sending';
        """
    )


MIGRATIONS: list[Migration] = [_v1]


def open_store(path: Path) -> apsw.Connection:
    """Open (or create) an account database and bring its schema up to date."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # FULL: a message the user was told is queued must survive a power cut.
    conn = open_db(path, "FULL")
    path.chmod(0o600)  # it holds a bearer token
    migrate(conn, MIGRATIONS)
    return conn


# ---------------------------------------------------------------- rows


@attrs.frozen
class Account:
    server_url: str
    user_id: str
    username: str
    display_name: str
    token: str | None


@attrs.frozen
class LocalMessage:
    """A message as the local store holds it. `seq` and `id` are None until the ack."""

    local_id: int
    conversation_id: str
    client_id: str
    id: str | None
    seq: int | None
    sender_id: str
    body: str
    attachments: list[str]
    created_at: int
    status: str
    error: str | None

    @property
    def local_only(self) -> bool:
        """Not (yet) acknowledged by the server: queued or in flight."""
        return self.seq is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "seq": self.seq,
            "client_id": self.client_id,
            "sender_id": self.sender_id,
            "body": self.body,
            "attachments": self.attachments,
            "created_at": self.created_at,
            "status": self.status,
            "local_only": self.local_only,
            "error": self.error,
        }


@attrs.frozen
class LocalConversation:
    id: str
    kind: str | None
    title: str | None
    member_ids: list[str]
    last_seq: int
    unread_count: int
    active: bool
    last_message: LocalMessage | None


_MSG_COLUMNS = (
    "local_id, conversation_id, client_id, id, seq, sender_id, body, attachments,"
    " created_at, status, error"
)


def _message(row: Any) -> LocalMessage:
    (
        local_id,
        conversation_id,
        client_id,
        id_,
        seq,
        sender_id,
        body,
        attachments,
        created_at,
        status,
        error,
    ) = row
    return LocalMessage(
        local_id=local_id,
        conversation_id=conversation_id,
        client_id=client_id,
        id=id_,
        seq=seq,
        sender_id=sender_id,
        body=body,
        attachments=orjson.loads(attachments),
        created_at=created_at,
        status=status,
        error=error,
    )


# ---------------------------------------------------------------- account


def get_account(conn: apsw.Connection) -> Account | None:
    row = conn.execute(
        "SELECT server_url, user_id, username, display_name, token FROM account"
    ).fetchone()
    return Account(*row) if row is not None else None


def save_account(conn: apsw.Connection, account: Account) -> None:
    with transaction(conn):
        old = get_account(conn)
        if old is not None and old.user_id != account.user_id:
            # The same name on a server that was reset is a different person: start clean.
            conn.execute("DELETE FROM conversations; DELETE FROM users")
        conn.execute(
            "INSERT INTO account(only, server_url, user_id, username, display_name, token)"
            " VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT(only) DO UPDATE SET"
            " server_url = excluded.server_url, user_id = excluded.user_id,"
            " username = excluded.username, display_name = excluded.display_name,"
            " token = excluded.token",
            attrs.astuple(account),
        )


def forget_token(conn: apsw.Connection) -> None:
    conn.execute("UPDATE account SET token = NULL")


# ---------------------------------------------------------------- users


def save_users(conn: apsw.Connection, users: Iterable[Mapping[str, Any]]) -> None:
    for user in users:
        conn.execute(
            "INSERT INTO users(id, username, display_name) VALUES (?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET username = excluded.username,"
            " display_name = excluded.display_name",
            (user["id"], user["username"], user["display_name"]),
        )


def user_names(conn: apsw.Connection) -> dict[str, str]:
    """user id -> username, for display."""
    return dict(conn.execute("SELECT id, username FROM users"))


def display_names(conn: apsw.Connection) -> dict[str, tuple[str, str]]:
    """user id -> (username, display name), for display."""
    return {
        row[0]: (row[1], row[2])
        for row in conn.execute("SELECT id, username, display_name FROM users")
    }


def unknown_user_ids(conn: apsw.Connection) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT user_id FROM members WHERE user_id NOT IN (SELECT id FROM users)"
        )
    ]


# ---------------------------------------------------------------- conversations


def save_conversation(conn: apsw.Connection, conv: Mapping[str, Any]) -> bool:
    """Insert or update a conversation and its member list from a server object.

    Returns True if it was not known before (or was known only as a stub).
    """
    known = conn.execute("SELECT kind FROM conversations WHERE id = ?", (conv["id"],)).fetchone()
    conn.execute(
        "INSERT INTO conversations(id, kind, title, created_at, active) VALUES (?, ?, ?, ?, 1)"
        " ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, title = excluded.title,"
        " created_at = excluded.created_at, active = 1",
        (conv["id"], conv["kind"], conv["title"], conv["created_at"]),
    )
    member_ids = list(conv["member_ids"])
    conn.execute(
        "DELETE FROM members WHERE conversation_id = ? AND user_id NOT IN"
        " (SELECT value FROM json_each(?))",
        (conv["id"], orjson.dumps(member_ids).decode()),
    )
    for user_id in member_ids:
        conn.execute(
            "INSERT INTO members(conversation_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (conv["id"], user_id),
        )
    return known is None or known[0] is None


def ensure_conversation(conn: apsw.Connection, conversation_id: str) -> None:
    """A stub row for a conversation known only by id (a send before the first sync)."""
    conn.execute(
        "INSERT INTO conversations(id) VALUES (?) ON CONFLICT DO NOTHING", (conversation_id,)
    )


def set_active(conn: apsw.Connection, conversation_id: str, active: bool) -> None:
    conn.execute("UPDATE conversations SET active = ? WHERE id = ?", (int(active), conversation_id))


def deactivate_missing(conn: apsw.Connection, present_ids: Iterable[str]) -> list[str]:
    """Mark conversations the server no longer lists for us as inactive; return their ids."""
    return [
        row[0]
        for row in conn.execute(
            "UPDATE conversations SET active = 0 WHERE active = 1 AND kind IS NOT NULL"
            " AND id NOT IN (SELECT value FROM json_each(?)) RETURNING id",
            (orjson.dumps(list(present_ids)).decode(),),
        )
    ]


def conversation_ids(conn: apsw.Connection, *, active_only: bool = True) -> list[str]:
    sql = "SELECT id FROM conversations WHERE kind IS NOT NULL"
    if active_only:
        sql += " AND active = 1"
    return [row[0] for row in conn.execute(sql + " ORDER BY id")]


def has_conversation(conn: apsw.Connection, conversation_id: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        is not None
    )


def member_ids(conn: apsw.Connection, conversation_id: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT user_id FROM members WHERE conversation_id = ? ORDER BY user_id",
            (conversation_id,),
        )
    ]


def synced_seq(conn: apsw.Connection, conversation_id: str) -> int:
    value = conn.execute(
        "SELECT synced_seq FROM conversations WHERE id = ?", (conversation_id,)
    ).get
    return int(value) if value is not None else 0


def advance_synced_seq(conn: apsw.Connection, conversation_id: str) -> int:
    """Move the catch-up cursor over every contiguous stored seq; return the new value."""
    current = synced_seq(conn, conversation_id)
    if conn.execute(
        "SELECT 1 FROM messages WHERE conversation_id = ? AND seq = ?",
        (conversation_id, current + 1),
    ).fetchone():
        # The end of the run that starts at current + 1: the first stored seq with no successor.
        end = conn.execute(
            "SELECT min(m.seq) FROM messages m WHERE m.conversation_id = ?1 AND m.seq > ?2"
            " AND NOT EXISTS (SELECT 1 FROM messages n WHERE n.conversation_id = ?1"
            " AND n.seq = m.seq + 1)",
            (conversation_id, current),
        ).get
        current = int(end)
    conn.execute("UPDATE conversations SET synced_seq = ? WHERE id = ?", (current, conversation_id))
    return current


_CONVERSATION_SQL = (
    "SELECT c.id, c.kind, c.title, c.active,"
    " coalesce((SELECT max(seq) FROM messages WHERE conversation_id = c.id), 0),"
    " coalesce((SELECT read_seq FROM members"
    "  WHERE conversation_id = c.id AND user_id = ?1), 0),"
    " (SELECT max(local_id) FROM messages WHERE conversation_id = c.id)"
    " FROM conversations c WHERE c.kind IS NOT NULL"
)


def _conversation(conn: apsw.Connection, me: str, row: Any) -> LocalConversation:
    id_, kind, title, active, last_seq, my_read, last_local = cast(tuple[Any, ...], row)
    # My own messages never count: only others' above my read cursor are unread.
    unread = conn.execute(
        "SELECT count(*) FROM messages WHERE conversation_id = ? AND sender_id != ? AND seq > ?",
        (id_, me, my_read),
    ).get
    last = None
    if last_local is not None:
        last = _message(
            conn.execute(
                f"SELECT {_MSG_COLUMNS} FROM messages WHERE local_id = ?", (last_local,)
            ).fetchone()
        )
    return LocalConversation(
        id=id_,
        kind=kind,
        title=title,
        member_ids=member_ids(conn, id_),
        last_seq=last_seq,
        unread_count=unread,
        active=bool(active),
        last_message=last,
    )


def list_conversations(conn: apsw.Connection, me: str) -> list[LocalConversation]:
    """Every known conversation, most recent activity first, with local unread counts."""
    out = [_conversation(conn, me, row) for row in conn.execute(_CONVERSATION_SQL, (me,))]
    out.sort(key=lambda c: c.last_message.created_at if c.last_message else 0, reverse=True)
    return out


def get_conversation(
    conn: apsw.Connection, me: str, conversation_id: str
) -> LocalConversation | None:
    """One conversation as `list_conversations` shows it; None if unknown (or a stub)."""
    row = conn.execute(_CONVERSATION_SQL + " AND c.id = ?2", (me, conversation_id)).fetchone()
    return _conversation(conn, me, row) if row is not None else None


def is_active(conn: apsw.Connection, conversation_id: str) -> bool:
    """False only for a conversation we know we are no longer in (`active` cleared on
    `unsubscribed`, a `forbidden` answer, or its absence from the server's list)."""
    value = conn.execute(
        "SELECT active FROM conversations WHERE id = ?", (conversation_id,)
    ).fetchone()
    return value is None or bool(value[0])


# ---------------------------------------------------------------- messages


def messages(
    conn: apsw.Connection, conversation_id: str, limit: int | None = None
) -> list[LocalMessage]:
    """The conversation oldest first: acknowledged messages by seq, then the unacknowledged."""
    sql = (
        f"SELECT {_MSG_COLUMNS} FROM messages WHERE conversation_id = ?"
        " ORDER BY seq IS NULL DESC, seq DESC, local_id DESC"
    )
    params: tuple[Any, ...] = (conversation_id,)
    if limit is not None:
        sql += " LIMIT ?"
        params += (limit,)
    rows = [_message(row) for row in conn.execute(sql, params)]
    rows.reverse()
    return rows


def message_by_client_id(
    conn: apsw.Connection, conversation_id: str, sender_id: str, client_id: str
) -> LocalMessage | None:
    row = conn.execute(
        f"SELECT {_MSG_COLUMNS} FROM messages"
        " WHERE conversation_id = ? AND sender_id = ? AND client_id = ?",
        (conversation_id, sender_id, client_id),
    ).fetchone()
    return _message(row) if row is not None else None


def messages_after_local_id(
    conn: apsw.Connection, conversation_id: str, local_id: int
) -> list[LocalMessage]:
    return [
        _message(row)
        for row in conn.execute(
            f"SELECT {_MSG_COLUMNS} FROM messages"
            " WHERE conversation_id = ? AND local_id > ? ORDER BY local_id",
            (conversation_id, local_id),
        )
    ]


def messages_since(
    conn: apsw.Connection, conversation_id: str, after_seq: int, limit: int
) -> tuple[int, list[LocalMessage]]:
    """The catch-up cursor (every seq up to it is stored) and the oldest `limit`
    messages with seq above `after_seq` and up to it, by seq: a gapless feed of the
    conversation, whichever process sharing the store merged them."""
    # No transaction needed: the cursor is committed with (or after) the rows it
    # covers, so every row at or below the value read is already there.
    upto = synced_seq(conn, conversation_id)
    rows = [
        _message(row)
        for row in conn.execute(
            f"SELECT {_MSG_COLUMNS} FROM messages WHERE conversation_id = ?"
            " AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (conversation_id, after_seq, upto, limit),
        )
    ]
    return upto, rows


def unacknowledged(conn: apsw.Connection, conversation_id: str) -> list[LocalMessage]:
    """My messages without a seq (`sending` or `failed`), in the order they were written."""
    return [
        _message(row)
        for row in conn.execute(
            f"SELECT {_MSG_COLUMNS} FROM messages"
            " WHERE conversation_id = ? AND seq IS NULL ORDER BY local_id",
            (conversation_id,),
        )
    ]


def add_outgoing(
    conn: apsw.Connection,
    conversation_id: str,
    sender_id: str,
    client_id: str,
    body: str,
    now_ms: int,
) -> LocalMessage:
    """Step 2 of the optimistic send: the message is stored as `sending` (the outbox)."""
    with transaction(conn):
        ensure_conversation(conn, conversation_id)
        row = conn.execute(
            f"INSERT INTO messages(conversation_id, client_id, sender_id, body, created_at, status)"
            f" VALUES (?, ?, ?, ?, ?, 'sending') RETURNING {_MSG_COLUMNS}",
            (conversation_id, client_id, sender_id, body, now_ms),
        ).fetchone()
    return _message(row)


def outbox(conn: apsw.Connection, limit: int) -> list[LocalMessage]:
    """Queued messages in the order they were written."""
    return [
        _message(row)
        for row in conn.execute(
            f"SELECT {_MSG_COLUMNS} FROM messages"
            " WHERE status = 'sending' ORDER BY local_id LIMIT ?",
            (limit,),
        )
    ]


def outbox_size(conn: apsw.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM messages WHERE status = 'sending'").get)


def merge_message(conn: apsw.Connection, msg: Mapping[str, Any], me: str) -> LocalMessage | None:
    """Store a server message (history, live frame or ack); None if it was already stored.

    A message of mine that is still `sending` locally is matched by `client_id`
    and takes the server's id and seq (step 6 of the optimistic send). It keeps
    its own `created_at`, the time it was typed: for a message queued offline the
    server's is the time it was delivered, which is not what its sender wrote at.
    """
    conversation_id = msg["conversation_id"]
    seq = msg["seq"]
    existing = conn.execute(
        "SELECT 1 FROM messages WHERE conversation_id = ? AND seq = ?", (conversation_id, seq)
    ).fetchone()
    if existing is not None:
        return None
    mine = msg["sender_id"] == me
    if mine:
        row = conn.execute(
            f"UPDATE messages SET id = ?, seq = ?, status = 'sent', error = NULL"
            f" WHERE conversation_id = ? AND sender_id = ? AND client_id = ? AND seq IS NULL"
            f" RETURNING {_MSG_COLUMNS}",
            (msg["id"], seq, conversation_id, me, msg["client_id"]),
        ).fetchone()
        if row is not None:
            return _message(row)
    ensure_conversation(conn, conversation_id)
    row = conn.execute(
        f"INSERT INTO messages(conversation_id, client_id, id, seq, sender_id, body, attachments,"
        f" created_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT DO NOTHING RETURNING {_MSG_COLUMNS}",
        (
            conversation_id,
            msg["client_id"],
            msg["id"],
            seq,
            msg["sender_id"],
            msg["body"],
            orjson.dumps(msg.get("attachments") or []).decode(),
            msg["created_at"],
            "sent" if mine else "received",
        ),
    ).fetchone()
    return _message(row) if row is not None else None


def mark_failed(conn: apsw.Connection, local_id: int, error: str) -> LocalMessage | None:
    row = conn.execute(
        "UPDATE messages SET status = 'failed', error = ?"
        " WHERE local_id = ? AND status = 'sending'"
        f" RETURNING {_MSG_COLUMNS}",
        (error, local_id),
    ).fetchone()
    return _message(row) if row is not None else None


def retry_failed(conn: apsw.Connection, local_id: int) -> LocalMessage | None:
    """Put a failed message back in the outbox, with its original client_id."""
    row = conn.execute(
        "UPDATE messages SET status = 'sending', error = NULL"
        " WHERE local_id = ? AND status = 'failed'"
        f" RETURNING {_MSG_COLUMNS}",
        (local_id,),
    ).fetchone()
    return _message(row) if row is not None else None


# ---------------------------------------------------------------- read cursors


def set_read_seq(conn: apsw.Connection, conversation_id: str, user_id: str, seq: int) -> bool:
    """Move a member's read cursor forward; True if it moved."""
    conn.execute(
        "INSERT INTO members(conversation_id, user_id, read_seq) VALUES (?, ?, 0)"
        " ON CONFLICT DO NOTHING",
        (conversation_id, user_id),
    )
    moved = conn.execute(
        "UPDATE members SET read_seq = ?3"
        " WHERE conversation_id = ?1 AND user_id = ?2 AND read_seq < ?3"
        " RETURNING 1",
        (conversation_id, user_id, seq),
    ).fetchone()
    return moved is not None


def refresh_read_statuses(
    conn: apsw.Connection, conversation_id: str, me: str
) -> list[LocalMessage]:
    """Step 9: my `sent` messages that every other member has read become `read`."""
    return [
        _message(row)
        for row in conn.execute(
            f"UPDATE messages SET status = 'read' WHERE conversation_id = ?1 AND sender_id = ?2"
            f" AND status = 'sent' AND seq <= (SELECT min(read_seq) FROM members"
            f" WHERE conversation_id = ?1 AND user_id != ?2) RETURNING {_MSG_COLUMNS}",
            (conversation_id, me),
        )
    ]


def read_by(conn: apsw.Connection, conversation_id: str, seq: int, sender_id: str) -> list[str]:
    """The members other than the sender whose read cursor is at or past `seq`."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT user_id FROM members"
            " WHERE conversation_id = ? AND user_id != ? AND read_seq >= ?"
            " ORDER BY user_id",
            (conversation_id, sender_id, seq),
        )
    ]


def last_seq(conn: apsw.Connection, conversation_id: str) -> int:
    value = conn.execute(
        "SELECT max(seq) FROM messages WHERE conversation_id = ?", (conversation_id,)
    ).get
    return int(value) if value is not None else 0


def unsent_read_marks(conn: apsw.Connection, me: str) -> list[tuple[str, int]]:
    """(conversation, seq) where my local read cursor is ahead of what the server confirmed."""
    return list(
        conn.execute(
            "SELECT c.id, m.read_seq FROM conversations c JOIN members m"
            " ON m.conversation_id = c.id AND m.user_id = ?"
            " WHERE c.active = 1 AND m.read_seq > c.read_sent_seq",
            (me,),
        )
    )


def set_read_sent(conn: apsw.Connection, conversation_id: str, seq: int) -> None:
    conn.execute(
        "UPDATE conversations SET read_sent_seq = max(read_sent_seq, ?) WHERE id = ?",
        (seq, conversation_id),
    )
