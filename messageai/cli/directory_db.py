"""The CLI's way into the directory, in either mode: `directory.sqlite3` in the data
directory, or the PostgreSQL that `[directory] url` names (docs/SCALE.md, section 8).

`user add|list|disable|enable|reset-password`, `token revoke` and `conversation
list|show|retention` run the same `store/` functions on either (`open_directory`).
The commands that work on `directory.sqlite3` as a file (`backup`, `restore`,
`check`, `conversation export|import`, and `user delete` / `conversation
delete|restore` without a running server) refuse in PostgreSQL mode, saying what
to use instead (`refuse_in_postgres`). Called by `cli.__init__`, `cli.admin`,
`cli.ops`, `cli.live`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from messageai.config import Config
from messageai.errors import MessageAIError
from messageai.services.directory import (
    DIRECTORY_FILE,
    open_directory_db,
    open_postgres_directory,
)
from messageai.store.db import Db

# What to use instead, for each command that refuses in PostgreSQL mode.
INSTEAD = {
    "backup": (
        "back the directory up with PostgreSQL's own tools (pg_dump, or a standby),"
        " and the data directory's conversation files with the server stopped"
    ),
    "restore": "restore the directory with PostgreSQL's tools (pg_restore, psql)",
    "check": "check the directory with PostgreSQL's tools (pg_amcheck)",
    "conversation export": "not available yet with the directory in PostgreSQL",
    "conversation import": "not available yet with the directory in PostgreSQL",
    "offline": (
        "start the server (the command then goes to it over the admin channel and the"
        " server does the work)"
    ),
}


def where(config: Config) -> str:
    """Where the directory is, for messages (never the password: it is not in the URL)."""
    if config.directory.postgres:
        return f"the PostgreSQL directory {config.directory.url}"
    return str(config.data_dir.resolve())


def has_directory(config: Config) -> bool:
    """Whether there is a directory to read (PostgreSQL: it is made on first use)."""
    return config.directory.postgres or (config.data_dir / DIRECTORY_FILE).is_file()


@contextlib.contextmanager
def open_directory(config: Config, *, create: bool) -> Iterator[Db]:
    """A directory connection, migrated, closed at the end of the block. Without
    `create`, a missing `directory.sqlite3` is an error (a mistyped path is reported,
    not made). StartupError when PostgreSQL cannot be reached."""
    conn: Db
    if config.directory.postgres:
        conn = open_postgres_directory(config.directory, serializable=True)
    else:
        if not create and not has_directory(config):
            raise MessageAIError(f"no directory database in {config.data_dir.resolve()}")
        conn = open_directory_db(config.data_dir, config.storage.synchronous)
    try:
        yield conn
    finally:
        conn.close()


def refuse_in_postgres(config: Config, command: str) -> None:
    """MessageAIError when the directory is in PostgreSQL: `command` works on
    `directory.sqlite3` itself."""
    if config.directory.postgres:
        instead = INSTEAD["offline" if command not in INSTEAD else command]
        raise MessageAIError(
            f"`messageai {command}` works on {DIRECTORY_FILE}, and this server's directory"
            f" is in PostgreSQL ([directory] url): {instead}"
        )
