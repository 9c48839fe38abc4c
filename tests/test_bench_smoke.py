"""The bench's pieces work: its server config is the server's, a reference server
answers, a load process measures, the history and changes seeds write what the server
reads, and the `react` and `changes` loads measure a real server process.

Not the bench itself (that is `./scripts/bench`, never part of the suite): one
reference echo server process, one load process of 4 clients for about a second.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio_websocket

from bench import embed as embed_bench
from bench import instructions, procs, run, seed
from bench import search as search_bench
from messageai.config import ConfigError, parse_config
from messageai.sqlite import open_db
from messageai.store import conversation as sql
from messageai.store import search as search_sql
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


def test_changes_seed_writes_changes_the_servers_store_reads(tmp_path: Path) -> None:
    seed.fill_changes(tmp_path, "c_seeded", ["u_a", "u_b"], 10, "NORMAL")
    conn = open_db(conversation_path(tmp_path, "c_seeded"), "NORMAL", create=False)
    try:
        assert sql.last_rev(conn) == 20
        page, more = sql.changes(conn, "c_seeded", 0, 4)
        assert more is True
        assert [(m.seq, m.rev) for m in page] == [(1, 11), (2, 12), (3, 13), (4, 14)]
        assert page[0].reactions == {"\U0001f44d": ["u_b"]} and page[1].edited_at == 1
        assert sql.edits(conn, 2) == [("2 " + "y" * 60, 1)]
    finally:
        conn.close()


def _load_for_a_second(tmp_path: Path, plan: dict[str, Any], name: str) -> dict[str, Any]:
    """One load process following `plan` for about a second of counting."""
    plan_path = tmp_path / f"plan-{name}.json"
    plan_path.write_bytes(orjson.dumps({"max_seconds": 20, **plan}))
    load = procs.LoadGroup(plan_path, 1, tmp_path / "load.log")
    try:
        load.wait_all("ready", 10)
        load.tell("go")
        load.tell("mark")
        load.wait_all("marked", 5)
        time.sleep(1.0)
        load.tell("stop")
        (result,) = load.wait_all("result", 15)
    finally:
        load.close()
    return result


def test_react_and_changes_loads_measure_a_real_server(tmp_path: Path) -> None:
    config = tmp_path / "messageai.toml"
    config.write_text(run.config_toml(run.server_config("NORMAL")))
    server = procs.start_messageai(config, tmp_path / "data", tmp_path / "server.log")
    try:
        rest = seed.Rest(server.port)
        try:
            users = rest.register(["smoke1", "smoke2", "smoke3"])
            (cid,) = rest.groups([(users[0], users[1:])])
            rest.messages(cid, users[0]["token"], 3)
        finally:
            rest.close()
        url = f"ws://127.0.0.1:{server.port}"
        conns = [
            {
                "path": f"/v1/ws?access_token={u['token']}",
                "subscribe": [cid],
                "send_to": cid if i < 2 else None,
                "tag": f"c{i}",
            }
            for i, u in enumerate(users)
        ]
        react = _load_for_a_second(
            tmp_path,
            {
                "kind": "stream",
                "action": "react",
                "react_seqs": [1, 2, 3],
                "url": url,
                "conns": conns,
                "window": 2,
            },
            "react",
        )
        assert react["errors"] == 0, react["error_samples"]
        assert react["acks"] > 10 and react["deliveries"] > 10
        # Every reaction took a rev: the conversation's last_rev counts them all.
        r = httpx.get(
            f"http://127.0.0.1:{server.port}/v1/conversations/{cid}",
            headers={"authorization": f"Bearer {users[0]['token']}"},
        )
        last_rev = r.json()["last_rev"]
        assert last_rev >= 3 + react["acks"]
        changes = _load_for_a_second(
            tmp_path,
            {
                "kind": "changes",
                "url": url,
                "conns": [{"path": f"/v1/ws?access_token={users[0]['token']}", "tag": "k"}],
                "changes_conversation": cid,
                "changes_total": last_rev,
                "changes_limit": 2,
            },
            "changes",
        )
        assert changes["errors"] == 0, changes["error_samples"]
        assert changes["acks"] > 10 and len(changes["ack_lat_us"]) > 10
    finally:
        server.stop()


def test_search_scenario_measures_a_real_server_at_a_small_size(tmp_path: Path) -> None:
    config = tmp_path / "messageai.toml"
    config.write_text(run.config_toml(run.server_config("NORMAL")))
    figures = search_bench.run(
        config,
        tmp_path / "data",
        tmp_path / "server.log",
        single_messages=3000,
        many_messages=3000,
        conversations=5,
        queries_per_case=30,
        fill_chunk_rows=500,
        progress=lambda _text: None,
    )
    assert figures["queries"] == 30
    for case in ("one", "all"):
        assert figures[case]["p99_ms"] is not None
        # The queries are of words that exist: they find messages.
        assert figures[case]["results"] > 30
    assert figures["fill_seconds"] > 0
    # The filler rebuilt the whole index: the file checks out and every message is in it.
    conn = open_db(conversation_path(tmp_path / "data", _single(tmp_path)), "NORMAL")
    try:
        conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
        assert search_sql.unindexed_upto(conn) == 0
    finally:
        conn.close()


def _single(tmp_path: Path) -> str:
    # The biggest conversation file of the scenario is its single conversation.
    files = sorted(
        (tmp_path / "data" / "conversations").glob("*/*.sqlite3"), key=lambda p: p.stat().st_size
    )
    return files[-1].stem


def test_embed_scenario_measures_the_indexer_and_the_scan_at_a_small_size(tmp_path: Path) -> None:
    config = tmp_path / "messageai.toml"
    settings = {**run.SERVER_CONFIG, "embeddings": {"enabled": True}}
    config.write_text(run.config_toml(run.server_config("NORMAL", settings)))
    figures = embed_bench.run(
        config,
        tmp_path / "data",
        tmp_path / "server.log",
        messages=300,
        scan_vectors=3000,
        progress=lambda _text: None,
    )
    assert figures["messages"] == 300 and figures["messages_per_s"] > 0
    assert figures["cpu_ms_per_message"] > 0
    scan = figures["scan"]
    # Both ways of scoring find (nearly) the same nearest neighbours.
    assert scan["top10_overlap"] >= 7, scan
    # Every message of the conversation has its vector now.
    conn = open_db(conversation_path(tmp_path / "data", _single(tmp_path)), "NORMAL")
    try:
        assert conn.execute("SELECT count(*) FROM vectors").get == 300
    finally:
        conn.close()
