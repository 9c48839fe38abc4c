"""SQL for durable jobs, in their own file `jobs.sqlite3` under the data directory.

Called only by `messageai.jobs.runner.Jobs` on its one write thread (and by tests on
real files). Every function takes the connection first and runs inside the caller's
transaction, so a claim, a renewal or a completion is one atomic step.

A job's life: `queued` (waiting for `run_at`) → `running` (claimed: `lease_owner` set,
`attempts` counted, `run_at` is then the lease's expiry) → `done`, or back to `queued`
with a later `run_at` after a failure, or `dead` once `max_attempts` are used. A
`running` job whose lease expired (its process died or stalled) is claimable again.
Every change to a running job is fenced by (owner, attempts): a runner that lost its
lease can no longer complete, fail or release the job.
"""

from __future__ import annotations

from typing import Literal

import apsw
import attrs

from messageai.sqlite import Migration

JOBS_FILE = "jobs.sqlite3"

State = Literal["queued", "running", "done", "dead"]


def _v1(conn: apsw.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE jobs(
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            dedup_key TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            run_at INTEGER NOT NULL,
            lease_owner TEXT,
            last_error TEXT,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            UNIQUE (kind, dedup_key),
            CHECK ((state = 'running') = (lease_owner IS NOT NULL))
        );
        -- What the runner looks at: queued jobs by start time, running ones by lease expiry.
        CREATE INDEX jobs_due ON jobs(run_at) WHERE state IN ('queued', 'running');
        CREATE INDEX jobs_finished ON jobs(updated_at) WHERE state IN ('done', 'dead');
        """
    )


MIGRATIONS: tuple[Migration, ...] = (_v1,)

_COLUMNS = (
    "id, kind, dedup_key, payload, state, attempts, run_at, lease_owner, last_error,"
    " created_at, updated_at"
)


@attrs.frozen
class Job:
    id: str
    kind: str
    dedup_key: str
    payload: str  # JSON text, bounded at enqueue
    state: State
    attempts: int
    run_at: int  # ms: earliest start (queued) or lease expiry (running)
    lease_owner: str | None
    last_error: str | None
    created_at: int
    updated_at: int


def _job(row: tuple[object, ...]) -> Job:
    return Job(*row)  # type: ignore[arg-type]


def enqueue(
    conn: apsw.Connection,
    job_id: str,
    kind: str,
    dedup_key: str,
    payload: str,
    run_at: int,
    now: int,
    max_pending: int,
) -> tuple[str, bool] | None:
    """Add a job unless one of the same kind and dedup key exists (in any state: the same
    work is enqueued once, until the finished row is purged). Returns (the job's id,
    whether it was added now), or None when `max_pending` jobs are already waiting or
    running (nothing is added)."""
    row = conn.execute(
        "SELECT id FROM jobs WHERE kind = ? AND dedup_key = ?", (kind, dedup_key)
    ).fetchone()
    if row is not None:
        return str(row[0]), False
    if pending(conn, max_pending) >= max_pending:
        return None
    conn.execute(
        "INSERT INTO jobs(id, kind, dedup_key, payload, state, attempts, run_at,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, 'queued', 0, ?, ?, ?)",
        (job_id, kind, dedup_key, payload, run_at, now, now),
    )
    return job_id, True


def pending(conn: apsw.Connection, limit: int) -> int:
    """Jobs queued or running, counted up to `limit` (the count walks the due index)."""
    count = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state IN ('queued', 'running') LIMIT ?)",
        (limit,),
    ).get
    assert isinstance(count, int)
    return count


def claim(
    conn: apsw.Connection,
    owner: str,
    now: int,
    lease_ms: int,
    limit: int,
    max_attempts: int,
) -> tuple[list[Job], list[Job]]:
    """Lease up to `limit` due jobs to `owner`, oldest due first: queued ones whose
    `run_at` has come and running ones whose lease has expired. Each claim counts an
    attempt. A job whose lease expired after its last allowed attempt (it crashed its
    process, or stalled, every time) goes to `dead` instead. Returns (claimed, dead)."""
    rows = [
        _job(row)
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') AND run_at <= ?"
            " ORDER BY run_at LIMIT ?",
            (now, limit),
        )
    ]
    claimed: list[Job] = []
    dead: list[Job] = []
    for job in rows:
        if job.state == "running" and job.attempts >= max_attempts:
            error = f"lease expired on attempt {job.attempts} (the process running it stopped)"
            conn.execute(
                "UPDATE jobs SET state = 'dead', lease_owner = NULL, last_error = ?,"
                " updated_at = ? WHERE id = ?",
                (error, now, job.id),
            )
            dead.append(attrs.evolve(job, state="dead", lease_owner=None, last_error=error))
            continue
        conn.execute(
            "UPDATE jobs SET state = 'running', lease_owner = ?, attempts = attempts + 1,"
            " run_at = ?, updated_at = ? WHERE id = ?",
            (owner, now + lease_ms, now, job.id),
        )
        claimed.append(
            attrs.evolve(
                job,
                state="running",
                lease_owner=owner,
                attempts=job.attempts + 1,
                run_at=now + lease_ms,
                updated_at=now,
            )
        )
    return claimed, dead


_HELD = "id = ? AND state = 'running' AND lease_owner = ? AND attempts = ?"


def renew(
    conn: apsw.Connection, owner: str, held: list[tuple[str, int]], now: int, lease_ms: int
) -> set[str]:
    """Extend the leases `owner` holds on (job id, attempts); returns the ids still held
    (a job missing from it was taken over after its lease expired)."""
    kept: set[str] = set()
    for job_id, attempts in held:
        conn.execute(
            f"UPDATE jobs SET run_at = ?, updated_at = ? WHERE {_HELD}",
            (now + lease_ms, now, job_id, owner, attempts),
        )
        if conn.changes():
            kept.add(job_id)
    return kept


def complete(conn: apsw.Connection, job_id: str, owner: str, attempts: int, now: int) -> bool:
    """Mark a held job done; False (nothing changed) if the lease was lost."""
    conn.execute(
        "UPDATE jobs SET state = 'done', lease_owner = NULL, last_error = NULL,"
        f" run_at = ?, updated_at = ? WHERE {_HELD}",
        (now, now, job_id, owner, attempts),
    )
    return conn.changes() > 0


def fail(
    conn: apsw.Connection,
    job_id: str,
    owner: str,
    attempts: int,
    now: int,
    error: str,
    retry_at: int | None,
) -> bool:
    """Record a failed attempt of a held job: queued again at `retry_at`, or dead when
    None; `error` (no secrets, no message content) is kept. False if the lease was lost."""
    state = "dead" if retry_at is None else "queued"
    conn.execute(
        "UPDATE jobs SET state = ?, lease_owner = NULL, last_error = ?, run_at = ?,"
        f" updated_at = ? WHERE {_HELD}",
        (state, error, now if retry_at is None else retry_at, now, job_id, owner, attempts),
    )
    return conn.changes() > 0


def release(conn: apsw.Connection, job_id: str, owner: str, attempts: int, now: int) -> bool:
    """Give a held job back without counting the attempt (its runner is shutting down):
    queued, due now. False if the lease was lost or the job already finished."""
    conn.execute(
        "UPDATE jobs SET state = 'queued', lease_owner = NULL, attempts = attempts - 1,"
        f" run_at = ?, updated_at = ? WHERE {_HELD}",
        (now, now, job_id, owner, attempts),
    )
    return conn.changes() > 0


def next_due(conn: apsw.Connection) -> int | None:
    """The earliest `run_at` of a queued or running job (ms), or None."""
    value = conn.execute("SELECT min(run_at) FROM jobs WHERE state IN ('queued', 'running')").get
    return value if isinstance(value, int) else None


def purge(conn: apsw.Connection, finished_before: int, limit: int) -> int:
    """Delete up to `limit` done or dead jobs last changed before `finished_before`;
    returns how many (their dedup keys may then be enqueued again)."""
    conn.execute(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN ('done', 'dead')"
        " AND updated_at < ? LIMIT ?)",
        (finished_before, limit),
    )
    return conn.changes()


def get(conn: apsw.Connection, job_id: str) -> Job | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _job(row)


def find(conn: apsw.Connection, kind: str, dedup_key: str) -> Job | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM jobs WHERE kind = ? AND dedup_key = ?", (kind, dedup_key)
    ).fetchone()
    return None if row is None else _job(row)


def all_jobs(conn: apsw.Connection, limit: int = 1000) -> list[Job]:
    """Jobs in creation order, for tests and inspection."""
    return [
        _job(row)
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at, id LIMIT ?", (limit,)
        )
    ]
