"""The client's local database: every SQL statement the SDK runs, as plain sync functions.

One APSW database per account and server (WAL, `apsw.bestpractice`); it is the
UI's source of truth. `sdk.Client` and `sync.Syncer` call these functions with
the connection first; nothing here awaits or touches the network.

Message statuses: `sending` (stored locally, no ack yet: the outbox), `sent`
(acked, has the server's id and seq), `read` (every other member's read cursor
passed it), `received` (someone else's message), `failed` (the server refused
it for good; `error` says why).

A message row holds the server's state of it (v1.1: `rev` says which); my edits,
deletes and reactions not confirmed yet wait in the `outbox` table (written by
`outbox`) and are laid over the row whenever a message is read from here
(`pending` is then True): dropping a refused change is its rollback.
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


def _v2(conn: apsw.Connection) -> None:
    """Protocol v1.1: the new message fields, the change cursor and topics, and one
    outbox for sends, edits, deletes and reactions in the order they were made (the
    messages queued under schema 1 enter it first, in the order they were written)."""
    conn.execute(
        """
        ALTER TABLE messages ADD COLUMN reply_to INTEGER;
        ALTER TABLE messages ADD COLUMN mentions TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE messages ADD COLUMN edited_at INTEGER;
        ALTER TABLE messages ADD COLUMN deleted_at INTEGER;
        ALTER TABLE messages ADD COLUMN reactions TEXT NOT NULL DEFAULT '{}';
        -- the server's rev of the state held here (0: not known, a v1 server)
        ALTER TABLE messages ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE conversations ADD COLUMN topic TEXT;
        -- every change with rev <= last_rev is merged here: the v1.1 catch-up cursor
        ALTER TABLE conversations ADD COLUMN last_rev INTEGER NOT NULL DEFAULT 0;
        -- the server's `members_joined_at` extension: when (ms) a member joined
        ALTER TABLE members ADD COLUMN joined_at INTEGER;
        CREATE TABLE outbox(
            pos INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('send', 'edit', 'delete', 'react')),
            -- the message: mine by its row until its seq is known, or anyone's
            local_id INTEGER NOT NULL REFERENCES messages(local_id) ON DELETE CASCADE,
            body TEXT,
            emoji TEXT,
            "on" INTEGER,
            made_at INTEGER NOT NULL DEFAULT 0,
            -- written to a connection at least once: the server may have it
            attempted INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX outbox_message ON outbox(local_id);
        INSERT INTO outbox(kind, local_id, made_at)
            SELECT 'send', local_id, created_at FROM messages
            WHERE status = 'sending' ORDER BY local_id;
        CREATE TABLE media(
            id TEXT PRIMARY KEY,
            filename TEXT,
            content_type TEXT,
            size INTEGER
        ) WITHOUT ROWID;
        """
    )


MIGRATIONS: list[Migration] = [_v1, _v2]


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
    reply_to: int | None = None
    mentions: list[str] = attrs.Factory(list)
    edited_at: int | None = None
    deleted_at: int | None = None
    reactions: dict[str, list[str]] = attrs.Factory(dict)
    rev: int = 0
    # A change of mine (edit, delete, reaction) is laid over the server's state and
    # not confirmed yet.
    pending: bool = False

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

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
            "reply_to": self.reply_to,
            "mentions": self.mentions,
            "edited_at": self.edited_at,
            "deleted_at": self.deleted_at,
            "reactions": self.reactions,
            "rev": self.rev,
            "pending": self.pending,
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
    topic: str | None = None
    created_at: int = 0

    @property
    def last_activity(self) -> int:
        """The newest message's time, else when the conversation was made (a new one,
        still empty, comes before an old quiet one such as `general`)."""
        return self.last_message.created_at if self.last_message else self.created_at


_MSG_COLUMNS = (
    "local_id, conversation_id, client_id, id, seq, sender_id, body, attachments,"
    " created_at, status, error, reply_to, mentions, edited_at, deleted_at, reactions, rev"
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
        reply_to,
        mentions,
        edited_at,
        deleted_at,
        reactions,
        rev,
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
        reply_to=reply_to,
        mentions=orjson.loads(mentions),
        edited_at=edited_at,
        deleted_at=deleted_at,
        reactions=orjson.loads(reactions),
        rev=rev,
    )


def _overlaid(conn: apsw.Connection, rows: list[LocalMessage]) -> list[LocalMessage]:
    """The messages as the user sees them: each with my unconfirmed changes (the
    outbox's edits, deletes and reactions, in the order made) laid over it."""
    if not rows:
        return rows
    by_id = {m.local_id: m for m in rows}
    changes: list[Any] = conn.execute(
        'SELECT local_id, kind, body, emoji, "on", made_at FROM outbox'
        " WHERE kind != 'send' AND local_id IN (SELECT value FROM json_each(?)) ORDER BY pos",
        (orjson.dumps(list(by_id)).decode(),),
    ).fetchall()
    if not changes:
        return rows
    me = get_account(conn)
    for local_id, kind, body, emoji, on, made_at in changes:
        m = by_id[local_id]
        if kind == "edit" and not m.deleted:
            m = attrs.evolve(m, body=body, edited_at=made_at, pending=True)
        elif kind == "delete":
            m = attrs.evolve(
                m, body="", attachments=[], mentions=[], reactions={}, deleted_at=made_at,
                pending=True,
            )  # fmt: skip
        elif kind == "react" and not m.deleted and me is not None:
            reactions = {k: list(v) for k, v in m.reactions.items()}
            users = reactions.setdefault(emoji, [])
            if on and me.user_id not in users:
                users.append(me.user_id)
            elif not on and me.user_id in users:
                users.remove(me.user_id)
            m = attrs.evolve(m, reactions={k: v for k, v in reactions.items() if v}, pending=True)
        by_id[local_id] = m
    return [by_id[m.local_id] for m in rows]


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


# Senders of this many newest messages are looked up too (members are always): people
# who left, and the assistant (`bot: true`, a member of nothing).
RECENT_SENDERS = 1000


def unknown_user_ids(conn: apsw.Connection) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT user_id FROM members WHERE user_id NOT IN (SELECT id FROM users)"
            " UNION SELECT sender_id FROM (SELECT sender_id FROM messages"
            " ORDER BY rowid DESC LIMIT ?) WHERE sender_id NOT IN (SELECT id FROM users)",
            (RECENT_SENDERS,),
        )
    ]


# ---------------------------------------------------------------- conversations


def save_conversation(conn: apsw.Connection, conv: Mapping[str, Any]) -> bool:
    """Insert or update a conversation and its member list from a server object.

    Returns True if it was not known before (or was known only as a stub).
    """
    known = conn.execute("SELECT kind FROM conversations WHERE id = ?", (conv["id"],)).fetchone()
    topic = conv.get("topic")
    conn.execute(
        "INSERT INTO conversations(id, kind, title, topic, created_at, active)"
        " VALUES (?, ?, ?, ?, ?, 1)"
        " ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, title = excluded.title,"
        " topic = excluded.topic, created_at = excluded.created_at, active = 1",
        (
            conv["id"],
            conv["kind"],
            conv["title"],
            topic if isinstance(topic, str) else None,
            conv["created_at"],
        ),
    )
    member_ids = list(conv["member_ids"])
    conn.execute(
        "DELETE FROM members WHERE conversation_id = ? AND user_id NOT IN"
        " (SELECT value FROM json_each(?))",
        (conv["id"], orjson.dumps(member_ids).decode()),
    )
    joined_at = conv.get("members_joined_at")
    joined_at = joined_at if isinstance(joined_at, dict) else {}
    for user_id in member_ids:
        joined = joined_at.get(user_id)
        conn.execute(
            "INSERT INTO members(conversation_id, user_id, joined_at) VALUES (?, ?, ?)"
            " ON CONFLICT DO UPDATE SET joined_at = excluded.joined_at",
            (conv["id"], user_id, joined if type(joined) is int else None),
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
    "SELECT c.id, c.kind, c.title, c.topic, c.active, c.created_at,"
    " coalesce((SELECT max(seq) FROM messages WHERE conversation_id = c.id), 0),"
    " coalesce((SELECT read_seq FROM members"
    "  WHERE conversation_id = c.id AND user_id = ?1), 0),"
    " (SELECT max(local_id) FROM messages WHERE conversation_id = c.id)"
    " FROM conversations c WHERE c.kind IS NOT NULL"
)


def _conversation(conn: apsw.Connection, me: str, row: Any) -> LocalConversation:
    id_, kind, title, topic, active, created_at, last_seq, my_read, last_local = cast(
        tuple[Any, ...], row
    )
    # My own messages never count: only others' above my read cursor are unread
    # (tombstones neither, PROTOCOL.md v1.1).
    unread = conn.execute(
        "SELECT count(*) FROM messages WHERE conversation_id = ? AND sender_id != ? AND seq > ?"
        " AND deleted_at IS NULL",
        (id_, me, my_read),
    ).get
    last = None
    if last_local is not None:
        last = message_by_local_id(conn, last_local)
    return LocalConversation(
        id=id_,
        kind=kind,
        title=title,
        member_ids=member_ids(conn, id_),
        last_seq=last_seq,
        unread_count=unread,
        active=bool(active),
        last_message=last,
        topic=topic,
        created_at=created_at,
    )


def list_conversations(conn: apsw.Connection, me: str) -> list[LocalConversation]:
    """Every known conversation, most recent activity first, with local unread counts."""
    out = [_conversation(conn, me, row) for row in conn.execute(_CONVERSATION_SQL, (me,))]
    out.sort(key=lambda c: c.last_activity, reverse=True)
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
    return _overlaid(conn, rows)


def message_by_local_id(conn: apsw.Connection, local_id: int) -> LocalMessage | None:
    row = conn.execute(
        f"SELECT {_MSG_COLUMNS} FROM messages WHERE local_id = ?", (local_id,)
    ).fetchone()
    return _overlaid(conn, [_message(row)])[0] if row is not None else None


def message_by_seq(conn: apsw.Connection, conversation_id: str, seq: int) -> LocalMessage | None:
    row = conn.execute(
        f"SELECT {_MSG_COLUMNS} FROM messages WHERE conversation_id = ? AND seq = ?",
        (conversation_id, seq),
    ).fetchone()
    return _overlaid(conn, [_message(row)])[0] if row is not None else None


def message_by_client_id(
    conn: apsw.Connection, conversation_id: str, sender_id: str, client_id: str
) -> LocalMessage | None:
    row = conn.execute(
        f"SELECT {_MSG_COLUMNS} FROM messages"
        " WHERE conversation_id = ? AND sender_id = ? AND client_id = ?",
        (conversation_id, sender_id, client_id),
    ).fetchone()
    return _overlaid(conn, [_message(row)])[0] if row is not None else None


def messages_after_local_id(
    conn: apsw.Connection, conversation_id: str, local_id: int
) -> list[LocalMessage]:
    return _overlaid(
        conn,
        [
            _message(row)
            for row in conn.execute(
                f"SELECT {_MSG_COLUMNS} FROM messages"
                " WHERE conversation_id = ? AND local_id > ? ORDER BY local_id",
                (conversation_id, local_id),
            )
        ],
    )


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
    return upto, _overlaid(conn, rows)


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
    *,
    attachments: list[str] | None = None,
    reply_to: int | None = None,
    mentions: list[str] | None = None,
) -> LocalMessage:
    """Step 2 of the optimistic send: the message is stored as `sending`, and its send
    joins the end of the outbox."""
    with transaction(conn):
        ensure_conversation(conn, conversation_id)
        row = conn.execute(
            f"INSERT INTO messages(conversation_id, client_id, sender_id, body, attachments,"
            f" created_at, status, reply_to, mentions)"
            f" VALUES (?, ?, ?, ?, ?, ?, 'sending', ?, ?) RETURNING {_MSG_COLUMNS}",
            (
                conversation_id,
                client_id,
                sender_id,
                body,
                orjson.dumps(attachments or []).decode(),
                now_ms,
                reply_to,
                orjson.dumps(mentions or []).decode(),
            ),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO outbox(kind, local_id, made_at) VALUES ('send', ?, ?)", (row[0], now_ms)
        )
    return _message(row)


def outbox(conn: apsw.Connection, limit: int) -> list[LocalMessage]:
    """Queued messages (sends only) in the order they were written."""
    return [
        _message(row)
        for row in conn.execute(
            f"SELECT {_MSG_COLUMNS} FROM messages"
            " WHERE status = 'sending' ORDER BY local_id LIMIT ?",
            (limit,),
        )
    ]


def outbox_size(conn: apsw.Connection) -> int:
    """Sends, edits, deletes and reactions waiting for the server."""
    return int(conn.execute("SELECT count(*) FROM outbox").get)


def merge_message(conn: apsw.Connection, msg: Mapping[str, Any], me: str) -> LocalMessage | None:
    """Store a server message (history, live frame or ack); None if it was already stored.

    A message of mine that is still `sending` locally is matched by `client_id`
    and takes the server's id and seq (step 6 of the optimistic send). It keeps
    its own `created_at`, the time it was typed: for a message queued offline the
    server's is the time it was delivered, which is not what its sender wrote at.
    """
    conversation_id = msg["conversation_id"]
    seq = msg["seq"]
    fields = _v11_fields(msg)
    existing = conn.execute(
        "SELECT rev FROM messages WHERE conversation_id = ? AND seq = ?", (conversation_id, seq)
    ).fetchone()
    if existing is not None:
        if fields[-1] <= existing[0]:
            return None  # this state or a newer one is stored already
        # A newer state of a stored message (v1.1: an edit, a delete, a reaction).
        row = conn.execute(
            f"UPDATE messages SET body = ?, attachments = ?, reply_to = ?, mentions = ?,"
            f" edited_at = ?, deleted_at = ?, reactions = ?, rev = ?"
            f" WHERE conversation_id = ? AND seq = ? RETURNING {_MSG_COLUMNS}",
            (msg["body"], _attachments(msg), *fields, conversation_id, seq),
        ).fetchone()
        return _message(row)
    mine = msg["sender_id"] == me
    if mine:
        row = conn.execute(
            f"UPDATE messages SET id = ?, seq = ?, status = 'sent', error = NULL, body = ?,"
            f" attachments = ?, reply_to = ?, mentions = ?, edited_at = ?, deleted_at = ?,"
            f" reactions = ?, rev = ?"
            f" WHERE conversation_id = ? AND sender_id = ? AND client_id = ? AND seq IS NULL"
            f" RETURNING {_MSG_COLUMNS}",
            (
                msg["id"], seq, msg["body"], _attachments(msg), *fields,
                conversation_id, me, msg["client_id"],
            ),
        ).fetchone()  # fmt: skip
        if row is not None:
            # Delivered: its send leaves the outbox (its edits, if any, now name a seq).
            conn.execute("DELETE FROM outbox WHERE kind = 'send' AND local_id = ?", (row[0],))
            return _message(row)
    ensure_conversation(conn, conversation_id)
    row = conn.execute(
        f"INSERT INTO messages(conversation_id, client_id, id, seq, sender_id, body, attachments,"
        f" created_at, status, reply_to, mentions, edited_at, deleted_at, reactions, rev)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT DO NOTHING RETURNING {_MSG_COLUMNS}",
        (
            conversation_id,
            msg["client_id"],
            msg["id"],
            seq,
            msg["sender_id"],
            msg["body"],
            _attachments(msg),
            msg["created_at"],
            "sent" if mine else "received",
            *fields,
        ),
    ).fetchone()
    return _message(row) if row is not None else None


def _attachments(msg: Mapping[str, Any]) -> str:
    return orjson.dumps(msg.get("attachments") or []).decode()


def _v11_fields(msg: Mapping[str, Any]) -> tuple[Any, ...]:
    """reply_to, mentions, edited_at, deleted_at, reactions and rev of a server message
    (checked by `sync`); a v1 server sends none of them (rev 0)."""
    return (
        msg.get("reply_to"),
        orjson.dumps(msg.get("mentions") or []).decode(),
        msg.get("edited_at"),
        msg.get("deleted_at"),
        orjson.dumps(msg.get("reactions") or {}).decode(),
        msg.get("rev") or 0,
    )


def mark_failed(conn: apsw.Connection, local_id: int, error: str) -> LocalMessage | None:
    """The server refused a send for good: it and every change of it leave the outbox."""
    conn.execute("DELETE FROM outbox WHERE local_id = ?", (local_id,))
    row = conn.execute(
        "UPDATE messages SET status = 'failed', error = ?"
        " WHERE local_id = ? AND status = 'sending'"
        f" RETURNING {_MSG_COLUMNS}",
        (error, local_id),
    ).fetchone()
    return _message(row) if row is not None else None


def retry_failed(conn: apsw.Connection, local_id: int) -> LocalMessage | None:
    """Put a failed message back at the end of the outbox, with its original client_id."""
    with transaction(conn):
        row = conn.execute(
            "UPDATE messages SET status = 'sending', error = NULL"
            " WHERE local_id = ? AND status = 'failed'"
            f" RETURNING {_MSG_COLUMNS}",
            (local_id,),
        ).fetchone()
        if row is not None:
            conn.execute(
                "INSERT INTO outbox(kind, local_id, made_at) VALUES ('send', ?, ?)",
                (local_id, row[8]),
            )
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
            f" AND status = 'sent'"
            f" AND EXISTS (SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id != ?2)"
            # every member who was there when it was sent has read it (members_joined_at)
            f" AND NOT EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = ?1"
            f"  AND m.user_id != ?2 AND m.read_seq < messages.seq"
            f"  AND (m.joined_at IS NULL OR m.joined_at <= messages.created_at))"
            f" RETURNING {_MSG_COLUMNS}",
            (conversation_id, me),
        )
    ]


# A member who was there when message ?3 (a seq) of conversation ?1 was sent: joined
# at or before its time (PROTOCOL extension `members_joined_at`), or joined when unknown.
_THERE = (
    "(joined_at IS NULL OR joined_at <= coalesce((SELECT created_at FROM messages"
    " WHERE conversation_id = ?1 AND seq = ?3), joined_at))"
)


def read_by(conn: apsw.Connection, conversation_id: str, seq: int, sender_id: str) -> list[str]:
    """The members other than the sender whose read cursor is at or past `seq`."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT user_id FROM members"
            " WHERE conversation_id = ?1 AND user_id != ?2 AND read_seq >= ?3"
            f" AND {_THERE} ORDER BY user_id",
            (conversation_id, sender_id, seq),
        )
    ]


def readers_of(conn: apsw.Connection, conversation_id: str, seq: int, sender_id: str) -> int:
    """How many members other than the sender could read `seq` ("read by N of M"): with
    the server's `members_joined_at`, not those who joined after it was sent; without
    it, all of them."""
    return int(
        conn.execute(
            f"SELECT count(*) FROM members WHERE conversation_id = ?1 AND user_id != ?2"
            f" AND {_THERE}",
            (conversation_id, sender_id, seq),
        ).get
    )


def last_rev(conn: apsw.Connection, conversation_id: str) -> int:
    """The change cursor: every change with rev <= it is merged here."""
    value = conn.execute("SELECT last_rev FROM conversations WHERE id = ?", (conversation_id,)).get
    return int(value) if value is not None else 0


def set_last_rev(conn: apsw.Connection, conversation_id: str, rev: int) -> None:
    conn.execute(
        "UPDATE conversations SET last_rev = max(last_rev, ?) WHERE id = ?", (rev, conversation_id)
    )


def step_last_rev(conn: apsw.Connection, conversation_id: str, rev: int) -> None:
    """A live change: the cursor moves only over the next rev (frames come in rev order,
    so after the catch-up each is the next; one that is not leaves a gap that the next
    catch-up fills)."""
    conn.execute(
        "UPDATE conversations SET last_rev = ?1 WHERE id = ?2 AND last_rev = ?1 - 1",
        (rev, conversation_id),
    )


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


# ---------------------------------------------------------------- media


@attrs.frozen
class MediaInfo:
    id: str
    filename: str | None
    content_type: str | None
    size: int | None


def save_media(conn: apsw.Connection, info: MediaInfo) -> None:
    conn.execute(
        "INSERT INTO media(id, filename, content_type, size) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET filename = excluded.filename,"
        " content_type = excluded.content_type, size = excluded.size",
        attrs.astuple(info),
    )


def media_info(conn: apsw.Connection, media_id: str) -> MediaInfo | None:
    row = conn.execute(
        "SELECT id, filename, content_type, size FROM media WHERE id = ?", (media_id,)
    ).fetchone()
    return MediaInfo(*row) if row is not None else None
