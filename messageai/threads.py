"""Long-lived worker threads for the conversation actors' blocking storage work.

The registry owns one pool (`storage.commit_threads` threads); actors run every
database open and every commit through it. Lifecycle: the threads start at the
first job and then wait on one `queue.SimpleQueue` until `close()`, which the
server calls once its actors' nursery has exited (no job can be running then).
They are daemon threads only as a safety net against a forgotten `close()`.

A job costs one queue put (one thread wake-up) and one `TrioToken.run_sync_soon`
(one loop wake-up) that reschedules the waiting task with the job's outcome;
none of `trio.to_thread.run_sync`'s per-call limiter, context copy and thread
renaming (measured on the 2-core VM: see README, "Performance").

Cancellation: a job still in the queue is withdrawn and never runs (the caller
gets `trio.Cancelled`). A job that a thread has started is never abandoned: the
caller keeps waiting until it returns, gets its result or its exception, and
sees the cancellation at its next checkpoint (like `trio.to_thread.run_sync`
without `abandon_on_cancel`). So a transaction in flight always ends before its
connection is touched again from the loop, even at shutdown.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

_QUEUED, _RUNNING, _WITHDRAWN = 0, 1, 2


class _Job:
    __slots__ = ("args", "fn", "lock", "state", "task", "token")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.task = trio.lowlevel.current_task()
        self.token = trio.lowlevel.current_trio_token()
        self.state = _QUEUED
        self.lock = threading.Lock()


class WorkerPool:
    """A fixed number of threads running blocking calls for Trio tasks, in FIFO order."""

    def __init__(self, size: int, name: str = "messageai worker") -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self._size = size
        self._name = name
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in a worker thread and return its result (or raise its
        exception). Waits for a free thread in FIFO order. Cancellation withdraws a
        job that has not started; a started job is waited for (see the module)."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        if not self._threads:
            self._start()
        job = _Job(fn, args)
        self._queue.put(job)

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            with job.lock:
                if job.state == _QUEUED:
                    job.state = _WITHDRAWN
                    return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED

        # The worker reschedules this task with the job's outcome, which Trio unwraps.
        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def close(self) -> None:
        """Stop the threads once they have finished what was queued before; blocks
        until they have exited. Call when no task can submit or wait any more."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def _start(self) -> None:
        for i in range(self._size):
            thread = threading.Thread(target=self._work, name=f"{self._name} {i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with job.lock:
                if job.state == _WITHDRAWN:
                    continue
                job.state = _RUNNING
            result = outcome.capture(job.fn, *job.args)
            # RunFinishedError only if the run ended while a started job was still
            # awaited, which `run` rules out; there is no task left to hand it to.
            with contextlib.suppress(trio.RunFinishedError):
                job.token.run_sync_soon(trio.lowlevel.reschedule, job.task, result)
            del job, result
