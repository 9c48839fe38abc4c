"""Computes the embeddings of one conversation's messages after their commit, in the
background, while its actor keeps serving (PROTOCOL.md v1.1: semantic search finds a
message within 10 s on an idle server; nothing on the ack path waits for the model).

Each actor owns one `VectorIndexer` (when the server has embeddings). Whenever no
command is waiting and `runnable` (at most once a `PACE_SECONDS`, but at once while it
catches up a backlog), the actor awaits `step`: ONE short transaction on
its commit worker that writes the vectors of the last batch (if the model has
delivered them) and reads the next batch above the file's stored high-water mark (or
from its queue of edited messages; `store.vectors`). The batch's texts then go to the
embedding service (`ai.embeddings`) without waiting: the actor goes back to its
commands, and the service's callback cancels the actor's wait (`waiting`) when the
vectors arrive, so they are written at the next idle moment. A command that arrives
meanwhile waits for at most one such transaction. The mark moves only in the write's
transaction, so after a crash or a restart the indexer resumes where the last written
batch ended. The actor does not retire while `pending`. A failure (of the model or
of a write) is logged and indexing stops until the actor opens the file again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import apsw
import trio

from messageai.ai.embeddings import RETRY_SECONDS, Embeddings
from messageai.sqlite import transaction
from messageai.store import vectors
from messageai.threads import WorkerPool

log = logging.getLogger(__name__)

# Steps of one conversation at most this often, except while it catches up a backlog
# (full batches): a busy conversation's new messages are embedded in batches, and its
# commands wait for fewer steps (each costs a transaction and a worker hop).
PACE_SECONDS = 1.0


class VectorIndexer:
    def __init__(
        self, conversation_id: str, embeddings: Embeddings, rows: int, synchronous: str
    ) -> None:
        assert embeddings.model_id is not None, "only with a loaded model"
        self._id = conversation_id
        self._embeddings = embeddings
        self._model = embeddings.model_id
        self._rows = rows
        self._synchronous = synchronous
        # The actor's last_rev when a step last found nothing to embed (-1: not yet
        # looked): any change since (a send, an edit) may have made work.
        self._seen_rev = -1
        self._batch: vectors.Batch | None = None  # at the model, or delivered
        self._result: list[bytes] | BaseException | None = None
        self._in_flight = False
        # No step before this (trio time): the pace, or a retry after a full queue.
        self._not_before = float("-inf")
        self._scope: trio.CancelScope | None = None
        self._stopped = False

    def _has_work(self, last_rev: int) -> bool:
        return (
            not self._stopped
            and not self._in_flight
            and (self._result is not None or last_rev != self._seen_rev)
        )

    def _catching_up(self) -> bool:
        # The model delivered a full batch: more is waiting, go on at once.
        return (
            self._result is not None
            and self._batch is not None
            and len(self._batch[0]) >= self._rows
        )

    def runnable(self, last_rev: int) -> bool:
        """Whether a step has something to do now (vectors to write, or maybe work)."""
        if not self._has_work(last_rev):
            return False
        return self._catching_up() or trio.current_time() >= self._not_before

    def pending(self, last_rev: int) -> bool:
        """Whether work is left (the actor then does not retire)."""
        return not self._stopped and (
            self._in_flight or self._result is not None or last_rev != self._seen_rev
        )

    def wake_at(self, last_rev: int) -> float:
        """When the actor's idle wait must end for a step (inf: none is due)."""
        if not self._has_work(last_rev) or self._not_before <= trio.current_time():
            return float("inf")
        return self._not_before

    @contextlib.contextmanager
    def waiting(self, scope: trio.CancelScope) -> Iterator[None]:
        """The actor's wait for a command in `scope`, which the model's delivery cancels."""
        self._scope = scope
        try:
            yield
        finally:
            self._scope = None

    async def step(self, conn: apsw.Connection, workers: WorkerPool, last_rev: int) -> None:
        """Write what the model delivered and hand the next batch to it, in one short
        transaction on `workers` (the actor owns `conn`). Cancellation while queued
        withdraws it; a started transaction commits or rolls back before this returns."""
        batch, result = self._batch, self._result
        self._batch = self._result = None
        self._not_before = trio.current_time() + PACE_SECONDS
        if isinstance(result, BaseException):
            # Supervision: search keeps answering `indexing: true`; the next open retries.
            # Only the error's type: a message's text must never reach the log.
            log.error("conversation %s: embedding failed (%s)", self._id, type(result).__name__)
            self._stopped = True
            return
        done = (batch, result) if batch is not None and result is not None else None
        try:
            upcoming = await workers.run(self._write_and_read, conn, done)
        except Exception:
            log.exception("conversation %s: writing embeddings failed", self._id)
            self._stopped = True
            return
        if upcoming is None:
            self._seen_rev = last_rev
            return
        if self._embeddings.offer([text for _, text in upcoming[0]], self._deliver):
            self._batch = upcoming
            self._in_flight = True
        else:
            # The model's queue is full (or it stopped): read the batch again later.
            self._not_before = trio.current_time() + RETRY_SECONDS

    def _deliver(self, result: list[bytes] | BaseException) -> None:
        # On the event loop, from the embedding service; the actor may have retired.
        self._in_flight = False
        self._result = result
        if self._scope is not None:
            self._scope.cancel()

    def _write_and_read(
        self, conn: apsw.Connection, done: tuple[vectors.Batch, list[bytes]] | None
    ) -> vectors.Batch | None:
        # Vectors can be computed again: their commit waits for no fsync (WAL, NORMAL:
        # never corrupt, and the next acked commit's fsync makes them durable too).
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with transaction(conn):
                vectors.load_state(conn, self._model)
                if done is not None:
                    vectors.write_batch(conn, self._model, *done)
                return vectors.next_batch(conn, self._rows)
        finally:
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
