"""`store.directory.create_local_user`, the one way a local account is made (used by
`Directory.register` and `messageai user add`): synchronous SQL on a real file and on
a real PostgreSQL (`directory_db`)."""

from __future__ import annotations

import pytest

from messageai.errors import BadRequest
from messageai.store import directory as sql
from messageai.store.db import Db, transaction


def test_create_local_user_checks_names_inserts_once_and_refuses_a_taken_name(
    directory_db: Db,
) -> None:
    conn = directory_db
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
