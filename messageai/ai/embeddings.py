"""The server's embedding service: the loaded model, the threads that run it for the
background indexer, and the bounded queue of batches waiting for them.

`Embeddings.start` loads the model once (in a thread; a missing package or a bad file
logs why and leaves the service off, so search is keyword-only). `run` is a Trio
service in the actors' nursery: `embeddings.threads` tasks take batches from the queue
and run the model on the service's own `WorkerPool`, whose threads run at a lower CPU
priority (`embeddings.niceness`: a busy server's acks and deliveries come first).
Conversation actors `offer` a batch with a callback and never wait for the model:
`offer` answers at once (False when the queue is full: the actor offers again later),
and the callback is called on the event loop with the vectors, or with the exception
the model raised. Search embeds its queries with `embedder` directly in its own threads, so a query
never queues behind the indexer.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import trio

from messageai.ai.embedder import Embedder, EmbedderUnavailable, shared
from messageai.config import EmbeddingsConfig
from messageai.threads import WorkerPool, blocking

log = logging.getLogger(__name__)

# Batches waiting for the model: one per conversation at most (an actor offers its
# next batch only once the last one is written), so this bounds how many files catch
# up at once; the others offer again after RETRY_SECONDS.
QUEUE_BATCHES = 256
RETRY_SECONDS = 1.0

Delivery = Callable[[list[bytes] | BaseException], None]


class Embeddings:
    """The model and its background threads (None model: embeddings are off)."""

    def __init__(self, config: EmbeddingsConfig) -> None:
        self._config = config
        self.embedder: Embedder | None = None
        self._send, self._receive = trio.open_memory_channel[tuple[list[str], Delivery]](
            QUEUE_BATCHES
        )
        self._pool = WorkerPool(config.threads, name="messageai embed")
        self._niced = threading.local()

    @property
    def model_id(self) -> str | None:
        return self.embedder.model_id if self.embedder is not None else None

    async def start(self) -> None:
        """Load the model if `embeddings.enabled` (once per process); log the outcome."""
        if not self._config.enabled:
            log.info("embeddings are off (embeddings.enabled = false): keyword search only")
            return
        try:
            self.embedder = await blocking(shared, self._config.intra_op_threads)
        except EmbedderUnavailable as exc:
            log.warning("embeddings are off: %s; search is keyword-only", exc)
            return
        log.info(
            "embeddings on: model %s, %d indexer thread(s); semantic and hybrid search",
            self.embedder.model_id,
            self._config.threads,
        )

    def offer(self, texts: list[str], deliver: Delivery) -> bool:
        """Queue one batch for the model without waiting; False if the queue is full or
        the service is off or stopped. `deliver` is called later on the event loop."""
        if self.embedder is None:
            return False
        try:
            self._send.send_nowait((texts, deliver))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the queue until cancelled (shutdown). A batch the model is running
        finishes first (its thread is never abandoned); queued ones are dropped, and
        their conversations embed them again after restart (their marks did not move)."""
        async with trio.open_nursery() as nursery:
            for _ in range(self._config.threads if self.embedder is not None else 0):
                nursery.start_soon(self._serve)
            task_status.started()

    async def _serve(self) -> None:
        async for texts, deliver in self._receive:
            try:
                result: list[bytes] | BaseException = await self._pool.run(self._embed, texts)
            except Exception as exc:
                # The actor logs it and retries the batch later.
                result = exc
            try:
                deliver(result)
            except Exception:
                # Supervision: one conversation's bug must not stop the others' batches.
                log.exception("an embedding batch could not be delivered")

    def _embed(self, texts: list[str]) -> list[bytes]:
        if not getattr(self._niced, "done", False):
            self._niced.done = True
            try:
                # An increment on the process's own niceness (never above it).
                base = os.getpriority(os.PRIO_PROCESS, 0)
                niceness = min(19, base + self._config.niceness)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
            except (OSError, AttributeError):
                # Not Linux, or not allowed: the batches still run, at normal priority.
                log.debug("could not lower the embedding thread's priority")
        assert self.embedder is not None
        return self.embedder.embed_quantized(texts)

    def close(self) -> None:
        """Stop the threads (after the actors' nursery has exited)."""
        self._send.close()
        self._pool.close()
