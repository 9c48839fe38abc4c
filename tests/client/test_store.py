"""The client's store, events and backoff on their own: real SQLite files in tmp_path,
no server, no network."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from messageai.backoff import Backoff
from messageai.client import store
from messageai.client.events import Events, MessageAdded, Overflowed, ReadReceipt

ME, BOB, CAT = "u_me", "u_bob", "u_cat"


def conv(cid: str = "c_1", members: tuple[str, ...] = (ME, BOB)) -> dict[str, Any]:
    return {"id": cid, "kind": "group", "title": "t", "member_ids": list(members), "created_at": 1}


def server_message(seq: int, sender: str = BOB, client_id: str | None = None) -> dict[str, Any]:
    return {
        "id": f"m_{seq}", "conversation_id": "c_1", "seq": seq, "sender_id": sender,
        "client_id": client_id or f"x{seq}", "body": f"b{seq}", "attachments": [],
        "created_at": seq,
    }  # fmt: skip


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[apsw.Connection]:
    c = store.open_store(tmp_path / "a.sqlite3")
    with c:
        store.save_conversation(c, conv(members=(ME, BOB, CAT)))
    yield c
    c.close()


def test_store_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    c = store.open_store(tmp_path / "sub" / "a.sqlite3")
    assert c.execute("PRAGMA journal_mode").get == "wal"
    assert (tmp_path / "sub" / "a.sqlite3").stat().st_mode & 0o077 == 0
    c.close()


def test_ack_replaces_the_temporary_identity_and_a_repeat_is_ignored(conn: apsw.Connection) -> None:
    mine = store.add_outgoing(conn, "c_1", ME, "cid-1", "hi", 5)
    assert (mine.status, mine.seq, mine.id) == ("sending", None, None)
    assert store.outbox(conn, 10) == [mine]
    with conn:
        acked = store.merge_message(conn, server_message(1, ME, "cid-1"), ME)
        again = store.merge_message(conn, server_message(1, ME, "cid-1"), ME)
    assert acked is not None and (acked.local_id, acked.seq, acked.status) == (
        mine.local_id,
        1,
        "sent",
    )
    assert again is None
    assert store.outbox(conn, 10) == []
    assert [m.seq for m in store.messages(conn, "c_1")] == [1]


def test_synced_seq_stops_at_the_first_gap(conn: apsw.Connection) -> None:
    with conn:
        for seq in (1, 2, 4, 5):
            store.merge_message(conn, server_message(seq), ME)
        assert store.advance_synced_seq(conn, "c_1") == 2
        store.merge_message(conn, server_message(3), ME)
        assert store.advance_synced_seq(conn, "c_1") == 5


def test_read_needs_every_other_member_and_read_by_counts_them(conn: apsw.Connection) -> None:
    with conn:
        store.merge_message(conn, server_message(1, ME), ME)
        store.set_read_seq(conn, "c_1", BOB, 1)
        assert store.refresh_read_statuses(conn, "c_1", ME) == []
        assert store.read_by(conn, "c_1", 1, ME) == [BOB]
        store.set_read_seq(conn, "c_1", CAT, 3)
        [read] = store.refresh_read_statuses(conn, "c_1", ME)
    assert read.status == "read"
    assert store.set_read_seq(conn, "c_1", CAT, 2) is False  # cursors only move forward


def test_unacknowledged_messages_sort_after_acknowledged_ones(conn: apsw.Connection) -> None:
    store.add_outgoing(conn, "c_1", ME, "late", "queued", 1)
    with conn:
        store.merge_message(conn, server_message(1), ME)
    assert [m.body for m in store.messages(conn, "c_1")] == ["b1", "queued"]
    assert [m.body for m in store.messages(conn, "c_1", limit=1)] == ["queued"]


async def test_a_slow_event_reader_gets_one_overflow_marker_not_unbounded_memory() -> None:
    events = Events()
    async with events.subscribe(size=3) as stream:
        for seq in range(10):
            events.emit(ReadReceipt("c_1", BOB, seq))
        first = await stream.receive()
        assert isinstance(first, Overflowed) and first.dropped >= 7
        events.emit(ReadReceipt("c_1", BOB, 99))
        assert await stream.receive() == ReadReceipt("c_1", BOB, 99)
    events.emit(MessageAdded(None))  # type: ignore[arg-type]  # a closed stream is left alone


def test_backoff_grows_with_jitter_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.5, 8.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(10)]
    caps = [min(8.0, 0.5 * 2**n) for n in range(10)]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert len(set(delays)) == len(delays)  # jittered
    assert max(delays[4:]) > 4.0  # the cap grew to 8 (full jitter, so not every delay)
    backoff.reset()
    assert backoff.next_delay() <= 0.5
    # A Retry-After is a floor, but never past the maximum.
    assert backoff.next_delay(at_least=3.0) >= 3.0
    assert backoff.next_delay(at_least=100.0) == 8.0
    with pytest.raises(ValueError):
        Backoff(0, 1)


def test_messages_since_stops_at_a_gap_and_pages_in_seq_order(conn: apsw.Connection) -> None:
    with conn:
        for seq in (1, 2, 4):  # 3 not stored yet: 4 waits behind the gap
            store.merge_message(conn, server_message(seq), ME)
        store.advance_synced_seq(conn, "c_1")
    upto, rows = store.messages_since(conn, "c_1", 0, 10)
    assert (upto, [m.seq for m in rows]) == (2, [1, 2])
    with conn:
        store.merge_message(conn, server_message(3), ME)
        store.advance_synced_seq(conn, "c_1")
    upto, rows = store.messages_since(conn, "c_1", 2, 10)
    assert (upto, [m.seq for m in rows]) == (4, [3, 4])
    upto, rows = store.messages_since(conn, "c_1", 0, 2)
    assert (upto, [m.seq for m in rows]) == (4, [1, 2])


def test_unacknowledged_is_my_queued_and_failed_messages_oldest_first(
    conn: apsw.Connection,
) -> None:
    first = store.add_outgoing(conn, "c_1", ME, "k1", "one", 1)
    second = store.add_outgoing(conn, "c_1", ME, "k2", "two", 2)
    third = store.add_outgoing(conn, "c_1", ME, "k3", "three", 3)
    with conn:
        store.merge_message(conn, server_message(1, ME, "k2"), ME)
        store.mark_failed(conn, third.local_id, "forbidden: no")
    assert [(m.local_id, m.status) for m in store.unacknowledged(conn, "c_1")] == [
        (first.local_id, "sending"),
        (third.local_id, "failed"),
    ]
    assert second.local_id not in {m.local_id for m in store.unacknowledged(conn, "c_1")}


def test_a_conversation_is_active_until_we_know_we_left_it(conn: apsw.Connection) -> None:
    assert store.is_active(conn, "c_1") and store.is_active(conn, "c_unknown")
    store.set_active(conn, "c_1", False)
    assert not store.is_active(conn, "c_1")
    found = store.get_conversation(conn, ME, "c_1")
    assert found is not None and not found.active
    assert store.get_conversation(conn, ME, "c_unknown") is None


def test_read_by_n_of_m_leaves_out_members_added_after_the_message(
    conn: apsw.Connection,
) -> None:
    # The server's `members_joined_at` extension: cat joined after seq 1 was sent (at 1).
    with conn:
        store.save_conversation(
            conn, {**conv(members=(ME, BOB, CAT)), "members_joined_at": {CAT: 2, BOB: 0, ME: 0}}
        )
        store.merge_message(conn, server_message(1, ME, "a"), ME)
        store.merge_message(conn, server_message(2, ME, "b"), ME)
        store.set_read_seq(conn, "c_1", BOB, 2)  # cat has read nothing
        read = store.refresh_read_statuses(conn, "c_1", ME)
    assert store.readers_of(conn, "c_1", 1, ME) == 1  # bob only
    assert store.readers_of(conn, "c_1", 2, ME) == 2
    assert store.read_by(conn, "c_1", 1, ME) == [BOB]
    # Read by everyone who was there: seq 1 is `read`, seq 2 waits for cat.
    assert [m.seq for m in read] == [1]
    # Without the extension every member counts, as before.
    with conn:
        store.save_conversation(conn, conv(members=(ME, BOB, CAT)))
    assert store.readers_of(conn, "c_1", 1, ME) == 2


def test_a_newer_state_of_a_message_replaces_the_stored_one_and_an_older_does_not(
    conn: apsw.Connection,
) -> None:
    first = {**server_message(1), "rev": 1}
    edited = {**first, "body": "edited", "edited_at": 9, "rev": 3}
    with conn:
        store.merge_message(conn, first, ME)
        assert store.merge_message(conn, edited, ME) is not None
        assert store.merge_message(conn, first, ME) is None  # late and older: ignored
    m = store.message_by_seq(conn, "c_1", 1)
    assert m is not None and (m.body, m.edited_at, m.rev) == ("edited", 9, 3)
