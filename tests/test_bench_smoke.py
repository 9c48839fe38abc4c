"""The bench's pieces work: its server config is the server's, a reference server
answers, a load process measures, and the history seed writes what the server reads.

Not the bench itself (that is `./scripts/bench`, never part of the suite): one
reference echo server process, one load process of 4 clients for about a second.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio_websocket

from bench import instructions, procs, run, seed
from messageai.config import ConfigError, parse_config
from messageai.sqlite import open_db
from messageai.store import conversation as sql
from messageai.store.paths import conversation_path


def test_bench_config_round_trips_through_the_servers_parser(tmp_path: Path) -> None:
    for synchronous in ("FULL", "NORMAL"):
        data = run.server_config(synchronous)
        text = run.config_toml(data)
        config = parse_config(tomllib.loads(text))
        assert config == parse_config(data)
        assert config.storage.synchronous == synchronous
        # The settings the bench depends on all arrive (one was once dropped on the way).
        assert config.server.idle_timeout_seconds == 3600.0
        assert config.conversations.idle_seconds == 3600.0
        assert config.limits.max_connections_per_user == 100_000
        assert config.auth.scrypt_n == 16


def test_bench_config_refuses_a_misplaced_or_unknown_key_with_the_parsers_message() -> None:
    misplaced = {**run.SERVER_CONFIG, "limits": {"idle_timeout_seconds": 3600.0}}
    with pytest.raises(ConfigError, match=r"limits\.idle_timeout_seconds: unknown key"):
        run.config_toml(run.server_config("FULL", misplaced))
    unknown = {**run.SERVER_CONFIG, "bench": {"fast": True}}
    with pytest.raises(ConfigError, match=r"bench: unknown key"):
        run.config_toml(run.server_config("FULL", unknown))


def test_bench_toml_writer_is_exact_for_awkward_strings() -> None:
    data: dict[str, dict[str, Any]] = {
        "server": {"host": 'a "quoted" \\ back\tslash é\n'},
        "media": {"allowed_types": []},
    }
    assert tomllib.loads(run.config_toml(data)) == data


def test_history_seed_writes_messages_the_servers_store_reads(tmp_path: Path) -> None:
    seed.fill_history(tmp_path, "c_seeded", ["u_a", "u_b"], 120, "NORMAL")
    conn = open_db(conversation_path(tmp_path, "c_seeded"), "NORMAL", create=False)
    try:
        assert sql.last_seq(conn) == 120
        page, more = sql.history(conn, "c_seeded", after_seq=None, before_seq=None, limit=2)
        assert more is True
        assert [(m.seq, m.sender_id, m.client_id, m.attachments) for m in page] == [
            (119, "u_b", "h119", []),
            (120, "u_a", "h120", []),
        ]
    finally:
        conn.close()


async def test_reference_echo_answers_and_a_load_process_counts_acks(tmp_path: Path) -> None:
    ref = procs.start_reference("ref_echo.py", tmp_path / "ref.log")
    try:
        with trio.fail_after(10):
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{ref.port}/x") as ws:
                await ws.send_message('{"type":"ping"}')
                assert await ws.get_message() == '{"type":"ping"}'
        plan = {
            "kind": "stream",
            "url": f"ws://127.0.0.1:{ref.port}",
            "conns": [{"path": f"/e/{i}", "send_to": f"e{i}", "tag": f"c{i}"} for i in range(4)],
            "window": 1,
            "max_seconds": 20,
        }
        plan_path = tmp_path / "plan.json"
        plan_path.write_bytes(orjson.dumps(plan))
        load = procs.LoadGroup(plan_path, 1, tmp_path / "load.log")
        try:
            (ready,) = load.wait_all("ready", 10)
            assert ready["connections"] == 4
            load.tell("go")
            load.tell("mark")
            load.wait_all("marked", 5)
            cpu0 = ref.cpu()
            await trio.sleep(1.0)
            load.tell("stop")
            (result,) = load.wait_all("result", 10)
        finally:
            load.close()
        assert result["acks"] > 10
        assert result["errors"] == 0
        assert len(result["ack_lat_us"]) > 10
        assert ref.cpu() > cpu0
    finally:
        ref.stop()


async def test_instruction_workload_gets_every_send_acked_in_order(tmp_path: Path) -> None:
    with trio.fail_after(30):
        assert await instructions.round_trips(5, tmp_path) == [1, 2, 3, 4, 5]
