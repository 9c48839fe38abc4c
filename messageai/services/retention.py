"""The retention sweep (`[retention]`, and per conversation `messageai conversation
retention ID DAYS`): messages older than their conversation's retention become
tombstones, through the same path as a member's delete (`Registry.expire`), so their
content goes everywhere it was kept (the file's pages, the search index, vectors,
action items, media references) and members' clients hear `message_updated`.

Started by the server in the actor nursery, always: a conversation's own setting (the
directory's `retention_days`, set by the operator) applies even when the server's
`retention.days` is 0. Every `sweep_interval_seconds` it visits each conversation whose
retention is on, at most `conversations_per_second`, and asks its actor (a short read)
for the messages after the conversation's high-water mark (`retention_upto`), `BATCH`
at a time in seq order, stopping at the first one younger than the cut-off (seq order
is the order of `created_at`). Their deletes are queued together (the actor
group-commits them); once committed, the mark moves to the last seq read, so no sweep
reads those tombstones again. A sweep cut short by shutdown goes on from the mark.
"""

from __future__ import annotations

import logging

import apsw
import trio

from messageai.config import RetentionConfig
from messageai.conversations.commands import Ai
from messageai.conversations.registry import Registry
from messageai.errors import MessageAIError
from messageai.model import now_ms
from messageai.services.directory import Directory
from messageai.store import directory as directory_sql

log = logging.getLogger(__name__)

BATCH = 500
DAY_MS = 86_400_000


def _expired(conn: apsw.Connection, after: int, cutoff: int, limit: int) -> tuple[list[int], int]:
    """The live messages older than `cutoff` among the `limit` after seq `after`, and
    the last seq read that is older than it (the next mark). A range of the rowid."""
    live: list[int] = []
    upto = after
    for seq, created_at, deleted_at in conn.execute(
        "SELECT seq, created_at, deleted_at FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    ):
        if created_at >= cutoff:
            break
        upto = seq
        if deleted_at is None:
            live.append(seq)
    return live, upto


class Retention:
    def __init__(self, config: RetentionConfig, directory: Directory, registry: Registry) -> None:
        self._config = config
        self._directory = directory
        self._registry = registry
        self.expired = 0  # messages turned into tombstones since start
        self.scanned = 0  # batches read (each moved a mark): tests see a sweep skip

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.sweep()
            except MessageAIError as exc:
                log.warning("retention: the sweep stopped early (%s); next in an interval", exc)
            await trio.sleep(self._config.sweep_interval_seconds)

    async def sweep(self) -> int:
        """One pass over every conversation whose retention is on; how many messages
        it expired."""
        pause = 1.0 / self._config.conversations_per_second
        plan = await self._directory.fetch(directory_sql.retention_plan, self._config.days)
        done = 0
        for conversation_id, days, mark in plan:
            done += await self._expire(conversation_id, now_ms() - int(days * DAY_MS), mark)
            await trio.sleep(pause)
        if done:
            log.info("retention: %d messages expired", done)
        return done

    async def _expire(self, conversation_id: str, cutoff: int, mark: int) -> int:
        members = await self._directory.members(conversation_id)
        if not members:
            return 0  # nobody can read it; nothing to ask its actor for
        done = 0
        while True:

            def read(conn: apsw.Connection, _user: str, after: int = mark) -> tuple[list[int], int]:
                return _expired(conn, after, cutoff, BATCH)

            seqs, upto = await self._registry.call(conversation_id, members[0], Ai(read))
            if upto == mark:
                return done
            # All queued at once, so the actor commits them in a few group commits
            # (conversations.max_batch each), not one fsync per message.
            async with trio.open_nursery() as nursery:
                for seq in seqs:
                    nursery.start_soon(self._registry.expire, conversation_id, seq)
            await self._directory.write(
                directory_sql.set_retention_mark, conversation_id, mark, upto
            )
            mark = upto
            self.scanned += 1
            done += len(seqs)
            self.expired += len(seqs)
