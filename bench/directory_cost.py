"""What a directory read and write cost in each mode (docs/SCALE.md §8): the token
lookup of every REST request (`user_by_token`) and a token insert (a login's write),
through a real `Directory`, on `directory.sqlite3` and on PostgreSQL. For reads, three
ways: inline on the loop (SQLite's today), `read` in PostgreSQL mode (a round trip that
blocks the loop) and `fetch` (the read pool's threads: the loop only hops).

    .venv/bin/python -m bench.directory_cost [--reads 2000] [--writes 300]

Runs a PostgreSQL of its own as the tests do (`tests/postgres_server.py`: Debian's,
`fsync = off`, so write figures are the round trips, not a disk's). Prints, per call,
wall time and the event loop thread's CPU time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from messageai import passwords
from messageai.config import Config
from messageai.services.directory import Directory
from messageai.store import directory as sql
from tests.helpers import make_config
from tests.postgres_server import postgres_server


async def _measure(label: str, n: int, call: Callable[[int], Awaitable[object]]) -> None:
    wall, cpu = time.perf_counter(), time.thread_time()
    for i in range(n):
        await call(i)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    print(f"{label:<44} {wall / n * 1e6:8.0f} µs wall {cpu / n * 1e6:8.0f} µs loop CPU")


async def _run(config: Config, reads: int, writes: int, mode: str) -> None:
    directory = Directory(config)
    try:
        user, token = await directory.register("bench", "password1", None)
        token_hash = passwords.token_hash(token)

        async def inline(_i: int) -> object:
            return directory.read(sql.user_by_token, token_hash, 0)

        async def fetched(_i: int) -> object:
            return await directory.fetch(sql.user_by_token, token_hash, 0)

        async def write(i: int) -> object:
            return await directory.write(
                sql.insert_token, i.to_bytes(8, "big") + b"bench", user.id, 0, 2**40
            )

        await _measure(f"{mode}: read on the loop", reads, inline)
        if mode == "postgres":
            await _measure(f"{mode}: fetch (read pool)", reads, fetched)
        await _measure(f"{mode}: write (one transaction)", writes, write)
    finally:
        directory.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.directory_cost")
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--writes", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = make_config(Path(tmp) / "sqlite", storage={"synchronous": "NORMAL"})
        trio.run(_run, sqlite, args.reads, args.writes, "sqlite (NORMAL)")
        with postgres_server() as server, server.database("bench") as url:
            config = make_config(
                Path(tmp) / "pg",
                directory={"url": url, "password_file": str(server.password_file)},
            )
            trio.run(_run, config, args.reads, args.writes, "postgres")


if __name__ == "__main__":
    main()
