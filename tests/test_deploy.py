"""The deployment files: the systemd unit passes `systemd-analyze verify` with no
complaint (where systemd-analyze exists), the Dockerfile's settings are real config
keys, and the image builds and serves where a Docker daemon answers (skipped, and
saying so, where none does: this machine has only the client)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from messageai.config import environment_overrides, parse_config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "messageai.service"
DOCKERFILE = ROOT / "Dockerfile"


def test_the_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit is not checked here")
    # The unit names its install path; verify checks that the command exists.
    messageai = Path(sys.executable).parent / "messageai"
    unit = tmp_path / "messageai.service"
    unit.write_text(UNIT.read_text().replace("/opt/messageai/.venv/bin/messageai", str(messageai)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 on values it ignores, so every line it prints is a failure too.
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    text = UNIT.read_text()
    for line in ("DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=messageai"):
        assert f"\n{line}\n" in text, line


def _dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    [env] = [line for line in text.splitlines() if line.startswith("ENV ")]
    return dict(re.findall(r"(\w+)=(\S+)", env))


def test_the_dockerfile_sets_real_config_keys() -> None:
    env = _dockerfile_env()
    config = parse_config(environment_overrides(env))
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8080)
    assert config.storage.data_dir == "/data"


def test_the_image_builds_and_answers_its_health_check() -> None:
    docker = shutil.which("docker")
    info = (
        subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False)
        if docker
        else None
    )
    if docker is None or info is None or info.returncode != 0:
        pytest.skip("no Docker daemon answers here: the image is not built")
    tag = f"messageai-test:{uuid.uuid4().hex[:8]}"
    subprocess.run([docker, "build", "-t", tag, str(ROOT)], check=True, timeout=900)
    try:
        done = subprocess.run(
            [docker, "run", "--rm", tag, "messageai", "config", "check"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0 and "0.0.0.0:8080" in done.stdout, done.stderr
    finally:
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True, check=False)
