"""The directory service: the one owner of the central database (`directory.sqlite3`,
or PostgreSQL when `[directory] url` names one: docs/SCALE.md, section 8).

Reads run inline on the event loop on a read connection (WAL lets them proceed
while a write commits); writes run one at a time on the directory's own
one-thread `WorkerPool` on a write connection, so an fsync never stalls the loop
(`messageai.threads` states the policy). In PostgreSQL mode a read is a network
round trip: `fetch` runs it on a pool of `directory.read_threads` threads (one
connection each) and the directory's own async methods read that way; the sync
reads (`read`, `user`, `conversation`, `member_ids`, ...) still run on the loop, on
a connection of their own, for the callers that cannot await yet (the README's
"Scaling out" lists them). Writes are SERIALIZABLE transactions, retried on a
serialization failure (`messageai.postgres.run_transaction`). Called by REST handlers, the WebSocket
handshake, the registry (conversation records and members), the media and push
services (their SQL is in `store/media.py`, `store/push.py`) and the CLI.
`Directory.run` is the housekeeping task (expired tokens), started by the server
in its actor nursery.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar, cast

import apsw
import attrs
import trio

from messageai import passwords
from messageai.config import Config, ConfigError, DirectoryConfig, read_secret
from messageai.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    StartupError,
    Unauthorized,
    Unavailable,
)
from messageai.model import ClerkProfile, ConversationRecord, User, new_id, now_ms
from messageai.services.login_throttle import LoginThrottle
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import clerk as clerk_sql
from messageai.store import directory as sql
from messageai.store.db import Db
from messageai.threads import WorkerPool, hashing, hashing_admitted

if TYPE_CHECKING:
    from messageai.postgres import PgConnection

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

DIRECTORY_FILE = "directory.sqlite3"
USER_SEARCH_LIMIT = 20
# `GET /v1/users` without `q`: one page of the user list, by username.
USER_PAGE_LIMIT = 100
# `GET /v1/channels`: PROTOCOL.md's "≤ 50".
CHANNEL_LIST_LIMIT = 50
# Group and channel titles, and topics, in characters after trimming.
MAX_TITLE_CHARS = 200
MAX_TOPIC_CHARS = 500
# A login name longer than any username (32) is refused before the throttle counts it,
# so junk names cannot fill the throttle's memory with long keys.
MAX_LOGIN_NAME_CHARS = 64
# Svix retries one message for about a day and a half; its id is remembered for
# longer than that, and the table is capped so a flood cannot grow it without end.
WEBHOOK_IDS_KEEP_MS = 3 * 86400 * 1000
WEBHOOK_IDS_MAX = 100_000
# Expired tokens deleted per write transaction, and transactions per housekeeping
# pass: each transaction stays short (other writes queue behind it), a pass bounded.
TOKEN_PURGE_BATCH = 1000
TOKEN_PURGE_BATCHES_PER_PASS = 10


def open_directory_db(data_dir: Path, synchronous: str) -> apsw.Connection:
    """Open the directory database, creating and migrating it if needed (blocking).
    Raises StartupError naming `data_dir` when it is not (and cannot be) a directory."""
    make_data_dir(data_dir)
    conn = open_db(data_dir / DIRECTORY_FILE, synchronous)
    # Foreign keys off while migrating, as SQLite's recipe for rebuilding a table says
    # (the pragma is a no-op inside a transaction, so it is set around them): dropping
    # the old `conversations` would otherwise cascade into memberships. The rebuilding
    # step checks the keys itself before its commit.
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        migrate(conn, sql.MIGRATIONS)
    finally:
        conn.execute("PRAGMA foreign_keys = ON")
    return conn


def directory_password(config: DirectoryConfig) -> str | None:
    """The PostgreSQL password from `password_file` or `password_env` (None: neither,
    libpq finds its own). StartupError names the key, never the secret."""
    try:
        return read_secret(
            "directory", "password_file", config.password_file, "password_env", config.password_env
        )
    except ConfigError as exc:
        raise StartupError(str(exc)) from None


def open_postgres_directory(config: DirectoryConfig, *, serializable: bool) -> PgConnection:
    """A connection to the PostgreSQL directory (blocking), its schema made or migrated
    first. StartupError when it cannot be reached."""
    from messageai import postgres
    from messageai.store import directory_pg

    try:
        conn = postgres.PgConnection(
            config.url, directory_password(config), serializable=serializable
        )
    except Unavailable as exc:
        raise StartupError(f"directory.url: {exc.message}") from None
    try:
        postgres.migrate(conn, directory_pg.MIGRATIONS)
    except BaseException:
        conn.close()
        raise
    return conn


def check_title(value: object, kind: str) -> str:
    """A group's or channel's title: 1 to MAX_TITLE_CHARS characters after trimming,
    without control characters; returned trimmed. BadRequest otherwise."""
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= MAX_TITLE_CHARS:
        raise BadRequest(f"title: a {kind} needs a title of 1 to {MAX_TITLE_CHARS} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value.strip()):
        raise BadRequest("title: must not contain control characters")
    return value.strip()


def check_topic(value: object) -> str | None:
    """A topic: null, or a string of at most MAX_TOPIC_CHARS characters after trimming
    (empty after trimming is no topic: None). Line breaks are allowed, other control
    characters are not."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("topic: must be a string or null")
    topic = value.strip()
    if len(topic) > MAX_TOPIC_CHARS:
        raise BadRequest(f"topic: at most {MAX_TOPIC_CHARS} characters")
    if any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 for c in topic):
        raise BadRequest("topic: must not contain control characters other than line breaks")
    return topic or None


@attrs.frozen
class ConversationChanges:
    """A checked `PATCH /v1/conversations/{id}` body: what to set, and to what."""

    set_title: bool
    title: str | None
    set_topic: bool
    topic: str | None


def check_conversation_changes(body: dict[str, object]) -> ConversationChanges:
    """The body's `title` and `topic` checked as at creation; BadRequest when it names
    neither or one is bad. Checked before the conversation is looked up."""
    set_title, set_topic = "title" in body, "topic" in body
    if not set_title and not set_topic:
        raise BadRequest("name title or topic (or both)")
    return ConversationChanges(
        set_title=set_title,
        title=check_title(body["title"], "conversation") if set_title else None,
        set_topic=set_topic,
        topic=check_topic(body["topic"]) if set_topic else None,
    )


def make_data_dir(data_dir: Path) -> None:
    """Create `storage.data_dir` if needed; StartupError, naming the path, when the
    path cannot be a directory (a bare OSError says only `[Errno 17] File exists`)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise StartupError(f"storage.data_dir: {data_dir} is not a directory") from exc
    except NotADirectoryError as exc:
        raise StartupError(
            f"storage.data_dir: {data_dir} cannot be made: a file stands where a parent"
            " directory of it should be"
        ) from exc
    except OSError as exc:
        raise StartupError(f"storage.data_dir: cannot create {data_dir}: {exc.strerror}") from exc


class Directory:
    """Users, tokens, conversations and memberships, behind async methods."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._pg = config.directory.postgres
        # PostgreSQL mode: the read pool's connections, one per thread, made on first use.
        self._thread_conn = threading.local()
        self._thread_conns: list[PgConnection] = []
        self._thread_conns_lock = threading.Lock()
        self._reads: WorkerPool | None = None
        self._writer: Db
        self._reader: Db
        if self._pg:
            make_data_dir(config.data_dir)  # the conversations' files stay on disk
            self._writer = open_postgres_directory(config.directory, serializable=True)
            try:
                self._reader = self._connect()
            except BaseException:
                self._writer.close()
                raise
            self._reads = WorkerPool(config.directory.read_threads, name="messageai directory read")
        else:
            self._writer = open_directory_db(config.data_dir, config.storage.synchronous)
            self._reader = open_db(config.data_dir / DIRECTORY_FILE, config.storage.synchronous)
        auth = config.auth
        self._throttle = LoginThrottle(
            per_account=auth.login_failures_per_account,
            per_address=auth.login_failures_per_address,
            lockout_seconds=auth.login_lockout_seconds,
            lockout_max_seconds=auth.login_lockout_max_seconds,
            max_entries=auth.login_throttle_entries,
        )
        # One thread: it runs the writes one at a time, in the order they were asked.
        self._commits = WorkerPool(1, name="messageai directory")
        # Set by the server to the registry's `members_changed`: a live actor learns
        # of members the directory added on its own (a new user joining `general`).
        self.on_members_added: Callable[[str, tuple[str, ...]], Awaitable[None]] | None = None

    def _connect(self) -> PgConnection:
        from messageai import postgres

        password = directory_password(self._config.directory)
        return postgres.PgConnection(self._config.directory.url, password, serializable=False)

    def close(self) -> None:
        """Close the connections and stop the threads. Call when no read or write can be
        running or waiting (the server: after its actors' nursery has exited)."""
        self._commits.close()
        if self._reads is not None:
            self._reads.close()
        for conn in self._thread_conns:
            conn.close()
        self._thread_conns.clear()
        self._reader.close()
        self._writer.close()

    def read(self, fn: Callable[Concatenate[Db, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(conn, *args)` inline on the read connection: short indexed reads only.
        For the media and push services, whose SQL lives in their own store modules.
        In PostgreSQL mode this blocks the loop for a round trip: use `fetch` where the
        caller can await."""
        if self._pg:
            from messageai import postgres

            return postgres.read(cast("PgConnection", self._reader), fn, *args, **kwargs)
        return fn(self._reader, *args, **kwargs)

    async def fetch(
        self, fn: Callable[Concatenate[Db, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`read`, off the loop where a read is a round trip: inline in SQLite (measured
        faster than a thread hop: `messageai.threads`), on the read pool in PostgreSQL
        mode. Cancellation while queued withdraws the read; a started one is waited for."""
        if self._reads is None:
            return fn(self._reader, *args, **kwargs)

        def run() -> T:
            from messageai import postgres

            return postgres.read(self._pool_conn(), fn, *args, **kwargs)

        return await self._reads.run(run)

    def _pool_conn(self) -> PgConnection:
        """The calling read thread's own connection, made on its first read."""
        conn: PgConnection | None = getattr(self._thread_conn, "conn", None)
        if conn is None:
            conn = self._connect()
            self._thread_conn.conn = conn
            with self._thread_conns_lock:
                self._thread_conns.append(conn)
        return conn

    async def write(
        self, fn: Callable[Concatenate[Db, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, *args)` in one write transaction on the write thread, one write
        at a time. Cancellation while queued withdraws the write; a write that has
        started is waited for, and its result or error returned (never abandoned). In
        PostgreSQL mode `fn` may run more than once (a serialization failure is retried),
        so it must have no effect outside the transaction."""

        def run() -> T:
            if self._pg:
                from messageai import postgres

                writer = cast("PgConnection", self._writer)
                return postgres.run_transaction(writer, fn, *args, **kwargs)
            assert isinstance(self._writer, apsw.Connection)
            with transaction(self._writer):
                return fn(self._writer, *args, **kwargs)

        return await self._commits.run(run)

    # ------------------------------------------------------------ housekeeping

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The housekeeping task: every `auth.token_purge_interval_seconds`, delete
        expired tokens (at most TOKEN_PURGE_BATCH x TOKEN_PURGE_BATCHES_PER_PASS a
        pass). A failed pass is logged and retried next interval; cancellation
        (shutdown) ends it between transactions."""
        task_status.started()
        while True:
            try:
                await self.purge_expired_tokens()
            except Exception:
                # Supervision: expired tokens are already refused; the next pass retries.
                log.exception("directory housekeeping failed; retrying in the next interval")
            await trio.sleep(self._config.auth.token_purge_interval_seconds)

    async def purge_expired_tokens(self) -> int:
        """Delete tokens past their expiry, in short transactions; return how many."""
        total = 0
        for _ in range(TOKEN_PURGE_BATCHES_PER_PASS):
            deleted = await self.write(sql.delete_expired_tokens, now_ms(), TOKEN_PURGE_BATCH)
            total += deleted
            if deleted < TOKEN_PURGE_BATCH:
                break
        return total

    # ------------------------------------------------------------ accounts

    async def register(
        self, username: object, password: object, display_name: object
    ) -> tuple[User, str]:
        self._check_local_accounts()
        if not self._config.auth.allow_registration:
            raise Forbidden("registration is closed on this server")
        # Everything is checked before the costly hash (create_local_user checks the
        # names again, cheaply, as the one definition of a local user).
        name = passwords.check_username(username)
        secret = passwords.check_password(password)
        passwords.check_display_name(display_name, name)
        if await self.fetch(sql.user_and_hash_by_name, name) is not None:
            raise Conflict(f"username {name!r} is taken")
        password_hash = await hashing(passwords.hash_password, secret, self._config.auth.scrypt_n)
        token = passwords.new_token()

        def insert(conn: Db) -> User | None:
            user = sql.create_local_user(conn, name, display_name, password_hash)
            if user is not None:
                self._insert_token(conn, token, user.id)
            return user

        user = await self.write(insert)
        if user is None:
            raise Conflict(f"username {name!r} is taken")
        await self.joined_auto_channels(user.id)
        return user, token

    async def bot_user(self, username: str, display_name: str) -> User:
        """The assistant's user, made on first use (`store.directory.bot_user`)."""
        return await self.write(sql.bot_user, username, display_name, now_ms())

    async def joined_auto_channels(self, user_id: str) -> None:
        """Tell the live actors of the `auto_join` channels (`general`) that the user is
        a member: made just now (`store.directory.insert_user` joined them in its
        transaction), or signing in after `messageai user add` made them in another
        process, which no actor heard of. Only where the directory says they are a
        member (one who left stays out). A busy actor that does not answer in time
        still applies it when it gets to it, so the timeout is logged, not raised."""
        if self.on_members_added is None:
            return
        for conversation_id in await self.fetch(sql.auto_join_ids):
            if not await self.fetch(sql.is_member, conversation_id, user_id):
                continue
            try:
                await self.on_members_added(conversation_id, (user_id,))
            except Unavailable:
                log.warning("conversation %s: slow to learn of a new member", conversation_id)

    def _insert_token(self, conn: Db, token: str, user_id: str) -> None:
        now = now_ms()
        ttl_ms = self._config.auth.token_ttl_seconds * 1000
        sql.insert_token(conn, passwords.token_hash(token), user_id, now, now + ttl_ms)

    async def login(
        self, username: object, password: object, address: str | None = None
    ) -> tuple[User, str]:
        """A new session token for a right username and password, else Unauthorized.

        Every evaluated attempt costs one scrypt, for unknown names too (against
        `passwords.dummy_hash`), so the time taken does not say whether a name exists.
        Failures are throttled per username and per client `address` (see
        `services.login_throttle`): a locked attempt is RateLimited before any hashing.
        """
        self._check_local_accounts()
        failure = Unauthorized("wrong username or password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise BadRequest("username and password must be strings")
        if len(username) > MAX_LOGIN_NAME_CHARS or len(password) > passwords.MAX_PASSWORD_CHARS:
            raise failure
        self._throttle.check(username, address)
        found = await self.fetch(sql.user_and_hash_by_name, username)
        user, stored = found if found is not None else (None, None)
        # Checked again once a hashing turn is free: attempts that queued behind the
        # failures that caused a lockout must not slip past it.
        ok = await hashing_admitted(
            lambda: self._throttle.check(username, address), self._verify, password, stored
        )
        if not ok or user is None:
            self._throttle.failed(username, address)
            raise failure
        self._throttle.succeeded(username)
        if await self.fetch(sql.is_disabled, user.id):
            raise Forbidden("this account is disabled: ask the server's operator")
        token = passwords.new_token()
        await self.write(self._insert_token, token, user.id)
        # A user made by `messageai user add` beside the running server joined
        # `general` in that process: a live actor of it learns of them here, before
        # their first request (a no-op for a member it knows).
        await self.joined_auto_channels(user.id)
        return user, token

    def _verify(self, password: str, stored: str | None) -> bool:
        """Blocking: one scrypt either way (the dummy's when there is no stored hash)."""
        if stored is None:
            passwords.verify_password(password, passwords.dummy_hash(self._config.auth.scrypt_n))
            return False
        return passwords.verify_password(password, stored)

    async def logout(self, token: str) -> None:
        await self.write(sql.delete_token, passwords.token_hash(token))

    def _check_local_accounts(self) -> None:
        if self._config.auth.mode != "local":
            raise Forbidden("local accounts are off on this server: sign in with Clerk")

    def token_valid(self, token_hash: bytes) -> bool:
        """Whether a session token (by its hash) is still good: not revoked, expired,
        or its user disabled. Inline read: each WebSocket asks at its keepalive."""
        return self.read(sql.user_by_token, token_hash, now_ms()) is not None

    async def lookup_token(self, token: str) -> User | None:
        """`user_for_token` for callers that can await: off the loop in PostgreSQL mode
        (the authenticator: every REST request and WebSocket handshake)."""
        return await self.fetch(sql.user_by_token, passwords.token_hash(token), now_ms())

    def user_for_token(self, token: str) -> User | None:
        """The token's user, or None when it is unknown, revoked or expired. Inline read."""
        return self.read(sql.user_by_token, passwords.token_hash(token), now_ms())

    def user(self, user_id: str) -> User | None:
        return self.read(sql.user_by_id, user_id)

    async def lookup_user(self, user_id: str) -> User | None:
        """`user`, off the loop in PostgreSQL mode."""
        return await self.fetch(sql.user_by_id, user_id)

    async def search_users(self, prefix: str) -> list[User]:
        return await self.fetch(sql.search_users, prefix, USER_SEARCH_LIMIT)

    async def users_after(self, after: str) -> list[User]:
        """A page of USER_PAGE_LIMIT users by username, after `after` ("" first)."""
        return await self.fetch(sql.users_after, after, USER_PAGE_LIMIT)

    async def set_display_name(self, user_id: str, display_name: object) -> User:
        """`PATCH /v1/me`: the registration rules for display names (1 to 64 characters
        after trimming). In Clerk mode too: Clerk's next `user.updated` sets it again."""
        if not isinstance(display_name, str):
            raise BadRequest("display_name: must be a string")
        shown = passwords.check_display_name(display_name, "")
        if not shown:
            raise BadRequest("display_name: must not be empty")
        user = await self.write(sql.set_display_name, user_id, shown)
        if user is None:
            raise NotFound("no such user")
        return user

    async def change_password(
        self, user_id: str, old: object, new: object, keep_token: str
    ) -> list[bytes]:
        """`POST /v1/me/password`: check `old` (Forbidden when wrong: the caller stays
        signed in), store `new` (registration's rules) and revoke every other token of
        the user; the hashes of the tokens revoked. Local mode only (Clerk keeps the
        passwords there). One scrypt to check, one to hash, both in the hashing pool;
        wrong attempts count in the login throttle against the username."""
        self._check_local_accounts()
        if not isinstance(old, str) or not isinstance(new, str):
            raise BadRequest("old_password and new_password must be strings")
        try:
            secret = passwords.check_password(new)
        except BadRequest as exc:
            raise BadRequest(f"new_{exc.message}") from None
        user = await self.fetch(sql.user_by_id, user_id)
        if user is None:
            raise NotFound("no such user")
        self._throttle.check(user.username, None)
        stored = await self.fetch(sql.password_hash_of, user_id)
        ok = len(old) <= passwords.MAX_PASSWORD_CHARS and await hashing_admitted(
            lambda: self._throttle.check(user.username, None), self._verify, old, stored
        )
        if not ok:
            self._throttle.failed(user.username, None)
            raise Forbidden("old_password: that is not your current password")
        new_hash = await hashing(passwords.hash_password, secret, self._config.auth.scrypt_n)
        return await self.write(
            sql.set_password, user_id, new_hash, passwords.token_hash(keep_token)
        )

    # ------------------------------------------------------------ Clerk identities

    def clerk_user(self, user_id: str) -> tuple[User, bool] | None:
        """(user, deleted) for a Clerk user id, or None when unknown. Inline read."""
        return self.read(clerk_sql.user_state, user_id)

    async def lookup_clerk_user(self, user_id: str) -> tuple[User, bool] | None:
        """`clerk_user`, off the loop in PostgreSQL mode (every Clerk-authenticated request)."""
        return await self.fetch(clerk_sql.user_state, user_id)

    async def adopt_clerk_user(self, profile: ClerkProfile) -> tuple[User, bool]:
        """Create the user on their first valid token; (user, deleted) as stored."""

        def adopt(conn: Db) -> tuple[tuple[User, bool], bool]:
            created = clerk_sql.user_state(conn, profile.id) is None
            return clerk_sql.insert_if_absent(conn, profile), created

        found, created = await self.write(adopt)
        if created:
            await self.joined_auto_channels(profile.id)
        return found

    async def apply_clerk_event(
        self, message_id: str, profile: ClerkProfile | None, deleted_id: str | None
    ) -> bool:
        """Apply one verified webhook message (an upsert of `profile`, or the deletion
        of `deleted_id`) and record its id in the same transaction; False when the id
        was seen before, and then nothing changes."""
        now = now_ms()

        created: list[str] = []

        def apply(conn: Db) -> bool:
            created.clear()  # PostgreSQL may run it again (a serialization failure)
            if not clerk_sql.claim_webhook_message(
                conn, message_id, now, WEBHOOK_IDS_KEEP_MS, WEBHOOK_IDS_MAX
            ):
                return False
            if profile is not None:
                if clerk_sql.user_state(conn, profile.id) is None:
                    created.append(profile.id)
                clerk_sql.upsert(conn, profile)
            if deleted_id is not None:
                clerk_sql.mark_deleted(conn, deleted_id, now)
            return True

        applied = await self.write(apply)
        for user_id in created:
            await self.joined_auto_channels(user_id)
        return applied

    # ------------------------------------------------------------ conversations

    def conversation(self, conversation_id: str) -> ConversationRecord | None:
        return self.read(sql.conversation, conversation_id)

    async def conversations_of(self, user_id: str) -> list[ConversationRecord]:
        """The records of the user's conversations, by id, in one read off the loop."""
        return await self.fetch(sql.conversations_of, user_id)

    async def conversation_for_member(
        self, conversation_id: str, user_id: str
    ) -> tuple[ConversationRecord | None, bool]:
        """(record or None, whether `user_id` is a member), in one read off the loop."""
        return await self.fetch(sql.conversation_for_member, conversation_id, user_id)

    async def members(self, conversation_id: str) -> list[str]:
        """`member_ids`, off the loop in PostgreSQL mode."""
        return await self.fetch(sql.member_ids, conversation_id)

    def member_ids(self, conversation_id: str) -> list[str]:
        return self.read(sql.member_ids, conversation_id)

    def members_joined_at(self, conversation_id: str) -> dict[str, int]:
        return self.read(sql.members_joined_at, conversation_id)

    def is_member(self, conversation_id: str, user_id: str) -> bool:
        """One primary-key lookup, whatever the group's size."""
        return self.read(sql.is_member, conversation_id, user_id)

    def conversation_ids_of(self, user_id: str) -> list[str]:
        return self.read(sql.conversation_ids_of, user_id)

    async def _check_users_exist(self, user_ids: list[str]) -> None:
        missing = set(user_ids) - await self.fetch(sql.existing_user_ids, user_ids)
        if missing:
            raise BadRequest(f"unknown user: {sorted(missing)[0]}")

    async def open_direct(self, caller: str, other: str) -> tuple[ConversationRecord, bool]:
        """The direct conversation of two users, created if needed; True when created."""
        if other == caller:
            # Said for people (the CLI's `messageai new` shows it as is), not for the body.
            raise BadRequest("you cannot open a direct conversation with yourself")
        await self._check_users_exist([other])
        record = ConversationRecord(
            id=new_id("c_"),
            kind="direct",
            title=None,
            creator_id=caller,
            created_at=now_ms(),
        )

        def create(conn: Db) -> tuple[ConversationRecord, bool]:
            # Check and insert in one transaction: two racing requests get one conversation.
            existing = sql.direct_conversation_id(conn, caller, other)
            if existing is not None:
                found = sql.conversation(conn, existing)
                assert found is not None
                return found, False
            sql.insert_conversation(conn, record, [caller, other], record.created_at)
            sql.insert_direct_pair(conn, caller, other, record.id)
            return record, True

        return await self.write(create)

    async def create_group(
        self, caller: str, title: str, member_ids: list[str], topic: str | None = None
    ) -> ConversationRecord:
        members = list(dict.fromkeys([caller, *member_ids]))
        if len(members) > self._config.limits.max_group_members:
            raise BadRequest(f"member_ids: at most {self._config.limits.max_group_members} members")
        await self._check_users_exist(members)
        record = ConversationRecord(
            id=new_id("c_"),
            kind="group",
            title=title,
            creator_id=caller,
            created_at=now_ms(),
            topic=topic,
        )
        await self.write(sql.insert_conversation, record, members, record.created_at)
        return record

    async def create_channel(
        self, caller: str, title: str, topic: str | None
    ) -> ConversationRecord:
        """A new channel with its creator as the one member. Conflict when a channel
        has that title already (ASCII case ignored): people join channels by name."""
        record = ConversationRecord(
            id=new_id("c_"),
            kind="channel",
            title=title,
            creator_id=caller,
            created_at=now_ms(),
            topic=topic,
        )

        def create(conn: Db) -> None:
            if sql.channel_title_taken(conn, title):
                raise Conflict(f"title: there is a channel {title!r} already")
            sql.insert_conversation(conn, record, [caller], record.created_at)

        await self.write(create)
        return record

    async def channels(self, prefix: str) -> list[tuple[ConversationRecord, int]]:
        """Channels by title prefix, most members first, at most CHANNEL_LIST_LIMIT."""
        return await self.fetch(sql.channels, prefix, CHANNEL_LIST_LIMIT)

    async def lookup_conversation(self, conversation_id: str) -> ConversationRecord | None:
        """`conversation`, off the loop in PostgreSQL mode."""
        return await self.fetch(sql.conversation, conversation_id)

    async def lookup_member(self, conversation_id: str, user_id: str) -> bool:
        """`is_member`, off the loop in PostgreSQL mode."""
        return await self.fetch(sql.is_member, conversation_id, user_id)

    async def conversation_ids(self, user_id: str) -> list[str]:
        """`conversation_ids_of`, off the loop in PostgreSQL mode."""
        return await self.fetch(sql.conversation_ids_of, user_id)

    def member_count(self, conversation_id: str) -> int:
        return self.read(sql.member_count, conversation_id)

    async def join(self, conversation_id: str, user_id: str) -> bool:
        """Make `user_id` a member of a channel; False when they were one already.
        Channels have no member cap (`general` holds every user)."""

        def join(conn: Db) -> bool:
            if sql.is_member(conn, conversation_id, user_id):
                return False
            sql.add_members(conn, conversation_id, [user_id], now_ms())
            return True

        return await self.write(join)

    async def update_conversation(
        self, record: ConversationRecord, changes: ConversationChanges
    ) -> tuple[ConversationRecord, bool]:
        """`PATCH /v1/conversations/{id}`: apply checked `changes`; the record now and
        whether anything changed. A channel's new title must be free (Conflict)."""
        conversation_id, kind = record.id, record.kind
        set_title, set_topic = changes.set_title, changes.set_topic
        title, topic = changes.title, changes.topic

        def update(conn: Db) -> tuple[ConversationRecord, bool]:
            before = sql.conversation(conn, conversation_id)
            if before is None:
                raise NotFound("no such conversation")
            same_title = not set_title or before.title == title
            same_topic = not set_topic or before.topic == topic
            if same_title and same_topic:
                return before, False
            if (
                set_title
                and kind == "channel"
                and title is not None
                and sql.channel_title_taken(conn, title, except_id=conversation_id)
            ):
                raise Conflict(f"title: there is a channel {title!r} already")
            after = sql.update_conversation(
                conn,
                conversation_id,
                title,
                topic,
                set_title=set_title and not same_title,
                set_topic=set_topic and not same_topic,
            )
            assert after is not None
            return after, True

        return await self.write(update)

    async def add_members(
        self, conversation_id: str, user_ids: list[str], *, channel: bool = False
    ) -> None:
        """Add members; a group holds at most `limits.max_group_members`, a channel any
        number (it is open to everyone anyway)."""
        await self._check_users_exist(user_ids)
        limit = self._config.limits.max_group_members

        def add(conn: Db) -> None:
            if not channel:
                current = set(sql.member_ids(conn, conversation_id))
                if len(current | set(user_ids)) > limit:
                    raise BadRequest(f"user_ids: a group has at most {limit} members")
            sql.add_members(conn, conversation_id, user_ids, now_ms())

        await self.write(add)

    async def remove_member(self, conversation_id: str, user_id: str) -> None:
        if not await self.write(sql.remove_member, conversation_id, user_id):
            raise NotFound("that user is not a member")
