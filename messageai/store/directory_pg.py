"""The directory's schema in PostgreSQL (cluster mode): the tables of
`store/directory.py`'s SQLite migrations, as they stand after all of them.

What differs from SQLite, and why: no `WITHOUT ROWID`; `BIGINT` for milliseconds;
`BYTEA` for token hashes; every text column `COLLATE "C"`, so that ordering is code
point order (SQLite's BINARY) and `lower()` folds ASCII only (SQLite's NOCASE), and the
NOCASE indexes become indexes on `lower(...)`; the member-count triggers call a
PL/pgSQL function. Run by `messageai.postgres.migrate` from `services/directory.py`;
a later change to the directory's schema appends a step to both lists.
"""

from __future__ import annotations

from messageai.model import new_id, now_ms
from messageai.postgres import PgConnection, PgMigration
from messageai.store.directory import GENERAL_TITLE

_T = 'TEXT COLLATE "C"'


def _v1(conn: PgConnection) -> None:
    conn.script(
        f"""
        CREATE TABLE users(
            id {_T} PRIMARY KEY,
            username {_T} NOT NULL UNIQUE,
            display_name {_T} NOT NULL,
            password_hash {_T},
            created_at BIGINT NOT NULL,
            deleted_at BIGINT,
            bot INTEGER NOT NULL DEFAULT 0,
            disabled_at BIGINT
        );
        CREATE INDEX users_display_name ON users(lower(display_name));
        CREATE TABLE tokens(
            hash BYTEA PRIMARY KEY,
            user_id {_T} NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL
        );
        CREATE INDEX tokens_user ON tokens(user_id);
        CREATE INDEX tokens_expires ON tokens(expires_at);
        CREATE TABLE conversations(
            id {_T} PRIMARY KEY,
            kind {_T} NOT NULL CHECK (kind IN ('direct', 'group', 'channel')),
            title {_T},
            topic {_T},
            creator_id {_T} REFERENCES users(id),
            created_at BIGINT NOT NULL,
            member_count INTEGER NOT NULL DEFAULT 0,
            auto_join INTEGER NOT NULL DEFAULT 0 CHECK (auto_join IN (0, 1)),
            retention_days DOUBLE PRECISION,
            retention_upto BIGINT NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX conversations_channel_title
            ON conversations(lower(title)) WHERE kind = 'channel';
        CREATE INDEX conversations_channel_size
            ON conversations(member_count DESC) WHERE kind = 'channel';
        CREATE INDEX conversations_auto_join ON conversations(auto_join) WHERE auto_join = 1;
        CREATE TABLE memberships(
            conversation_id {_T} NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            user_id {_T} NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            joined_at BIGINT NOT NULL,
            PRIMARY KEY (conversation_id, user_id)
        );
        CREATE INDEX memberships_user ON memberships(user_id, conversation_id);
        CREATE FUNCTION memberships_count() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                UPDATE conversations SET member_count = member_count + 1
                WHERE id = NEW.conversation_id;
            ELSE
                UPDATE conversations SET member_count = member_count - 1
                WHERE id = OLD.conversation_id;
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER memberships_counted AFTER INSERT OR DELETE ON memberships
            FOR EACH ROW EXECUTE FUNCTION memberships_count();
        CREATE TABLE direct_pairs(
            user_a {_T} NOT NULL,
            user_b {_T} NOT NULL,
            conversation_id {_T} NOT NULL UNIQUE REFERENCES conversations(id) ON DELETE CASCADE,
            PRIMARY KEY (user_a, user_b),
            CHECK (user_a < user_b)
        );
        CREATE TABLE webhook_messages(
            id {_T} PRIMARY KEY,
            received_at BIGINT NOT NULL
        );
        CREATE INDEX webhook_messages_received ON webhook_messages(received_at);
        CREATE TABLE media(
            id {_T} PRIMARY KEY,
            owner_id {_T} NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            sha256 {_T} NOT NULL,
            content_type {_T} NOT NULL,
            size BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            filename {_T}
        );
        CREATE INDEX media_owner ON media(owner_id);
        CREATE INDEX media_sha256 ON media(sha256);
        CREATE INDEX media_created ON media(created_at);
        CREATE TABLE media_refs(
            media_id {_T} NOT NULL REFERENCES media(id) ON DELETE CASCADE,
            conversation_id {_T} NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            PRIMARY KEY (media_id, conversation_id)
        );
        CREATE INDEX media_refs_conversation ON media_refs(conversation_id);
        CREATE TABLE push_tokens(
            token {_T} PRIMARY KEY,
            user_id {_T} NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            platform {_T},
            created_at BIGINT NOT NULL
        );
        CREATE INDEX push_tokens_user ON push_tokens(user_id);
        CREATE TABLE push_tickets(
            id {_T} PRIMARY KEY,
            token {_T} NOT NULL,
            created_at BIGINT NOT NULL
        );
        CREATE INDEX push_tickets_created ON push_tickets(created_at);
        CREATE TABLE ai_spent(
            user_id {_T} PRIMARY KEY,
            day INTEGER NOT NULL,
            tokens BIGINT NOT NULL
        );
        """
    )
    # `general`, which every user joins (as the SQLite migration `_people_v1_1` makes it).
    conn.execute(
        "INSERT INTO conversations(id, kind, title, creator_id, created_at, auto_join)"
        " VALUES (?, 'channel', ?, NULL, ?, 1)",
        (new_id("c_"), GENERAL_TITLE, now_ms()),
    )


MIGRATIONS: list[PgMigration] = [_v1]
