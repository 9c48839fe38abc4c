"""The jobs service inside a real in-process server (`Server(config, job_kinds=...)`),
with the test kinds of `tests/jobkinds.py` and real files: enqueue checks, dedup,
retries with backoff and the dead letter, the bound on running jobs, the attempt
timeout, a lost lease, and shutdown giving running jobs back. (SQL alone:
test_jobs_store.py; kill -9 of a real process: test_jobs_durability.py.)

Rules: localhost, port 0, an absolute `trio.fail_after` per test; waiting is polling
the files, never a timed assertion."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from messageai.config import Config
from messageai.jobs import BadJob, Jobs
from messageai.jobs.runner import retry_delay
from messageai.model import now_ms
from messageai.server import Server
from messageai.sqlite import open_db, transaction
from messageai.store import jobs as sql
from tests.helpers import make_config
from tests.jobkinds import effects, events, kinds_for, release

TIMEOUT = 30

FAST = {
    "poll_seconds": 0.05,
    "lease_seconds": 1.0,
    "backoff_base_seconds": 0.02,
    "backoff_max_seconds": 0.05,
}


def _config(tmp_path: Path, **jobs: Any) -> Config:
    return make_config(tmp_path / "data", jobs={**FAST, **jobs})


@contextlib.asynccontextmanager
async def _server(config: Config) -> AsyncIterator[Jobs]:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(
            Server(config, job_kinds=kinds_for(config.data_dir)).run
        )
        assert server.jobs is not None
        try:
            yield server.jobs
        finally:
            server.shutdown()


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await trio.sleep(0.02)


async def _job(jobs: Jobs, job_id: str) -> sql.Job:
    job = await jobs.inspect(sql.get, job_id)
    assert job is not None
    return job


async def _until_state(jobs: Jobs, job_id: str, state: str) -> sql.Job:
    while (job := await _job(jobs, job_id)).state != state:
        await trio.sleep(0.02)
    return job


def _effect(value: str, hold: str = "none", hold_attempts: int = 0) -> dict[str, Any]:
    return {"value": value, "hold": hold, "hold_attempts": hold_attempts}


async def test_bad_jobs_are_refused_at_enqueue_and_nothing_is_stored(tmp_path: Path) -> None:
    config = _config(tmp_path, max_payload_bytes=256)
    with trio.fail_after(TIMEOUT):
        async with _server(config) as jobs:
            bad: list[tuple[str, Any, str, str]] = [
                ("no.such.kind", _effect("x"), "k", "unknown job kind"),
                ("test.effect", ["not", "an", "object"], "k", "JSON object"),
                ("test.effect", {"value": {1, 2}}, "k", "not JSON"),
                ("test.effect", {"value": "x"}, "k", "takes exactly"),
                ("test.effect", _effect(""), "k", "1 to 100"),
                ("test.effect", _effect("x", hold="sideways"), "k", "hold is one of"),
                ("test.effect", _effect("x", hold_attempts=True), "k", "hold_attempts"),
                ("test.effect", {**_effect("x"), "pad": "p" * 300}, "k", "over 256 bytes"),
                ("test.effect", _effect("x"), "", "dedup key"),
                ("test.effect", _effect("x"), "k" * 201, "dedup key"),
            ]
            for kind, payload, key, says in bad:
                with pytest.raises(BadJob, match=says):
                    await jobs.enqueue(kind, payload, dedup_key=key)
            assert await jobs.inspect(sql.all_jobs) == []
            # And a good one goes through, once for its key.
            first = await jobs.enqueue("test.effect", _effect("ok"), dedup_key="k")
            again = await jobs.enqueue("test.effect", _effect("other"), dedup_key="k")
            assert first.created and not again.created and again.job_id == first.job_id
            await _until_state(jobs, first.job_id, "done")
            assert effects(config.data_dir) == {f"job:{first.job_id}": "ok"}


async def test_a_failing_job_is_retried_with_backoff_then_dead_with_its_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tmp_path, max_attempts=3)
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(TIMEOUT):
        async with _server(config) as jobs:
            said = await jobs.enqueue(
                "test.fail", {"mode": "job_failed", "text": "endpoint said 503"}, dedup_key="a"
            )
            leak = await jobs.enqueue(
                "test.fail", {"mode": "leak", "text": "SECRET body of a message"}, dedup_key="b"
            )
            dead = await _until_state(jobs, said.job_id, "dead")
            assert (dead.attempts, dead.last_error) == (3, "endpoint said 503")
            leaked = await _until_state(jobs, leak.job_id, "dead")
            # An exception's own text may be content: only its class is kept and logged.
            assert (leaked.attempts, leaked.last_error) == (3, "ValueError")
    starts = [(job, attempt) for job, attempt, event in events(config.data_dir) if event == "start"]
    assert sorted(a for j, a in starts if j == said.job_id) == [1, 2, 3]
    assert "SECRET" not in caplog.text
    assert "endpoint said 503; dead" in caplog.text


def test_retry_delay_is_full_jitter_doubling_to_the_cap() -> None:
    rng = random.Random(7)
    for attempts, bound in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (30, 5.0)):
        delays = [retry_delay(attempts, 1.0, 5.0, rng) for _ in range(500)]
        assert all(0 <= d <= bound for d in delays)
        # Spread over the whole range, not clustered at the bound.
        assert min(delays) < bound * 0.1 and max(delays) > bound * 0.9


async def test_no_more_than_concurrency_jobs_run_at_once(tmp_path: Path) -> None:
    config = _config(tmp_path, concurrency=2)
    data = config.data_dir
    with trio.fail_after(TIMEOUT):
        async with _server(config) as jobs:
            ids = [
                (await jobs.enqueue("test.gate", {"name": "g"}, dedup_key=f"g{i}")).job_id
                for i in range(5)
            ]
            await _until(lambda: len(events(data)) >= 2)
            # Several claim passes later (poll 0.05 s), still only two have started.
            await trio.sleep(0.3)
            assert [e for _, _, e in events(data)] == ["start", "start"]
            assert jobs.running == 2
            states = [(await _job(jobs, i)).state for i in ids]
            assert sorted(states) == ["queued"] * 3 + ["running"] * 2
            release(data, "g")
            for job_id in ids:
                await _until_state(jobs, job_id, "done")
    running = peak = 0
    for _, _, event in events(data):
        running += 1 if event == "start" else -1
        peak = max(peak, running)
    assert peak == 2 and running == 0


async def test_an_attempt_past_its_timeout_fails_and_is_retried(tmp_path: Path) -> None:
    config = _config(tmp_path, attempt_timeout_seconds=0.2, max_attempts=2)
    with trio.fail_after(TIMEOUT):
        async with _server(config) as jobs:
            job = await jobs.enqueue("test.gate", {"name": "never"}, dedup_key="t")
            dead = await _until_state(jobs, job.job_id, "dead")
            assert (dead.attempts, dead.last_error) == (2, "timed out after 0.2 s")
            # The attempt's task leaves the count just after its state is written.
            await _until(lambda: jobs.running == 0)


async def test_a_handler_whose_lease_is_taken_over_is_cancelled_and_records_nothing(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    data = config.data_dir
    with trio.fail_after(TIMEOUT):
        async with _server(config) as jobs:
            job = await jobs.enqueue("test.gate", {"name": "g"}, dedup_key="x")
            await _until(lambda: len(events(data)) == 1)
            # Another runner, in this test process, on the same file: as if this
            # server's lease had expired (a stall), it claims the job.
            far = now_ms() + 60_000  # past any renewal meanwhile
            conn = open_db(jobs.path, "NORMAL")
            try:
                with transaction(conn):
                    [stolen], _ = sql.claim(conn, "thief", far, 60_000, 1, 5)
            finally:
                conn.close()
            assert stolen.attempts == 2
            await _until(lambda: jobs.running == 0)  # the heartbeat cancelled it
            release(data, "g")
            await trio.sleep(0.2)
            after = await _job(jobs, job.job_id)
            assert (after.state, after.lease_owner, after.attempts) == ("running", "thief", 2)
    assert [e for _, _, e in events(data)] == ["start"]  # never finished here


async def test_shutdown_gives_running_jobs_back_to_run_after_restart(tmp_path: Path) -> None:
    config = _config(tmp_path)
    data = config.data_dir
    with trio.fail_after(TIMEOUT):
        async with _server(config) as jobs:
            job = await jobs.enqueue("test.gate", {"name": "g"}, dedup_key="s")
            await _until(lambda: len(events(data)) == 1)
        conn = open_db(data / sql.JOBS_FILE, "NORMAL")
        try:
            back = sql.get(conn, job.job_id)
        finally:
            conn.close()
        assert back is not None
        # Queued again at once, the interrupted attempt not counted, no lease left.
        assert (back.state, back.attempts, back.lease_owner) == ("queued", 0, None)
        release(data, "g")
        async with _server(config) as jobs:
            done = await _until_state(jobs, job.job_id, "done")
            assert done.attempts == 1
    assert [e for _, _, e in events(data)] == ["start", "start", "end"]
