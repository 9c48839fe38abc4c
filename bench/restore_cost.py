"""How long one conversation is out of service while `messageai conversation restore`
replaces its file (`ops.restore_one.stage` then `install`, what the server runs with
that conversation's actor stopped; the backup's integrity check runs before it stops
and is timed apart). A conversation of N messages, backed up, then restored twice:
with nothing changed since the backup, and with 1,000 newer messages and every older
one changed (all restamped: the worst case).

    .venv/bin/python -m bench.restore_cost [--messages 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from messageai.conversations.actor import _open
from messageai.model import Message, new_id, now_ms
from messageai.ops import backup, restore_one
from messageai.services.directory import open_directory_db
from messageai.sqlite import transaction
from messageai.store import conversation as sql
from messageai.store.paths import conversation_path

CID = "c_restorecost01"


def _fill(path: Path, first: int, last: int, body: str) -> None:
    conn = _open(path, "FULL")
    try:
        with transaction(conn):
            at = now_ms()
            sql.bulk_insert(
                conn,
                (
                    Message(new_id("m_"), CID, s, "u_a", f"k{s}", f"{body} {s}", [], at)
                    for s in range(first, last + 1)
                ),
            )
    finally:
        conn.close()


def _restamp_all(path: Path, upto: int) -> None:
    conn = _open(path, "FULL")
    try:
        with transaction(conn):
            rev = sql.last_rev(conn)
            conn.executemany(
                "UPDATE messages SET rev = ? WHERE seq = ?",
                [(rev + s, s) for s in range(1, upto + 1)],
            )
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    n = parser.parse_args().messages
    with tempfile.TemporaryDirectory() as tmp:
        data, dest = Path(tmp) / "data", Path(tmp) / "backup"
        open_directory_db(data, "FULL").close()
        path = conversation_path(data, CID)
        _fill(path, 1, n, "a message body of a few words, like most are")
        backup.backup(data, dest, lambda _t: None)
        started = time.perf_counter()
        restore_one.check_backup(dest, CID)
        checked = time.perf_counter() - started
        print(f"{n:,} messages, {path.stat().st_size / 1e6:.1f} MB")
        print(f"  backup checked (before the stop): {checked * 1000:.0f} ms")
        for case in ("nothing changed", "1,000 newer, every older one changed"):
            if case != "nothing changed":
                _fill(path, n + 1, n + 1000, "newer")
                _restamp_all(path, n)
            started = time.perf_counter()
            staged = restore_one.stage(dest, data, CID, "FULL", checked=True)
            restore_one.install(staged, data, CID)
            took = time.perf_counter() - started
            print(
                f"  {case}: out of service {took * 1000:.0f} ms"
                f" ({staged.restamped:,} restamped, {staged.kept_as_tombstones:,} tombstones)"
            )


if __name__ == "__main__":
    main()
