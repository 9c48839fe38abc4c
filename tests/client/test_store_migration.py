"""The client store's schema migration, on a store written by the release before v1.1
(`fixtures/store_v1.sqlite3`, made by `fixtures/make_store_v1.py` with that code)."""

from __future__ import annotations

import shutil
from pathlib import Path

from messageai.client import outbox, store

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1.sqlite3"
ME = "u_ada"


def test_a_schema_1_store_keeps_every_message_and_its_queue_in_order(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    shutil.copy(FIXTURE, path)
    conn = store.open_store(path)
    try:
        assert conn.execute("PRAGMA user_version").get == len(store.MIGRATIONS)
        account = store.get_account(conn)
        assert account is not None and (account.username, account.token) == ("ada", "tok")
        shown = store.messages(conn, "c_1")
        assert [(m.seq, m.body, m.status) for m in shown] == [
            (1, "message 1", "received"),
            (2, "message 2", "sent"),
            (3, "message 3", "received"),
            (None, "queued one", "sending"),
            (None, "refused one", "failed"),
            (None, "queued two", "sending"),
        ]
        # The v1.1 fields read as "none" and the change cursor starts at 0 (the first
        # catch-up brings every change); the synced seq and read cursor stay.
        assert all(
            (m.reply_to, m.mentions, m.edited_at, m.deleted_at, m.reactions, m.rev)
            == (None, [], None, None, {}, 0)
            for m in shown
        )
        assert store.last_rev(conn, "c_1") == 0
        assert store.synced_seq(conn, "c_1") == 3
        conv = store.get_conversation(conn, ME, "c_1")
        assert conv is not None and conv.unread_count == 0 and conv.topic is None
        # The queued sends are the outbox, oldest first; the failed one is not in it.
        queue = outbox.entries(conn, 10)
        assert [(e.kind, e.message.client_id) for e in queue] == [("send", "q1"), ("send", "q3")]
        assert store.outbox_size(conn) == 2
    finally:
        conn.close()
    # Opening it again migrates nothing twice.
    conn = store.open_store(path)
    assert store.outbox_size(conn) == 2
    conn.close()
