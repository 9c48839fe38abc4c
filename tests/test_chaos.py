"""kill -9 under load, short: the code of `scripts/chaos` (tests/chaos.py) for ~15 s.

The server is a real child process on a loopback port, SIGKILLed every 2 s. The
checker's own counting is tested on made-up histories first, so that a checker
that could never fail does not pass for a proof.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.chaos import (
    SLOW_BODY_CHARS,
    SLOW_RSS_BOUND,
    Client,
    Report,
    check,
    run_chaos,
    run_slow_consumer,
)


def _message(
    seq: int, client_id: str, sender: str = "u1", mid: str | None = None
) -> dict[str, Any]:
    return {
        "id": mid or f"m{seq}",
        "conversation_id": "c1",
        "seq": seq,
        "sender_id": sender,
        "client_id": client_id,
        "body": "b",
        "attachments": [],
        "created_at": 1,
    }


def test_checker_counts_lost_duplicated_phantom_order_and_unresolved() -> None:
    writer = Client(0, "t", "u1", "c1")
    writer.acked = {"a": _message(1, "a"), "b": _message(2, "b"), "gone": _message(3, "gone")}
    writer.pending = {"never": "x"}
    reader = Client(1, "t", "u2", "c1")
    for seq in (1, 2):
        reader.hold(_message(seq, "ab"[seq - 1]))
    reader.hold(_message(2, "b", mid="other"))  # a second id for seq 2
    reader.delivered = {"m9": _message(9, "z", mid="m9")}
    # "gone" was acked but is missing; "b" is stored twice; seq 3 is skipped.
    history = [_message(1, "a"), _message(2, "b"), _message(4, "b", mid="m4")]
    report = Report(seconds=0, kills=0)
    check([writer, reader], {"c1": history}, report)
    assert (report.acked, report.stored) == (3, 3)
    assert report.lost == 1 and report.duplicated == 1 and report.phantom == 1
    assert report.order_violations == 2  # the gap, and the reader's disagreement
    assert report.unresolved == 1 and not report.passed

    clean = Report(seconds=0, kills=0, databases=1)
    good = Client(0, "t", "u1", "c1")
    good.acked = {"a": _message(1, "a")}
    check([good], {"c1": [_message(1, "a")]}, clean)
    assert clean.passed, clean.summary()


@pytest.mark.slow
async def test_kill_9_every_2_s_under_load_loses_duplicates_and_reorders_nothing(
    tmp_path: Path,
) -> None:
    with trio.fail_after(90):
        # The load goes on past 15 s until more than 1000 are acked (for at most 15 s
        # more): a loaded machine acks fewer a second, and the count is asserted below.
        report = await run_chaos(
            tmp_path, seconds=15.0, kill_every=2.0, settle_seconds=30.0, min_acked=1001
        )
    # A kill every 2 s plus the restart: 5 to 7 on a quiet machine, 4 on a loaded one.
    assert report.kills >= 3, report.summary()
    assert report.acked > 1000 and report.reconnects >= report.kills, report.summary()
    assert report.stored == report.acked, report.summary()
    assert report.passed, report.summary()


@pytest.mark.slow
async def test_reader_that_stops_reading_costs_bounded_server_memory_and_catches_up(
    tmp_path: Path,
) -> None:
    with trio.fail_after(120):
        report = await run_slow_consumer(tmp_path, messages=5000)
    assert report.messages * SLOW_BODY_CHARS > SLOW_RSS_BOUND, "the bound must mean something"
    assert report.fast_in_order, report.summary()
    assert report.slow_live < report.messages and report.slow_close_code in (1013, 1006)
    assert report.slow_caught_up, report.summary()
    assert report.growth < SLOW_RSS_BOUND, report.summary()
