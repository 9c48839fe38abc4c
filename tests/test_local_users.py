"""`store.directory.create_local_user`, the one way a local account is made (used by
`Directory.register` and `messageai user add`): synchronous SQL on a real file."""

from __future__ import annotations

from pathlib import Path

import pytest

from messageai.errors import BadRequest
from messageai.services.directory import open_directory_db
from messageai.sqlite import transaction
from messageai.store import directory as sql


def test_create_local_user_checks_names_inserts_once_and_refuses_a_taken_name(
    tmp_path: Path,
) -> None:
    conn = open_directory_db(tmp_path, "NORMAL")
    try:
        with transaction(conn):
            user = sql.create_local_user(conn, "ada", "  Ada L.  ", "scrypt$hash")
        assert user is not None
        assert (user.username, user.display_name) == ("ada", "Ada L.")
        assert user.id.startswith("u_") and user.created_at > 0
        found = sql.user_and_hash_by_name(conn, "ada")
        assert found == (user, "scrypt$hash")
        with transaction(conn):
            assert sql.create_local_user(conn, "ada", None, "other") is None
        assert sql.user_and_hash_by_name(conn, "ada") == (user, "scrypt$hash")
        # The display name defaults to the username.
        with transaction(conn):
            bob = sql.create_local_user(conn, "bob", None, "h")
        assert bob is not None and bob.display_name == "bob"
        for name, shown in (("Bad Name", None), ("ok_name", " "), (42, None)):
            with pytest.raises(BadRequest), transaction(conn):
                sql.create_local_user(conn, name, shown, "h")
        assert [u.username for u in sql.all_users(conn)] == ["ada", "bob"]
    finally:
        conn.close()
