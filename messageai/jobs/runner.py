"""The jobs service: owns `jobs.sqlite3` and runs due jobs, a bounded number at a time.

Started by `Server.run` in the actor nursery beside the other services
(`await nursery.start(jobs.run)`); callers anywhere in the server enqueue with
`Jobs.enqueue`, which returns once the job is committed and never waits for it to run.

Lifecycle. `run` opens the file (one write thread does every statement, in order),
reports ready, then loops: claim up to `jobs.concurrency` free slots' worth of due jobs
with a lease (one transaction), start each handler as a task in the runner's own
nursery, sleep until the next job is due, a slot frees, something is enqueued, or
`jobs.poll_seconds` pass (jobs enqueued by another process on the same file). A
heartbeat renews the leases of running jobs every third of `jobs.lease_seconds`; a
handler whose lease was taken over is cancelled. A handler that raises is retried after
an exponential backoff with full jitter (`messageai.backoff`), until `max_attempts`,
then the job is dead with its last error kept. At shutdown the running handlers are
cancelled and their jobs given back (queued, the attempt not counted). After a crash
(kill -9) their leases simply expire and the next runner claims them.

Supervision: a handler's failure is only that attempt's outcome; a statement that
fails (a full disk) is logged and tried again on the next pass (the leases it could not
settle expire); a bug in the runner's own loop restarts the loop, not the server.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import apsw
import attrs
import orjson
import trio

from messageai.backoff import Backoff
from messageai.config import Config
from messageai.counters import COUNTS
from messageai.jobs.kind import (
    BadJob,
    JobContext,
    JobKind,
    JobRefused,
    QueueFull,
    describe_error,
)
from messageai.model import new_id, now_ms
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import jobs as sql
from messageai.threads import WorkerPool

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_DEDUP_KEY_CHARS = 200
# Finished jobs are purged this often (and at start).
PURGE_INTERVAL_SECONDS = 3600.0
PURGE_BATCH = 1000
# Giving a job back at shutdown may take this long before its lease is left to expire.
RELEASE_SECONDS = 1.0


@attrs.frozen
class Enqueued:
    job_id: str
    created: bool  # False: a job of the same kind and dedup key existed already


@attrs.define
class _Running:
    job: sql.Job
    scope: trio.CancelScope
    lost: bool = False


class Jobs:
    def __init__(
        self, config: Config, kinds: Iterable[JobKind], *, rng: random.Random | None = None
    ) -> None:
        self._config = config.jobs
        self._synchronous = config.storage.synchronous
        self.path: Path = config.data_dir / sql.JOBS_FILE
        self._kinds: dict[str, JobKind] = {}
        for kind in kinds:
            if kind.name in self._kinds:
                raise ValueError(f"job kind {kind.name!r} is registered twice")
            self._kinds[kind.name] = kind
        self._rng = rng or random.Random()
        self.owner = new_id("jr_")  # this runner's lease owner id
        self._pool = WorkerPool(1, "messageai jobs")
        self._conn: apsw.Connection | None = None
        self._wake = trio.Event()
        self._running: dict[str, _Running] = {}

    @property
    def running(self) -> int:
        """Handlers running now in this process."""
        return len(self._running)

    # ------------------------------------------------------------------ enqueue

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        dedup_key: str,
        delay_seconds: float = 0.0,
    ) -> Enqueued:
        """Store a job of `kind` (run at once, or after `delay_seconds`) unless one of the
        same kind and `dedup_key` exists. Raises BadJob (unknown kind, a payload the kind
        refuses or larger than `jobs.max_payload_bytes`, a bad key) or QueueFull; nothing
        is stored then. Returns once committed. Cancellation while queued for the write
        thread withdraws the job; once the write has started it completes."""
        if self._conn is None:
            raise JobRefused("the jobs service is not running")
        handler = self._kinds.get(kind)
        if handler is None:
            raise BadJob(f"unknown job kind {kind!r}")
        if not isinstance(dedup_key, str) or not 1 <= len(dedup_key) <= MAX_DEDUP_KEY_CHARS:
            raise BadJob(f"a dedup key is 1 to {MAX_DEDUP_KEY_CHARS} characters")
        if not isinstance(payload, dict):
            raise BadJob("a job payload is a JSON object")
        try:
            text = orjson.dumps(payload)
        except TypeError as exc:
            raise BadJob(f"the payload is not JSON: {exc}") from None
        if len(text) > self._config.max_payload_bytes:
            raise BadJob(f"the payload is over {self._config.max_payload_bytes} bytes")
        try:
            # The check sees the payload as the handler will: parsed back from JSON.
            handler.check(orjson.loads(text))
        except ValueError as exc:
            raise BadJob(f"bad payload for {kind}: {exc}") from None
        if not 0 <= delay_seconds <= 365 * 86400:
            raise BadJob("delay_seconds is from 0 to a year")
        now = now_ms()
        added = await self._write(
            sql.enqueue,
            new_id("j_"),
            kind,
            dedup_key,
            text.decode(),
            now + round(delay_seconds * 1000),
            now,
            self._config.max_pending,
        )
        if added is None:
            raise QueueFull(f"{self._config.max_pending} jobs are waiting already")
        self._wake.set()
        return Enqueued(*added)

    async def inspect(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a `store.jobs` reader (`get`, `find`, `all_jobs`) on the write thread, in
        order with the writes: for tests and inspection."""
        return await self._write(fn, *args)

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the file, report ready, run jobs until cancelled; then give back the
        jobs still running and close the file."""
        try:
            await self._pool.run(self._open)
            started = False
            while True:
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._heartbeat)
                        if not started:
                            task_status.started()
                            started = True
                        await self._dispatch(nursery)
                except Exception:
                    # A bug in the runner itself (handlers' failures never get here):
                    # its handlers were cancelled and gave their jobs back; start over
                    # rather than take the server down.
                    log.exception("jobs: the runner failed; restarting it")
                    await trio.sleep(self._config.poll_seconds)
        finally:
            # Every handler has ended and given its job back: no statement is queued.
            self._pool.close()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = open_db(self.path, self._synchronous)
        try:
            migrate(conn, sql.MIGRATIONS)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(conn, *args)` in one transaction on the write thread."""

        def in_transaction() -> T:
            assert self._conn is not None, "the jobs service is not running"
            with transaction(self._conn):
                return fn(self._conn, *args)

        return await self._pool.run(in_transaction)

    async def _dispatch(self, nursery: trio.Nursery) -> None:
        config = self._config
        next_purge = 0.0
        while True:
            # A fresh event before looking, so a wake-up during the claim is not lost.
            self._wake = trio.Event()
            timeout = config.poll_seconds
            try:
                if trio.current_time() >= next_purge:
                    next_purge = trio.current_time() + PURGE_INTERVAL_SECONDS
                    keep_ms = round(config.keep_finished_seconds * 1000)
                    await self._write(sql.purge, now_ms() - keep_ms, PURGE_BATCH)
                free = config.concurrency - len(self._running)
                if free > 0:
                    claimed, dead, due = await self._write(
                        _claim,
                        self.owner,
                        now_ms(),
                        round(config.lease_seconds * 1000),
                        free,
                        config.max_attempts,
                    )
                    for job in dead:
                        COUNTS.jobs_finished[job.kind, "dead"] += 1
                        log.warning("job %s (%s) is dead: %s", job.id, job.kind, job.last_error)
                    for job in claimed:
                        self._start(nursery, job)
                    if len(claimed) + len(dead) == free:
                        continue  # maybe more are due: look again at once
                    if due is not None:
                        timeout = min(timeout, max(0.0, (due - now_ms()) / 1000))
                else:
                    timeout = float("inf")  # a finishing handler wakes us
            except apsw.Error as exc:
                log.error("jobs: cannot claim (%s); trying again later", type(exc).__name__)
            with trio.move_on_after(timeout):
                await self._wake.wait()

    def _start(self, nursery: trio.Nursery, job: sql.Job) -> None:
        entry = _Running(job, trio.CancelScope())
        self._running[job.id] = entry
        nursery.start_soon(self._run_one, entry)

    async def _run_one(self, entry: _Running) -> None:
        """One attempt, then record how it went. Fenced: if the lease was lost, the
        other runner decides; if this is cancelled (shutdown), the job is given back."""
        job = entry.job
        settled = False
        try:
            error = await self._attempt(entry)
            if entry.lost:
                settled = True
                log.warning("job %s (%s) lost its lease; not recorded here", job.id, job.kind)
                return
            now = now_ms()
            if error is None:
                await self._write(sql.complete, job.id, self.owner, job.attempts, now)
                COUNTS.jobs_finished[job.kind, "done"] += 1
            else:
                retry_at = None
                if job.attempts < self._config.max_attempts:
                    delay = retry_delay(
                        job.attempts,
                        self._config.backoff_base_seconds,
                        self._config.backoff_max_seconds,
                        self._rng,
                    )
                    retry_at = now + round(delay * 1000)
                level = logging.WARNING if retry_at is not None else logging.ERROR
                log.log(
                    level,
                    "job %s (%s) attempt %d failed: %s%s",
                    job.id,
                    job.kind,
                    job.attempts,
                    error,
                    "" if retry_at is not None else "; dead",
                )
                await self._write(sql.fail, job.id, self.owner, job.attempts, now, error, retry_at)
                COUNTS.jobs_finished[job.kind, "retry" if retry_at is not None else "dead"] += 1
            settled = True
        except apsw.Error as exc:
            # Not settled here: the lease expires and the job runs again (its handler
            # finds its effect already written).
            settled = True
            log.error("job %s: cannot record the attempt (%s)", job.id, type(exc).__name__)
        finally:
            self._running.pop(job.id, None)
            self._wake.set()
            if not settled:
                with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_SECONDS):
                    await self._write(sql.release, job.id, self.owner, job.attempts, now_ms())

    async def _attempt(self, entry: _Running) -> str | None:
        """Run the handler: None if it returned, else the error to keep."""
        job = entry.job
        kind = self._kinds.get(job.kind)
        if kind is None:
            return f"no handler for job kind {job.kind[:64]!r} in this server"
        try:
            payload = orjson.loads(job.payload)
        except orjson.JSONDecodeError:
            payload = None  # written by another process without `enqueue`'s checks
        if not isinstance(payload, dict):
            return "the stored payload is not a JSON object"
        ctx = JobContext(job.id, job.kind, job.dedup_key, job.attempts, payload)
        timeout = self._config.attempt_timeout_seconds
        try:
            with entry.scope, trio.fail_after(timeout):
                await kind.handle(ctx)
        except trio.TooSlowError:
            return f"timed out after {timeout:g} s"
        except Exception as exc:
            # Every failure of a handler is an attempt's outcome, never the runner's.
            return describe_error(exc)
        return None

    async def _heartbeat(self) -> None:
        """Renew the leases of the running handlers; cancel those whose lease is lost."""
        config = self._config
        while True:
            await trio.sleep(config.lease_seconds / 3)
            held = [(e.job.id, e.job.attempts) for e in self._running.values()]
            if not held:
                continue
            try:
                kept = await self._write(
                    sql.renew, self.owner, held, now_ms(), round(config.lease_seconds * 1000)
                )
            except apsw.Error as exc:
                log.error("jobs: cannot renew leases (%s)", type(exc).__name__)
                continue
            for job_id, _attempts in held:
                entry = self._running.get(job_id)
                if job_id not in kept and entry is not None:
                    entry.lost = True
                    entry.scope.cancel()


def retry_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number `attempts` (1 for the first): full
    jitter, uniform in [0, min(cap, base * 2**(attempts - 1))], so that jobs failing
    together (an endpoint down) do not come back together."""
    backoff = Backoff(base, cap, rng)
    backoff.attempt = attempts - 1
    return backoff.next_delay()


def _claim(
    conn: apsw.Connection, owner: str, now: int, lease_ms: int, limit: int, max_attempts: int
) -> tuple[list[sql.Job], list[sql.Job], int | None]:
    """`store.jobs.claim`, and when the next job is due, in the same transaction."""
    claimed, dead = sql.claim(conn, owner, now, lease_ms, limit, max_attempts)
    return claimed, dead, sql.next_due(conn)
