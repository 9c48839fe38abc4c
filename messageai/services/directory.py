"""The directory service: the one owner of the central database (`directory.sqlite3`).

Reads run inline on the event loop on a read connection (WAL lets them proceed
while a write commits); writes run one at a time on the directory's own
one-thread `WorkerPool` on a write connection, so an fsync never stalls the loop
(`messageai.threads` states the policy). Called by REST handlers, the WebSocket
handshake, the registry (conversation records and members), the media and push
services (their SQL is in `store/media.py`, `store/push.py`) and the CLI.
`Directory.run` is the housekeeping task (expired tokens), started by the server
in its actor nursery.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import apsw
import trio

from messageai import passwords
from messageai.config import Config
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
from messageai.threads import WorkerPool, hashing, hashing_admitted

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

DIRECTORY_FILE = "directory.sqlite3"
USER_SEARCH_LIMIT = 20
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

    def close(self) -> None:
        """Close the connections and stop the write thread. Call when no write can be
        running or waiting (the server: after its actors' nursery has exited)."""
        self._commits.close()
        self._reader.close()
        self._writer.close()

    def read(
        self, fn: Callable[Concatenate[apsw.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, *args)` inline on the read connection: short indexed reads only.
        For the media and push services, whose SQL lives in their own store modules."""
        return fn(self._reader, *args, **kwargs)

    async def write(
        self, fn: Callable[Concatenate[apsw.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, *args)` in one write transaction on the write thread, one write
        at a time. Cancellation while queued withdraws the write; a write that has
        started is waited for, and its result or error returned (never abandoned)."""

        def run() -> T:
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
        if sql.user_and_hash_by_name(self._reader, name) is not None:
            raise Conflict(f"username {name!r} is taken")
        password_hash = await hashing(passwords.hash_password, secret, self._config.auth.scrypt_n)
        token = passwords.new_token()

        def insert(conn: apsw.Connection) -> User | None:
            user = sql.create_local_user(conn, name, display_name, password_hash)
            if user is not None:
                self._insert_token(conn, token, user.id)
            return user

        user = await self.write(insert)
        if user is None:
            raise Conflict(f"username {name!r} is taken")
        await self.joined_auto_channels(user.id)
        return user, token

    async def joined_auto_channels(self, user_id: str) -> None:
        """Tell the live actors of the `auto_join` channels (`general`) that a user made
        just now joined them (`store.directory.insert_user` did, in its transaction).
        A busy actor that does not answer in time still applies it when it gets to
        it, so the timeout is logged, not raised: the user exists already."""
        if self.on_members_added is None:
            return
        for conversation_id in sql.auto_join_ids(self._reader):
            try:
                await self.on_members_added(conversation_id, (user_id,))
            except Unavailable:
                log.warning("conversation %s: slow to learn of a new member", conversation_id)

    def _insert_token(self, conn: apsw.Connection, token: str, user_id: str) -> None:
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
        found = sql.user_and_hash_by_name(self._reader, username)
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
        token = passwords.new_token()
        await self.write(self._insert_token, token, user.id)
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

    def user_for_token(self, token: str) -> User | None:
        """The token's user, or None when it is unknown, revoked or expired. Inline read."""
        return sql.user_by_token(self._reader, passwords.token_hash(token), now_ms())

    def user(self, user_id: str) -> User | None:
        return sql.user_by_id(self._reader, user_id)

    def search_users(self, prefix: str) -> list[User]:
        return sql.search_users(self._reader, prefix, USER_SEARCH_LIMIT)

    # ------------------------------------------------------------ Clerk identities

    def clerk_user(self, user_id: str) -> tuple[User, bool] | None:
        """(user, deleted) for a Clerk user id, or None when unknown. Inline read."""
        return clerk_sql.user_state(self._reader, user_id)

    async def adopt_clerk_user(self, profile: ClerkProfile) -> tuple[User, bool]:
        """Create the user on their first valid token; (user, deleted) as stored."""

        def adopt(conn: apsw.Connection) -> tuple[tuple[User, bool], bool]:
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

        def apply(conn: apsw.Connection) -> bool:
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
        return sql.conversation(self._reader, conversation_id)

    def member_ids(self, conversation_id: str) -> list[str]:
        return sql.member_ids(self._reader, conversation_id)

    def is_member(self, conversation_id: str, user_id: str) -> bool:
        """One primary-key lookup, whatever the group's size."""
        return sql.is_member(self._reader, conversation_id, user_id)

    def conversation_ids_of(self, user_id: str) -> list[str]:
        return sql.conversation_ids_of(self._reader, user_id)

    def _check_users_exist(self, user_ids: list[str]) -> None:
        missing = set(user_ids) - sql.existing_user_ids(self._reader, user_ids)
        if missing:
            raise BadRequest(f"unknown user: {sorted(missing)[0]}")

    async def open_direct(self, caller: str, other: str) -> tuple[ConversationRecord, bool]:
        """The direct conversation of two users, created if needed; True when created."""
        if other == caller:
            # Said for people (the CLI's `messageai new` shows it as is), not for the body.
            raise BadRequest("you cannot open a direct conversation with yourself")
        self._check_users_exist([other])
        record = ConversationRecord(
            id=new_id("c_"),
            kind="direct",
            title=None,
            creator_id=caller,
            created_at=now_ms(),
        )

        def create(conn: apsw.Connection) -> tuple[ConversationRecord, bool]:
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
        self, caller: str, title: str, member_ids: list[str]
    ) -> ConversationRecord:
        members = list(dict.fromkeys([caller, *member_ids]))
        if len(members) > self._config.limits.max_group_members:
            raise BadRequest(f"member_ids: at most {self._config.limits.max_group_members} members")
        self._check_users_exist(members)
        record = ConversationRecord(
            id=new_id("c_"),
            kind="group",
            title=title,
            creator_id=caller,
            created_at=now_ms(),
        )
        await self.write(sql.insert_conversation, record, members, record.created_at)
        return record

    async def add_members(self, conversation_id: str, user_ids: list[str]) -> None:
        self._check_users_exist(user_ids)
        limit = self._config.limits.max_group_members

        def add(conn: apsw.Connection) -> None:
            current = set(sql.member_ids(conn, conversation_id))
            if len(current | set(user_ids)) > limit:
                raise BadRequest(f"user_ids: a group has at most {limit} members")
            sql.add_members(conn, conversation_id, user_ids, now_ms())

        await self.write(add)

    async def remove_member(self, conversation_id: str, user_id: str) -> None:
        if not await self.write(sql.remove_member, conversation_id, user_id):
            raise NotFound("that user is not a member")
