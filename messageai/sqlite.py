"""Opening APSW connections the one way MessageAI uses them, and schema migrations.

`apply_best_practice` is called at start-up by `cli.main`, `Server.run` and
`client.Client.open`/`login`; `open_db` by the directory service, conversation
actors, push, the client store and the bench when they open their files.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import apsw
import apsw.bestpractice
import apsw.ext

from messageai.errors import StartupError

Migration = Callable[[apsw.Connection], None]


class SchemaTooNew(StartupError):
    """A database written by a newer MessageAI: never migrated, never written."""


_sqlite_log = logging.getLogger("messageai.sqlite")

_best_practice_lock = threading.Lock()
_best_practice_applied = False


# How long a connection waits for another's lock before SQLITE_BUSY. apsw's best
# practice sets 100 ms, which a commit's fsync on a loaded disk outlasts: a search
# reader, a CLI beside the server or a second opener of the jobs file then failed
# where it should have waited its turn. Set before the other hooks run (PRAGMA
# optimize at open takes a lock too).
BUSY_TIMEOUT_MS = 5000


def connection_busy_timeout(connection: apsw.Connection) -> None:
    # Named `connection_…`: apsw.bestpractice.apply runs such hooks on each connection.
    connection.set_busy_timeout(BUSY_TIMEOUT_MS)


def apply_best_practice() -> None:
    """Install `apsw.bestpractice.recommended` for the whole process: every connection
    opened after it gets WAL, a busy timeout (`BUSY_TIMEOUT_MS`), foreign keys, no
    double-quoted string literals, `PRAGMA optimize` and recursive triggers; SQLite's
    log goes to `logging`
    (the `messageai.sqlite` logger, through `_log_sqlite` instead of apsw's own
    `library_logging`, which would also forward the benign SQLITE_SCHEMA).

    Idempotent (apsw's own `apply` would add its hook again on each call). Called at
    start-up so the process-wide change is visible where the process begins, and by
    `open_db`, so that a caller who forgets cannot get a connection without them.
    """
    global _best_practice_applied
    with _best_practice_lock:
        if not _best_practice_applied:
            apsw.bestpractice.apply(
                tuple(
                    connection_busy_timeout
                    if hook is apsw.bestpractice.connection_busy_timeout
                    else hook
                    for hook in apsw.bestpractice.recommended
                    if hook is not apsw.bestpractice.library_logging
                )
            )
            apsw.config(apsw.SQLITE_CONFIG_LOG, _log_sqlite)
            _best_practice_applied = True


def _log_sqlite(code: int, message: str) -> None:
    """SQLite's error log, forwarded to `logging` as apsw's `log_sqlite` does (warnings
    and notices as WARNING, the rest as ERROR), less SQLITE_SCHEMA.

    SQLITE_SCHEMA is logged whenever another connection or process changed the
    schema under a prepared statement (`PRAGMA optimize` writing statistics counts:
    `messageai user add` does it beside a running server); SQLite re-prepares the
    statement and runs it again by itself, and the caller never sees an error. A
    line for it reads like a failure and is not one. Every other error SQLite logs
    is also raised to its caller; this log only adds the statement's context.
    Called from inside SQLite: it must not raise."""
    if code == apsw.SQLITE_SCHEMA:
        return
    primary = code & 0xFF
    level = (
        logging.WARNING if primary in (apsw.SQLITE_WARNING, apsw.SQLITE_NOTICE) else logging.ERROR
    )
    _sqlite_log.log(level, "SQLite: %s (%s)", message, apsw.ext.result_string(code))


def open_db(path: Path, synchronous: str, *, create: bool = True) -> apsw.Connection:
    """Open (or create) a database with the given `synchronous` level.

    WAL mode and the other connection settings come from `apply_best_practice`'s
    connection hook, which this makes sure is installed before it connects.
    """
    apply_best_practice()
    flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    conn = apsw.Connection(str(path), flags=flags)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def check_not_newer(where: str, version: int, known: int) -> None:
    """SchemaTooNew when a database (`where`: a file, or the PostgreSQL directory) is at
    a schema version past the `known` migrations; never migrated then, never written."""
    if version > known:
        raise SchemaTooNew(
            f"{where}: schema version {version} is newer than this MessageAI"
            f" knows ({known}), so it was left untouched: run the MessageAI that"
            " wrote it (or a newer one), or restore a backup made by this one"
        )


def migrate(conn: apsw.Connection, migrations: Sequence[Migration]) -> None:
    """Bring the schema to len(migrations) via `PRAGMA user_version`, one transaction each."""
    version = conn.execute("PRAGMA user_version").get
    assert isinstance(version, int)
    check_not_newer(conn.filename, version, len(migrations))
    for number in range(version, len(migrations)):
        with conn:
            migrations[number](conn)
            conn.execute(f"PRAGMA user_version = {number + 1}")


@contextlib.contextmanager
def transaction(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
