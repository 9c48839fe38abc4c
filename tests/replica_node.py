"""A conversation owner whose file is replicated to S3, for the replica tests.

`take_over` is what a node does before it starts the actor in replica mode (docs/SCALE.md
§7): restore the file from the replica, then claim it for its epoch, the claim being
its first segment. `python -m tests.replica_node` is one such owner as a process of
its own (the kill -9 test): it takes the conversation over and sends one message every
`--interval` seconds for ever, printing one JSON line per event (`owner`, `ack`,
`refused`). The lease is not part of this: the epoch is given, and the fence checks
only that the replica is healthy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import trio

from messageai.cluster.fence import Fence
from messageai.cluster.replica import Replica, ReplicaSettings, claim, restore
from messageai.cluster.s3 import S3
from messageai.config import Config
from messageai.model import Message
from messageai.store.paths import conversation_path
from tests.cluster_node import MEMBERS, owned_actor
from tests.helpers import make_config


def settings_for(
    endpoint: str, bucket: str, snapshot_after_bytes: int = 16 * 1024 * 1024
) -> ReplicaSettings:
    # The stand-in's credentials (tests/s3_server.py); a node's come from its config.
    return ReplicaSettings(
        endpoint, bucket, "test-key", "test-secret", snapshot_after_bytes=snapshot_after_bytes
    )


def take_over(
    store: S3,
    settings: ReplicaSettings,
    config: Config,
    conversation_id: str,
    epoch: int,
    node: str,
    on_lost: Callable[[], None] | None = None,
) -> Replica:
    """Restore the conversation's file from its replica and claim it at `epoch`. Blocking."""
    path = conversation_path(config.data_dir, conversation_id)
    restored = restore(store, settings, conversation_id, path)
    replica = Replica(
        store, settings, conversation_id, epoch, restored.next_segment, on_lost=on_lost
    )
    claim(replica, path, config.storage.synchronous, node)
    return replica


def fence_of(replica: Replica) -> Fence:
    """The fence of a replicated owner: no commit once its replica is lost."""
    return Fence(replica.epoch, lambda: replica.healthy)


def _emit(event: str, **fields: object) -> None:
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


async def _main(args: argparse.Namespace) -> None:
    config = make_config(Path(args.data_dir))
    settings = settings_for(args.endpoint, args.bucket)
    store = settings.store()
    replica = await trio.to_thread.run_sync(
        take_over, store, settings, config, args.conversation, args.epoch, args.node
    )
    _emit("owner", epoch=replica.epoch, segment=replica.next_segment)
    async with owned_actor(config, args.conversation, fence_of(replica), replica) as owner:
        for n in range(1, sys.maxsize):
            client_id = f"{args.node}-{n}"
            result = await owner.send(MEMBERS[0], client_id, f"message {n}")
            if isinstance(result, Message):
                _emit("ack", client_id=client_id, seq=result.seq)
            else:
                _emit("refused", client_id=client_id, code=result.code)
            await trio.sleep(args.interval)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.replica_node")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--conversation", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.01)
    trio.run(_main, parser.parse_args(argv))


if __name__ == "__main__":
    main()
