"""The directory's SQL and housekeeping on real SQLite files and a real PostgreSQL
(`directory_db`: each test runs in both dialects): user search by prefix (and that
it is index range scans, read from each engine's own EXPLAIN), and the purge of
expired tokens, bounded per transaction, and scheduled by the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio

from messageai.model import User
from messageai.services.directory import DIRECTORY_FILE, TOKEN_PURGE_BATCH, open_directory_db
from messageai.sqlite import open_db
from messageai.store import directory as sql
from messageai.store.db import Db, Rows, postgres, transaction
from tests.helpers import harness, make_config

NAMES = [
    ("ada", "Ada Lovelace"),
    ("adam", "Adam Smith"),
    ("bob", "ada's friend"),
    ("carol", "Carol"),
    ("x_y", "under_score"),
    ("x%z", "percent"),  # not a valid username; stored to check nothing is a wildcard
    ("dan", "Émile"),
    ("eve", "@home"),
    ("fay", "[bracket]"),
]


def _directory(conn: Db) -> Db:
    with transaction(conn):
        for i, (username, display) in enumerate(NAMES):
            sql.insert_user(conn, User(f"u_{i}", username, display, i), None)
    return conn


def _names(users: list[User]) -> list[str]:
    return [u.username for u in users]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", sorted(n for n, _ in NAMES)),
        ("ada", ["ada", "adam", "bob"]),
        ("ADA", ["ada", "adam", "bob"]),
        ("Adam", ["adam"]),
        ("ada l", ["ada"]),
        ("c", ["carol"]),
        ("x_", ["x_y"]),  # "_" is a character, not "any character"
        ("x%", ["x%z"]),  # "%" too
        ("x", ["x%z", "x_y"]),
        ("é", []),  # NOCASE folds ASCII only, as LIKE did
        ("É", ["dan"]),
        ("@", ["eve"]),  # "@" sorts right before "A": the bound must not cover "[..."
        ("[", ["fay"]),
        ("zzz", []),
        ("\U0010ffff", []),
    ],
)
def test_search_users_matches_a_prefix_of_username_or_display_name(
    directory_db: Db, prefix: str, expected: list[str]
) -> None:
    conn = _directory(directory_db)
    assert _names(sql.search_users(conn, prefix, 20)) == expected


def test_search_users_stops_at_the_limit_in_username_order(directory_db: Db) -> None:
    conn = _directory(directory_db)
    assert _names(sql.search_users(conn, "", 3)) == ["ada", "adam", "bob"]
    assert _names(sql.search_users(conn, "ad", 2)) == ["ada", "adam"]


def test_search_users_reads_index_ranges_never_the_whole_table(tmp_path: Path) -> None:
    conn = open_directory_db(tmp_path, "NORMAL")
    _directory(conn)
    executed: list[tuple[str, apsw.Bindings | None]] = []

    def trace(_cursor: apsw.Cursor, statement: str, bindings: apsw.Bindings | None) -> bool:
        executed.append((statement, bindings))
        return True

    conn.exec_trace = trace
    sql.search_users(conn, "ad", 20)
    conn.exec_trace = None
    (statement, bindings), *_ = executed
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, bindings)]
    assert not any(step.startswith("SCAN") for step in plan), plan
    searches = [step for step in plan if step.startswith("SEARCH users")]
    assert any("sqlite_autoindex_users_2 (username>? AND username<?)" in s for s in searches)
    assert any("users_display_name (display_name>? AND display_name<?)" in s for s in searches)


def test_search_users_in_postgres_can_use_both_indexes(directory_db: Db) -> None:
    """The `lower(display_name)` index and the username's serve the UNION's two range
    scans (read from EXPLAIN, sequential scans off: the table is too small for the
    planner to choose an index otherwise). SQLite's plan is checked above."""
    if not postgres(directory_db):
        pytest.skip("PostgreSQL's plan; SQLite's is the test above")
    conn = _directory(directory_db)
    recorded = _Recording(conn)
    sql.search_users(recorded, "ad", 20)
    ((statement, bindings),) = recorded.statements
    with transaction(conn):
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + statement, bindings))
    assert "Seq Scan" not in plan, plan
    assert "users_username_key" in plan and "users_display_name" in plan, plan


class _Recording:
    """A PostgreSQL connection that remembers the statements run through it."""

    def __init__(self, conn: Db) -> None:
        self._conn = conn
        self.statements: list[tuple[str, Any]] = []

    def execute(self, statements: str, bindings: Any = None, /) -> Rows:
        self.statements.append((statements, bindings))
        return self._conn.execute(statements, bindings)

    def executemany(self, statements: str, sequenceofbindings: Iterable[Any], /) -> Rows:
        return self._conn.executemany(statements, sequenceofbindings)

    def changes(self) -> int:
        return self._conn.changes()

    def close(self) -> None:
        self._conn.close()


def _add_tokens(conn: Db, count: int, expires_at: int, tag: bytes) -> None:
    with transaction(conn):
        for i in range(count):
            sql.insert_token(conn, tag + i.to_bytes(4, "big"), "u_0", 0, expires_at)


def _token_count(conn: Db) -> int:
    return int(conn.execute("SELECT count(*) FROM tokens").get)


def test_delete_expired_tokens_takes_at_most_a_batch_and_only_expired_ones(
    directory_db: Db,
) -> None:
    conn = _directory(directory_db)
    _add_tokens(conn, 25, expires_at=1_000, tag=b"old")
    _add_tokens(conn, 5, expires_at=2_000, tag=b"new")
    with transaction(conn):
        assert sql.delete_expired_tokens(conn, 1_000, 10) == 10
    assert _token_count(conn) == 20
    with transaction(conn):
        assert sql.delete_expired_tokens(conn, 1_000, 100) == 15
        assert sql.delete_expired_tokens(conn, 1_000, 100) == 0
    assert _token_count(conn) == 5


async def test_the_server_purges_expired_tokens_on_its_own(tmp_path: Path) -> None:
    """Real tokens: one from a real registration, expired by the clock, and more than
    a batch of rows expired long ago; the housekeeping task the server starts deletes
    them all and keeps the token that has not expired."""
    data = tmp_path / "data"
    config = make_config(
        data, auth={"scrypt_n": 16, "token_ttl_seconds": 1, "token_purge_interval_seconds": 0.05}
    )
    with trio.fail_after(20):
        async with harness(config) as h:
            ada = await h.account("ada")
            assert h.server.directory is not None
            await h.server.directory.write(_fill, ada.id, TOKEN_PURGE_BATCH + 7)
            reader = open_db(data / DIRECTORY_FILE, "NORMAL")
            try:
                # Ada's own token expires a second after it was issued.
                while _token_count(reader) > 1:
                    await trio.sleep(0.05)
                assert reader.execute("SELECT hash FROM tokens").get == b"live"
            finally:
                reader.close()
            assert (await h.http.get("/v1/me", headers=h.auth(ada))).status_code == 401


def _fill(conn: Db, user_id: str, count: int) -> None:
    for i in range(count):
        sql.insert_token(conn, b"expired" + i.to_bytes(4, "big"), user_id, 0, 1)
    sql.insert_token(conn, b"live", user_id, 0, 2**62)
