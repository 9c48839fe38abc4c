"""The worker pool that runs commits: results, exceptions, cancellation and shutdown.

Real threads and the real clock; each test closes its pool, so no thread outlives it.
"""

from __future__ import annotations

import threading

import pytest
import trio

from messageai.threads import SOLO_SECONDS, WorkerPool


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("test pool")]


async def test_run_returns_the_result_from_a_worker_thread() -> None:
    pool = WorkerPool(2, name="test pool")
    try:
        main = threading.get_ident()
        ident = await pool.run(threading.get_ident)
        assert ident != main
        assert await pool.run(lambda a, b: a + b, 2, 3) == 5
    finally:
        pool.close()
    assert _pool_threads() == []


async def test_an_exception_in_the_job_is_raised_in_the_caller() -> None:
    def fail() -> None:
        raise ValueError("disk on fire")

    pool = WorkerPool(1, name="test pool")
    try:
        with pytest.raises(ValueError, match="disk on fire"):
            await pool.run(fail)
        assert await pool.run(lambda: "still works") == "still works"
    finally:
        pool.close()


async def test_cancel_while_a_job_runs_waits_for_it_and_returns_its_result() -> None:
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(5)
        done.append("committed")
        return "committed"

    pool = WorkerPool(1, name="test pool")
    try:
        results: list[str] = []
        caller_scope = trio.CancelScope()

        async def caller() -> None:
            with caller_scope:
                results.append(await pool.run(slow))
                await trio.lowlevel.checkpoint()  # the cancellation lands here
                results.append("not reached")

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller)
                await trio.to_thread.run_sync(started.wait)
                caller_scope.cancel()
                await trio.sleep(0.05)
                assert done == [], "the job is still running, and its caller still waits"
                release.set()
        assert caller_scope.cancelled_caught
        assert done == ["committed"] and results == ["committed"]
    finally:
        release.set()
        pool.close()


async def test_cancel_while_a_job_runs_and_then_the_job_raises() -> None:
    # The caller is cancelled while its job runs; the job then fails. The caller gets
    # the job's exception (it waited for it, as for a result), the cancellation lands
    # at its next checkpoint, the task is rescheduled once (twice would crash the
    # run), and the pool's thread goes on to serve the next job.
    started, release = threading.Event(), threading.Event()

    def failing() -> None:
        started.set()
        release.wait(5)
        raise ValueError("disk on fire")

    pool = WorkerPool(1, name="test pool")
    try:
        seen: list[str] = []
        caller_scope = trio.CancelScope()

        async def caller() -> None:
            with caller_scope:
                try:
                    await pool.run(failing)
                except ValueError as exc:
                    seen.append(str(exc))
                await trio.lowlevel.checkpoint()  # the cancellation lands here
                seen.append("not reached")

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller)
                await trio.to_thread.run_sync(started.wait)
                caller_scope.cancel()
                await trio.sleep(0.05)
                assert seen == [], "the job is still running, and its caller still waits"
                release.set()
            assert caller_scope.cancelled_caught
            assert seen == ["disk on fire"]
            assert await pool.run(lambda: "next") == "next"
            assert len(_pool_threads()) == 1
    finally:
        release.set()
        pool.close()


async def test_cancel_withdraws_a_job_that_has_not_started() -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def occupy() -> bool:
        started.set()
        return release.wait(5)

    pool = WorkerPool(1, name="test pool")
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.run, occupy)
                await trio.to_thread.run_sync(started.wait)
                with trio.move_on_after(0.05) as scope:
                    await pool.run(ran.append, "queued")
                assert scope.cancelled_caught
                release.set()
        assert await pool.run(lambda: "next") == "next"
        assert ran == [], "a withdrawn job never runs"
    finally:
        release.set()
        pool.close()


async def test_close_stops_every_thread_and_refuses_new_jobs() -> None:
    pool = WorkerPool(3, name="test pool")
    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(pool.run, threading.get_ident)
    assert len(_pool_threads()) == 3
    pool.close()
    assert _pool_threads() == []
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(lambda: None)


async def test_solo_while_nothing_runs_and_no_other_owner_asked_lately() -> None:
    # The actor commits on the loop only while `solo` says it is alone (threads.py).
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(5)

    pool = WorkerPool(1, name="test pool")
    ada, bob = object(), object()
    try:
        assert pool.solo(ada) and pool.solo(ada), "one owner, nothing running: alone"
        assert not pool.solo(bob), "ada asked just now"
        assert not pool.solo(ada), "bob asked just now: they take turns, both use threads"
        assert pool.solo(ada), "ada again, bob not since"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, hold)
            await trio.to_thread.run_sync(started.wait, 5)
            assert not pool.solo(ada), "a job is running"
            release.set()
        assert pool.solo(ada), "the job is done"
        await trio.sleep(SOLO_SECONDS * 2)
        assert pool.solo(bob), "ada has been quiet long enough"
    finally:
        release.set()
        pool.close()
