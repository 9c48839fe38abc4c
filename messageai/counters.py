"""Process-wide tallies for `/metrics`: plain ints and fixed-bucket histograms.

The hot path (the actor's commit, the session's send) bumps these attributes on the
event loop's thread: no lock (nothing else writes them), and nothing allocated but
the interpreter's own int and float results (a counter attribute incremented, a
bucket found by `bisect` in a tuple; no list, dict or metric object per message).
`rest.metrics` reads them when `/metrics` is scraped; gauges (connections, actors,
open files, queue depths) are not kept here but read from their owners then.
One server per process (the CLI's `serve`), so one `COUNTS`; tests that run several
servers in one process compare figures before and after, never absolute values.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter


class Buckets:
    """A histogram with fixed upper bounds (Prometheus `le`, inclusive): `counts[i]`
    is how many observations fell at or below `bounds[i]` and above the bound before;
    the last slot is `+Inf`. Bumped per commit (or per ack), read at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.total += value * times


# Seconds: from half a millisecond (a commit at synchronous = NORMAL) to ten seconds
# (a disk that has stalled), so the tail that matters is never in +Inf alone.
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Commands of one group commit: powers of two up to the default `max_batch`.
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# An AI endpoint's answer: up to its default 30 s timeout.
AI_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


class Counts:
    """Everything counted since the process started. Counters only ever grow."""

    __slots__ = (
        "ack_seconds",
        "ai_request_seconds",
        "ai_requests_failed",
        "changes_committed",
        "commit_batch",
        "commit_seconds",
        "errors",
        "jobs_finished",
        "media_bytes_served",
        "media_bytes_uploaded",
        "messages_committed",
        "rate_limited",
        "slow_closes",
    )

    def __init__(self) -> None:
        self.messages_committed = 0  # sends stored (a duplicate is not counted)
        self.changes_committed = 0  # edits, deletes and reactions that changed a message
        # Per group commit that wrote: its size in commands, and its transaction's time
        # (from handing it to the commit thread to having it back on the loop).
        self.commit_batch = Buckets(BATCH)
        self.commit_seconds = Buckets(SECONDS)
        # Per stored send: from the registry taking the command to its ack being queued.
        self.ack_seconds = Buckets(SECONDS)
        self.slow_closes = 0  # connections closed with 1013 (their outbound queue overflowed)
        # Refusals by limit: "messages" (the send budget), "connections" (per user),
        # "logins" (the login throttle).
        self.rate_limited: Counter[str] = Counter()
        # Errors told to clients, by protocol code: REST error bodies, WebSocket
        # `error` frames and refused handshakes.
        self.errors: Counter[str] = Counter()
        self.media_bytes_uploaded = 0
        self.media_bytes_served = 0
        # AI endpoint requests: how long each took, and how many failed.
        self.ai_request_seconds = Buckets(AI_SECONDS)
        self.ai_requests_failed = 0
        # Durable jobs by kind and outcome ("done", "retry", "dead").
        self.jobs_finished: Counter[tuple[str, str]] = Counter()


COUNTS = Counts()
