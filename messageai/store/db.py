"""The connection type the directory's `store/` functions take: an APSW connection
(single-node mode, `directory.sqlite3`) or a `messageai.postgres.PgConnection`
(cluster mode), which offer the same three things: `execute` returning rows,
`changes()` and the single-value read (`.get`).

The SQL is one dialect-neutral set wherever the two agree; the few places that
differ ask `postgres(conn)` or use the helpers below. Imported by `store/directory.py`,
`store/clerk.py`, `store/media.py`, `store/push.py`, `ops/removal.py`; it imports
nothing of psycopg.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

import apsw

from messageai import sqlite

if TYPE_CHECKING:
    from messageai.postgres import PgConnection

# No upper bound for `LIMIT ? OFFSET ?` in both dialects (SQLite's `LIMIT -1` and
# PostgreSQL's `LIMIT ALL` are each the other's syntax error).
NO_LIMIT = 2**62


class Rows(Protocol):
    """What `execute` returns: an `apsw.Cursor` or `messageai.postgres.PgRows`."""

    def fetchone(self) -> Any | None: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...

    @property
    def get(self) -> Any: ...


class Db(Protocol):
    """A directory connection (APSW's or `messageai.postgres.PgConnection`)."""

    def execute(self, statements: str, bindings: Any = None, /) -> Rows: ...

    def executemany(self, statements: str, sequenceofbindings: Iterable[Any], /) -> Rows: ...

    def changes(self) -> int: ...

    def close(self) -> None: ...


def postgres(conn: Db) -> bool:
    """Whether `conn` speaks PostgreSQL's dialect (anything but an APSW connection)."""
    return not isinstance(conn, apsw.Connection)


def nocase(conn: Db, column: str) -> str:
    """`column` compared with ASCII case ignored: SQLite's `COLLATE NOCASE`, or
    `lower(column)` in PostgreSQL, where every text column is `COLLATE "C"` (so
    `lower` folds ASCII only, as NOCASE does, and an index on `lower(...)` serves it).
    The value compared against it must be folded by the caller (`fold`)."""
    return f"lower({column})" if postgres(conn) else f"{column} COLLATE NOCASE"


def fold(text: str) -> str:
    """ASCII letters lowered, nothing else: NOCASE's folding, done in Python so both
    dialects compare against the same value."""
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in text)


@contextlib.contextmanager
def transaction(conn: Db) -> Iterator[None]:
    """One write transaction on either connection: SQLite's `BEGIN IMMEDIATE`, or a
    PostgreSQL transaction at the connection's isolation level (no retries: for the
    CLI and tests; the server's writes go through `Directory.write`)."""
    if isinstance(conn, apsw.Connection):
        with sqlite.transaction(conn):
            yield
        return
    from messageai import postgres as pg

    with pg.transaction(cast("PgConnection", conn)):
        yield
