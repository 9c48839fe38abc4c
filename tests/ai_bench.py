"""Acks while the assistant is busy, measured (not a test): ack latency of sends in
one conversation, first with the assistant idle, then while K asks in another
conversation (and one in the same conversation) wait on an endpoint that answers
slowly, then while they meet endpoint failures (cut streams, garbage).

    python -m tests.ai_bench [N] [K]     # default 400 sends, 8 asks at a time
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

from tests.helpers import harness, make_config
from tests.llm import Reply, fake_llm, text


def quantiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"


async def main(n: int, k: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    async with fake_llm() as llm:
        config = make_config(
            tmp / "data",
            ai={"base_url": llm.url, "model": "bench", "timeout_seconds": 60.0,
                "max_concurrent_requests": 64, "daily_tokens_per_user": 10**9},
            limits={"messages_per_second": 1e6, "message_burst": 1_000_000},
        )  # fmt: skip
        async with harness(config) as h:
            a, b = await h.account("ada"), await h.account("bob")
            busy = await h.direct(a, b)
            quiet = await h.group(a, b, title="quiet")
            for cid in (busy, quiet):
                await h.http.post(f"/v1/conversations/{cid}/messages", headers=h.auth(a),
                                  json={"client_id": uuid.uuid4().hex, "body": "hello"})  # fmt: skip
                await h.http.put(f"/v1/conversations/{cid}/ai", json={"enabled": True},
                                 headers=h.auth(a))  # fmt: skip

            async def acks(label: str) -> None:
                samples = []
                async with h.ws(b) as ws:
                    for i in range(n):
                        start = time.perf_counter()
                        ack = await ws.send_message(quiet, f"message {i}")
                        assert ack["type"] == "ack"
                        samples.append(time.perf_counter() - start)
                print(f"{label:48s} {quantiles(samples)}")

            await acks("acks, assistant idle")
            stop = trio.Event()

            async def asker(cid: str, reply: Reply) -> None:
                while not stop.is_set():
                    llm.script(reply)
                    q = f"question {uuid.uuid4().hex}"
                    await h.http.post(f"/v1/conversations/{cid}/ai/ask", headers=h.auth(a),
                                      json={"question": q}, timeout=120)  # fmt: skip

            for label, reply in [
                (f"acks, {k} asks waiting on a slow endpoint", Reply(chunks=("x",), delay=2.0)),
                (f"acks, {k} asks streaming answers", text(*["word "] * 200)),
                (f"acks, {k} asks meeting cut streams", text("a", "b", cut_after=2)),
            ]:
                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    for i in range(k):
                        nursery.start_soon(asker, quiet if i == 0 else busy, reply)
                    await trio.sleep(0.3)
                    await acks(label)
                    stop.set()
                    nursery.cancel_scope.cancel()
            print(f"requests the endpoint received: {len(llm.requests)}")


if __name__ == "__main__":
    args = [int(x) for x in sys.argv[1:]] + [400, 8][len(sys.argv) - 1 :]
    trio.run(main, args[0], args[1])
