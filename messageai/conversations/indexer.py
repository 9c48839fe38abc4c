"""Fills the search index of a conversation file written before the index existed,
while the file's actor has nothing else to do (PROTOCOL.md v1.1: a 1,000,000-message
file keeps acking sends while it fills).

Each actor owns one `IndexFiller`. It calls `load` when it has opened its database
and, while `pending`, `step` whenever no command is waiting: one chunk of
`search.fill_chunk_rows` messages in one short transaction on the actor's commit
worker (the actor owns the connection; nothing else writes it). A command that arrives
meanwhile waits for at most that one chunk. The actor does not retire while `pending`.
A chunk that fails is logged and filling stops until the actor opens the file again
(the watermark is committed with each chunk, so nothing is lost or indexed twice).
"""

from __future__ import annotations

import logging

import apsw

from messageai.sqlite import transaction
from messageai.store import search
from messageai.threads import WorkerPool

log = logging.getLogger(__name__)


class IndexFiller:
    def __init__(self, conversation_id: str, rows_per_chunk: int) -> None:
        self._id = conversation_id
        self._rows = rows_per_chunk
        self.pending = False

    def load(self, conn: apsw.Connection) -> None:
        """Read the watermark of a just-opened file (on the actor, after migration)."""
        self.pending = search.unindexed_upto(conn) > 0

    async def step(self, conn: apsw.Connection, workers: WorkerPool) -> None:
        """Index one chunk in its own transaction on `workers`. Cancellation while
        queued withdraws it; a started chunk commits or rolls back before this returns."""
        try:
            left = await workers.run(self._chunk, conn)
        except Exception:
            # Supervision: search keeps answering `indexing: true`; the next open retries.
            log.exception("conversation %s: filling the search index failed", self._id)
            self.pending = False
            return
        self.pending = left > 0
        if not self.pending:
            log.info("conversation %s: search index filled", self._id)

    def _chunk(self, conn: apsw.Connection) -> int:
        with transaction(conn):
            return search.fill_chunk(conn, self._rows)
