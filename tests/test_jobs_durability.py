"""Durable jobs across kill -9 of a real server process (`python -m tests.jobserver`,
the server with the test job kinds): a job interrupted before its effect and one
interrupted after its effect but before it was marked done both run again once their
lease expires after the restart, and each effect happens exactly once.

Jobs are added by this test process straight into the server's `jobs.sqlite3` (the
runner polls for jobs added by another process); the handlers' events and effects are
read from `test-effects.sqlite3`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio

from messageai.model import now_ms
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import jobs as sql
from tests.helpers import ServerProcess
from tests.jobkinds import effects, events

CONFIG = "[jobs]\npoll_seconds = 0.05\nlease_seconds = 1.0\n"


def _enqueue(data: Path, job_id: str, payload: dict[str, object]) -> None:
    conn = open_db(data / sql.JOBS_FILE, "FULL")
    try:
        migrate(conn, sql.MIGRATIONS)
        with transaction(conn):
            now = now_ms()
            assert sql.enqueue(
                conn, job_id, "test.effect", job_id, orjson.dumps(payload).decode(), now, now, 100
            )
    finally:
        conn.close()


def _job(data: Path, job_id: str) -> sql.Job:
    conn = open_db(data / sql.JOBS_FILE, "FULL")
    try:
        job = sql.get(conn, job_id)
    finally:
        conn.close()
    assert job is not None
    return job


@pytest.mark.slow
async def test_kill_9_mid_job_runs_it_again_after_restart_and_its_effect_happens_once(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config_file = ServerProcess.write_config(tmp_path / "messageai.toml", CONFIG)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            proc = ServerProcess(data, config_file, module="tests.jobserver")
            await proc.start(nursery)
            # Held on their first attempt: one before its effect, one after it (the
            # effect committed, the job not yet marked done).
            _enqueue(data, "j_before", {"value": "B", "hold": "before", "hold_attempts": 1})
            _enqueue(data, "j_after", {"value": "A", "hold": "after", "hold_attempts": 1})
            # Until both are there (a proper-subset test ended the wait as soon as any
            # other event, j_after's start, was: the kill then came before its effect).
            while not {("j_before", "start"), ("j_after", "applied")} <= {
                (j, e) for j, _, e in events(data)
            }:
                await trio.sleep(0.02)
            assert _job(data, "j_before").state == "running"
            assert _job(data, "j_after").state == "running"
            proc.kill()
            assert await proc.wait() == -9

        async with trio.open_nursery() as nursery:
            proc = ServerProcess(data, config_file, module="tests.jobserver")
            await proc.start(nursery)
            # The dead process's leases expire (lease_seconds) and the new one claims them.
            while {_job(data, j).state for j in ("j_before", "j_after")} != {"done"}:
                await trio.sleep(0.05)
            proc.terminate()
            assert await proc.wait() == 0

    assert _job(data, "j_before").attempts == 2 and _job(data, "j_after").attempts == 2
    assert [(a, e) for j, a, e in events(data) if j == "j_before"] == [
        (1, "start"),
        (2, "start"),
        (2, "applied"),
    ]
    # The second run found its effect written and did not repeat it.
    assert [(a, e) for j, a, e in events(data) if j == "j_after"] == [
        (1, "start"),
        (1, "applied"),
        (2, "start"),
        (2, "already applied"),
    ]
    assert effects(data) == {"job:j_before": "B", "job:j_after": "A"}
