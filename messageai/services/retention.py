"""The retention sweep (`[retention]`): messages older than `retention.days` become
tombstones, through the same path as a member's delete (`Registry.expire`), so their
content goes everywhere it was kept (the file's pages, the search index, vectors,
action items, media references) and members' clients hear `message_updated`.

Started by the server in the actor nursery when `retention.days` is above 0. Every
`sweep_interval_seconds` it visits each conversation of the directory, at most
`conversations_per_second`, and asks its actor (a short read) for the oldest live
messages older than the cut-off, `BATCH` at a time, queueing their deletes together
(the actor group-commits them) until none is left. A sweep cut short by shutdown
starts over at the next one.
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


def _expired(conn: apsw.Connection, cutoff: int, limit: int) -> list[int]:
    # In seq order, which is the order of `created_at`: the scan stops at the first
    # `limit` live messages older than the cut-off.
    return [
        row[0]
        for row in conn.execute(
            "SELECT seq FROM messages WHERE deleted_at IS NULL AND created_at < ?"
            " ORDER BY seq LIMIT ?",
            (cutoff, limit),
        )
    ]


class Retention:
    def __init__(self, config: RetentionConfig, directory: Directory, registry: Registry) -> None:
        self._config = config
        self._directory = directory
        self._registry = registry
        self.expired = 0  # messages turned into tombstones since start

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.sweep()
            except MessageAIError as exc:
                log.warning("retention: the sweep stopped early (%s); next in an interval", exc)
            await trio.sleep(self._config.sweep_interval_seconds)

    async def sweep(self) -> int:
        """One pass over every conversation; how many messages it expired."""
        cutoff = now_ms() - int(self._config.days * DAY_MS)
        pause = 1.0 / self._config.conversations_per_second
        ids = self._directory.read(directory_sql.conversation_ids)
        done = 0
        for conversation_id in ids:
            done += await self._expire(conversation_id, cutoff)
            await trio.sleep(pause)
        if done:
            log.info("retention: %d messages older than %g days expired", done, self._config.days)
        return done

    async def _expire(self, conversation_id: str, cutoff: int) -> int:
        members = self._directory.member_ids(conversation_id)
        if not members:
            return 0  # nobody can read it; nothing to ask its actor for
        done = 0
        while True:

            def read(conn: apsw.Connection, _user: str) -> list[int]:
                return _expired(conn, cutoff, BATCH)

            seqs = await self._registry.call(conversation_id, members[0], Ai(read))
            if not seqs:
                return done
            # All queued at once, so the actor commits them in a few group commits
            # (conversations.max_batch each), not one fsync per message.
            async with trio.open_nursery() as nursery:
                for seq in seqs:
                    nursery.start_soon(self._registry.expire, conversation_id, seq)
            done += len(seqs)
            self.expired += len(seqs)
