"""What the cluster's epoch fence costs a commit (docs/SCALE.md §4): `Fence.check` alone,
in a loop inside one transaction, and small commits of a real conversation file with
and without it (the actor's batch transaction calls it once, just before COMMIT).
A single-node actor has no fence: its cost there is one `is not None` test.

    .venv/bin/python -m bench.fence_cost [--checks 100000] [--commits 300] [--synchronous FULL]

Prints CPU time per check, and CPU and wall time per commit for each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from messageai.cluster.fence import Fence, claim_file
from messageai.sqlite import open_db, transaction


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fence_cost")
    parser.add_argument("--checks", type=int, default=100_000)
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.sqlite3"
        claim_file(path, args.synchronous, 1, "bench")
        conn = open_db(path, args.synchronous)
        fence = Fence(1, lambda: True)
        try:
            with transaction(conn):
                started = time.process_time()
                for _ in range(args.checks):
                    fence.check(conn)
                per_check = (time.process_time() - started) / args.checks
            print(f"Fence.check: {per_check * 1e6:.2f} µs CPU ({args.checks} in one transaction)")
            for label, check in (("without the fence", None), ("with the fence", fence)):
                cpu, wall = time.process_time(), time.perf_counter()
                for seq in range(args.commits):
                    with transaction(conn):
                        conn.execute(
                            "INSERT INTO read_cursors(user_id, seq) VALUES ('u', ?)"
                            " ON CONFLICT(user_id) DO UPDATE SET seq = excluded.seq",
                            (seq,),
                        )
                        if check is not None:
                            check.check(conn)
                cpu_per = (time.process_time() - cpu) / args.commits
                wall_per = (time.perf_counter() - wall) / args.commits
                print(
                    f"commit {label} ({args.synchronous}): {cpu_per * 1e6:.0f} µs CPU,"
                    f" {wall_per * 1e3:.2f} ms wall"
                )
        finally:
            conn.close()


if __name__ == "__main__":
    main()
