"""The epoch fence in a conversation's file (`store/fence.py`, `cluster/fence.py`), and
the actor's commits checked against it, with leases from a real Redis.

Real conversation files under `tmp_path`, real actors with the real commit pool
(`tests/cluster_node.py`), a `redis-server` per test on 127.0.0.1 (the `redis`
fixture; skipped, saying so, without the binary). The two "nodes" of a test are two actors of this process on
the same file: the shared-file case of docs/SCALE.md §7, where the file's epoch is
the fence. Every test has an absolute `trio.fail_after`.
"""

from __future__ import annotations

from pathlib import Path

import coredis
import pytest
import trio

from messageai.cluster.fence import Fence, Fenced, claim_file, file_epoch
from messageai.cluster.lease import Lease, Leases
from messageai.config import Config
from messageai.errors import Unavailable
from messageai.model import Message
from messageai.ops import conversation_file
from messageai.sqlite import open_db, transaction
from messageai.store import conversation as conversation_sql
from messageai.store import fence as fence_sql
from messageai.store.paths import conversation_path
from tests.cluster_node import MEMBERS, owned_actor, take_over
from tests.helpers import harness, make_config

DEADLINE = 20
CID = "c_fenced"
ADA = MEMBERS[0]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path / "data")


def _stored(path: Path) -> tuple[fence_sql.FenceRow | None, dict[str, int]]:
    """The file's fence row and its messages' client ids by rev."""
    conn = open_db(path, "FULL", create=False)
    try:
        revs = {
            str(client_id): int(rev)
            for client_id, rev in conn.execute("SELECT client_id, coalesce(rev, seq) FROM messages")
        }
        return fence_sql.current(conn), revs
    finally:
        conn.close()


async def test_a_stale_owner_commits_nothing_after_the_takeover(
    config: Config, redis: coredis.Redis[str], caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(DEADLINE):
        a = Leases(redis, "node-a", ttl_seconds=30)
        old = await take_over(a, config, CID, wait_seconds=2)
        async with owned_actor(config, CID, Fence(old.epoch, old.held)) as owner_a:
            for n in range(3):
                assert isinstance(await owner_a.send(ADA, f"a-{n}", "from a"), Message)
            # Redis loses the lease (a failover to a replica that never had it) while
            # node a, paused, still believes it holds it: only the file can stop it.
            await redis.delete([f"messageai:{{{CID}}}:lease"])
            assert old.held()
            b = Leases(redis, "node-b", ttl_seconds=30)
            new = await take_over(b, config, CID, wait_seconds=2)
            assert new.epoch == old.epoch + 1
            async with owned_actor(config, CID, Fence(new.epoch, new.held)) as owner_b:
                refused = await owner_a.send(ADA, "a-late", "from a, too late")
                assert isinstance(refused, Unavailable)
                for n in range(2):
                    assert isinstance(await owner_b.send(ADA, f"b-{n}", "from b"), Message)
                # A resend of the refused message goes to the new owner: stored once.
                late = await owner_b.send(ADA, "a-late", "from a, too late")
                assert isinstance(late, Message) and late.seq == 6
    # The refused batch is one warning, without a traceback: an expected refusal.
    fenced = [r for r in caplog.records if "refused by the fence" in r.getMessage()]
    assert [(r.levelname, r.exc_info) for r in fenced] == [("WARNING", None)]
    fence, revs = _stored(conversation_path(config.data_dir, CID))
    assert fence is not None and (fence.epoch, fence.node) == (new.epoch, "node-b")
    assert fence.since_rev == 3
    before = sorted(c for c, rev in revs.items() if rev <= fence.since_rev)
    after = sorted(c for c, rev in revs.items() if rev > fence.since_rev)
    assert before == ["a-0", "a-1", "a-2"]
    assert after == ["a-late", "b-0", "b-1"]  # a-late: the resend, through node b


async def test_an_owner_whose_lease_ran_out_commits_nothing(
    config: Config, redis: coredis.Redis[str]
) -> None:
    path = conversation_path(config.data_dir, CID)
    with trio.fail_after(DEADLINE):
        a = Leases(redis, "node-a", ttl_seconds=0.4, margin_seconds=0.1)
        lease = await take_over(a, config, CID, wait_seconds=2)
        async with owned_actor(config, CID, Fence(lease.epoch, lease.held)) as owner:
            assert isinstance(await owner.send(ADA, "first", "kept"), Message)
            while lease.held():  # never renewed: the lease runs out
                await trio.sleep(0.01)
            # Nobody else claimed the file: the lease's own view stops the commit.
            assert isinstance(await owner.send(ADA, "second", "refused"), Unavailable)
    fence, revs = _stored(path)
    assert fence is not None and fence.epoch == lease.epoch
    assert sorted(revs) == ["first"]


async def test_the_epoch_floor_comes_from_the_file_when_redis_forgot(
    config: Config, redis: coredis.Redis[str]
) -> None:
    path = conversation_path(config.data_dir, CID)
    with trio.fail_after(DEADLINE):
        a = Leases(redis, "node-a", ttl_seconds=5)
        for _ in range(3):
            lease = await take_over(a, config, CID, wait_seconds=2)
            assert await a.release(lease)
        assert file_epoch(path) == 3
        await redis.flushall()  # Redis restarted empty
        again = await take_over(a, config, CID, wait_seconds=2)
        assert again.epoch == 4 and file_epoch(path) == 4


def test_a_claim_with_a_stale_epoch_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    claimed = claim_file(path, "FULL", 5, "node-a")
    assert (claimed.epoch, claimed.since_rev, claimed.node) == (5, 0, "node-a")
    for stale in (5, 4):
        with pytest.raises(Fenced, match="claimed at epoch 5"):
            claim_file(path, "FULL", stale, "node-b")
    fence, _ = _stored(path)
    assert fence == claimed


def test_a_commit_of_another_epoch_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    claim_file(path, "FULL", 2, "node-b")
    conn = open_db(path, "FULL")
    try:
        held = Lease(CID, "node-a", 1, float("inf"))
        for epoch in (1, 3):  # older and newer than the file's: neither is the owner
            with pytest.raises(Fenced), transaction(conn):
                conn.execute("INSERT INTO read_cursors(user_id, seq) VALUES (?, 1)", (f"u{epoch}",))
                Fence(epoch, held.held).check(conn)
        assert conn.execute("SELECT count(*) FROM read_cursors").get == 0
        with transaction(conn):
            Fence(2, held.held).check(conn)  # the file's own epoch commits
    finally:
        conn.close()


def test_a_file_never_claimed_refuses_a_fenced_commit(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "c.sqlite3", "FULL")
    try:
        with pytest.raises(Fenced, match="never claimed"), transaction(conn):
            fence_sql.check(conn, 1)
        assert fence_sql.current(conn) is None
    finally:
        conn.close()


async def test_single_node_actor_has_no_fence_and_no_fence_table(config: Config) -> None:
    with trio.fail_after(DEADLINE):
        async with owned_actor(config, CID, None) as owner:
            assert isinstance(await owner.send(ADA, "solo", "one node"), Message)
    conn = open_db(conversation_path(config.data_dir, CID), "FULL", create=False)
    try:
        assert fence_sql.current(conn) is None
        assert conversation_sql.last_seq(conn) == 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema")}
        assert "fence" not in tables
    finally:
        conn.close()


async def test_an_exported_file_leaves_the_fence_out(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with harness(make_config(tmp_path / "data")) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cid = await h.direct(ada, bob)
            await h.post(ada, cid, "claimed by a cluster once")
            path = conversation_path(h.server.config.data_dir, cid)
            await trio.to_thread.run_sync(claim_file, path, "FULL", 7, "node-a")
            assert file_epoch(path) == 7
            out = tmp_path / "export.sqlite3"
            data_dir = h.server.config.data_dir
            await trio.to_thread.run_sync(lambda: conversation_file.export(data_dir, cid, out))
    conn = open_db(out, "FULL", create=False)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema")}
        assert "fence" not in tables and "messages" in tables
    finally:
        conn.close()
