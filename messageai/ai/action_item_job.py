"""The `ai.action_items` job kind: extract one conversation's action items in the
background and store them in its file, exactly once per job.

Made by `action_items_kind(...)`, bound to the server's actor, switch, log and
directory by `ai.action_item_board.job_kind`, and registered with the jobs runner by
the server when an endpoint is configured. Its collaborators are passed in, so that
the kind holds no state and tests can run it on a bare file:

- `conversation(cid, work, writes)` runs `work(conn)` in the conversation actor's
  storage phase (its own connection, ordered with its messages; `writes` in the
  batch's transaction): the actor's `Ai` command.
- `switch(conn)`: whether the conversation's AI switch is on; `log(conn, seqs, now)`:
  add an AI log entry (`action_items`, user null) for a request carrying `seqs`.
- `names(cid, user_ids)`: display names of the senders and members (the directory).

One attempt: (1) in one write on the conversation: check the switch (off: done,
nothing sent), read the newest live messages (the window), log the request; (2) ask
the endpoint; (3) in one write: check the switch again (turned off meanwhile: the
result is dropped) and `store.action_items.apply_extraction` keyed by the job's
idempotency key. A crash after (3) but before the job is marked done re-runs the job,
and (3) finds its key and changes nothing; the request of (2) may be sent again (and
logged again): what is once is the effect, not the call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import apsw

from messageai.ai.action_items import TOOL, Source, parse, request_messages
from messageai.ai.background import Conversation, Names
from messageai.ai.endpoint import Endpoint, EndpointError
from messageai.jobs.kind import JobContext, JobFailed, JobKind
from messageai.model import now_ms
from messageai.store import action_items as sql
from messageai.store import conversation as conversation_sql

KIND = "ai.action_items"
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

T = TypeVar("T")


def check_payload(payload: dict[str, Any]) -> None:
    """`{"conversation_id": id}` and nothing else (a payload never holds content)."""
    if set(payload) != {"conversation_id"}:
        raise ValueError("takes exactly conversation_id")
    cid = payload["conversation_id"]
    if not isinstance(cid, str) or not _CONVERSATION_ID.fullmatch(cid):
        raise ValueError("conversation_id is not a conversation id")


def _window(conn: apsw.Connection, limit: int, max_chars: int) -> list[tuple[int, str, int, str]]:
    """What the model is shown, oldest first, as (seq, sender id, created_at, body): the
    live sources of the items already stored (so every run checks them again, which is
    how items follow edits of their sources), then the newest live messages, within
    `limit` messages and `max_chars` characters of bodies."""
    chosen: dict[int, tuple[int, str, int, str]] = {}
    total = 0
    sources = conn.execute(
        "SELECT m.seq, m.sender_id, m.created_at, m.body FROM messages m WHERE m.seq IN"
        " (SELECT DISTINCT seq FROM action_item_sources) AND m.deleted_at IS NULL"
        " ORDER BY m.seq DESC LIMIT ?",
        (limit,),
    ).fetchall()
    newest = conn.execute(
        "SELECT seq, sender_id, created_at, body FROM messages WHERE deleted_at IS NULL"
        " AND body != '' ORDER BY seq DESC LIMIT ?",
        (limit,),
    ).fetchall()
    for row in [*sources, *newest]:
        seq, sender, created_at, body = cast(tuple[int, str, int, str], row)
        if seq in chosen:
            continue
        if len(chosen) >= limit or (chosen and total + len(body) > max_chars):
            break
        total += len(body)
        chosen[seq] = (seq, sender, created_at, body)
    return sorted(chosen.values())


def action_items_kind(
    endpoint: Endpoint,
    conversation: Conversation,
    switch: Callable[[apsw.Connection], bool],
    log: Callable[[apsw.Connection, Sequence[int], int], None],
    names: Names,
    *,
    max_messages: int,
    max_chars: int,
) -> JobKind:
    """The job kind, bound to its collaborators (see the module)."""

    async def handle(ctx: JobContext) -> None:
        cid: str = ctx.payload["conversation_id"]

        def read_and_log(conn: apsw.Connection) -> tuple[list[tuple[int, str, int, str]], int]:
            rev = conversation_sql.last_rev(conn)
            if not switch(conn) or sql.extracted_rev(conn) >= rev:
                return [], rev  # off, or nothing new since the last extraction
            rows = _window(conn, max_messages, max_chars)
            if rows:
                log(conn, [row[0] for row in rows], now_ms())
            return rows, rev

        rows, rev = await conversation(cid, read_and_log, True)
        if not rows:
            return  # the switch is off, nothing new, or nothing to read: nothing is sent
        people = await names(cid, sorted({row[1] for row in rows}))
        name_of = {user_id: name for name, user_id in people}
        window = [Source(seq, name_of.get(s, "someone"), at, body) for seq, s, at, body in rows]
        try:
            completion = await endpoint.complete(
                request_messages(window, [name for name, _ in people]), [TOOL]
            )
        except EndpointError as exc:
            # Its message names the failure, never the key or the content.
            raise JobFailed(exc.message) from None
        shown = [row[0] for row in rows]
        found = parse(completion, shown, people)

        def apply(conn: apsw.Connection) -> bool:
            if not switch(conn):
                return False  # turned off while the model worked: the result is dropped
            # The rev it read at: what came since is extracted by the next run.
            return sql.apply_extraction(conn, ctx.key, shown, found, rev, now_ms())

        await conversation(cid, apply, True)

    return JobKind(KIND, handle, check_payload)
