"""The directory's SQL and housekeeping on real SQLite files: user search by prefix
(and that it is index range scans, read from SQLite's own EXPLAIN QUERY PLAN), and
the purge of expired tokens, bounded per transaction, and scheduled by the server.
"""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest
import trio

from messageai.model import User
from messageai.services.directory import DIRECTORY_FILE, TOKEN_PURGE_BATCH, open_directory_db
from messageai.sqlite import open_db
from messageai.store import directory as sql
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


def _directory(tmp_path: Path) -> apsw.Connection:
    conn = open_directory_db(tmp_path, "NORMAL")
    with conn:
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
    tmp_path: Path, prefix: str, expected: list[str]
) -> None:
    conn = _directory(tmp_path)
    assert _names(sql.search_users(conn, prefix, 20)) == expected


def test_search_users_stops_at_the_limit_in_username_order(tmp_path: Path) -> None:
    conn = _directory(tmp_path)
    assert _names(sql.search_users(conn, "", 3)) == ["ada", "adam", "bob"]
    assert _names(sql.search_users(conn, "ad", 2)) == ["ada", "adam"]


def test_search_users_reads_index_ranges_never_the_whole_table(tmp_path: Path) -> None:
    conn = _directory(tmp_path)
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


def _add_tokens(conn: apsw.Connection, count: int, expires_at: int, tag: bytes) -> None:
    with conn:
        for i in range(count):
            sql.insert_token(conn, tag + i.to_bytes(4, "big"), "u_0", 0, expires_at)


def _token_count(conn: apsw.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM tokens").get)


def test_delete_expired_tokens_takes_at_most_a_batch_and_only_expired_ones(
    tmp_path: Path,
) -> None:
    conn = _directory(tmp_path)
    _add_tokens(conn, 25, expires_at=1_000, tag=b"old")
    _add_tokens(conn, 5, expires_at=2_000, tag=b"new")
    with conn:
        assert sql.delete_expired_tokens(conn, 1_000, 10) == 10
    assert _token_count(conn) == 20
    with conn:
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


def _fill(conn: apsw.Connection, user_id: str, count: int) -> None:
    for i in range(count):
        sql.insert_token(conn, b"expired" + i.to_bytes(4, "big"), user_id, 0, 1)
    sql.insert_token(conn, b"live", user_id, 0, 2**62)
