"""`threads.blocking` and `threads.hashing`: work runs in worker threads, bounded by
their own limiters. Real threads, the real clock; every held thread is released."""

from __future__ import annotations

import threading

import trio

from messageai.threads import BLOCKING_THREADS, HASHING_THREADS, blocking, hashing


async def test_blocking_runs_off_the_loop_and_passes_arguments() -> None:
    assert await blocking(threading.get_ident) != threading.get_ident()
    assert await blocking(int, "ff", base=16) == 255


async def test_each_kind_of_blocking_work_has_its_own_bounded_threads() -> None:
    release = threading.Event()
    lock = threading.Lock()
    running = {"blocking": 0, "hashing": 0}
    peak = dict(running)

    def hold(kind: str) -> None:
        with lock:
            running[kind] += 1
            peak[kind] = max(peak[kind], running[kind])
        release.wait()
        with lock:
            running[kind] -= 1

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            try:
                for _ in range(BLOCKING_THREADS + 2):
                    nursery.start_soon(blocking, hold, "blocking")
                for _ in range(HASHING_THREADS + 2):
                    nursery.start_soon(hashing, hold, "hashing")
                # Hashing is not starved by full blocking threads, nor the reverse.
                while running != {"blocking": BLOCKING_THREADS, "hashing": HASHING_THREADS}:
                    await trio.sleep(0.01)
                await trio.sleep(0.05)
                assert running == {"blocking": BLOCKING_THREADS, "hashing": HASHING_THREADS}
            finally:
                release.set()
    assert peak == {"blocking": BLOCKING_THREADS, "hashing": HASHING_THREADS}
