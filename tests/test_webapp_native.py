"""The same app builds for phones: `scripts/build-app --native-only` bundles app/ for iOS
and Android (Hermes bytecode, what Expo Go and a store build run) into a temporary folder.
As far as this machine can check the native app: no simulator or device runs here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.app_env import ensure_node_modules

ROOT = Path(__file__).resolve().parent.parent
# Both platforms take about two minutes on 2 cores.
EXPORT_TIMEOUT_SECONDS = 900


@pytest.mark.slow
def test_the_native_bundles_build_for_ios_and_android(tmp_path: Path) -> None:
    ensure_node_modules()
    out = tmp_path / "native"
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-app"), "--native-only", "--native-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=EXPORT_TIMEOUT_SECONDS,
        env={**os.environ, "CI": "1"},
        check=False,
    )
    report = (result.stdout + result.stderr)[-8000:]
    assert result.returncode == 0, report
    for platform in ("ios", "android"):
        bundles = list((out / "_expo" / "static" / "js" / platform).glob("entry-*.hbc"))
        assert len(bundles) == 1, (platform, report)
        assert bundles[0].stat().st_size > 100_000
    # Nothing of the check lands in the served web export.
    assert not list((ROOT / "messageai" / "webapp").glob("_expo/static/js/ios"))
