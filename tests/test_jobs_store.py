"""store/jobs.py on a real SQLite file, with explicit clocks: dedup, the bound, claiming
with a lease, fencing by (owner, attempts), expiry, retries, the dead letter, release,
purge. (The service around it: test_jobs.py; kill -9: test_jobs_durability.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from messageai.sqlite import migrate, open_db, transaction
from messageai.store import jobs as sql

LEASE = 1000
MAX_ATTEMPTS = 3


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[apsw.Connection]:
    db = open_db(tmp_path / sql.JOBS_FILE, "NORMAL")
    migrate(db, sql.MIGRATIONS)
    yield db
    db.close()


def _add(conn: apsw.Connection, job_id: str, key: str, *, at: int = 0) -> tuple[str, bool] | None:
    with transaction(conn):
        return sql.enqueue(conn, job_id, "k", key, "{}", at, at, 10)


def _claim(conn: apsw.Connection, owner: str, now: int, limit: int = 10) -> list[sql.Job]:
    with transaction(conn):
        claimed, _dead = sql.claim(conn, owner, now, LEASE, limit, MAX_ATTEMPTS)
    return claimed


def test_same_dedup_key_is_enqueued_once_in_any_state(conn: apsw.Connection) -> None:
    assert _add(conn, "j1", "a") == ("j1", True)
    assert _add(conn, "j2", "a") == ("j1", False)
    [job] = _claim(conn, "r1", 0)
    with transaction(conn):
        assert sql.complete(conn, job.id, "r1", 1, 5)
    assert _add(conn, "j3", "a") == ("j1", False)
    assert [j.id for j in sql.all_jobs(conn)] == ["j1"]


def test_enqueue_past_max_pending_adds_nothing(conn: apsw.Connection) -> None:
    for i in range(10):
        assert _add(conn, f"j{i}", f"key{i}") is not None
    assert _add(conn, "j10", "key10") is None
    assert len(sql.all_jobs(conn)) == 10
    # A finished job no longer counts.
    [job] = _claim(conn, "r1", 0, limit=1)
    with transaction(conn):
        sql.complete(conn, job.id, "r1", 1, 1)
    assert _add(conn, "j10", "key10") == ("j10", True)


def test_claim_takes_due_jobs_once_and_leases_them(conn: apsw.Connection) -> None:
    _add(conn, "now", "a", at=0)
    _add(conn, "later", "b", at=5000)
    [job] = _claim(conn, "r1", 100)
    assert (job.id, job.state, job.lease_owner, job.attempts) == ("now", "running", "r1", 1)
    assert job.run_at == 100 + LEASE
    assert sql.get(conn, "now") == job
    # Another runner finds nothing due: the lease holds, the other job is not due.
    assert _claim(conn, "r2", 200) == []
    with transaction(conn):
        assert sql.next_due(conn) == 100 + LEASE


def test_an_expired_lease_is_claimed_again_and_fences_the_first_owner(
    conn: apsw.Connection,
) -> None:
    _add(conn, "j", "a")
    [first] = _claim(conn, "r1", 0)
    [second] = _claim(conn, "r2", LEASE)  # r1 neither renewed nor finished
    assert (second.lease_owner, second.attempts) == ("r2", 2)
    with transaction(conn):
        # r1 has lost it: its renewal, completion, failure and release change nothing.
        assert sql.renew(conn, "r1", [("j", first.attempts)], LEASE, LEASE) == set()
        assert not sql.complete(conn, "j", "r1", first.attempts, LEASE)
        assert not sql.fail(conn, "j", "r1", first.attempts, LEASE, "x", None)
        assert not sql.release(conn, "j", "r1", first.attempts, LEASE)
        assert sql.complete(conn, "j", "r2", second.attempts, LEASE + 1)
    job = sql.get(conn, "j")
    assert job is not None and (job.state, job.lease_owner, job.attempts) == ("done", None, 2)


def test_renewal_keeps_the_lease(conn: apsw.Connection) -> None:
    _add(conn, "j", "a")
    [job] = _claim(conn, "r1", 0)
    with transaction(conn):
        assert sql.renew(conn, "r1", [("j", 1)], 900, LEASE) == {"j"}
    assert _claim(conn, "r2", LEASE) == []  # would have expired at LEASE without renewal
    assert [j.id for j in _claim(conn, "r2", 900 + LEASE)] == [job.id]


def test_failures_retry_at_their_time_then_the_job_is_dead_with_its_error(
    conn: apsw.Connection,
) -> None:
    _add(conn, "j", "a")
    now = 0
    for attempt in range(1, MAX_ATTEMPTS + 1):
        [job] = _claim(conn, "r1", now)
        assert job.attempts == attempt
        retry_at = now + 500 if attempt < MAX_ATTEMPTS else None
        with transaction(conn):
            assert sql.fail(conn, "j", "r1", attempt, now, f"boom {attempt}", retry_at)
        if retry_at is not None:
            assert _claim(conn, "r1", retry_at - 1) == []  # not before its time
            now = retry_at
    final = sql.get(conn, "j")
    assert final is not None
    assert (final.state, final.attempts, final.last_error) == ("dead", MAX_ATTEMPTS, "boom 3")
    assert _claim(conn, "r1", 10**9) == []


def test_a_job_that_kills_its_runner_every_time_goes_dead(conn: apsw.Connection) -> None:
    _add(conn, "j", "a")
    now = 0
    for _ in range(MAX_ATTEMPTS):
        assert len(_claim(conn, "r", now)) == 1
        now += LEASE  # the process died holding it
    with transaction(conn):
        claimed, dead = sql.claim(conn, "r", now, LEASE, 10, MAX_ATTEMPTS)
    assert claimed == [] and [j.id for j in dead] == ["j"]
    job = sql.get(conn, "j")
    assert job is not None and job.state == "dead" and "lease expired" in (job.last_error or "")


def test_release_gives_the_job_back_without_counting_the_attempt(
    conn: apsw.Connection,
) -> None:
    _add(conn, "j", "a")
    _claim(conn, "r1", 0)
    with transaction(conn):
        assert sql.release(conn, "j", "r1", 1, 10)
    job = sql.get(conn, "j")
    assert job is not None and (job.state, job.attempts, job.run_at) == ("queued", 0, 10)
    [again] = _claim(conn, "r2", 10)
    assert again.attempts == 1


def test_purge_deletes_only_old_finished_jobs(conn: apsw.Connection) -> None:
    for name in ("done", "dead", "queued"):
        _add(conn, name, name)
    with transaction(conn):
        claimed, _ = sql.claim(conn, "r", 0, LEASE, 2, MAX_ATTEMPTS)
        assert {j.id for j in claimed} == {"done", "dead"}
        sql.complete(conn, "done", "r", 1, 100)
        sql.fail(conn, "dead", "r", 1, 100, "x", None)
        assert sql.purge(conn, 100, 10) == 0  # not older than the cut
        assert sql.purge(conn, 101, 10) == 2
    assert [j.id for j in sql.all_jobs(conn)] == ["queued"]
    assert _add(conn, "done2", "done") == ("done2", True)  # its key is free again
