"""kill -9 of a busy owner in a cluster, short: the code of `scripts/chaos --cluster`
(tests/cluster_chaos.py) for a few seconds.

Real `redis-server` and three real `messageai serve` nodes on one data directory;
clients spread over the nodes resend what was not acked through another node. The
checker's counting is tested on made-up histories in tests/test_chaos.py; here every
count must be zero, and a kill and a takeover must have happened, or the run proved
nothing. Skipped, saying why, without redis-server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.cluster_chaos import run_cluster_chaos


@pytest.mark.slow
async def test_kill_9_of_the_busiest_owner_loses_duplicates_and_reorders_nothing(
    tmp_path: Path,
) -> None:
    with trio.fail_after(90):
        report = await run_cluster_chaos(
            tmp_path, seconds=5.0, kill_every=2.0, lease_ttl=1.0, settle_seconds=30.0
        )
    checked = report.checked
    assert checked.kills >= 1 and report.takeovers == checked.kills, report.summary()
    assert len(report.failovers) == checked.kills, report.summary()
    assert checked.acked > 100 and checked.stored == checked.acked, report.summary()
    assert checked.lost == checked.duplicated == checked.phantom == 0, report.summary()
    assert checked.order_violations == checked.unresolved == 0, report.summary()
    assert report.passed, report.summary()
