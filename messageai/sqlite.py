"""Opening APSW connections the one way MessageAI uses them, and schema migrations.

Called by the directory service and by conversation actors when they open their files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import apsw
import apsw.bestpractice

apsw.bestpractice.apply(apsw.bestpractice.recommended)

Migration = Callable[[apsw.Connection], None]


def open_db(path: Path, synchronous: str, *, create: bool = True) -> apsw.Connection:
    """Open (or create) a database in WAL mode with the given `synchronous` level."""
    flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    conn = apsw.Connection(str(path), flags=flags)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def migrate(conn: apsw.Connection, migrations: Sequence[Migration]) -> None:
    """Bring the schema to len(migrations) via `PRAGMA user_version`, one transaction each."""
    version = conn.execute("PRAGMA user_version").get
    assert isinstance(version, int)
    if version > len(migrations):
        raise RuntimeError(
            f"database schema version {version} is newer than this MessageAI knows "
            f"({len(migrations)})"
        )
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
