"""What `/metrics` costs the send path: the exact statements the hot path runs for its
tallies (`messageai.counters`), timed in a loop against the same loop without them.

Per message: the registry stamps the command (`received = perf_counter()`) and the
actor, once the send is stored, bumps the message counter and the ack-latency
histogram (against the batch's one clock read). Per group commit: three clock reads
and two histogram bumps.

    .venv/bin/python -m bench.metrics_cost [--loops 1000000] [--rounds 5]

Prints the best of `rounds` for each, in nanoseconds of CPU time per operation.
"""

from __future__ import annotations

import argparse
import time
import timeit
from time import perf_counter

from messageai.conversations.commands import Command, Summary
from messageai.counters import COUNTS, Counts


def per_message(command: Command, counts: Counts, answered_at: float) -> None:
    command.received = perf_counter()
    counts.messages_committed += 1
    counts.ack_seconds.observe(answered_at - command.received)


def per_commit(counts: Counts, size: int) -> float:
    started = perf_counter()
    counts.commit_seconds.observe(perf_counter() - started)
    counts.commit_batch.observe(size)
    return perf_counter()  # the batch's `answered_at`


def baseline(command: Command, counts: Counts, answered_at: float) -> None:
    pass


def best_ns(statement: str, loops: int, rounds: int, scope: dict[str, object]) -> float:
    # CPU time, not wall time: on a shared machine the wall clock also counts the
    # other processes' turns on the core.
    times = timeit.repeat(
        statement, number=loops, repeat=rounds, globals=scope, timer=time.process_time
    )
    return min(times) / loops * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loops", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    scope: dict[str, object] = {
        "command": Command(op=Summary(), user_id="u"),
        "counts": COUNTS,
        "per_message": per_message,
        "per_commit": per_commit,
        "baseline": baseline,
    }
    empty = best_ns("baseline(command, counts, 0.5)", args.loops, args.rounds, scope)
    message = best_ns("per_message(command, counts, 0.5)", args.loops, args.rounds, scope)
    commit = best_ns("per_commit(counts, 3)", args.loops, args.rounds, scope)
    print(f"function call alone      {empty:7.1f} ns")
    print(f"per message (tallies)    {message - empty:7.1f} ns  (above the call)")
    print(f"per commit (tallies)     {commit - empty:7.1f} ns  (above the call)")


if __name__ == "__main__":
    main()
