"""Nodes on different hosts, each with its own data directory, fail over through the
replica (docs/SCALE.md §7b): the owner of a busy conversation is killed with -9 mid-burst,
the clients resend what was not acked through the other node, which restores the file
from the S3-compatible store; every acked message is there once, in order, with no gap
in the seqs, and the file is claimed at a higher epoch. Also: `node drain` hands a
replicated conversation over (and the retired replica is pruned); a lost replica (the
store stops answering) stops its owner, whose lease is given back, and the resend is
stored once; a node refuses to start on a store that cannot fence.

Real `redis-server`, real `messageai serve` processes, each its own data directory
(`tests/cluster_nodes.py`, `s3=`: only the directory database is shared, through a
symlink, as PostgreSQL is not built yet), the S3 stand-in on loopback
(`tests/s3_server.py`). Without the replica (the shared-directory mode on separate
directories) the new owner starts from an empty file and this fails: the survivor has
no file of the conversation before the failover, which the test checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio_websocket

from messageai.cluster.fence import file_epoch
from messageai.cluster.s3 import S3
from messageai.store.paths import conversation_path
from tests.cluster_nodes import Cluster, ClusterNode, cluster_config, cluster_of, replica_config
from tests.helpers import Account, Harness, run_messageai
from tests.redis_server import RedisServer
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3StandIn, Stall, s3_server

DEADLINE = 60
SENDERS = 3
PER_SENDER = 12
# The owner dies once this many messages were acked (of SENDERS * PER_SENDER).
KILL_AFTER = 10


@pytest.fixture
def s3() -> Iterator[S3StandIn]:
    with s3_server() as running:
        yield running


@pytest.mark.slow
async def test_a_killed_owner_s_conversation_is_restored_on_another_host(
    tmp_path: Path, s3: S3StandIn
) -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_of(tmp_path, 2, s3=s3) as cluster:
            ada, bob, cid, owner, survivor = await _direct(cluster)
            assert owner.data_dir != survivor.data_dir
            survivor_file = conversation_path(survivor.data_dir, cid)
            # Whatever the survivor serves after the failover can only come from the store.
            assert not survivor_file.exists()
            acked: dict[str, int] = {}
            order: list[list[str]] = []
            killed = trio.Event()
            epoch_before = 0

            async def kill_mid_burst() -> None:
                nonlocal epoch_before
                while len(acked) < KILL_AFTER:
                    await trio.sleep(0.005)
                epoch_before = file_epoch(conversation_path(owner.data_dir, cid))
                owner.process.kill()
                killed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_mid_burst)
                for k in range(SENDERS):
                    ids = [f"s{k}-{n}" for n in range(PER_SENDER)]
                    order.append(ids)
                    who = (ada, bob)[k % 2]
                    nursery.start_soon(_send_all, survivor.harness, who, cid, ids, acked)
            assert killed.is_set()
            assert await owner.process.wait() != 0
            assert await cluster.owner(cid) == survivor.node_id
            assert survivor_file.exists()
            assert file_epoch(survivor_file) > epoch_before > 0
            # Every acked message once, at the seq its ack gave, the seqs without gaps,
            # and each sender's messages in the order it sent them.
            r = await survivor.harness.http.get(
                f"/v1/conversations/{cid}/messages?limit=200",
                headers=survivor.harness.auth(bob),
            )
            assert r.status_code == 200, r.text
            messages = r.json()["messages"]
            stored = {m["client_id"]: m["seq"] for m in messages}
            assert len(messages) == len(stored) == SENDERS * PER_SENDER
            assert stored == acked
            assert sorted(stored.values()) == list(range(1, SENDERS * PER_SENDER + 1))
            for ids in order:
                seqs = [stored[client_id] for client_id in ids]
                assert seqs == sorted(seqs), (ids, seqs)
            await _segments_written(cluster, s3, cid)


@pytest.mark.slow
async def test_node_drain_hands_a_replicated_conversation_over(
    tmp_path: Path, s3: S3StandIn
) -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_of(tmp_path, 2, s3=s3) as cluster:
            ada, bob, cid, owner, other = await _direct(cluster)
            acked: dict[str, int] = {}
            # A delete checkpoints the WAL away, so the commit after it ships a snapshot:
            # two of them after the first segment's, and a prune has something to do.
            async with owner.harness.ws(ada) as ws:
                for n, seq in ((0, 2), (1, 4), (2, 0)):
                    await _send_all(owner.harness, ada, cid, [f"m{n}", f"m{n}b"], acked)
                    if n < 2:
                        deleted = await ws.request("delete_message", conversation_id=cid, seq=seq)
                        assert deleted["type"] == "updated", deleted
            first = f"messageai/{cid}/wal/{1:020d}"
            assert _kinds(s3, cluster, cid)[first] == "snapshot"
            assert list(_kinds(s3, cluster, cid).values()).count("snapshot") >= 3
            await owner.drain()
            assert await cluster.owner(cid) is None  # released once its segments were in
            assert not conversation_path(other.data_dir, cid).exists()
            # Then the retired owner pruned what the second-latest snapshot superseded.
            while first in _kinds(s3, cluster, cid):
                await trio.sleep(0.05)
            # Through the drained node, to the new owner, which restores the file.
            await _send_all(owner.harness, bob, cid, ["m3"], acked)
            assert acked == {"m0": 1, "m0b": 2, "m1": 3, "m1b": 4, "m2": 5, "m2b": 6, "m3": 7}
            assert await cluster.owner(cid) == other.node_id
            r = await other.harness.http.get(
                f"/v1/conversations/{cid}/messages", headers=other.harness.auth(ada)
            )
            assert r.status_code == 200, r.text
            kept = [m["client_id"] for m in r.json()["messages"] if m["deleted_at"] is None]
            assert kept == ["m0", "m1", "m2", "m2b", "m3"]


@pytest.mark.slow
async def test_a_lost_replica_stops_the_owner_and_the_resend_is_stored_once(
    tmp_path: Path, s3: S3StandIn
) -> None:
    stall = Stall(("127.0.0.1", s3.server_address[1]))
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(stall.serve)
            async with cluster_of(tmp_path, 2, s3=s3, via=stall.endpoint) as cluster:
                ada, bob, cid, owner, _ = await _direct(cluster)
                acked: dict[str, int] = {}
                await _send_all(owner.harness, ada, cid, ["m0"], acked)
                epoch_before = file_epoch(conversation_path(owner.data_dir, cid))
                # The store stops answering: the batch is committed in the owner's file,
                # its PUT times out twice, and the replica is lost: no ack.
                stall.hold = "requests"
                async with owner.harness.ws(ada) as ws:
                    lost = await ws.send_message(cid, "m1", client_id="m1")
                    assert lost["code"] == "unavailable", lost
                    # The actor stopped and gave the lease back: it is nobody's now.
                    while await cluster.owner(cid) is not None:
                        await trio.sleep(0.05)
                    stall.hold = None
                # The resend is taken over from the replica, which never got m1: stored
                # once, after m0, by a new epoch (the file that was ahead is not served).
                await _send_all(owner.harness, bob, cid, ["m1", "m2"], acked)
                assert acked == {"m0": 1, "m1": 2, "m2": 3}
                new_owner = cluster.node(await cluster.owner(cid) or "")
                assert file_epoch(conversation_path(new_owner.data_dir, cid)) > epoch_before
            nursery.cancel_scope.cancel()


async def test_a_node_refuses_to_start_on_a_store_that_cannot_fence(tmp_path: Path) -> None:
    # A store that ignores If-None-Match would let two owners both write a segment.
    secret = tmp_path / "secret"
    secret.write_text(SECRET_KEY + "\n")
    with s3_server(overwrite=True) as unfit:
        store = S3(unfit.endpoint, "unfit", access_key=ACCESS_KEY, secret_key=SECRET_KEY)
        with contextlib.closing(store):
            store.create_bucket()
        # Checked before Redis is reached: nothing listens at this Redis port.
        nowhere = RedisServer("127.0.0.1", 1)
        config = cluster_config(
            tmp_path / "node.toml",
            "a",
            nowhere,
            secret,
            extra=replica_config(unfit.endpoint, "unfit", secret),
        )
        done = await run_messageai(
            "serve", "--config", str(config), "--data-dir", str(tmp_path / "data")
        )
    assert done.returncode == 2, done
    assert "cannot fence two owners" in done.stderr, done.stderr


async def _direct(cluster: Cluster) -> tuple[Account, Account, str, ClusterNode, ClusterNode]:
    """Ada and bob, their direct conversation, the node that owns it and another."""
    ada, bob, cid, owner_id = await cluster.direct()
    return ada, bob, cid, cluster.node(owner_id), cluster.other(owner_id)


async def _send_all(
    harness: Harness, who: Account, cid: str, client_ids: list[str], acked: dict[str, int]
) -> None:
    """Send each message in turn through `harness`, resending it (the same client_id,
    on a new connection if the old one closed) until it is acked."""
    async with contextlib.AsyncExitStack() as stack:
        ws = await stack.enter_async_context(harness.ws(who))
        for client_id in client_ids:
            while True:
                try:
                    answer = await ws.send_message(cid, client_id, client_id=client_id)
                except (trio_websocket.ConnectionClosed, trio.TooSlowError):
                    ws = await stack.enter_async_context(harness.ws(who))
                    continue
                if answer["type"] == "ack":
                    acked[client_id] = answer["message"]["seq"]
                    break
                # Only a refusal that is safe to retry: the owner died, or the
                # conversation is being taken over.
                assert answer["code"] == "unavailable", answer
                await trio.sleep(0.05)


def _kinds(s3: S3StandIn, cluster: Cluster, cid: str) -> dict[str, str]:
    """The conversation's segments in the bucket: key -> kind (frames or snapshot)."""
    with s3.lock:
        objects = s3.buckets[cluster.bucket]
        return {
            key: dict(found.metadata)["x-amz-meta-kind"]
            for key, found in objects.items()
            if key.startswith(f"messageai/{cid}/wal/")
        }


async def _segments_written(cluster: Cluster, s3: S3StandIn, cid: str) -> None:
    # Both owners' segments are in the bucket, under the conversation's prefix.
    with s3.lock:
        keys = [
            key for key in s3.buckets[cluster.bucket] if key.startswith(f"messageai/{cid}/wal/")
        ]
        epochs = {
            dict(s3.buckets[cluster.bucket][key].metadata)["x-amz-meta-epoch"] for key in keys
        }
    assert len(epochs) >= 2, epochs
