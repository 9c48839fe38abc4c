"""The SDK's v1.1 catch-up, measured (not a test): N messages, each edited and reacted
to (3N revs), fetched by a fresh store with `get_changes` in one `client.sync()`, then
the same store's second sync (nothing new).

    python -m tests.client.catchup_bench [N]     # default 2000; real server on 127.0.0.1:0
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

from tests.client.support import sign_in
from tests.helpers import harness, make_config


async def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    config = make_config(
        tmp / "data", limits={"messages_per_second": 1e6, "message_burst": 1_000_000}
    )
    async with harness(config) as h:
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.direct(ada, bob)
        async with h.ws(bob) as b:
            for i in range(1, n + 1):  # pipelined, no answers asked for
                await b.send({"type": "send_message", "conversation_id": cid,
                              "client_id": uuid.uuid4().hex, "body": f"message {i}"})  # fmt: skip
                await b.send({"type": "edit_message", "conversation_id": cid, "seq": i,
                              "body": f"message {i}, edited"})  # fmt: skip
                await b.send({"type": "react", "conversation_id": cid, "seq": i,
                              "emoji": "👍", "on": True})  # fmt: skip
            while True:
                page = await b.request("get_changes", conversation_id=cid, after_rev=0, limit=1)
                if page["last_rev"] >= 3 * n:
                    break
                await trio.sleep(0.1)
        async with await sign_in(h.url, "ada", tmp / "ada") as client:
            started = time.perf_counter()
            report = await client.sync()
            first = time.perf_counter() - started
            started = time.perf_counter()
            await client.sync()
            second = time.perf_counter() - started
            assert len(client.messages(cid)) == n and report.fetched == n
    print(
        f"{n} messages x 3 changes ({3 * n} revs): first sync {first:.2f} s"
        f" ({n / first:.0f} messages/s, {n / 100 / first:.1f} pages of 100/s),"
        f" second sync {second * 1000:.0f} ms"
    )


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
