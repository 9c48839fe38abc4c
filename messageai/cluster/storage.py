"""Where a conversation's file comes from when this node takes it over (docs/SCALE.md §7).

Two kinds, chosen by `cluster.s3_endpoint`. Empty: the **shared directory** (§7a):
every node on one host uses one data directory, the floor of the next lease is the
epoch in the file (`fence.file_epoch`), and the claim is `fence.claim_file`. Set: the
**replica** (§7b): each node has a data directory of its own, the file is rebuilt from
the S3-compatible store (`replica.restore`, whose highest epoch is the floor), and the
claim is `replica.claim`, the new owner's first replicated segment; the actor then gets
the `Replica` and ships every commit before its ack.

`open_storage` makes it at start-up (`cluster.startup`: the secret read, the store
checked by `replica.check_store` in a thread; `StoreUnfit` or an unreachable store is
a start-up error); `Node._take` calls `prepare` before it acquires the lease and
`claim` once it holds it, and `Node.retired` calls `prune` once it gave the lease
back. All run their blocking parts in worker threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from messageai.cluster.fence import claim_file, file_epoch
from messageai.cluster.replica import (
    Replica,
    ReplicaSettings,
    RestoreError,
    StoreUnfit,
    check_store,
    claim,
    restore,
)
from messageai.cluster.s3 import S3, S3Error
from messageai.config import ClusterConfig, Config, ConfigError, read_secret
from messageai.errors import Unavailable
from messageai.store.paths import conversation_path

log = logging.getLogger(__name__)


@attrs.frozen
class Prepared:
    """A conversation's file made ready for a take-over: its path, the floor for the
    lease's epoch, and (replica) the segment the new owner continues at."""

    path: Path
    floor: int
    next_segment: int = 1


def replica_settings(cluster: ClusterConfig) -> ReplicaSettings | None:
    """The replica's settings from `[cluster]` (its secret read now), or None in the
    shared-directory mode. Raises ConfigError if the secret cannot be read."""
    if not cluster.s3_endpoint:
        return None
    secret = read_secret(
        "cluster",
        "s3_secret_key_file",
        cluster.s3_secret_key_file,
        "s3_secret_key_env",
        cluster.s3_secret_key_env,
    )
    assert secret is not None  # required with s3_endpoint (ClusterConfig)
    return ReplicaSettings(
        endpoint=cluster.s3_endpoint,
        bucket=cluster.s3_bucket,
        access_key=cluster.s3_access_key_id,
        secret_key=secret,
        region=cluster.s3_region,
        prefix=cluster.s3_prefix,
        timeout_seconds=cluster.s3_timeout_seconds,
    )


class Storage:
    """The node's source of conversation files; see the module. `replicated`: whether
    files come from the replica (else the shared directory)."""

    def __init__(
        self, config: Config, settings: ReplicaSettings | None = None, store: S3 | None = None
    ) -> None:
        self._config = config
        self._settings = settings
        self._store = store

    @property
    def replicated(self) -> bool:
        return self._store is not None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    async def prepare(self, conversation_id: str) -> Prepared:
        """The file ready to be claimed, before the lease is acquired (nothing of this
        node may have it open: the node holds no lease for it). Replica: rebuilt from
        the store, whatever the local file held. Raises Unavailable if the store
        cannot be read, or the replica cannot be restored."""
        path = conversation_path(self._config.data_dir, conversation_id)
        if self._store is None:
            return Prepared(path, await trio.to_thread.run_sync(file_epoch, path))
        store, settings = self._store, self._settings
        assert settings is not None
        try:
            restored = await trio.to_thread.run_sync(
                restore, store, settings, conversation_id, path
            )
        except S3Error as exc:
            raise Unavailable(
                f"conversation {conversation_id}: its replica cannot be read ({exc}); please retry"
            ) from exc
        except RestoreError as exc:
            # A bug or a damaged store, never skipped: the conversation stays out of
            # service (every try fails the same way) until an operator looks.
            raise Unavailable(
                f"conversation {conversation_id}: its replica cannot be restored ({exc})"
            ) from exc
        return Prepared(path, restored.epoch, restored.next_segment)

    async def claim(
        self,
        conversation_id: str,
        prepared: Prepared,
        epoch: int,
        node_id: str,
        on_lost: Callable[[], None],
    ) -> Replica | None:
        """Claim the prepared file for the lease's `epoch`; the actor's replica (None in
        the shared-directory mode). `on_lost` is the replica's (called from a commit's
        thread). Raises Fenced, or ReplicaLost (an Unavailable): another owner won."""
        synchronous = self._config.storage.synchronous
        if self._store is None:
            await trio.to_thread.run_sync(claim_file, prepared.path, synchronous, epoch, node_id)
            return None
        assert self._settings is not None
        replica = Replica(
            self._store,
            self._settings,
            conversation_id,
            epoch,
            prepared.next_segment,
            on_lost=on_lost,
        )
        await trio.to_thread.run_sync(claim, replica, prepared.path, synchronous, node_id)
        return replica

    async def prune(self, replica: Replica) -> None:
        """Delete the segments the replica's second-latest snapshot superseded (once its
        owner gave the lease back: off every commit path). A failure is only logged:
        the next retire tries again. Abandoned at shutdown (deletes are idempotent)."""
        try:
            deleted = await trio.to_thread.run_sync(replica.prune, abandon_on_cancel=True)
        except S3Error as exc:
            log.warning("conversation %s: prune: %s", replica.conversation_id, exc)
            return
        if deleted:
            log.info("conversation %s: %d old objects pruned", replica.conversation_id, deleted)


async def open_storage(config: Config) -> Storage:
    """The node's storage from its `[cluster]` config; with a replica, its store is
    checked first (a thread). Raises ConfigError for an unreadable secret, a store that
    cannot be reached or cannot fence two owners (`StoreUnfit`)."""
    settings = replica_settings(config.cluster)
    if settings is None:
        return Storage(config)
    store = settings.store()
    try:
        await trio.to_thread.run_sync(check_store, store, settings)
    except (S3Error, StoreUnfit) as exc:
        store.close()
        raise ConfigError(f"cluster.s3_endpoint: {exc}") from exc
    except BaseException:
        store.close()
        raise
    return Storage(config, settings, store)
