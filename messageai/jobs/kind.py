"""What a job kind is, what its handler is given, and the errors of enqueueing and running.

Used by every module that defines a kind (a handler plus a payload check) and by the
runner (`messageai.jobs.runner`), which registers kinds by name.

    JobRefused          enqueue refused; nothing was stored
    ├── BadJob          unknown kind, bad payload or dedup key (the caller's mistake)
    └── QueueFull       jobs.max_pending jobs are waiting already (try later)
    JobFailed           raised by a handler: a failure whose message is safe to keep

Exactly once: a handler may run more than once for one job (its process died after
the effect but before the job was marked done, or its lease expired while it was
slow). So a handler writes its effect together with `ctx.key` (the job's id, the same
on every attempt) in the effect's own transaction, in the effect's own file (e.g. a
row keyed by it, inserted with the effect or not at all), and first looks for that
key: a second run finds the effect done and only returns. The job's completion is
recorded after the handler returns; a crash in between costs a re-run, not a repeat.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs

# The longest error text kept on a job.
MAX_ERROR_CHARS = 200


class JobRefused(Exception):
    """`Jobs.enqueue` stored nothing; the message says why."""


class BadJob(JobRefused):
    """An unknown kind, a payload the kind refuses, or a bad dedup key."""


class QueueFull(JobRefused):
    """`jobs.max_pending` jobs are queued or running already."""


class JobFailed(Exception):
    """A handler's failure whose message may be kept on the job and logged: the
    handler promises it holds no secret and no message content (e.g. "the endpoint
    answered 503"). Any other exception is kept by its class name only."""


def describe_error(exc: BaseException) -> str:
    """The text kept on a failed job and logged: a JobFailed's own message, else only
    the exception's class (its message may carry a body, a key or a token)."""
    text = str(exc) if isinstance(exc, JobFailed) else type(exc).__qualname__
    return text[:MAX_ERROR_CHARS] or type(exc).__qualname__


@attrs.frozen
class JobContext:
    """What a handler is given for one attempt."""

    job_id: str
    kind: str
    dedup_key: str
    attempt: int  # 1 for the first run
    payload: dict[str, Any]

    @property
    def key(self) -> str:
        """The idempotency key: the same on every attempt of this job, never reused by
        another job (ids are random). Write it with the effect; see the module."""
        return f"job:{self.job_id}"


def _accept(_payload: dict[str, Any]) -> None:
    pass


@attrs.frozen
class JobKind:
    """A kind of job: `handle(ctx)` does the work (raising means the attempt failed;
    it runs in the runner's nursery and may be cancelled at shutdown or when its lease
    is lost); `check(payload)` runs at enqueue and raises ValueError, with a message
    for the caller, to refuse a payload."""

    name: str = attrs.field(validator=attrs.validators.matches_re(r"[a-z][a-z0-9_.]{0,63}"))
    handle: Callable[[JobContext], Awaitable[None]]
    check: Callable[[dict[str, Any]], None] = _accept
