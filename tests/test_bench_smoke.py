"""The bench's pieces work: a reference server answers, and a load process measures.

Not the bench itself (that is `./scripts/bench`, never part of the suite): one
reference echo server process, one load process of 4 clients for about a second.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import trio
import trio_websocket

from bench import procs


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
