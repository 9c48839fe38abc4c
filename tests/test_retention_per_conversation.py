"""Per-conversation retention (`messageai conversation retention ID DAYS`, the
directory's `retention_days`): with the server's `retention.days` at 0, one
conversation's own setting still expires its old messages and no other's; the sweep's
high-water mark (`retention_upto`) means later sweeps read none of those tombstones
again."""

from __future__ import annotations

import argparse
from pathlib import Path

import apsw
import pytest
import trio

from messageai.cli.ops import _describe, _retention
from messageai.ops.backup import BackupError
from tests.helpers import harness, make_config, run_messageai

# The server keeps everything; the sweep runs often for the test.
RETENTION = {"days": 0, "sweep_interval_seconds": 0.1, "conversations_per_second": 1000}


def _mark(data: Path, cid: str) -> int:
    conn = apsw.Connection(str(data / "directory.sqlite3"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(
            conn.execute("SELECT retention_upto FROM conversations WHERE id = ?", (cid,)).get
        )
    finally:
        conn.close()


async def test_one_conversation_keeps_less_than_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    with trio.fail_after(40):
        async with harness(make_config(data, retention=RETENTION)) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            short, kept = await h.group(ada, bob), await h.group(ada, bob, title="Kept")
            for body in ("old one", "old two"):
                await h.post(ada, short, body)
                await h.post(ada, kept, body)
            async with h.ws(bob) as ws:
                await ws.request("subscribe", conversation_id=short)
                # 0.00003 days is 2.6 s: the two age past it while the test waits.
                done = await run_messageai(
                    "conversation", "retention", short, "0.00003", "--data-dir", str(data)
                )
                assert done.returncode == 0, done.stderr
                assert done.stdout.strip() == f"{short}: retention 3e-05 days (its own)"
                gone = [await ws.next_event("message_updated", timeout=15) for _ in range(2)]
            assert sorted(g["message"]["seq"] for g in gone) == [1, 2]
            with pytest.raises(BackupError, match="days: a number of days"):
                _retention(h.server.config, short, "-1")
            capsys.readouterr()
            show = argparse.Namespace(conversation_command="show", conversation_id=kept)
            _describe(h.server.config, show)
            assert "retention: kept forever (the server's)" in capsys.readouterr().out
            fresh = await h.post(ada, short, "new")  # young for the rest of the test
            retention = h.server.retention
            assert retention is not None
            await trio.sleep(0.5)  # several sweeps
            assert _mark(data, short) == 2 and _mark(data, kept) == 0
            scanned = retention.scanned
            await trio.sleep(0.5)
            assert retention.scanned == scanned  # the tombstones are not read again
            r = await h.http.get(f"/v1/conversations/{short}/messages", headers=h.auth(bob))
            assert [(m["seq"], m["body"]) for m in r.json()["messages"]] == [
                (1, ""),
                (2, ""),
                (fresh, "new"),
            ]
            r = await h.http.get(f"/v1/conversations/{kept}/messages", headers=h.auth(bob))
            assert [m["body"] for m in r.json()["messages"]] == ["old one", "old two"]
