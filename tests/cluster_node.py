"""A conversation owner as a cluster node will run one, for the cluster tests.

`owned_actor` runs a real `ConversationActor` on a real file with a `Fence` (the lease's
local view and its epoch), as the cluster layer will: the lease acquired, the file
claimed, then the actor. `python -m tests.cluster_node` is the same as a process of its
own (the partition test runs it on a host of its own, `tests/netns.py`): it acquires
the lease, claims the file, keeps the lease and sends one message every
`--interval` seconds for ever, printing one JSON line per event (`owner`, `ack`,
`refused`, `lost`) with `time.monotonic()`, which is one clock for every process of
the machine. It never stops its actor when the lease goes: that the fence alone stops
its acks is what the test shows.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import trio

from messageai.cluster.fence import Fence, claim_file, file_epoch
from messageai.cluster.lease import REDIS_DOWN, Lease, Leases
from messageai.cluster.replica import Replica
from messageai.config import Config
from messageai.conversations.actor import ConversationActor
from messageai.conversations.commands import Command, Stored, Waiter
from messageai.errors import MessageAIError
from messageai.model import Message
from messageai.protocol import SendMessage
from messageai.store.paths import conversation_path
from messageai.threads import WorkerPool
from tests.helpers import make_config
from tests.redis_server import RedisServer

MEMBERS = ["u_ada", "u_bob"]


class Owner:
    """One running actor and a way to send to it."""

    def __init__(self, actor: ConversationActor, conversation_id: str) -> None:
        self.actor = actor
        self.conversation_id = conversation_id

    async def send(self, user_id: str, client_id: str, body: str) -> Message | MessageAIError:
        """Send one message and wait for its answer: the stored message, or the error."""
        waiter: Waiter[Stored] = Waiter()
        op = SendMessage(self.conversation_id, client_id, body)
        await self.actor.submit(Command(op=op, user_id=user_id, waiter=waiter))
        try:
            return (await waiter.wait()).message
        except MessageAIError as exc:
            return exc


@contextlib.asynccontextmanager
async def owned_actor(
    config: Config, conversation_id: str, fence: Fence | None, replica: Replica | None = None
) -> AsyncIterator[Owner]:
    """Run the conversation's actor (with `fence` and `replica`; None: single-node) until
    the block ends."""
    workers = WorkerPool(2, name="cluster test commit")
    actor = ConversationActor(
        conversation_id,
        MEMBERS,
        config,
        online=lambda _user: False,
        workers=workers,
        on_db_open=lambda _actor: None,
        fence=fence,
        replica=replica,
    )
    try:
        async with trio.open_nursery() as nursery:

            async def supervise() -> None:
                try:
                    await actor.run()
                finally:
                    actor.fail_pending()

            nursery.start_soon(supervise)
            yield Owner(actor, conversation_id)
            nursery.cancel_scope.cancel()
    finally:
        workers.close()


async def take_over(
    leases: Leases, config: Config, conversation_id: str, wait_seconds: float
) -> Lease:
    """Acquire the conversation's lease (retrying while another holds it or Redis is
    unreachable, for up to `wait_seconds`), with the file's epoch as the floor, then
    claim the file: what a node does before it starts the actor."""
    path = conversation_path(config.data_dir, conversation_id)
    with trio.fail_after(wait_seconds):
        while True:
            try:
                got = await leases.acquire(conversation_id, floor=file_epoch(path))
            except REDIS_DOWN:
                got = None
            if isinstance(got, Lease):
                break
            await trio.sleep(0.02)
    await trio.to_thread.run_sync(
        claim_file, path, config.storage.synchronous, got.epoch, leases.node
    )
    return got


def _emit(event: str, **fields: object) -> None:
    sys.stdout.write(orjson.dumps({"event": event, "t": time.monotonic(), **fields}).decode())
    sys.stdout.write("\n")
    sys.stdout.flush()


async def _main(args: argparse.Namespace) -> None:
    config = make_config(Path(args.data_dir))
    host, _, port = args.redis.rpartition(":")
    async with RedisServer(host, int(port)).client() as redis:
        leases = Leases(redis, args.node, ttl_seconds=args.ttl, margin_seconds=args.margin)
        lease = await take_over(leases, config, args.conversation, wait_seconds=10)
        _emit("owner", epoch=lease.epoch)
        async with trio.open_nursery() as nursery:

            async def keep() -> None:
                await leases.keep(lease)
                _emit("lost", epoch=lease.epoch)

            nursery.start_soon(keep)
            async with owned_actor(
                config, args.conversation, Fence(lease.epoch, lease.held)
            ) as owner:
                for n in range(1, sys.maxsize):
                    client_id = f"{args.node}-{n}"
                    result = await owner.send(MEMBERS[0], client_id, f"from {args.node}")
                    if isinstance(result, Message):
                        _emit("ack", client_id=client_id, seq=result.seq, epoch=lease.epoch)
                    else:
                        _emit("refused", client_id=client_id, code=result.code)
                    await trio.sleep(args.interval)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster_node")
    parser.add_argument("--redis", required=True, help="HOST:PORT")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--conversation", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args(argv)
    trio.run(_main, args)


if __name__ == "__main__":
    main()
