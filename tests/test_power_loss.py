"""Power cuts, not only kill -9: the shim of tests/powercut.py, then `scripts/chaos
--power-loss` for a few cuts.

The shim is tested first on a child process that commits rows at `synchronous =
FULL`, then more at `OFF` (never synced), creates a second database it never syncs,
and kills itself: after `cut`, the synced rows are there, the others are not, the
unsynced file is gone, and every database passes `integrity_check`, torn or not.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import apsw
import pytest
import trio

from tests import powercut
from tests.chaos import ROOT, run_chaos

CHILD = """
import os, signal, sys
from pathlib import Path
from tests.powercut import install
from messageai.sqlite import open_db
work = Path(sys.argv[1])
install(work / "journal")
conn = open_db(work / "kept.sqlite3", "FULL")
conn.execute("CREATE TABLE t(body TEXT)")
for i in range(100):
    conn.execute("INSERT INTO t VALUES (?)", (f"synced {i} " * 30,))
conn.execute("PRAGMA synchronous = OFF")
for i in range(100):
    conn.execute("INSERT INTO t VALUES (?)", (f"unsynced {i} " * 30,))
never = open_db(work / "never.sqlite3", "OFF")
never.execute("CREATE TABLE u(x)")
os.kill(os.getpid(), signal.SIGKILL)
"""


def _die_mid_work(work: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, str(work)], cwd=ROOT, check=False)
    assert done.returncode == -9


@pytest.mark.parametrize("torn", [False, True])
def test_a_cut_keeps_what_was_synced_and_loses_the_rest(tmp_path: Path, torn: bool) -> None:
    _die_mid_work(tmp_path)
    # Before the cut, kill -9 kept everything the kernel held.
    conn = apsw.Connection(str(tmp_path / "kept.sqlite3"), flags=apsw.SQLITE_OPEN_READONLY)
    assert conn.execute("SELECT count(*) FROM t").get == 200
    conn.close()
    assert (tmp_path / "never.sqlite3-wal").exists()

    cut = powercut.cut(tmp_path / "journal", random.Random(3), torn=torn)
    assert cut.bytes_lost > 0 and cut.files_rolled_back >= 1 and cut.entries_undone >= 1
    conn = apsw.Connection(str(tmp_path / "kept.sqlite3"))
    assert conn.execute("PRAGMA integrity_check").get == "ok"
    bodies = [row[0] for row in conn.execute("SELECT body FROM t")]
    assert bodies == [f"synced {i} " * 30 for i in range(100)]
    conn.close()
    # Created, never synced with its directory: the WAL's entry is gone (torn: maybe).
    if not torn:
        assert not (tmp_path / "never.sqlite3-wal").exists()
    # The journal is empty for the next life: a second cut changes nothing.
    assert powercut.cut(tmp_path / "journal", random.Random(3)) == powercut.Cut()


@pytest.mark.slow
async def test_power_cuts_under_load_lose_no_acked_message_at_full(tmp_path: Path) -> None:
    with trio.fail_after(90):
        report = await run_chaos(
            tmp_path,
            seconds=10.0,
            kill_every=1.0,
            clients=8,
            settle_seconds=20.0,
            power_loss=True,
            seed=11,
            min_acked=201,  # on past 10 s until then, on a loaded machine (asserted below)
        )
    # One or more cuts under load (two on a quiet machine), the one before reading
    # back, the last one.
    assert report.kills >= 3, report.summary()
    assert report.bytes_cut > 0, "no cut found an unsynced write: it proves nothing"
    assert report.acked > 200 and report.stored == report.acked, report.summary()
    assert report.passed, report.summary()
