"""store/action_items.py on a real conversation file (the conversation's own migrations):
applying an extraction once per job key, replacing what a window yields, keeping ids
and statuses, dropping deleted sources at once, bounds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from messageai.model import Message
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import action_items as sql
from messageai.store import conversation


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[apsw.Connection]:
    db = open_db(tmp_path / "c.sqlite3", "NORMAL")
    migrate(db, conversation.MIGRATIONS)
    with transaction(db):
        for seq in range(1, 6):
            message = Message(
                id=f"m_{seq}",
                conversation_id="c_1",
                seq=seq,
                sender_id="u_a",
                client_id=f"k{seq}",
                body=f"body {seq}",
                attachments=[],
                created_at=seq,
            )
            assert conversation.insert_message(db, message) is None
    yield db
    db.close()


def _apply(
    conn: apsw.Connection, key: str, window: list[int], *found: sql.Extracted, now: int = 10
) -> bool:
    with transaction(conn):
        return sql.apply_extraction(conn, key, window, found, rev=5, now=now)


def _item(text: str, *seqs: int, owner: str | None = None) -> sql.Extracted:
    return sql.Extracted(text, owner, None, seqs)


def _texts(conn: apsw.Connection) -> list[tuple[str, tuple[int, ...], str]]:
    return [(i.text, i.source_seqs, i.status) for i in sql.items(conn)]


def test_an_extraction_is_applied_once_per_job_key(conn: apsw.Connection) -> None:
    assert _apply(conn, "job:j1", [1, 2], _item("send the slides", 1))
    # The same job re-run after a crash: nothing changes, nothing is added twice.
    assert not _apply(conn, "job:j1", [1, 2], _item("send the slides", 1), _item("other", 2))
    assert _texts(conn) == [("send the slides", (1,), "open")]


def test_a_new_extraction_replaces_the_windows_items_keeping_id_and_status(
    conn: apsw.Connection,
) -> None:
    _apply(conn, "job:1", [1, 2, 3], _item("Book the room", 1), _item("old task", 2))
    _apply(conn, "job:2", [4, 5], _item("outside the next window", 4))
    [room, _old, outside] = sql.items(conn)
    with transaction(conn):
        assert sql.set_status(conn, room.id, "done", 11)
    # The window 1..3 is read again: "old task" is no longer there, the room is (with
    # other spacing and case), a new one appears. The item from 4 is untouched.
    _apply(conn, "job:3", [1, 2, 3], _item("book  the ROOM", 1, 3), _item("new task", 3))
    after = {i.text: i for i in sql.items(conn)}
    assert set(after) == {"book  the ROOM", "outside the next window", "new task"}
    assert after["book  the ROOM"].id == room.id and after["book  the ROOM"].status == "done"
    assert after["book  the ROOM"].source_seqs == (1, 3)
    assert after["outside the next window"] == outside


def test_deleting_a_source_removes_it_and_an_item_left_without_sources(
    conn: apsw.Connection,
) -> None:
    _apply(conn, "job:1", [1, 2, 3], _item("from one and two", 1, 2), _item("from two", 2))
    with transaction(conn):
        conversation.tombstone(conn, 2, "body 2", 20, 6)
    assert _texts(conn) == [("from one and two", (1,), "open")]
    assert not sql.is_source(conn, 2) and sql.is_source(conn, 1)
    with transaction(conn):
        conversation.tombstone(conn, 1, "body 1", 21, 7)
    assert sql.items(conn) == []


def test_sources_deleted_while_the_model_worked_are_not_stored(conn: apsw.Connection) -> None:
    with transaction(conn):
        conversation.tombstone(conn, 3, "body 3", 20, 6)
    _apply(conn, "job:1", [1, 2, 3], _item("only from three", 3), _item("three and one", 3, 1))
    assert _texts(conn) == [("three and one", (1,), "open")]


def test_set_status_checks_the_status_and_the_item(conn: apsw.Connection) -> None:
    with transaction(conn):
        assert not sql.set_status(conn, "ai_nope", "done", 1)
        with pytest.raises(ValueError, match="status"):
            sql.set_status(conn, "ai_nope", "closed", 1)


def test_items_and_remembered_runs_are_bounded(conn: apsw.Connection) -> None:
    many = [_item(f"task {i}", 1) for i in range(sql.MAX_ITEMS + 20)]
    _apply(conn, "job:big", [5], *many[:0])  # a run that finds nothing
    with transaction(conn):
        sql.apply_extraction(conn, "job:many", [1], many, rev=5, now=11)
    assert len(sql.items(conn)) == sql.MAX_ITEMS
    for n in range(sql.KEEP_RUNS + 5):
        _apply(conn, f"job:r{n}", [4], now=100 + n)
    runs = conn.execute("SELECT count(*) FROM action_item_runs").get
    assert runs == sql.KEEP_RUNS
