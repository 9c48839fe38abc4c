"""The operator's account commands, beside a running server or without one:
`user disable|enable NAME`, `user reset-password NAME`, `token revoke NAME`, and
`user delete NAME` (through `cli.live`). Parsed in
`cli.__init__` (with `user add|list`), run by `cli.main`. They write the directory
database; the running server sees it at once for REST (every request reads the
token), and each open WebSocket of the user closes (1008) at its next keepalive
(`server.ping_interval_seconds`), which re-checks the session.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from messageai import passwords
from messageai.cli.directory_db import open_directory
from messageai.config import Config
from messageai.errors import MessageAIError
from messageai.model import User, now_ms
from messageai.store import directory as sql
from messageai.store.db import Db, transaction

ADMIN_USER_COMMANDS = ("disable", "enable", "reset-password")


def _in_directory(config: Config, work: Callable[[Db], str]) -> int:
    with open_directory(config, create=False) as conn, transaction(conn):
        said = work(conn)
    print(said)
    return 0


def _user(conn: Db, name: str) -> User:
    found = sql.user_and_hash_by_name(conn, name)
    if found is None:
        raise MessageAIError(f"no user named {name!r}")
    return found[0]


def run_user(config: Config, args: argparse.Namespace, password: Callable[[], str]) -> int:
    """`user disable|enable|reset-password NAME`; `password()` reads the new one."""
    command = args.user_command
    if command == "reset-password":
        if config.auth.mode != "local":
            raise MessageAIError('passwords are Clerk\'s with auth.mode = "clerk"')
        new = passwords.check_password(password())
        hashed = passwords.hash_password(new, config.auth.scrypt_n)

        def reset(conn: Db) -> str:
            user = _user(conn, args.name)
            ended = sql.set_password(conn, user.id, hashed, b"")  # keeps no token
            return f"password of {user.username} reset; {len(ended)} sessions signed out"

        return _in_directory(config, reset)

    def switch(conn: Db) -> str:
        user = _user(conn, args.name)
        if command == "disable":
            sql.set_disabled(conn, user.id, now_ms())
            ended = sql.delete_tokens_of(conn, user.id)
            return f"{user.username} disabled; {ended} sessions signed out"
        sql.set_disabled(conn, user.id, None)
        return f"{user.username} enabled"

    return _in_directory(config, switch)


def run_delete(config: Config, args: argparse.Namespace) -> int:
    """`user delete NAME [--erase-messages]` (see `ops.removal`), through `cli.live`."""
    from messageai.cli import live
    from messageai.ops import removal

    return live.run(
        config,
        {"command": "user_delete", "name": args.name, "erase": args.erase_messages},
        lambda: removal.offline_delete_user(
            config.data_dir, config.storage.synchronous, args.name, erase=args.erase_messages
        ),
    )


def run_token(config: Config, args: argparse.Namespace) -> int:
    """`token revoke NAME`: every session of the user ends."""

    def revoke(conn: Db) -> str:
        user = _user(conn, args.name)
        return f"{sql.delete_tokens_of(conn, user.id)} sessions of {user.username} revoked"

    return _in_directory(config, revoke)
