"""SQL for the central directory database: users, tokens, conversations, memberships,
channels (v1.1: browse, join, the `general` channel every user joins) and profiles.

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
from messageai.store.db import Db, fold, nocase


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


GENERAL_TITLE = "general"


def _people_v1_1(conn: apsw.Connection) -> None:
    """v1.1 "Conversations, people, files": channels, topics, `bot` users, file names.

    `conversations` is rebuilt (SQLite cannot change a CHECK or a NOT NULL in place):
    `kind` admits "channel", `creator_id` may be NULL (`general` has no creator),
    and it gains `topic`, `member_count` (kept by triggers, for "most members
    first") and `auto_join` (every new user joins those: `general`). The rebuild
    follows SQLite's own recipe, so `open_directory_db` runs the migrations with
    foreign keys off (otherwise dropping the old table would cascade into
    memberships) and this step checks them before it commits. `general` is created
    here, once, and every user who exists already joins it, as new users will."""
    conn.execute(
        """
        CREATE TABLE conversations_new(
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('direct', 'group', 'channel')),
            title TEXT,
            topic TEXT,
            creator_id TEXT REFERENCES users(id),
            created_at INTEGER NOT NULL,
            member_count INTEGER NOT NULL DEFAULT 0,
            auto_join INTEGER NOT NULL DEFAULT 0 CHECK (auto_join IN (0, 1))
        ) WITHOUT ROWID;
        INSERT INTO conversations_new(id, kind, title, creator_id, created_at, member_count)
            SELECT c.id, c.kind, c.title, c.creator_id, c.created_at,
                   (SELECT count(*) FROM memberships m WHERE m.conversation_id = c.id)
            FROM conversations c;
        DROP TABLE conversations;
        ALTER TABLE conversations_new RENAME TO conversations;
        -- Channel titles are unique (people join them by name), ASCII case ignored;
        -- the same index serves the title-prefix browse.
        CREATE UNIQUE INDEX conversations_channel_title
            ON conversations(title COLLATE NOCASE) WHERE kind = 'channel';
        CREATE INDEX conversations_channel_size
            ON conversations(member_count DESC) WHERE kind = 'channel';
        CREATE INDEX conversations_auto_join ON conversations(auto_join) WHERE auto_join = 1;
        CREATE TRIGGER memberships_counted AFTER INSERT ON memberships BEGIN
            UPDATE conversations SET member_count = member_count + 1
            WHERE id = NEW.conversation_id;
        END;
        CREATE TRIGGER memberships_uncounted AFTER DELETE ON memberships BEGIN
            UPDATE conversations SET member_count = member_count - 1
            WHERE id = OLD.conversation_id;
        END;
        ALTER TABLE users ADD COLUMN bot INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE media ADD COLUMN filename TEXT;
        """
    )
    now = now_ms()
    general = new_id("c_")
    conn.execute(
        "INSERT INTO conversations(id, kind, title, creator_id, created_at, auto_join)"
        " VALUES (?, 'channel', ?, NULL, ?, 1)",
        (general, GENERAL_TITLE, now),
    )
    conn.execute(
        "INSERT INTO memberships(conversation_id, user_id, joined_at)"
        " SELECT ?, id, ? FROM users WHERE deleted_at IS NULL AND bot = 0",
        (general, now),
    )
    problems = conn.execute("PRAGMA foreign_key_check").fetchall()
    if problems:
        raise RuntimeError(f"directory migration: foreign keys broken: {problems[:5]}")


def _ai_budget(conn: apsw.Connection) -> None:
    """The assistant's per-user daily token budget (`ai.daily_tokens_per_user`): what
    each user spent on their last day of asking, so a restart gives nobody a new day."""
    conn.execute(
        """
        CREATE TABLE ai_spent(
            user_id TEXT PRIMARY KEY,
            day INTEGER NOT NULL,
            tokens INTEGER NOT NULL
        ) WITHOUT ROWID
        """
    )


def _disabled_users(conn: apsw.Connection) -> None:
    """`messageai user disable`: a disabled account's tokens are refused and it cannot
    sign in until `messageai user enable`; its messages and memberships stay."""
    conn.execute("ALTER TABLE users ADD COLUMN disabled_at INTEGER")


def _conversation_retention(conn: apsw.Connection) -> None:
    """Per-conversation retention (`messageai conversation retention ID DAYS`):
    `retention_days` NULL follows the server's `retention.days`, 0 keeps everything;
    `retention_upto` is the sweep's high-water mark, the highest seq at or below which
    every message is already a tombstone (so a sweep never re-reads them)."""
    conn.execute(
        """
        ALTER TABLE conversations ADD COLUMN retention_days REAL;
        ALTER TABLE conversations ADD COLUMN retention_upto INTEGER NOT NULL DEFAULT 0;
        """
    )


MIGRATIONS: list[Migration] = [
    _v1,
    _clerk_identities,
    _media_and_push,
    _tokens_by_expiry,
    _people_v1_1,
    _ai_budget,
    _disabled_users,
    _conversation_retention,
]


_USER = "id, username, display_name, created_at, bot"
USER_COLUMNS = _USER  # for `store/clerk.py`, whose rows are read by `user_from_row` too


# The first columns of a `SELECT {_USER}, ...` row; NOT NULL in `users`, so of these types.
UserRow: TypeAlias = tuple[str, str, str, int, int]


def user_from_row(row: tuple[object, ...]) -> User:
    """A `User` from a row that starts with the `_USER` columns (APSW rows are untyped)."""
    id_, username, display_name, created_at, bot = cast(UserRow, row[:5])
    return User(id_, username, display_name, created_at, bool(bot))


def _user(row: tuple[object, ...] | None) -> User | None:
    return user_from_row(row) if row is not None else None


# ---------------------------------------------------------------- users and tokens


def insert_user(conn: Db, user: User, password_hash: str | None) -> bool:
    """Insert a user; False if the username is taken.

    A taken name is expected (registration, `messageai user add`), so it is not a
    failed statement: `DO NOTHING` keeps SQLite from logging a constraint error."""
    conn.execute(
        "INSERT INTO users(id, username, display_name, password_hash, created_at, bot)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(username) DO NOTHING",
        (user.id, user.username, user.display_name, password_hash, user.created_at, int(user.bot)),
    )
    if conn.changes() != 1:
        return False
    if not user.bot:
        join_auto_channels(conn, user.id, user.created_at)
    return True


def bot_user(conn: Db, username: str, display_name: str, now: int) -> User:
    """The assistant's user (`bot: true`, no password, a member of nothing): the first
    bot made, else a new one named `username`, or the first free `<username>-bot`,
    `<username>-bot2`, … when a person has that name. In the caller's write transaction."""
    row = conn.execute(
        f"SELECT {_USER} FROM users WHERE bot = 1 AND deleted_at IS NULL"
        " ORDER BY created_at, id LIMIT 1"
    ).fetchone()
    if row is not None:
        return user_from_row(row)
    for n in range(100):
        name = username if n == 0 else f"{username}-bot{n if n > 1 else ''}"
        user = User(new_id("u_"), name, display_name, now, bot=True)
        if insert_user(conn, user, None):
            return user
    raise RuntimeError("no free username for the assistant")


def join_auto_channels(conn: Db, user_id: str, now: int) -> list[str]:
    """Make a new user a member of every `auto_join` conversation (`general`); the ids
    joined. Called in the transaction that creates the user (`insert_user`, Clerk's
    `insert_if_absent`), so no user ever exists outside `general`."""
    joined = auto_join_ids(conn)
    for conversation_id in joined:
        add_members(conn, conversation_id, [user_id], now)
    return joined


def retention_plan(conn: Db, server_days: float) -> list[tuple[str, float, int]]:
    """(id, days, mark) of every conversation whose retention is on: its own setting,
    else the server's `retention.days`."""
    rows = conn.execute(
        "SELECT id, coalesce(retention_days, ?), retention_upto FROM conversations"
        " WHERE coalesce(retention_days, ?) > 0 ORDER BY id",
        (server_days, server_days),
    )
    return [(str(r[0]), float(r[1]), int(r[2])) for r in rows]


def set_retention_mark(conn: Db, conversation_id: str, old: int, seq: int) -> None:
    """Move the mark from `old` to `seq`; nothing if it is not `old` any more (a restore
    reset it while the sweep read the file it replaced)."""
    conn.execute(
        "UPDATE conversations SET retention_upto = ? WHERE id = ? AND retention_upto = ?",
        (seq, conversation_id, old),
    )


def set_retention_days(conn: Db, conversation_id: str, days: float | None) -> bool:
    """Set (None: back to the server's) one conversation's retention; False if unknown."""
    conn.execute(
        "UPDATE conversations SET retention_days = ? WHERE id = ?", (days, conversation_id)
    )
    return conn.changes() > 0


def retention_days_of(conn: Db, conversation_id: str) -> float | None:
    value = conn.execute(
        "SELECT retention_days FROM conversations WHERE id = ?", (conversation_id,)
    ).get
    return float(value) if isinstance(value, (int, float)) else None


def conversation_ids(conn: Db) -> list[str]:
    """Every conversation's id, oldest first (the retention sweep's order)."""
    return [row[0] for row in conn.execute("SELECT id FROM conversations ORDER BY created_at, id")]


def auto_join_ids(conn: Db) -> list[str]:
    """The conversations every new user joins (`general`)."""
    return [
        row[0]
        for row in conn.execute("SELECT id FROM conversations WHERE auto_join = 1 ORDER BY id")
    ]


def create_local_user(
    conn: Db, username: object, display_name: object, password_hash: str
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


def user_by_id(conn: Db, user_id: str) -> User | None:
    return _user(conn.execute(f"SELECT {_USER} FROM users WHERE id = ?", (user_id,)).fetchone())


def user_and_hash_by_name(conn: Db, username: str) -> tuple[User, str | None] | None:
    row = conn.execute(
        f"SELECT {_USER}, password_hash FROM users WHERE username = ?", (username,)
    ).fetchone()
    if row is None:
        return None
    return user_from_row(row), row[-1]


def existing_user_ids(conn: Db, user_ids: list[str]) -> set[str]:
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


def search_users(conn: Db, prefix: str, limit: int) -> list[User]:
    """Users whose username or display name starts with `prefix`, ASCII case ignored
    (usernames are lower case; display names are compared NOCASE, like LIKE did).
    Two index range scans (the username's, and `users_display_name`), no table scan."""
    if not prefix:
        rows = conn.execute(f"SELECT {_USER} FROM users ORDER BY username LIMIT ?", (limit,))
        return [user_from_row(row) for row in rows]
    # Folded once for both: a username has no capitals, so NOCASE's bounds serve it too.
    folded = fold(prefix)
    # A UNION, not an OR: with ORDER BY ... LIMIT the planner would scan the whole
    # username index for the OR (EXPLAIN QUERY PLAN; tests/test_directory.py checks).
    shown = nocase(conn, "display_name")
    rows = conn.execute(
        f"SELECT {_USER} FROM users WHERE username >= ?1 AND username < ?2"
        f" UNION SELECT {_USER} FROM users WHERE {shown} >= ?1 AND {shown} < ?2"
        " ORDER BY username LIMIT ?3",
        (folded, _after_prefix(folded), limit),
    )
    return [user_from_row(row) for row in rows]


def users_after(conn: Db, after: str, limit: int) -> list[User]:
    """A page of every user by username: the first `limit` whose username sorts after
    `after` ("" for the first page). One range scan of the username index."""
    rows = conn.execute(
        f"SELECT {_USER} FROM users WHERE username > ? ORDER BY username LIMIT ?", (after, limit)
    )
    return [user_from_row(row) for row in rows]


def set_display_name(conn: Db, user_id: str, display_name: str) -> User | None:
    """Set a user's display name; the user as stored now (None: no such user)."""
    conn.execute("UPDATE users SET display_name = ? WHERE id = ?", (display_name, user_id))
    return user_by_id(conn, user_id)


def password_hash_of(conn: Db, user_id: str) -> str | None:
    """The user's stored password hash (None: no such user, or no password: Clerk)."""
    value = conn.execute("SELECT password_hash FROM users WHERE id = ?", (user_id,)).get
    return value if isinstance(value, str) else None


def set_password(conn: Db, user_id: str, password_hash: str, keep_token_hash: bytes) -> list[bytes]:
    """Store a new password hash and revoke every other token of the user; the hashes
    of the tokens revoked (their sockets are closed after the commit)."""
    conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
    revoked = [
        bytes(row[0])
        for row in conn.execute(
            "SELECT hash FROM tokens WHERE user_id = ? AND hash != ?", (user_id, keep_token_hash)
        )
    ]
    conn.execute("DELETE FROM tokens WHERE user_id = ? AND hash != ?", (user_id, keep_token_hash))
    return revoked


def all_users(conn: Db) -> list[User]:
    rows = conn.execute(f"SELECT {_USER} FROM users ORDER BY username")
    return [user_from_row(row) for row in rows]


def insert_token(conn: Db, token_hash: bytes, user_id: str, now: int, expires_at: int) -> None:
    conn.execute(
        "INSERT INTO tokens(hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (token_hash, user_id, now, expires_at),
    )


def user_by_token(conn: Db, token_hash: bytes, now: int) -> User | None:
    return _user(
        conn.execute(
            f"SELECT {', '.join('u.' + c for c in _USER.split(', '))} FROM tokens t"
            " JOIN users u ON u.id = t.user_id WHERE t.hash = ? AND t.expires_at > ?"
            " AND u.disabled_at IS NULL",
            (token_hash, now),
        ).fetchone()
    )


def delete_token(conn: Db, token_hash: bytes) -> None:
    conn.execute("DELETE FROM tokens WHERE hash = ?", (token_hash,))


def delete_tokens_of(conn: Db, user_id: str) -> int:
    """Sign `user_id` out everywhere: every session token goes; how many."""
    conn.execute("DELETE FROM tokens WHERE user_id = ?", (user_id,))
    return conn.changes()


def set_disabled(conn: Db, user_id: str, at: int | None) -> None:
    """Disable `user_id` (at `at`, ms) or enable it again (None)."""
    conn.execute("UPDATE users SET disabled_at = ? WHERE id = ?", (at, user_id))


def is_disabled(conn: Db, user_id: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM users WHERE id = ? AND disabled_at IS NOT NULL", (user_id,)
        ).fetchone()
        is not None
    )


def delete_expired_tokens(conn: Db, now: int, limit: int) -> int:
    """Delete up to `limit` tokens expired at `now` (by the expiry index); how many."""
    conn.execute(
        "DELETE FROM tokens WHERE hash IN"
        " (SELECT hash FROM tokens WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
        (now, limit),
    )
    return conn.changes()


# ---------------------------------------------------------------- conversations


def insert_conversation(
    conn: Db, record: ConversationRecord, member_ids: list[str], now: int
) -> None:
    conn.execute(
        "INSERT INTO conversations(id, kind, title, topic, creator_id, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (record.id, record.kind, record.title, record.topic, record.creator_id, record.created_at),
    )
    add_members(conn, record.id, member_ids, now)


def channel_title_taken(conn: Db, title: str, except_id: str | None = None) -> bool:
    """Whether a channel other than `except_id` has this title (ASCII case ignored)."""
    return (
        conn.execute(
            f"SELECT 1 FROM conversations WHERE kind = 'channel'"
            f" AND {nocase(conn, 'title')} = ? AND id IS DISTINCT FROM ?",
            (fold(title), except_id),
        ).fetchone()
        is not None
    )


def channels(conn: Db, prefix: str, limit: int) -> list[tuple[ConversationRecord, int]]:
    """Channels whose title starts with `prefix` (ASCII case ignored; "" for all), most
    members first (then by title), at most `limit`, with their member counts. The
    prefix is a range of the unique title index; without one, the size index is
    walked in order, so `limit` rows are read."""
    title = nocase(conn, "title")
    if prefix:
        folded = fold(prefix)
        rows = conn.execute(
            f"SELECT {_CONVERSATION}, member_count FROM conversations"
            f" WHERE kind = 'channel' AND {title} >= ?1 AND {title} < ?2"
            f" ORDER BY member_count DESC, {title}, id LIMIT ?3",
            (folded, _after_prefix(folded), limit),
        )
    else:
        rows = conn.execute(
            f"SELECT {_CONVERSATION}, member_count FROM conversations WHERE kind = 'channel'"
            f" ORDER BY member_count DESC, {title}, id LIMIT ?",
            (limit,),
        )
    return [(_record(row), cast(int, row[-1])) for row in rows]


def update_conversation(
    conn: Db,
    conversation_id: str,
    title: str | None,
    topic: str | None,
    *,
    set_title: bool,
    set_topic: bool,
) -> ConversationRecord | None:
    """Set the title and/or topic (those flagged); the record as stored now."""
    if set_title:
        conn.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))
    if set_topic:
        conn.execute("UPDATE conversations SET topic = ? WHERE id = ?", (topic, conversation_id))
    return conversation(conn, conversation_id)


def member_count(conn: Db, conversation_id: str) -> int:
    value = conn.execute(
        "SELECT member_count FROM conversations WHERE id = ?", (conversation_id,)
    ).get
    return value if isinstance(value, int) else 0


def direct_conversation_id(conn: Db, user_a: str, user_b: str) -> str | None:
    a, b = sorted((user_a, user_b))
    value = conn.execute(
        "SELECT conversation_id FROM direct_pairs WHERE user_a = ? AND user_b = ?", (a, b)
    ).get
    return value if isinstance(value, str) else None


def insert_direct_pair(conn: Db, user_a: str, user_b: str, conversation_id: str) -> None:
    a, b = sorted((user_a, user_b))
    conn.execute(
        "INSERT INTO direct_pairs(user_a, user_b, conversation_id) VALUES (?, ?, ?)",
        (a, b, conversation_id),
    )


_CONVERSATION = "id, kind, title, creator_id, created_at, topic"


def _record(row: tuple[object, ...]) -> ConversationRecord:
    id_, kind, title, creator_id, created_at, topic = row[:6]
    return ConversationRecord(
        cast(str, id_),
        cast(str, kind),
        cast("str | None", title),
        cast("str | None", creator_id),
        cast(int, created_at),
        cast("str | None", topic),
    )


def conversation(conn: Db, conversation_id: str) -> ConversationRecord | None:
    row = conn.execute(
        f"SELECT {_CONVERSATION} FROM conversations WHERE id = ?", (conversation_id,)
    ).fetchone()
    return _record(row) if row is not None else None


def member_ids(conn: Db, conversation_id: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT user_id FROM memberships WHERE conversation_id = ? ORDER BY joined_at, user_id",
            (conversation_id,),
        )
    ]


def members_joined_at(conn: Db, conversation_id: str) -> dict[str, int]:
    """Each member's id and when they joined (ms), in joining order (as `member_ids`)."""
    return {
        row[0]: row[1]
        for row in conn.execute(
            "SELECT user_id, joined_at FROM memberships WHERE conversation_id = ?"
            " ORDER BY joined_at, user_id",
            (conversation_id,),
        )
    }


def is_member(conn: Db, conversation_id: str, user_id: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM memberships WHERE conversation_id = ? AND user_id = ?",
            (conversation_id, user_id),
        ).fetchone()
        is not None
    )


def conversation_ids_of(conn: Db, user_id: str) -> list[str]:
    # Ordered (the index's order, which SQLite gave anyway): PostgreSQL promises none.
    return [
        row[0]
        for row in conn.execute(
            "SELECT conversation_id FROM memberships WHERE user_id = ? ORDER BY conversation_id",
            (user_id,),
        )
    ]


def conversations_of(conn: Db, user_id: str) -> list[ConversationRecord]:
    """The records of every conversation of `user_id`, by id: one statement (in
    PostgreSQL one round trip) instead of one per conversation."""
    columns = ", ".join("c." + c for c in _CONVERSATION.split(", "))
    rows = conn.execute(
        f"SELECT {columns} FROM memberships m JOIN conversations c ON c.id = m.conversation_id"
        " WHERE m.user_id = ? ORDER BY m.conversation_id",
        (user_id,),
    )
    return [_record(row) for row in rows]


def conversation_for_member(
    conn: Db, conversation_id: str, user_id: str
) -> tuple[ConversationRecord | None, bool]:
    """The conversation's record (None: no such conversation) and whether `user_id`
    is a member: the check of every REST request on a conversation, in one statement."""
    columns = ", ".join("c." + c for c in _CONVERSATION.split(", "))
    row = conn.execute(
        f"SELECT {columns}, m.user_id IS NOT NULL FROM conversations c LEFT JOIN memberships m"
        " ON m.conversation_id = c.id AND m.user_id = ? WHERE c.id = ?",
        (user_id, conversation_id),
    ).fetchone()
    return (None, False) if row is None else (_record(row), bool(row[-1]))


def add_members(conn: Db, conversation_id: str, user_ids: list[str], now: int) -> None:
    conn.executemany(
        "INSERT INTO memberships(conversation_id, user_id, joined_at) VALUES (?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        [(conversation_id, user_id, now) for user_id in user_ids],
    )


def remove_member(conn: Db, conversation_id: str, user_id: str) -> bool:
    conn.execute(
        "DELETE FROM memberships WHERE conversation_id = ? AND user_id = ?",
        (conversation_id, user_id),
    )
    return conn.changes() > 0


# ---------------------------------------------------------------- the AI budget


def ai_spent_on(conn: Db, day: int) -> dict[str, int]:
    """Tokens each user spent on `day` (days since the epoch, UTC)."""
    return dict(conn.execute("SELECT user_id, tokens FROM ai_spent WHERE day = ?", (day,)))


def add_ai_spent(conn: Db, user_id: str, day: int, tokens: int) -> None:
    """Count `tokens` on `user_id`'s `day`; a new day starts from zero."""
    conn.execute(
        "INSERT INTO ai_spent(user_id, day, tokens) VALUES (?, ?, ?) ON CONFLICT(user_id)"
        " DO UPDATE SET tokens = CASE WHEN ai_spent.day = excluded.day"
        " THEN ai_spent.tokens + excluded.tokens ELSE excluded.tokens END, day = excluded.day",
        (user_id, day, tokens),
    )
