"""Job kinds for the jobs tests, and the effects file they write (`test-effects.sqlite3`
in the data directory, beside `jobs.sqlite3`).

Registered by `tests/jobserver.py` (a real server process for kill -9) and by in-process
servers (`Server(config, job_kinds=kinds_for(data_dir))`). Every attempt writes an
`events` row (not keyed: it shows how often a handler ran); the effect of `test.effect`
is a row of `effects` keyed by the job's idempotency key, written in one transaction
with its own event, so that a re-run finds it and does nothing (see `messageai.jobs.kind`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import trio

from messageai.jobs import JobContext, JobFailed, JobKind

EFFECTS_FILE = "test-effects.sqlite3"
HOLDS = ("none", "before", "after")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS events(n INTEGER PRIMARY KEY, job_id TEXT, attempt INTEGER,"
        " event TEXT)"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS effects(key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("CREATE TABLE IF NOT EXISTS releases(name TEXT PRIMARY KEY)")
    return conn


def record(path: Path, ctx: JobContext, event: str) -> None:
    conn = _connect(path)
    try:
        conn.execute(
            "INSERT INTO events(job_id, attempt, event) VALUES (?, ?, ?)",
            (ctx.job_id, ctx.attempt, event),
        )
    finally:
        conn.close()


def apply_effect(path: Path, ctx: JobContext, value: str) -> bool:
    """The effect and its key in one transaction; False if the key was there already."""
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                "INSERT OR IGNORE INTO effects(key, value) VALUES (?, ?)", (ctx.key, value)
            )
            applied = cur.rowcount == 1
            conn.execute(
                "INSERT INTO events(job_id, attempt, event) VALUES (?, ?, ?)",
                (ctx.job_id, ctx.attempt, "applied" if applied else "already applied"),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return applied
    finally:
        conn.close()


def events(data_dir: Path) -> list[tuple[str, int, str]]:
    """(job id, attempt, event) in the order they happened."""
    conn = _connect(data_dir / EFFECTS_FILE)
    try:
        return [
            (row[0], row[1], row[2])
            for row in conn.execute("SELECT job_id, attempt, event FROM events ORDER BY n")
        ]
    finally:
        conn.close()


def effects(data_dir: Path) -> dict[str, str]:
    conn = _connect(data_dir / EFFECTS_FILE)
    try:
        return {row[0]: row[1] for row in conn.execute("SELECT key, value FROM effects")}
    finally:
        conn.close()


def release(data_dir: Path, name: str) -> None:
    """Let the `test.gate` jobs named `name` finish."""
    conn = _connect(data_dir / EFFECTS_FILE)
    try:
        conn.execute("INSERT OR IGNORE INTO releases(name) VALUES (?)", (name,))
    finally:
        conn.close()


def _released(path: Path, name: str) -> bool:
    conn = _connect(path)
    try:
        return conn.execute("SELECT 1 FROM releases WHERE name = ?", (name,)).fetchone() is not None
    finally:
        conn.close()


def _check_effect(payload: dict[str, Any]) -> None:
    if set(payload) != {"value", "hold", "hold_attempts"}:
        raise ValueError("takes exactly value, hold and hold_attempts")
    if not isinstance(payload["value"], str) or not 1 <= len(payload["value"]) <= 100:
        raise ValueError("value is a string of 1 to 100 characters")
    if payload["hold"] not in HOLDS:
        raise ValueError(f"hold is one of {HOLDS}")
    attempts = payload["hold_attempts"]
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 0 <= attempts <= 10:
        raise ValueError("hold_attempts is an integer from 0 to 10")


def _check_fail(payload: dict[str, Any]) -> None:
    if payload.get("mode") not in ("job_failed", "leak") or set(payload) != {"mode", "text"}:
        raise ValueError('takes mode ("job_failed" or "leak") and text')
    if not isinstance(payload["text"], str):
        raise ValueError("text is a string")


def _check_gate(payload: dict[str, Any]) -> None:
    if set(payload) != {"name"} or not isinstance(payload["name"], str):
        raise ValueError("takes a name")


def kinds_for(data_dir: Path) -> list[JobKind]:
    """`test.effect`: an effect that must happen once, optionally holding (forever: the
    test kills the process) before or after it on the first `hold_attempts` attempts.
    `test.fail`: always fails, with a JobFailed of `text` or (mode "leak") a ValueError
    whose message is `text`, which must not be kept. `test.gate`: runs until released."""
    path = data_dir / EFFECTS_FILE

    async def effect(ctx: JobContext) -> None:
        payload = ctx.payload
        holding = ctx.attempt <= payload["hold_attempts"]
        await trio.to_thread.run_sync(record, path, ctx, "start")
        if holding and payload["hold"] == "before":
            await trio.sleep_forever()
        await trio.to_thread.run_sync(apply_effect, path, ctx, payload["value"])
        if holding and payload["hold"] == "after":
            await trio.sleep_forever()

    async def fail(ctx: JobContext) -> None:
        await trio.to_thread.run_sync(record, path, ctx, "start")
        if ctx.payload["mode"] == "leak":
            raise ValueError(ctx.payload["text"])
        raise JobFailed(ctx.payload["text"])

    async def gate(ctx: JobContext) -> None:
        await trio.to_thread.run_sync(record, path, ctx, "start")
        while not await trio.to_thread.run_sync(_released, path, ctx.payload["name"]):
            await trio.sleep(0.02)
        await trio.to_thread.run_sync(record, path, ctx, "end")

    return [
        JobKind("test.effect", effect, _check_effect),
        JobKind("test.fail", fail, _check_fail),
        JobKind("test.gate", gate, _check_gate),
    ]
