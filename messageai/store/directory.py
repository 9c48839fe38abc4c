"""SQL for the central directory database: users, tokens, conversations, memberships.

Called by `messageai.services.directory.Directory`, which owns the connections
(and, for `create_local_user` and the user list, by the offline admin CLI).
No per-message data lives here: messages and read cursors stay in each
conversation's own file.
"""

from __future__ import annotations

from typing import TypeAlias, cast

import apsw

from messageai import passwords
from messageai.model import ConversationRecord, User, new_id, now_ms
from messageai.sqlite import Migration


def _v1(conn: apsw.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE users(
            id TEXT PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            display_name TEXT NOT NULL,
            password_hash TEXT,
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX users_display_name ON users(display_name COLLATE NOCASE);
        CREATE TABLE tokens(
            hash BLOB PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX tokens_user ON tokens(user_id);
        CREATE TABLE conversations(
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
            title TEXT,
            creator_id TEXT NOT NULL REFERENCES users(id),
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE memberships(
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            joined_at INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, user_id)
        ) WITHOUT ROWID;
        CREATE INDEX memberships_user ON memberships(user_id, conversation_id);
        CREATE TABLE direct_pairs(
            user_a TEXT NOT NULL,
            user_b TEXT NOT NULL,
            conversation_id TEXT NOT NULL UNIQUE REFERENCES conversations(id) ON DELETE CASCADE,
            PRIMARY KEY (user_a, user_b),
            CHECK (user_a < user_b)
        ) WITHOUT ROWID;
        """
    )


def _clerk_identities(conn: apsw.Connection) -> None:
    # Clerk mode: a deleted user stays as a tombstone so that their still-valid
    # session tokens cannot re-create them; each Svix message id is applied once.
    conn.execute(
        """
        ALTER TABLE users ADD COLUMN deleted_at INTEGER;
        CREATE TABLE webhook_messages(
            id TEXT PRIMARY KEY,
            received_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX webhook_messages_received ON webhook_messages(received_at);
        """
    )


def _media_and_push(conn: apsw.Connection) -> None:
    # Media records (bytes live in files named by sha256), which conversations
    # reference each upload (access is on the reference, never the hash), Expo
    # device tokens, and push tickets awaiting their receipts.
    conn.execute(
        """
        CREATE TABLE media(
            id TEXT PRIMARY KEY,
            owner_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            sha256 TEXT NOT NULL,
            content_type TEXT NOT NULL,
            size INTEGER NOT NULL,
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX media_owner ON media(owner_id);
        CREATE INDEX media_sha256 ON media(sha256);
        CREATE INDEX media_created ON media(created_at);
        CREATE TABLE media_refs(
            media_id TEXT NOT NULL REFERENCES media(id) ON DELETE CASCADE,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            PRIMARY KEY (media_id, conversation_id)
        ) WITHOUT ROWID;
        CREATE INDEX media_refs_conversation ON media_refs(conversation_id);
        CREATE TABLE push_tokens(
            token TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            platform TEXT,
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX push_tokens_user ON push_tokens(user_id);
        CREATE TABLE push_tickets(
            id TEXT PRIMARY KEY,
            token TEXT NOT NULL,
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX push_tickets_created ON push_tickets(created_at);
        """
    )


def _tokens_by_expiry(conn: apsw.Connection) -> None:
    # The housekeeping task deletes expired tokens in batches, oldest expiry first.
    conn.execute("CREATE INDEX tokens_expires ON tokens(expires_at)")


MIGRATIONS: list[Migration] = [_v1, _clerk_identities, _media_and_push, _tokens_by_expiry]


_USER = "id, username, display_name, created_at"


# The first columns of a `SELECT {_USER}, ...` row; NOT NULL in `users`, so of these types.
UserRow: TypeAlias = tuple[str, str, str, int]


def user_from_row(row: tuple[object, ...]) -> User:
    """A `User` from a row that starts with the `_USER` columns (APSW rows are untyped)."""
    id_, username, display_name, created_at = cast(UserRow, row[:4])
    return User(id_, username, display_name, created_at)


def _user(row: tuple[object, ...] | None) -> User | None:
    return user_from_row(row) if row is not None else None


# ---------------------------------------------------------------- users and tokens


def insert_user(conn: apsw.Connection, user: User, password_hash: str | None) -> bool:
    """Insert a user; False if the username is taken.

    A taken name is expected (registration, `messageai user add`), so it is not a
    failed statement: `DO NOTHING` keeps SQLite from logging a constraint error."""
    conn.execute(
        "INSERT INTO users(id, username, display_name, password_hash, created_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(username) DO NOTHING",
        (user.id, user.username, user.display_name, password_hash, user.created_at),
    )
    return conn.changes() == 1


def create_local_user(
    conn: apsw.Connection, username: object, display_name: object, password_hash: str
) -> User | None:
    """Create a local (password) account: check the username and display name (the
    display name defaults to the username), give the user a fresh id and the current
    time, insert it with the already computed `password_hash`. None if the username
    is taken. The one way local users are made: `Directory.register` and
    `messageai user add` both call it inside their write transaction."""
    name = passwords.check_username(username)
    shown = passwords.check_display_name(display_name, name)
    user = User(id=new_id("u_"), username=name, display_name=shown, created_at=now_ms())
    return user if insert_user(conn, user, password_hash) else None


def user_by_id(conn: apsw.Connection, user_id: str) -> User | None:
    return _user(conn.execute(f"SELECT {_USER} FROM users WHERE id = ?", (user_id,)).fetchone())


def user_and_hash_by_name(conn: apsw.Connection, username: str) -> tuple[User, str | None] | None:
    row = conn.execute(
        f"SELECT {_USER}, password_hash FROM users WHERE username = ?", (username,)
    ).fetchone()
    if row is None:
        return None
    return user_from_row(row), row[4]


def existing_user_ids(conn: apsw.Connection, user_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for user_id in user_ids:
        if conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone():
            found.add(user_id)
    return found


def _after_prefix(prefix: str) -> str:
    """The least string greater than every string that starts with `prefix` (non-empty),
    in code point order (BINARY on UTF-8), with ASCII letters folded (NOCASE)."""
    head, last = prefix[:-1], ord(prefix[-1])
    if last == 0x10FFFF:
        return _after_prefix(head) if head else "\U0010ffff"
    following = last + 1
    if following == 0xD800:  # surrogates cannot be stored: skip past them
        following = 0xE000
    elif following == ord("A"):  # NOCASE sees A-Z as a-z: after "@" comes "["
        following = ord("[")
    return head + chr(following)


def search_users(conn: apsw.Connection, prefix: str, limit: int) -> list[User]:
    """Users whose username or display name starts with `prefix`, ASCII case ignored
    (usernames are lower case; display names are compared NOCASE, like LIKE did).
    Two index range scans (the username's, and `users_display_name`), no table scan."""
    if not prefix:
        rows = conn.execute(f"SELECT {_USER} FROM users ORDER BY username LIMIT ?", (limit,))
        return [user_from_row(row) for row in rows]
    # Folded once for both: a username has no capitals, so NOCASE's bounds serve it too.
    folded = "".join(c.lower() if "A" <= c <= "Z" else c for c in prefix)
    # A UNION, not an OR: with ORDER BY ... LIMIT the planner would scan the whole
    # username index for the OR (EXPLAIN QUERY PLAN; tests/test_directory.py checks).
    rows = conn.execute(
        f"SELECT {_USER} FROM users WHERE username >= ?1 AND username < ?2"
        f" UNION SELECT {_USER} FROM users"
        " WHERE display_name COLLATE NOCASE >= ?1 AND display_name COLLATE NOCASE < ?2"
        " ORDER BY username LIMIT ?3",
        (folded, _after_prefix(folded), limit),
    )
    return [user_from_row(row) for row in rows]


def all_users(conn: apsw.Connection) -> list[User]:
    rows = conn.execute(f"SELECT {_USER} FROM users ORDER BY username")
    return [user_from_row(row) for row in rows]


def insert_token(
    conn: apsw.Connection, token_hash: bytes, user_id: str, now: int, expires_at: int
) -> None:
    conn.execute(
        "INSERT INTO tokens(hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (token_hash, user_id, now, expires_at),
    )


def user_by_token(conn: apsw.Connection, token_hash: bytes, now: int) -> User | None:
    return _user(
        conn.execute(
            f"SELECT {', '.join('u.' + c for c in _USER.split(', '))} FROM tokens t"
            " JOIN users u ON u.id = t.user_id WHERE t.hash = ? AND t.expires_at > ?",
            (token_hash, now),
        ).fetchone()
    )


def delete_token(conn: apsw.Connection, token_hash: bytes) -> None:
    conn.execute("DELETE FROM tokens WHERE hash = ?", (token_hash,))


def delete_expired_tokens(conn: apsw.Connection, now: int, limit: int) -> int:
    """Delete up to `limit` tokens expired at `now` (by the expiry index); how many."""
    conn.execute(
        "DELETE FROM tokens WHERE hash IN"
        " (SELECT hash FROM tokens WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
        (now, limit),
    )
    return conn.changes()


# ---------------------------------------------------------------- conversations


def insert_conversation(
    conn: apsw.Connection, record: ConversationRecord, member_ids: list[str], now: int
) -> None:
    conn.execute(
        "INSERT INTO conversations(id, kind, title, creator_id, created_at) VALUES (?, ?, ?, ?, ?)",
        (record.id, record.kind, record.title, record.creator_id, record.created_at),
    )
    add_members(conn, record.id, member_ids, now)


def direct_conversation_id(conn: apsw.Connection, user_a: str, user_b: str) -> str | None:
    a, b = sorted((user_a, user_b))
    value = conn.execute(
        "SELECT conversation_id FROM direct_pairs WHERE user_a = ? AND user_b = ?", (a, b)
    ).get
    return value if isinstance(value, str) else None


def insert_direct_pair(
    conn: apsw.Connection, user_a: str, user_b: str, conversation_id: str
) -> None:
    a, b = sorted((user_a, user_b))
    conn.execute(
        "INSERT INTO direct_pairs(user_a, user_b, conversation_id) VALUES (?, ?, ?)",
        (a, b, conversation_id),
    )


def conversation(conn: apsw.Connection, conversation_id: str) -> ConversationRecord | None:
    row = conn.execute(
        "SELECT id, kind, title, creator_id, created_at FROM conversations WHERE id = ?",
        (conversation_id,),
    ).fetchone()
    return ConversationRecord(*row) if row is not None else None


def member_ids(conn: apsw.Connection, conversation_id: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT user_id FROM memberships WHERE conversation_id = ? ORDER BY joined_at, user_id",
            (conversation_id,),
        )
    ]


def is_member(conn: apsw.Connection, conversation_id: str, user_id: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM memberships WHERE conversation_id = ? AND user_id = ?",
            (conversation_id, user_id),
        ).fetchone()
        is not None
    )


def conversation_ids_of(conn: apsw.Connection, user_id: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT conversation_id FROM memberships WHERE user_id = ?", (user_id,)
        )
    ]


def add_members(conn: apsw.Connection, conversation_id: str, user_ids: list[str], now: int) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO memberships(conversation_id, user_id, joined_at) VALUES (?, ?, ?)",
        [(conversation_id, user_id, now) for user_id in user_ids],
    )


def remove_member(conn: apsw.Connection, conversation_id: str, user_id: str) -> bool:
    conn.execute(
        "DELETE FROM memberships WHERE conversation_id = ? AND user_id = ?",
        (conversation_id, user_id),
    )
    return conn.changes() > 0
