"""The conversation WAL replica (`messageai/cluster/replica.py`, `cluster/s3.py`): every
acked batch is in S3 before its ack, a second writer is refused, a restore rebuilds
exactly the replicated file.

Real conversation files under `tmp_path`, real actors with the real commit pool
(`tests/cluster_node.py`), a real S3 server on loopback (`tests/s3_server.py`, one per
module, a bucket per test), real HTTP; the kill -9 test runs the owner as a
process of its own (`tests/replica_node.py`) behind a proxy that stalls the store at
the chosen moment. Every test has an absolute `trio.fail_after`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import httpx
import orjson
import pytest
import trio

from messageai.cluster.replica import (
    Replica,
    ReplicaLost,
    ReplicaSettings,
    RestoreError,
    StoreUnfit,
    check_store,
    restore,
    segment_key,
    snapshot_key,
)
from messageai.cluster.s3 import S3, S3Error, sign
from messageai.config import Config
from messageai.conversations.commands import Changed, Command, Waiter
from messageai.errors import Unavailable
from messageai.model import Message
from messageai.protocol import DeleteMessage
from messageai.sqlite import open_db, transaction
from messageai.store.paths import conversation_path
from tests.cluster_node import MEMBERS, Owner, owned_actor
from tests.helpers import make_config
from tests.replica_node import fence_of, settings_for, take_over
from tests.s3_server import S3StandIn, Stall, s3_server

DEADLINE = 30
# The kill -9 test starts a Python process of its own (its imports take seconds on a
# loaded machine).
PROCESS_DEADLINE = 60
CID = "c_replicated"
ADA, BOB = MEMBERS


@pytest.fixture(scope="module")
def server() -> Iterator[S3StandIn]:
    with s3_server() as running:
        yield running


@pytest.fixture
def endpoint(server: S3StandIn) -> str:
    return server.endpoint


@pytest.fixture
def settings(endpoint: str) -> ReplicaSettings:
    return settings_for(endpoint, f"replica-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(settings: ReplicaSettings) -> Iterator[S3]:
    client = settings.store()
    client.create_bucket()
    check_store(client, settings)
    yield client
    client.close()


def _config(tmp_path: Path, name: str) -> Config:
    return make_config(tmp_path / name)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The first node's configuration (its own data directory)."""
    return _config(tmp_path, "node-a")


def _rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the conversation's tables that the protocol shows, in key order."""
    conn = open_db(path, "FULL", create=False)
    try:
        return {
            "messages": conn.execute(
                "SELECT seq, id, sender_id, client_id, body FROM messages ORDER BY seq"
            ).fetchall(),
            "read_cursors": conn.execute("SELECT * FROM read_cursors ORDER BY 1").fetchall(),
            "fence": conn.execute("SELECT epoch, node FROM fence").fetchall(),
        }
    finally:
        conn.close()


def _restored(store: S3, settings: ReplicaSettings, tmp_path: Path) -> Path:
    path = tmp_path / f"restored-{uuid.uuid4().hex[:8]}" / "c.sqlite3"
    restore(store, settings, CID, path)
    return path


@contextlib.asynccontextmanager
async def _owner(
    config: Config, store: S3, settings: ReplicaSettings, epoch: int, node: str = "a"
) -> AsyncIterator[tuple[Owner, Replica]]:
    """The conversation taken over at `epoch` (restored, claimed) and its actor running."""
    replica = await trio.to_thread.run_sync(take_over, store, settings, config, CID, epoch, node)
    async with owned_actor(config, CID, fence_of(replica), replica) as owner:
        yield owner, replica


def test_sigv4_is_botocores() -> None:
    # The signature every request carries, against the reference implementation.
    url = (
        "http://127.0.0.1:9000/bucket-x/messageai/c_1/wal/00000000000000000007?x=a%20b&list-type=2"
    )
    body = b"frames"
    headers = {"x-amz-meta-epoch": "3", "if-none-match": "*"}
    reference = botocore.awsrequest.AWSRequest("PUT", url, data=body, headers=dict(headers))
    botocore.auth.S3SigV4Auth(
        botocore.credentials.Credentials("AKID", "SECRET"), "s3", "eu-west-3"
    ).add_auth(reference)
    when = datetime.datetime.strptime(reference.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    ours = sign(
        "PUT",
        httpx.URL(url),
        headers,
        reference.headers["X-Amz-Content-SHA256"],
        access_key="AKID",
        secret_key="SECRET",
        region="eu-west-3",
        now=when.replace(tzinfo=datetime.UTC),
    )
    assert ours["authorization"] == reference.headers["Authorization"]


def test_a_store_that_overwrites_is_refused_at_start_up(store: S3) -> None:
    with s3_server(overwrite=True) as server:
        unfit = settings_for(server.endpoint, "bucket-x")
        with contextlib.closing(unfit.store()) as client:
            client.create_bucket()
            with pytest.raises(StoreUnfit, match="overwrote"):
                check_store(client, unfit)


def test_a_wrong_signature_is_refused(settings: ReplicaSettings, store: S3) -> None:
    # The stand-in checks what S3 checks: a client with the wrong secret gets 403.
    with (
        contextlib.closing(attrs.evolve(settings, secret_key="not-the-secret").store()) as wrong,
        pytest.raises(S3Error, match="403 SignatureDoesNotMatch"),
    ):
        wrong.put("k", b"x")


async def test_every_acked_batch_is_in_the_replica(
    tmp_path: Path, store: S3, settings: ReplicaSettings, config: Config
) -> None:
    with trio.fail_after(DEADLINE):
        async with _owner(config, store, settings, 1) as (owner, replica):
            acked: list[Message] = []

            async def send(n: int) -> None:
                result = await owner.send(ADA if n % 2 else BOB, f"m-{n}", f"hello {n} " * 30)
                assert isinstance(result, Message)
                acked.append(result)

            # Bursts, so that batches of several commands make one segment each.
            for burst in range(6):
                async with trio.open_nursery() as nursery:
                    for n in range(burst * 5, burst * 5 + 5):
                        nursery.start_soon(send, n)
    segments = len(store.list(segment_key(settings, CID, 0)[:-20]))
    # The claim, then one segment per commit: more than 9, so numeric and listing
    # order must agree.
    assert segments >= 7 and replica.next_segment == segments + 1
    local = _rows(conversation_path(config.data_dir, CID))
    assert len(local["messages"]) == len(acked) == 30
    assert _rows(_restored(store, settings, tmp_path)) == local


async def test_a_single_node_file_becomes_the_first_snapshot(
    tmp_path: Path, store: S3, settings: ReplicaSettings, config: Config
) -> None:
    # A conversation written by a single-node server, then owned in replica mode.
    with trio.fail_after(DEADLINE):
        async with owned_actor(config, CID, None) as owner:
            for n in range(3):
                assert isinstance(await owner.send(ADA, f"single-{n}", "before"), Message)
        async with _owner(config, store, settings, 1) as (owner, _replica):
            assert isinstance(await owner.send(ADA, "replicated", "after"), Message)
    first = store.get(segment_key(settings, CID, 1))
    assert first.metadata["kind"] == "snapshot"
    restored = _rows(_restored(store, settings, tmp_path))
    assert [r[3] for r in restored["messages"]] == [
        "single-0",
        "single-1",
        "single-2",
        "replicated",
    ]
    assert restored == _rows(conversation_path(config.data_dir, CID))


async def test_a_second_writer_is_refused_and_nothing_of_its_batch_is_acked(
    tmp_path: Path, store: S3, settings: ReplicaSettings
) -> None:
    config_a, config_b = _config(tmp_path, "node-a"), _config(tmp_path, "node-b")
    lost: list[int] = []
    with trio.fail_after(DEADLINE):
        old = await trio.to_thread.run_sync(
            lambda: take_over(store, settings, config_a, CID, 1, "a", lambda: lost.append(1))
        )
        async with owned_actor(config_a, CID, fence_of(old), old) as owner_a:
            for n in range(3):
                assert isinstance(await owner_a.send(ADA, f"a-{n}", "from a"), Message)
            # Node b takes over (node a's lease ran out while it was paused): it
            # restores what a acked and claims segment n + 1 at epoch 2.
            new = await trio.to_thread.run_sync(take_over, store, settings, config_b, CID, 2, "b")
            assert new.next_segment == old.next_segment + 1
            refused = await owner_a.send(ADA, "a-late", "from a, too late")
            assert isinstance(refused, Unavailable)
            assert not old.healthy and lost == [1]
            # The batch is in a's file (committed, never acked, never replicated): a's
            # file is ahead of the replica, so a must not serve it again, and no later
            # batch commits there (the fence includes the replica's health).
            assert "a-late" in {
                r[3] for r in _rows(conversation_path(config_a.data_dir, CID))["messages"]
            }
            assert isinstance(await owner_a.send(ADA, "a-later", "again"), Unavailable)
            assert "a-later" not in {
                r[3] for r in _rows(conversation_path(config_a.data_dir, CID))["messages"]
            }
            async with owned_actor(config_b, CID, fence_of(new), new) as owner_b:
                assert isinstance(await owner_b.send(BOB, "b-0", "from b"), Message)
                # The refused message, resent to the new owner: stored once, after b's.
                late = await owner_b.send(ADA, "a-late", "from a, too late")
                assert isinstance(late, Message) and late.seq == 5
    # b's claim, then its commits: frames, following the claim's WAL across the claim's
    # connection and the actor's (no snapshot after a restore).
    kinds = [
        store.get(segment_key(settings, CID, n)).metadata["kind"]
        for n in range(old.next_segment, new.next_segment)
    ]
    assert kinds == ["frames"] * 3
    restored = _rows(_restored(store, settings, tmp_path))
    assert [r[3] for r in restored["messages"]] == ["a-0", "a-1", "a-2", "b-0", "a-late"]
    assert restored == _rows(conversation_path(config_b.data_dir, CID))
    assert restored["fence"] == [(2, "b")]


async def test_a_put_whose_answer_was_lost_is_tried_again(
    tmp_path: Path, store: S3, settings: ReplicaSettings, server: S3StandIn, config: Config
) -> None:
    # The store wrote the segment and the answer never came: the retry's 412 finds the
    # replica's own body there, so the batch is acked, once, and the replica goes on.
    with trio.fail_after(DEADLINE):
        async with _owner(config, store, settings, 1) as (owner, replica):
            assert isinstance(await owner.send(ADA, "before", "x"), Message)
            server.unanswered_puts = 1
            assert isinstance(await owner.send(ADA, "answer lost", "x"), Message)
            assert server.unanswered_puts == 0 and replica.healthy
            assert isinstance(await owner.send(ADA, "after", "x"), Message)
    restored = _rows(_restored(store, settings, tmp_path))
    assert [r[3] for r in restored["messages"]] == ["before", "answer lost", "after"]


async def test_two_owners_racing_for_a_segment_one_wins(
    tmp_path: Path, store: S3, settings: ReplicaSettings
) -> None:
    # Both restored the same replica and claim the same next number at once (in two
    # threads): the store lets exactly one claim through.
    configs = [_config(tmp_path, f"node-{n}") for n in range(2)]
    take_over(store, settings, configs[0], CID, 1, "first")
    outcomes: list[str] = []

    def contend(config: Config, epoch: int) -> None:
        try:
            take_over(store, settings, config, CID, epoch, f"node-{epoch}")
            outcomes.append("claimed")
        except ReplicaLost:
            outcomes.append("refused")

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for n, config in enumerate(configs):
                nursery.start_soon(trio.to_thread.run_sync, contend, config, 2 + n)
    assert sorted(outcomes) == ["claimed", "refused"]
    assert len(store.list(segment_key(settings, CID, 0)[:-20])) == 2


async def test_restore_stops_at_a_gap_and_at_an_epoch_going_down(
    tmp_path: Path, store: S3, settings: ReplicaSettings, config: Config
) -> None:
    with trio.fail_after(DEADLINE):
        async with _owner(config, store, settings, 5) as (owner, replica):
            for n in range(4):
                assert isinstance(await owner.send(ADA, f"a-{n}", "from a"), Message)
    last = replica.next_segment - 1
    # A segment after the last one, written at a lower epoch: a bug, and no restore.
    older = store.get(segment_key(settings, CID, last))
    store.put(
        segment_key(settings, CID, last + 1), older.body, metadata={**older.metadata, "epoch": "4"}
    )
    with pytest.raises(RestoreError, match="epoch 4 after epoch 5"):
        _restored(store, settings, tmp_path)
    store.delete(segment_key(settings, CID, last + 1))
    assert len(_rows(_restored(store, settings, tmp_path))["messages"]) == 4
    # A segment missing in the middle: the restore stops rather than skip a commit.
    store.delete(segment_key(settings, CID, last - 1))
    with pytest.raises(RestoreError, match=f"segment {last - 1} is missing"):
        _restored(store, settings, tmp_path)


async def test_snapshots_then_later_segments(tmp_path: Path, endpoint: str, config: Config) -> None:
    # Small snapshots, so that several are taken; a delete makes one too (the actor's
    # checkpoint after a delete restarts the WAL behind the replica).
    settings = settings_for(
        endpoint, f"replica-{uuid.uuid4().hex[:12]}", snapshot_after_bytes=40_000
    )
    store = settings.store()
    store.create_bucket()
    with trio.fail_after(DEADLINE):
        async with _owner(config, store, settings, 1) as (owner, replica):
            for n in range(40):
                assert isinstance(await owner.send(ADA, f"a-{n}", f"text {n} " * 40), Message)
                if n == 20:
                    waiter: Waiter[Changed] = Waiter()
                    delete = DeleteMessage(CID, 3)
                    await owner.actor.submit(Command(op=delete, user_id=ADA, waiter=waiter))
                    await waiter.wait()
                    after_delete = replica.next_segment
        pointers = store.list(snapshot_key(settings, CID, 0)[:-20])
        assert len(pointers) >= 3
        assert snapshot_key(settings, CID, after_delete) in pointers
        deleted = await trio.to_thread.run_sync(replica.prune)
        assert deleted > 0
        # What a prune leaves starts at the second-latest snapshot.
        remaining = store.list(segment_key(settings, CID, 0)[:-20])
        assert remaining[0] == segment_key(settings, CID, int(pointers[-2][-20:]))
        path = tmp_path / "restored" / "c.sqlite3"
        restored = restore(store, settings, CID, path)
        assert restored.next_segment == replica.next_segment
        # From the latest snapshot: fewer segments read than were written.
        assert restored.segments < replica.next_segment - int(pointers[-2][-20:])
        assert _rows(path) == _rows(conversation_path(config.data_dir, CID))
    store.close()


def test_a_wal_restarted_behind_the_replica_is_snapshotted(
    tmp_path: Path, store: S3, settings: ReplicaSettings, config: Config
) -> None:
    """Commits the replica did not ship, then a checkpoint that is not the replica's
    (a connection it had not configured): the WAL restarts and those frames are only
    in the file. The next segment must be the whole file."""
    replica = take_over(store, settings, config, CID, 1, "a")
    path = conversation_path(config.data_dir, CID)
    conn = open_db(path, "FULL")
    try:
        # (This connection reopened the WAL, so the first segment is a snapshot; the
        # second is frames.)
        for client_id in ("shipped", "shipped too", "unshipped", "after the checkpoint"):
            with transaction(conn):
                conn.execute(
                    "INSERT INTO messages(id, sender_id, client_id, body, attachments, created_at)"
                    " VALUES (?, ?, ?, 'x', '[]', 0)",
                    (client_id, ADA, client_id),
                )
            if client_id.startswith("shipped"):
                replica.ship(conn)
            if client_id == "unshipped":
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        replica.ship(conn)
    finally:
        conn.close()
    assert (
        store.get(segment_key(settings, CID, replica.next_segment - 1)).metadata["kind"]
        == "snapshot"
    )
    restored = _rows(_restored(store, settings, tmp_path))
    assert [r[3] for r in restored["messages"]] == [
        "shipped",
        "shipped too",
        "unshipped",
        "after the checkpoint",
    ]


@pytest.mark.parametrize("hold", ["requests", "responses"])
async def test_kill_9_between_the_commit_and_the_ack(
    tmp_path: Path, store: S3, settings: ReplicaSettings, endpoint: str, hold: str
) -> None:
    """The owner is a process of its own, its store behind a proxy. After a few acks
    the proxy stalls: its requests ("the commit happened, the PUT never reached the
    store") or its responses ("the PUT landed, the ack never left"); the owner is
    kill -9ed. The replica has every acked message; the stalled batch too exactly when
    its PUT landed; a new owner takes over and the resend is stored once."""
    target = httpx.URL(endpoint)
    stall = Stall((str(target.host), int(target.port or 80)))
    data_dir = tmp_path / "node-a"
    with trio.fail_after(PROCESS_DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(stall.serve)
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "tests.replica_node",
                    "--endpoint",
                    stall.endpoint,
                    "--bucket",
                    settings.bucket,
                    "--data-dir",
                    str(data_dir),
                    "--conversation",
                    CID,
                    "--node",
                    "a",
                    "--epoch",
                    "1",
                ],
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
            )
            assert process.stdout is not None
            lines = b""
            while lines.count(b'"ack"') < 5:
                chunk = await process.stdout.receive_some(65536)
                assert chunk, "the owner ended early"
                lines += chunk
            stall.hold = hold
            await stall.held.wait()
            process.send_signal(signal.SIGKILL)
            await process.wait()
            while chunk := await process.stdout.receive_some(65536):
                lines += chunk
            nursery.cancel_scope.cancel()
    events = [orjson.loads(line) for line in lines.splitlines()]
    acked = [e["client_id"] for e in events if e["event"] == "ack"]
    assert acked == [f"a-{n}" for n in range(1, len(acked) + 1)]
    stalled = f"a-{len(acked) + 1}"
    # The dead owner's file has the stalled batch: it committed before its PUT.
    local = [r[3] for r in _rows(conversation_path(data_dir, CID))["messages"]]
    assert local == [*acked, stalled]
    replicated = [r[3] for r in _rows(_restored(store, settings, tmp_path))["messages"]]
    assert replicated == (acked if hold == "requests" else [*acked, stalled])
    # A new owner: the client's resend of the unacked message is stored exactly once.
    config = _config(tmp_path, "node-b")
    with trio.fail_after(DEADLINE):
        async with _owner(config, store, settings, 2, "b") as (owner, _new):
            resent = await owner.send(ADA, stalled, f"message {len(acked) + 1}")
            assert isinstance(resent, Message) and resent.seq == len(acked) + 1
    assert [r[3] for r in _rows(_restored(store, settings, tmp_path))["messages"]] == [
        *acked,
        stalled,
    ]
