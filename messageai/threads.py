"""Where blocking work runs: the one module that decides inline or thread, measured.

The policy (measured on the 2-core VM; see README, "Performance"):

- **Short indexed reads run inline on the event loop**: directory lookups, a
  conversation's summary, history pages. A page of 200 messages read in a worker
  thread was worse than inline (p99 29-30 vs 20-24 ms; 2,053 vs 1,389-1,623 µs a
  page): building objects and encoding hold the GIL either way, and the hop is added.
  Callers just call the `store/` function; nothing here wraps them.
- **Commits run on a `WorkerPool`** of long-lived threads: a round trip costs
  80-120 µs of CPU against 150-178 µs for `trio.to_thread.run_sync` (20,000 calls).
  The registry owns the actors' pool (`storage.commit_threads` threads: every
  conversation open and commit); the directory owns a pool of one thread, which
  also serialises its writes.
- **Except the small commit of a conversation alone**: a batch of one or two sends
  or read marks commits inline on the loop while `WorkerPool.solo` says no other
  conversation has used the commit threads lately (and nothing is in them). With
  one busy conversation the loop has nothing else to do during that fsync, and the
  hand-off (a thread wake-up, the GIL passed back and forth, the loop's wake-up)
  cost more than the commit's own work: 1 room x 2 closed loop -22 % server CPU
  per message (README, "Performance", issue 13). Many conversations at once still
  commit in threads, so their fsyncs overlap: committing every batch inline
  measured far worse there (throughput fell to a third).
- **Other blocking work runs through `blocking()`**: file I/O and fsync (media),
  gzip of push requests, anything else that would hold the loop for more than a
  millisecond. It uses `trio.to_thread.run_sync` (rarer, longer calls: its ~180 µs
  hop does not matter) under one limiter of `BLOCKING_THREADS`. Password hashes go
  through `hashing()`, a smaller limiter (`HASHING_THREADS`): each holds ~16 MiB
  for ~50 ms. (gzip of 100 notifications of 4 KiB, 400 KB of JSON: ~28 ms at
  level 9, ~6 ms at level 1, 15 ms at level 1 for random text; zlib releases the
  GIL, so in a thread the loop only pays the hop.)

WorkerPool lifecycle: the threads start at the first job and then wait on one
`queue.SimpleQueue` until `close()`, which the owner calls once no job can be
running (the server: after its actors' nursery has exited). They are daemon
threads only as a safety net against a forgotten `close()`.

A job costs one queue put (one thread wake-up) and one `TrioToken.run_sync_soon`
(one loop wake-up) that reschedules the waiting task with the job's outcome;
none of `trio.to_thread.run_sync`'s per-call limiter, context copy and thread
renaming.

Cancellation: a job still in the queue is withdrawn and never runs (the caller
gets `trio.Cancelled`). A job that a thread has started is never abandoned: the
caller keeps waiting until it returns, gets its result or its exception, and
sees the cancellation at its next checkpoint (like `trio.to_thread.run_sync`
without `abandon_on_cancel`, which is also what `blocking()` does). So a
transaction in flight always ends before its connection is touched again from
the loop, even at shutdown.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import outcome
import trio

T = TypeVar("T")
P = ParamSpec("P")

# Threads for `blocking()` at once: file I/O and fsyncs overlap with each other and
# with the loop; more would only queue on the same two cores and disk.
BLOCKING_THREADS = 4
# Password hashes at once: each takes ~16 MiB and ~50 ms, so two bound both.
HASHING_THREADS = 2
# `WorkerPool.solo`: an owner is alone while no other has asked for this long. Well
# above the gap between two conversations' commits under load (under a millisecond at
# 100 x 2), well below the pause that makes a conversation quiet.
SOLO_SECONDS = 0.05

# Per Trio run (tests start many runs in one process; a limiter belongs to one).
_blocking_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar(
    "messageai blocking limiter"
)
_hashing_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar(
    "messageai hashing limiter"
)


def _limiter(var: trio.lowlevel.RunVar[trio.CapacityLimiter], size: int) -> trio.CapacityLimiter:
    try:
        return var.get()
    except LookupError:
        limiter = trio.CapacityLimiter(size)
        var.set(limiter)
        return limiter


async def blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn(*args, **kwargs)` in a Trio worker thread, at most BLOCKING_THREADS at a
    time: file I/O, fsync and other long blocking calls that are not a commit.
    Cancellation while waiting for a thread withdraws the call; a started call is
    waited for (never abandoned)."""
    limiter = _limiter(_blocking_limiter, BLOCKING_THREADS)
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=limiter)


async def hashing(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Like `blocking`, for password hashing: at most HASHING_THREADS at a time."""
    return await hashing_admitted(_admit_all, fn, *args, **kwargs)


async def hashing_admitted(
    admit: Callable[[], None], fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`hashing`, calling `admit()` on the loop once a hashing turn is free, right
    before the thread starts; `admit` may raise to withdraw the call. The login
    throttle checks there, so attempts that queued behind the failures that caused
    a lockout cannot slip past it."""
    async with _limiter(_hashing_limiter, HASHING_THREADS):
        admit()
        # The turn is held above; Trio's default limiter (40 threads) never binds here.
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


def _admit_all() -> None:
    pass


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
        # Jobs queued or running, and the last caller of `solo` and when (monotonic).
        self._in_flight = 0
        self._last_owner: object = None
        self._last_at = 0.0

    def solo(self, owner: object) -> bool:
        """Whether `owner` may run its next short job inline on the event loop instead
        of here: no job is queued or running, and no other owner asked within
        SOLO_SECONDS (see the module: one busy conversation alone). Every call counts
        as `owner`'s use, so two owners that take turns both get threads."""
        now = time.monotonic()
        alone = self._in_flight == 0 and (
            self._last_owner is owner or now - self._last_at > SOLO_SECONDS
        )
        self._last_owner, self._last_at = owner, now
        return alone

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in a worker thread and return its result (or raise its
        exception). Waits for a free thread in FIFO order. Cancellation withdraws a
        job that has not started; a started job is waited for (see the module)."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        if not self._threads:
            self._start()
        job = _Job(fn, args)
        self._in_flight += 1
        self._queue.put(job)

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            with job.lock:
                if job.state == _QUEUED:
                    job.state = _WITHDRAWN
                    return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED

        # The worker reschedules this task with the job's outcome, which Trio unwraps.
        try:
            result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            self._in_flight -= 1
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
