"""Autobahn|Testsuite's fuzzing client (`tests/autobahn.py`, also `scripts/autobahn`)
against the real server, where pyenv's Python 2.7.18 is installed; skipped, saying
why, where it is not. The first run installs autobahntestsuite into .venv/autobahn
(about a minute); the cases themselves take about half a minute. All of 1.x-10.x run:
the 9.x messages larger than the 64 KiB frame limit are refused at their first frame
header, so even the 16 MiB ones are quick. 12.x and 13.x (permessage-deflate) are
excluded: the server negotiates no extension.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.autobahn import ROOT, python27


@pytest.mark.slow
def test_autobahn_fuzzing_client_passes_every_case() -> None:
    python, why = python27()
    if python is None:
        pytest.skip(why)
    run = subprocess.run(
        [sys.executable, "-m", "tests.autobahn"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "cases in" in run.stdout, run.stdout
