"""Configuration: the shipped messageai.toml, strict validation naming the key, CLI overrides.

The CLI tests run the real console script (`messageai` next to the test
interpreter, in .venv/bin) as a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

from messageai.config import Config, ConfigError, load_config, parse_config, with_overrides

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "messageai.toml"
MESSAGEAI = Path(sys.executable).parent / "messageai"


def run_cli(
    *args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MESSAGEAI), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


# ---------------------------------------------------------------- the shipped file


def test_shipped_config_is_the_embedded_default() -> None:
    assert SHIPPED.is_symlink()
    assert SHIPPED.resolve() == (ROOT / "messageai" / "default.toml").resolve()


def test_shipped_config_loads_and_equals_the_embedded_default_and_the_code_defaults() -> None:
    shipped = load_config(SHIPPED)
    assert shipped == load_config(None)
    assert shipped == Config()
    assert shipped.server.host == "127.0.0.1" and shipped.server.port == 8080
    assert shipped.storage.data_dir == "./data" and shipped.storage.synchronous == "FULL"


def test_shipped_config_names_every_key_of_the_config_tree() -> None:
    data = tomllib.loads(SHIPPED.read_text("utf-8"))
    sections = {f.name: f.type for f in attrs.fields(Config)}
    assert set(data) == set(sections)
    for name in sections:
        section_cls = type(getattr(Config(), name))
        assert set(data[name]) == {f.name for f in attrs.fields(section_cls)}, name


def test_every_key_in_the_shipped_config_has_a_comment_above_it() -> None:
    lines = SHIPPED.read_text("utf-8").splitlines()
    keys = 0
    for number, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_][\w-]*\s*=", line):
            keys += 1
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#"), f"line {number + 1}: {line!r} has no comment above it"
    assert keys == sum(
        len(attrs.fields(type(getattr(Config(), f.name)))) for f in attrs.fields(Config)
    )


# ---------------------------------------------------------------- validation


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "test.toml"
    path.write_text(text, "utf-8")
    return load_config(path)


def test_keys_left_out_take_their_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[server]\nport = 9000\n")
    assert config.server.port == 9000
    assert attrs.evolve(config, server=attrs.evolve(config.server, port=8080)) == Config()
    assert load_text(tmp_path, "") == Config()


def test_integer_is_accepted_where_a_float_belongs(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[conversations]\nidle_seconds = 5\n")
    assert config.conversations.idle_seconds == 5.0 and isinstance(
        config.conversations.idle_seconds, float
    )


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nhots = '0.0.0.0'\n", "server.hots"),
        ("[servr]\nport = 1\n", "servr"),
        ("[storage]\nsynchronus = 'FULL'\n", "storage.synchronus"),
        ("top_level = 1\n", "top_level"),
    ],
)
def test_unknown_key_raises_config_error_naming_it(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, toml)
    assert key in str(info.value)
    assert "unknown" in str(info.value)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nport = '8080'\n", "server.port"),
        ("[server]\nport = 80.5\n", "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ("[server]\nhost = 127\n", "server.host"),
        ("[storage]\ndata_dir = 5\n", "storage.data_dir"),
        ("[auth]\nallow_registration = 'yes'\n", "auth.allow_registration"),
        ("[auth]\nallow_registration = 1\n", "auth.allow_registration"),
        ("[auth]\ntoken_ttl_seconds = 1.5\n", "auth.token_ttl_seconds"),
        ("[conversations]\nidle_seconds = '300'\n", "conversations.idle_seconds"),
        ("[limits]\nmax_body_chars = [1]\n", "limits.max_body_chars"),
    ],
)
def test_wrong_type_raises_config_error_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, toml)
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nport = -1\n", "server.port"),
        ("[server]\nshutdown_timeout_seconds = 0\n", "server.shutdown_timeout_seconds"),
        ("[server]\nmax_request_body_bytes = -5\n", "server.max_request_body_bytes"),
        ("[storage]\nsynchronous = 'OFF'\n", "storage.synchronous"),
        ("[storage]\nmax_open_databases = 1\n", "storage.max_open_databases"),
        ("[storage]\ncommit_threads = 0\n", "storage.commit_threads"),
        ("[conversations]\nidle_seconds = nan\n", "conversations.idle_seconds"),
        ("[conversations]\nidle_seconds = inf\n", "conversations.idle_seconds"),
        ("[conversations]\nqueue_size = 0\n", "conversations.queue_size"),
        ("[limits]\nmax_frame_bytes = 10\n", "limits.max_frame_bytes"),
        ("[limits]\nmax_body_chars = 0\n", "limits.max_body_chars"),
        ("[auth]\nmode = 'clerk'\n", "auth.mode"),
        ("[auth]\nscrypt_n = 1000\n", "auth.scrypt_n"),
        ("[logging]\nlevel = 'verbose'\n", "logging.level"),
        ("[directory]\nurl = 'mysql://u@db/messageai'\n", "directory.url"),
        ("[directory]\nurl = 'db.example.com'\n", "directory.url"),
        ("[directory]\nread_threads = 0\n", "directory.read_threads"),
        ("[directory]\npassword_file = 'pw'\n", "directory"),
        (
            "[directory]\nurl = 'postgresql://u@db/m'\npassword_file = 'pw'\npassword_env = 'PW'\n",
            "directory",
        ),
    ],
)
def test_bad_value_raises_config_error_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, toml)
    assert key in str(info.value)


def test_a_directory_url_holding_a_password_is_refused_without_repeating_it(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "[directory]\nurl = 'postgresql://ada:hunter2@db:5432/m'\n")
    assert "directory.url" in str(info.value) and "password_file" in str(info.value)
    assert "hunter2" not in str(info.value)
    config = load_text(tmp_path, "[directory]\nurl = 'postgresql://ada@db:5432/m'\n")
    assert config.directory.postgres and not Config().directory.postgres


def test_single_node_mode_never_imports_psycopg(tmp_path: Path) -> None:
    """The directory on SQLite, the server built and the CLI parsed: no psycopg loaded
    (it is the optional extra `cluster`)."""
    script = (
        "import sys\n"
        "from messageai.cli import build_parser\n"
        "from messageai.server import Server\n"
        "from messageai.services.directory import Directory\n"
        "from tests.helpers import make_config\n"
        f"Directory(make_config(__import__('pathlib').Path({str(tmp_path)!r}))).close()\n"
        "build_parser()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'psycopg')\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert (tmp_path / "directory.sqlite3").is_file()


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "[server]\nport = 'x'\n[limits]\nmax_body_chars = 0\n")
    assert "server.port" in str(info.value) and "limits.max_body_chars" in str(info.value)


def test_config_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "[server]\nport = 'x'\n")
    assert str(tmp_path / "test.toml") in str(info.value)


def test_invalid_toml_and_missing_file_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOML"):
        load_text(tmp_path, "[server\nport = 1\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_section_that_is_not_a_table_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server"):
        load_text(tmp_path, "server = 5\n")


def test_parse_config_is_strict_about_python_values_too() -> None:
    raw: dict[str, Any] = {"server": {"port": 8080.0}}
    with pytest.raises(ConfigError, match=r"server\.port"):
        parse_config(raw)


# ---------------------------------------------------------------- overrides


def test_overrides_replace_host_port_and_data_dir_and_keep_the_rest() -> None:
    base = load_config(SHIPPED)
    config = with_overrides(base, host="0.0.0.0", port=9000, data_dir="/srv/chat")
    assert (config.server.host, config.server.port, config.storage.data_dir) == (
        "0.0.0.0",
        9000,
        "/srv/chat",
    )
    assert config.data_dir == Path("/srv/chat")
    assert config.limits == base.limits and config.storage.synchronous == base.storage.synchronous
    assert with_overrides(base, host=None, port=None, data_dir=None) == base


def test_override_with_a_bad_port_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="port"):
        with_overrides(Config(), host=None, port=70000, data_dir=None)


def test_cli_serve_with_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_body_chars = 'lots'\n", "utf-8")
    result = run_cli("serve", "--config", bad, "--data-dir", tmp_path / "data")
    assert result.returncode == 2, result
    assert "limits.max_body_chars" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()


def test_cli_serve_with_unknown_key_exits_2_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nprot = 9000\n", "utf-8")
    result = run_cli("serve", "--config", bad)
    assert result.returncode == 2 and "server.prot" in result.stderr, result


def test_cli_bad_port_flag_exits_2(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--config", SHIPPED, "--port", "70000", "--data-dir", tmp_path / "data"
    )
    assert result.returncode == 2 and "port" in result.stderr, result


def test_cli_flags_override_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[storage]\ndata_dir = 'from-file'\n", "utf-8")
    result = run_cli("config", "check", "--config", config, "--data-dir", tmp_path / "from-flag")
    assert result.returncode == 0, result
    assert str(tmp_path / "from-flag") in result.stdout and "from-file" not in result.stdout
    result = run_cli("config", "check", "--config", config)
    assert result.returncode == 0 and "from-file" in result.stdout, result


# ---------------------------------------------------------------- the environment


def test_environment_variables_override_the_file_each_as_its_type(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[server]\nport = 8081\n[storage]\nsynchronous = 'NORMAL'\n", "utf-8")
    env = {
        "MESSAGEAI_SERVER__PORT": "9000",  # a TOML integer
        "MESSAGEAI_STORAGE__SYNCHRONOUS": "FULL",  # not TOML: a string
        "MESSAGEAI_SERVER__ALLOWED_ORIGINS": '["https://chat.example.com"]',
        "MESSAGEAI_AI__BASE_URL": "http://127.0.0.1:11434/v1",
        "MESSAGEAI_AI__MODEL": "llama3.2",
        "MESSAGEAI_TEST_SOMETHING": "not config: no double underscore",
    }
    loaded = load_config(config, env)
    assert loaded.server.port == 9000 and loaded.storage.synchronous == "FULL"
    assert loaded.server.allowed_origins == ("https://chat.example.com",)
    assert loaded.ai.base_url == "http://127.0.0.1:11434/v1" and loaded.ai.model == "llama3.2"
    assert load_config(config, {}).server.port == 8081
    # The CLI reads them; its flags still win over them.
    data = tmp_path / "from-flag"
    env = {"MESSAGEAI_SERVER__PORT": "9000", "MESSAGEAI_STORAGE__DATA_DIR": "from-env"}
    result = run_cli("config", "check", "--config", config, "--data-dir", data, env=env)
    assert result.returncode == 0 and ":9000" in result.stdout, result
    assert str(data) in result.stdout and "from-env" not in result.stdout


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("MESSAGEAI_SERVER__PROT", "9000", "MESSAGEAI_SERVER__PROT: no config key server.prot"),
        ("MESSAGEAI_SERVERS__PORT", "9000", "no config key servers.port"),
        ("MESSAGEAI_SERVER__PORT", "ninety", "server.port"),
        ("MESSAGEAI_STORAGE__SYNCHRONOUS", "SOMETIMES", "storage.synchronous"),
    ],
)
def test_a_bad_environment_variable_exits_2_naming_it(name: str, value: str, said: str) -> None:
    result = run_cli("config", "check", env={name: value})
    assert result.returncode == 2 and said in result.stderr, result


def test_cluster_mode_needs_its_node_redis_and_link_addresses(tmp_path: Path) -> None:
    assert Config().cluster.enabled is False
    with pytest.raises(ConfigError, match=r"cluster\.node_id: must be set"):
        load_text(tmp_path, "[cluster]\nenabled = true\n")
    good = (
        '[cluster]\nenabled = true\nnode_id = "a"\nredis_url = "redis://127.0.0.1:6379/0"\n'
        'link_listen = "127.0.0.1:0"\nlink_advertise = "10.0.0.5:0"\nlink_secret_env = "S"\n'
    )
    assert load_text(tmp_path, good).cluster.node_id == "a"
    for bad, key in (
        ('node_id = "a"', 'node_id = "a:b"'),
        ('redis_url = "redis://127.0.0.1:6379/0"', 'redis_url = "http://x"'),
        ('link_advertise = "10.0.0.5:0"', 'link_advertise = "10.0.0.5"'),
        ('link_listen = "127.0.0.1:0"', 'link_listen = "127.0.0.1:70000"'),
        ('link_secret_env = "S"', 'link_secret_file = ""'),
    ):
        name = key.partition(" ")[0]
        with pytest.raises(ConfigError, match=rf"cluster\.{name}:"):
            load_text(tmp_path, good.replace(bad, key))


def test_the_cluster_s_s3_replica_is_validated_and_its_secret_never_in_the_config(
    tmp_path: Path,
) -> None:
    base = (
        '[cluster]\nenabled = true\nnode_id = "a"\nredis_url = "redis://127.0.0.1:6379/0"\n'
        'link_listen = "127.0.0.1:0"\nlink_advertise = "10.0.0.5:0"\nlink_secret_env = "S"\n'
    )
    assert load_text(tmp_path, base).cluster.s3_endpoint == ""  # the shared directory
    good = base + (
        's3_endpoint = "https://s3.example.com:9000"\ns3_bucket = "chat-replica"\n'
        's3_access_key_id = "AKIAEXAMPLE"\ns3_secret_key_env = "S3_SECRET"\n'
    )
    assert load_text(tmp_path, good).cluster.s3_bucket == "chat-replica"
    for bad, key in (
        ('s3_endpoint = "https://s3.example.com:9000"', 's3_endpoint = "s3.example.com"'),
        ('s3_endpoint = "https://s3.example.com:9000"', 's3_endpoint = "https://h/bucket"'),
        ('s3_bucket = "chat-replica"', 's3_bucket = "Chat_Replica"'),
        ('s3_bucket = "chat-replica"', 's3_bucket = ""'),
        ('s3_access_key_id = "AKIAEXAMPLE"', 's3_access_key_id = ""'),
        ('s3_secret_key_env = "S3_SECRET"', 's3_secret_key_file = ""'),
        (
            's3_secret_key_env = "S3_SECRET"',
            's3_secret_key_file = "k"\ns3_secret_key_env = "S3_SECRET"',
        ),
        ('s3_bucket = "chat-replica"', 's3_bucket = "chat-replica"\ns3_prefix = "/x"'),
        ('s3_bucket = "chat-replica"', 's3_bucket = "chat-replica"\ns3_timeout_seconds = 0'),
    ):
        name = key.rpartition("\n")[2].partition(" ")[0]
        with pytest.raises(ConfigError, match=rf"cluster\.{name}:"):
            load_text(tmp_path, good.replace(bad, key))
    # The secret key itself is no setting at all.
    with pytest.raises(ConfigError, match="s3_secret_key"):
        load_text(tmp_path, good + 's3_secret_key = "hunter2"\n')
