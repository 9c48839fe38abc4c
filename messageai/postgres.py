"""PostgreSQL connections for the directory in cluster mode (`[directory] url`), so that
the same `store/` functions run on psycopg as on APSW (`messageai.store.db.Db`).

psycopg's async API is asyncio-only, so MessageAI uses its synchronous API in worker
threads, one connection per thread (`services.directory` owns them). This module is
imported only when the directory is in PostgreSQL: single-node mode never loads
psycopg. Called by `services/directory.py` and the CLI (`cli/directory_db.py`).

- `PgConnection.execute` rewrites SQLite's `?` and `?N` placeholders to psycopg's `%s`
  once per statement (cached: every statement is ours and static), outside literals,
  and doubles a literal `%`.
- `run_transaction` runs a write at SERIALIZABLE and runs it again (a few times, with
  a short random pause) when PostgreSQL reports a serialization failure or a deadlock:
  the directory's check-then-write functions (a free username, the member cap, the
  media quota, a direct conversation made once) were written for SQLite, whose
  writers are serial, and SERIALIZABLE gives them that same guarantee across nodes.
- `migrate` keeps the schema's version in `messageai_schema`, under an advisory lock,
  so that nodes starting together migrate once.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg import errors as pg_errors

from messageai.errors import Unavailable
from messageai.sqlite import check_not_newer

P = ParamSpec("P")
T = TypeVar("T")

# A write that keeps losing to concurrent ones is tried this many times, then the
# caller gets `unavailable` (a client retries those).
WRITE_ATTEMPTS = 8
# The pause before a retry: random up to this, doubled each time (a few ms: the
# transactions it collided with are short).
RETRY_PAUSE_SECONDS = 0.002
CONNECT_TIMEOUT_SECONDS = 5
# pg_advisory_xact_lock's key for the migrations: the bytes of "msgai".
MIGRATION_LOCK = 0x6D73676169

PgMigration = Callable[["PgConnection"], None]


@functools.lru_cache(maxsize=1024)
def placeholders(sql: str) -> tuple[str, tuple[int, ...] | None]:
    """`sql` with `?`/`?N` as `%s` and `%` as `%%`, and the order in which to pass the
    bindings (None: as given). Quoted literals, quoted names and `--` comments are
    copied as they are."""
    out: list[str] = []
    order: list[int] = []
    numbered = False
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            end = sql.find(c, i + 1)
            end = n - 1 if end < 0 else end
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
            continue
        if c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
            continue
        if c == "?":
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            if j > i + 1:
                numbered = True
                order.append(int(sql[i + 1 : j]) - 1)
            else:
                order.append(len(order))
            out.append("%s")
            i = j
            continue
        out.append("%%" if c == "%" else c)
        i += 1
    return "".join(out), tuple(order) if numbered else None


def _bindings(values: Any, order: tuple[int, ...] | None) -> Sequence[Any]:
    if values is None:
        return ()
    if order is None:
        return tuple(values)
    return tuple(values[k] for k in order)


class PgRows:
    """A statement's rows, with APSW's `.get` (the one value of a one-column row)."""

    def __init__(self, cursor: psycopg.Cursor[tuple[Any, ...]]) -> None:
        self._cursor = cursor

    def fetchone(self) -> Any | None:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor)

    @property
    def get(self) -> Any:
        """As APSW: None without rows; one row's value, or its tuple; else a list."""
        rows = self._cursor.fetchall()
        shaped = [row[0] if len(row) == 1 else row for row in rows]
        if not shaped:
            return None
        return shaped[0] if len(shaped) == 1 else shaped


class PgConnection:
    """One psycopg connection (autocommit outside `transaction`), used by one thread."""

    def __init__(self, url: str, password: str | None, *, serializable: bool) -> None:
        self._url = url
        self._password = password
        self._serializable = serializable
        self._changes = 0
        self.raw = self._connect()

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        extra: dict[str, Any] = {"password": self._password} if self._password else {}
        try:
            raw = psycopg.connect(
                self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, **extra
            )
        except psycopg.OperationalError as exc:
            raise Unavailable(f"the directory database is unreachable: {_first_line(exc)}") from exc
        if self._serializable:
            raw.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        return raw

    def reconnect_if_broken(self) -> None:
        """A connection PostgreSQL or the network dropped is replaced (at the next use,
        outside any transaction)."""
        if self.raw.closed:
            self.raw = self._connect()

    def execute(self, statements: str, bindings: Any = None, /) -> PgRows:
        query, order = placeholders(statements)
        cursor = self.raw.execute(query, _bindings(bindings, order))
        self._changes = max(cursor.rowcount, 0)
        return PgRows(cursor)

    def executemany(self, statements: str, sequenceofbindings: Iterable[Any], /) -> PgRows:
        query, order = placeholders(statements)
        cursor = self.raw.cursor()
        cursor.executemany(query, [_bindings(b, order) for b in sequenceofbindings])
        self._changes = max(cursor.rowcount, 0)
        return PgRows(cursor)

    def changes(self) -> int:
        """Rows the last statement changed (psycopg's `rowcount`)."""
        return self._changes

    def script(self, sql: str) -> None:
        """Run several statements without bindings (the schema)."""
        self.raw.execute(sql.encode())

    def close(self) -> None:
        self.raw.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def transaction(conn: PgConnection) -> Iterator[PgConnection]:
    """One transaction (committed, or rolled back on any exception), without retries:
    for the CLI, whose writes are single statements or race nothing."""
    conn.reconnect_if_broken()
    with conn.raw.transaction():
        yield conn


def run_transaction(
    conn: PgConnection,
    fn: Callable[Concatenate[PgConnection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`fn(conn, ...)` in one SERIALIZABLE transaction, run again (at most WRITE_ATTEMPTS
    times in all) after a serialization failure or a deadlock: `fn` must have no effect
    outside the transaction. Unavailable when it keeps failing, or when the database
    cannot be reached (the connection is replaced at the next call)."""
    pause = RETRY_PAUSE_SECONDS
    for attempt in range(WRITE_ATTEMPTS):
        try:
            conn.reconnect_if_broken()
            with conn.raw.transaction():
                return fn(conn, *args, **kwargs)
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
            if attempt == WRITE_ATTEMPTS - 1:
                raise Unavailable("the directory is busy: try again") from exc
            time.sleep(random.uniform(0, pause))
            pause *= 2
        except psycopg.OperationalError as exc:
            raise Unavailable(f"the directory database is unreachable: {_first_line(exc)}") from exc
    raise AssertionError("unreachable")


def read(
    conn: PgConnection,
    fn: Callable[Concatenate[PgConnection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`fn(conn, ...)` outside a transaction (each statement its own snapshot, as the
    SQLite reads). A connection found dropped (PostgreSQL restarted, an idle connection
    cut) is replaced and the read run once more: reads change nothing, so that is safe,
    where a write that failed in its commit may have committed and is not retried.
    Unavailable when the database cannot be reached."""
    for attempt in range(2):
        try:
            conn.reconnect_if_broken()
            return fn(conn, *args, **kwargs)
        except psycopg.OperationalError as exc:
            if attempt == 0 and conn.raw.closed:
                continue
            raise Unavailable(f"the directory database is unreachable: {_first_line(exc)}") from exc
    raise AssertionError("unreachable")


def migrate(conn: PgConnection, migrations: Sequence[PgMigration]) -> None:
    """Bring the schema to len(migrations), all in one transaction under an advisory
    lock (a second node starting at the same time waits, then finds it done)."""
    with conn.raw.transaction():
        conn.raw.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.script(
            "CREATE TABLE IF NOT EXISTS messageai_schema("
            " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
        )
        row = conn.raw.execute("SELECT version FROM messageai_schema").fetchone()
        version = int(row[0]) if row is not None else 0
        check_not_newer("the PostgreSQL directory", version, len(migrations))
        for number in range(version, len(migrations)):
            migrations[number](conn)
        conn.raw.execute(
            "INSERT INTO messageai_schema(id, version) VALUES (1, %s)"
            " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            (len(migrations),),
        )
