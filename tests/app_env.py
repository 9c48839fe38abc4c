"""The Node side of the test suite: where `app/` is and `ensure_node_modules()`.

Imported by the tests that run Node in `app/` (tests/test_app_engine.py, the web
engineer's build and browser tests). `npm ci` runs when `app/node_modules` is
missing or older than the lockfile, so a fresh clone needs only Node and npm.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parent.parent / "app"
LOCKFILE = APP_DIR / "package-lock.json"
NODE_MODULES = APP_DIR / "node_modules"
# npm writes this after every install; its mtime says when node_modules last matched.
INSTALL_MARKER = NODE_MODULES / ".package-lock.json"
# A cold `npm ci` of the app's ~900 packages takes a few minutes on 2 cores.
NPM_CI_TIMEOUT_SECONDS = 900


def node_or_skip() -> str:
    """The `npm` executable, or skip the calling test when this machine has no Node."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("Node.js and npm are not installed on this machine (the app's tests need them)")
    return npm


def node_modules_stale() -> bool:
    """True when `npm ci` is needed: no node_modules, or older than the lockfile."""
    if not INSTALL_MARKER.exists():
        return True
    return INSTALL_MARKER.stat().st_mtime < LOCKFILE.stat().st_mtime


def ensure_node_modules() -> Path:
    """Install `app/`'s packages with `npm ci` when needed; returns APP_DIR.

    Serialised with a lock file so that pytest workers or two test modules never
    run two installs into one folder at once. Skips (with the reason) without Node.
    """
    npm = node_or_skip()
    lock_path = APP_DIR / ".npm-ci.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if node_modules_stale():
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=APP_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT_SECONDS,
                env={**os.environ, "CI": "1"},
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"npm ci failed in {APP_DIR} ({result.returncode}):\n{result.stderr[-4000:]}"
                )
    return APP_DIR
