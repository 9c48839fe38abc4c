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
import yaml

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


CLUSTER = ROOT / "deploy" / "cluster"


def test_the_cluster_node_unit_verifies_cleanly(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit is not checked here")
    messageai = Path(sys.executable).parent / "messageai"
    text = (CLUSTER / "messageai-node@.service").read_text()
    # An instance of the template, as `systemctl enable messageai-node@a` makes it.
    unit = tmp_path / "messageai-node@a.service"
    unit.write_text(text.replace("/opt/messageai/.venv/bin/messageai", str(messageai)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    # Its secrets are credentials, never the config's text or plain variables.
    for key in ("LINK_SECRET_FILE", "PASSWORD_FILE", "S3_SECRET_KEY_FILE"):
        assert re.search(rf"^Environment=MESSAGEAI_\w+__{key}=%d/", text, re.M), key


def test_the_compose_file_makes_three_nodes_of_one_cluster() -> None:
    """Without a Docker daemon the compose file is not run here; what can be checked is
    that each node's variables are a valid configuration of one cluster."""
    compose = yaml.safe_load((CLUSTER / "compose.yaml").read_text())
    services = compose["services"]
    nodes = {name: s for name, s in services.items() if name.startswith("node-")}
    assert len(nodes) == 3
    configs = {
        name: parse_config(environment_overrides(s["environment"])) for name, s in nodes.items()
    }
    shared = set()
    for name, config in configs.items():
        cluster = config.cluster
        assert cluster.enabled and cluster.node_id == name.removeprefix("node-")
        assert cluster.link_advertise.split(":")[0] == name  # its address on the network
        assert config.directory.url.startswith("postgresql://") and cluster.s3_endpoint
        shared.add(
            (cluster.redis_url, config.directory.url, cluster.s3_endpoint, cluster.s3_bucket)
        )
        assert nodes[name]["build"]["args"]["EXTRAS"] == "cluster"
        # Each node its own disk; every secret it names is declared.
        assert nodes[name]["volumes"] == [f"{name}:/data"]
        assert set(nodes[name]["secrets"]) <= set(compose["secrets"])
    assert len(shared) == 1, shared  # one Redis, one directory, one bucket
    assert "ARG EXTRAS" in DOCKERFILE.read_text()
    assert {"redis", "postgres", "minio"} <= set(services)
