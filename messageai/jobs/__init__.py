"""Durable background jobs (the design's "Workflows"): work that must happen once,
off the ack path, and survive a crash.

`kind` defines what a job kind is (its handler, its payload check) and what a handler
is given; `runner` is the service the server starts beside the other services, which
owns `jobs.sqlite3` (through `store/jobs.py`) and runs the handlers. Callers enqueue
with `Jobs.enqueue`; nothing waits for a job to run.
"""

from messageai.jobs.kind import BadJob, JobContext, JobFailed, JobKind, JobRefused, QueueFull
from messageai.jobs.runner import Enqueued, Jobs

__all__ = [
    "BadJob",
    "Enqueued",
    "JobContext",
    "JobFailed",
    "JobKind",
    "JobRefused",
    "Jobs",
    "QueueFull",
]
