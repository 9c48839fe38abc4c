"""How long the v1.1 schema migration takes on a big conversation file written by the
previous release (schema version 2), and what `PRAGMA secure_delete` costs the actor's
insert.

    python -m bench.migration [--messages 1000000] [--dir PATH]

Writes a version-2 file with the previous release's own statements (its schema steps
are `store.conversation.MIGRATIONS[:2]`; the rows are what `bulk_insert` wrote then),
checkpoints it, then times `migrate` to the current version the way an actor runs it
on open. Then times the actor's insert statement with and without `secure_delete`,
64 rows per commit, `synchronous = FULL`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from messageai.model import Message
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import conversation as sql

_V2_INSERT = (
    "INSERT INTO messages(seq, id, sender_id, client_id, body, attachments, created_at)"
    " VALUES (?, ?, ?, ?, ?, '[]', ?)"
)


def write_release_1_file(path: Path, total: int) -> float:
    conn = open_db(path, "OFF")
    migrate(conn, sql.MIGRATIONS[:2])
    pad = "y" * 60
    start = time.monotonic()
    batch = 50_000
    for lo in range(1, total + 1, batch):
        rows = (
            (seq, f"m_h{seq}", f"u_{seq % 3}", f"h{seq}", f"{seq} {pad}", 1764150000000)
            for seq in range(lo, min(lo + batch, total + 1))
        )
        with conn:
            conn.executemany(_V2_INSERT, rows)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.monotonic() - start


def time_migration(path: Path) -> dict[str, Any]:
    conn = open_db(path, "FULL")
    start = time.monotonic()
    migrate(conn, sql.MIGRATIONS)
    seconds = time.monotonic() - start
    version = conn.execute("PRAGMA user_version").get
    # The new code reads the old rows: rev == seq, the v1.1 fields at their defaults.
    probe = sql.message(conn, "c_1", 12345)
    assert probe is not None and probe.rev == probe.seq
    start = time.monotonic()
    last_rev = sql.last_rev(conn)
    page, _ = sql.changes(conn, "c_1", last_rev - 200, 200)
    read_ms = (time.monotonic() - start) * 1000
    assert len(page) == 200
    conn.close()
    wal = Path(str(path) + "-wal")
    return {
        "migrate_seconds": round(seconds, 3),
        "schema_version": version,
        "wal_bytes_after": wal.stat().st_size if wal.exists() else 0,
        "file_bytes": path.stat().st_size,
        "last_rev_and_changes_page_ms": round(read_ms, 2),
    }


def time_inserts(directory: Path, secure_delete: bool, rows: int = 20_000) -> dict[str, Any]:
    path = directory / f"insert-{int(secure_delete)}.sqlite3"
    conn = open_db(path, "FULL")
    conn.execute(f"PRAGMA secure_delete = {'ON' if secure_delete else 'OFF'}")
    migrate(conn, sql.MIGRATIONS)
    per_commit = 64
    cpu0, wall0 = time.process_time(), time.monotonic()
    for lo in range(1, rows + 1, per_commit):
        with transaction(conn):
            for seq in range(lo, min(lo + per_commit, rows + 1)):
                message = Message(
                    id=f"m_{seq}",
                    conversation_id="c_1",
                    seq=seq,
                    sender_id=f"u_{seq % 5}",
                    client_id=f"k{seq}",
                    body=f"{seq} " + "x" * 60,
                    attachments=[],
                    created_at=1764150000000,
                )
                sql.insert_message(conn, message)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    # Changes that free space: edits (the old body moves to `edits`), then deletes.
    cpu1, wall1 = time.process_time(), time.monotonic()
    rev = rows
    for lo in range(1, rows + 1, per_commit):
        with transaction(conn):
            for seq in range(lo, min(lo + per_commit, rows + 1)):
                rev += 1
                sql.edit(conn, seq, f"{seq} " + "x" * 60, "edited " + "z" * 60, 1, rev)
    for lo in range(1, rows + 1, per_commit):
        with transaction(conn):
            for seq in range(lo, min(lo + per_commit, rows + 1)):
                rev += 1
                sql.tombstone(conn, seq, "edited " + "z" * 60, 2, rev)
    change_cpu, change_wall = time.process_time() - cpu1, time.monotonic() - wall1
    conn.close()
    return {
        "secure_delete": secure_delete,
        "insert_rows_per_s": round(rows / wall),
        "insert_cpu_us_per_row": round(cpu * 1e6 / rows, 1),
        "edit_and_delete_changes_per_s": round(2 * rows / change_wall),
        "edit_and_delete_cpu_us_per_change": round(change_cpu * 1e6 / (2 * rows), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    directory = Path(args.dir or tempfile.mkdtemp(prefix="messageai-migration-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        path = directory / "release1.sqlite3"
        out: dict[str, Any] = {"messages": args.messages}
        out["write_seconds"] = round(write_release_1_file(path, args.messages), 1)
        out.update(time_migration(path))
        out["inserts"] = [time_inserts(directory, False), time_inserts(directory, True)]
        print(json.dumps(out, indent=2))
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
