"""When action items are extracted (`ai/action_item_triggers.py`), with a real jobs
runner on a real file: a burst of touches is one job per conversation per slot, run
at the slot's end; touches past the bound are dropped and counted, never waited for."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio
import trio.lowlevel

from messageai.ai.action_item_job import KIND, check_payload
from messageai.ai.action_item_triggers import ActionItemTriggers
from messageai.jobs import JobContext, JobKind, Jobs
from messageai.store import jobs as sql
from tests.helpers import make_config

DEBOUNCE = 0.3


@contextlib.asynccontextmanager
async def _running(
    tmp_path: Path,
    ran: list[JobContext],
    max_waiting: int = 100,
    started: list[float] | None = None,
) -> AsyncIterator[tuple[Jobs, ActionItemTriggers]]:
    async def handle(ctx: JobContext) -> None:
        ran.append(ctx)
        times.append(time.time())

    times: list[float] = started if started is not None else []
    config = make_config(tmp_path / "data", jobs={"poll_seconds": 0.05})
    jobs = Jobs(config, [JobKind(KIND, handle, check_payload)])
    triggers = ActionItemTriggers(jobs, debounce_seconds=DEBOUNCE, max_waiting=max_waiting)
    async with trio.open_nursery() as nursery:
        await nursery.start(jobs.run)
        await nursery.start(triggers.run)
        yield jobs, triggers
        nursery.cancel_scope.cancel()


async def test_a_burst_of_touches_is_one_job_per_conversation_per_slot(tmp_path: Path) -> None:
    ran: list[JobContext] = []
    started: list[float] = []
    with trio.fail_after(20):
        async with _running(tmp_path, ran, started=started) as (jobs, triggers):
            # Start just after a slot boundary so that the burst falls in one slot.
            await trio.sleep(DEBOUNCE - time.time() % DEBOUNCE + 0.01)
            for _ in range(20):
                triggers.touched("c_a")
                triggers.touched("c_b")
                await trio.lowlevel.checkpoint()
            while len(ran) < 2:
                await trio.sleep(0.02)
            await trio.sleep(DEBOUNCE)  # nothing more comes of that burst
            stored = await jobs.inspect(sql.all_jobs)
    assert sorted(c.payload["conversation_id"] for c in ran) == ["c_a", "c_b"]
    assert [job.state for job in stored] == ["done", "done"]
    [slot] = {int(job.dedup_key.rsplit(":", 1)[1]) for job in stored}
    # Each ran once its slot had ended, not at the first touch.
    assert all(at >= (slot + 1) * DEBOUNCE for at in started)


async def test_touches_past_the_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    ran: list[JobContext] = []
    with trio.fail_after(20):
        async with _running(tmp_path, ran, max_waiting=3) as (_jobs, triggers):
            for n in range(5):
                triggers.touched(f"c_{n}")  # no checkpoint: the task has not drained yet
            assert triggers.dropped == 2
            while len(ran) < 3:
                await trio.sleep(0.02)
    assert sorted(c.payload["conversation_id"] for c in ran) == ["c_0", "c_1", "c_2"]
