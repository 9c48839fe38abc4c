"""What the WAL replica costs a commit (docs/SCALE.md §7): small commits of a real
conversation file without and with `Replica.ship` (one conditional PUT of the commit's
frames, as the actor does before its acks), a bare PUT for comparison, and a restore
of what was shipped (the snapshot and every segment after it).

    .venv/bin/python -m bench.replica_cost [--commits 300] [--endpoint URL --bucket NAME]

Without `--endpoint` it starts the tests' S3 stand-in on loopback (`python -m
tests.s3_server`, a process of its own). CPU is this process's: the node's side of a
PUT (signing, httpx); wall is what an ack waits.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from messageai.cluster.replica import Replica, ReplicaSettings, claim, restore
from messageai.sqlite import open_db, transaction


@contextlib.contextmanager
def _endpoint(given: str | None) -> Iterator[str]:
    if given is not None:
        yield given
        return
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.s3_server"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def _per_call(label: str, calls: int) -> Iterator[None]:
    """Print the block's CPU and wall time per call."""
    cpu, wall = time.process_time(), time.perf_counter()
    yield
    cpu_per, wall_per = (time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls
    print(f"{label}: {cpu_per * 1e6:.0f} µs CPU, {wall_per * 1e3:.2f} ms wall")


def _commit(conn: object, seq: int) -> None:
    assert hasattr(conn, "execute")
    with transaction(conn):  # type: ignore[arg-type]
        conn.execute(
            "INSERT INTO messages(id, sender_id, client_id, body, attachments, created_at)"
            " VALUES (?, 'u_ada', ?, ?, '[]', 0)",
            (f"m{seq}", f"c{seq}", "a message of a typical length, " * 4),
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replica_cost")
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    parser.add_argument("--endpoint", help="an S3-compatible store (default: the stand-in)")
    parser.add_argument("--bucket", default=f"bench-{uuid.uuid4().hex[:12]}")
    parser.add_argument("--access-key", default="test-key")
    parser.add_argument("--secret-key", default="test-secret")
    args = parser.parse_args()
    with _endpoint(args.endpoint) as endpoint, tempfile.TemporaryDirectory() as tmp:
        settings = ReplicaSettings(
            endpoint, args.bucket, args.access_key, args.secret_key, timeout_seconds=30
        )
        store = settings.store()
        if args.endpoint is None:
            store.create_bucket()
        path = Path(tmp) / "c.sqlite3"
        replica = Replica(store, settings, "c_bench", 1, 1)
        claim(replica, path, args.synchronous, "bench")
        conn = open_db(path, args.synchronous)
        try:
            replica.configure(conn)
            seq = 0
            for label, ship in (("without the replica", False), ("with the replica", True)):
                with _per_call(f"commit {label} ({args.synchronous})", args.commits):
                    for _ in range(args.commits):
                        seq += 1
                        _commit(conn, seq)
                        if ship:
                            replica.ship(conn)
                if not ship:
                    # What those commits wrote, shipped as one segment (not measured).
                    replica.ship(conn)
            with _per_call("bare conditional PUT of 4 KiB", args.commits):
                for n in range(args.commits):
                    store.put(f"bench/{n}", b"x" * 4200, if_none_match=True)
        finally:
            conn.close()
        store.close()
        size = path.stat().st_size
        # A new owner's own client, as on another node.
        store = settings.store()
        wall = time.perf_counter()
        restored = restore(store, settings, "c_bench", Path(tmp) / "restored" / "c.sqlite3")
        print(
            f"restore: {restored.segments} segments ({size / 1e6:.1f} MB file):"
            f" {(time.perf_counter() - wall) * 1e3:.0f} ms"
        )
        store.close()


if __name__ == "__main__":
    main()
