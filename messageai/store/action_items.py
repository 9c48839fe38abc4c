"""Action items inside one conversation's own file: the items, the messages they came
from, and the extraction runs already applied.

Called on the conversation actor's connection, inside its write transaction:
`store.conversation.tombstone` calls `source_deleted` (a deleted message leaves every
item at once, and an item left with no source is deleted in the same commit), and the
action-item job's write goes through `apply_extraction`, keyed by the job's
idempotency key so that a re-run after a crash applies nothing twice
(`messageai.jobs.kind`). Reads (`items`, `is_source`) are short indexed queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw
import attrs

from messageai.model import new_id
from messageai.sqlite import Migration

STATUSES = ("open", "done")
# Applied runs remembered: a run is re-applied only if its job is re-run, which can
# happen only before the job is marked done, right after the run committed.
KEEP_RUNS = 100
# Items one conversation keeps at most (the oldest are dropped by a new extraction).
MAX_ITEMS = 200


def _create(conn: apsw.Connection) -> None:
    # IF NOT EXISTS: the step may land before or after other branches' steps.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS action_items(
            id TEXT PRIMARY KEY,
            text TEXT NOT NULL,
            owner_id TEXT,
            due TEXT,
            status TEXT NOT NULL CHECK (status IN ('open', 'done')),
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS action_item_sources(
            item_id TEXT NOT NULL REFERENCES action_items(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            PRIMARY KEY (item_id, seq)
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS action_item_sources_seq ON action_item_sources(seq, item_id);
        CREATE TABLE IF NOT EXISTS action_item_runs(
            job_key TEXT PRIMARY KEY,
            rev INTEGER NOT NULL,
            applied_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        """
    )


# Appended to `store.conversation.MIGRATIONS`.
MIGRATIONS_STEP: Migration = _create


@attrs.frozen
class ActionItem:
    id: str
    text: str
    owner_id: str | None
    due: str | None
    source_seqs: tuple[int, ...]
    status: str


@attrs.frozen
class Extracted:
    """One item as the extraction found it (already validated: `ai.action_items`)."""

    text: str
    owner_id: str | None
    due: str | None
    source_seqs: tuple[int, ...]


def items(conn: apsw.Connection) -> list[ActionItem]:
    """Every item in the conversation's order (by its first source), with its sources
    in seq order."""
    sources: dict[str, list[int]] = {}
    for item_id, seq in conn.execute(
        "SELECT item_id, seq FROM action_item_sources ORDER BY item_id, seq"
    ):
        sources.setdefault(item_id, []).append(seq)
    found = [
        ActionItem(row[0], row[1], row[2], row[3], tuple(sources.get(row[0], ())), row[4])
        for row in conn.execute("SELECT id, text, owner_id, due, status FROM action_items")
    ]
    return sorted(found, key=lambda i: (i.source_seqs[:1], i.id))


def item(conn: apsw.Connection, item_id: str) -> ActionItem | None:
    return next((i for i in items(conn) if i.id == item_id), None)


def set_status(conn: apsw.Connection, item_id: str, status: str, now: int) -> bool:
    """False if there is no such item."""
    if status not in STATUSES:
        raise ValueError(f"status is one of {STATUSES}")
    conn.execute(
        "UPDATE action_items SET status = ?, updated_at = ? WHERE id = ?", (status, now, item_id)
    )
    return conn.changes() > 0


def extracted_rev(conn: apsw.Connection) -> int:
    """The conversation's `rev` at the newest applied extraction (0: none yet)."""
    value = conn.execute("SELECT coalesce(max(rev), 0) FROM action_item_runs").get
    assert isinstance(value, int)
    return value


def is_source(conn: apsw.Connection, seq: int) -> bool:
    """Whether message `seq` is a source of some item (an edit of it calls for a new
    extraction)."""
    return (
        conn.execute("SELECT 1 FROM action_item_sources WHERE seq = ? LIMIT 1", (seq,)).fetchone()
        is not None
    )


def source_deleted(conn: apsw.Connection, seq: int) -> None:
    """Message `seq` was deleted: it is no item's source any more, and an item whose
    sources are all gone is deleted (in the caller's transaction)."""
    orphans = [
        row[0]
        for row in conn.execute(
            "SELECT item_id FROM action_item_sources WHERE seq = ? AND item_id NOT IN"
            " (SELECT item_id FROM action_item_sources WHERE seq != ?)",
            (seq, seq),
        )
    ]
    conn.execute("DELETE FROM action_item_sources WHERE seq = ?", (seq,))
    conn.executemany("DELETE FROM action_items WHERE id = ?", [(i,) for i in orphans])


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def apply_extraction(
    conn: apsw.Connection,
    job_key: str,
    window: Sequence[int],
    found: Sequence[Extracted],
    rev: int,
    now: int,
) -> bool:
    """Replace the items drawn only from messages in `window` (the seqs the model was
    shown) by `found`, once per `job_key`: False, changing nothing, if that key was
    applied already. Sources that are no longer live messages (deleted while the model
    worked) are dropped, and so is an item left with none. An item found again with the
    same text (ignoring case and spacing) keeps its id and status."""
    if conn.execute("SELECT 1 FROM action_item_runs WHERE job_key = ?", (job_key,)).fetchone():
        return False
    conn.execute(
        "INSERT INTO action_item_runs(job_key, rev, applied_at) VALUES (?, ?, ?)",
        (job_key, rev, now),
    )
    inside = set(window)
    replaced = {i.id: i for i in items(conn) if i.source_seqs and set(i.source_seqs) <= inside}
    by_text = {_normal(i.text): i for i in replaced.values()}
    live = {
        row[0]
        for seq in inside
        for row in conn.execute(
            "SELECT seq FROM messages WHERE seq = ? AND deleted_at IS NULL", (seq,)
        )
    }
    keep: set[str] = set()
    for extracted in found:
        seqs = sorted(set(extracted.source_seqs) & live)
        if not seqs:
            continue
        old = by_text.get(_normal(extracted.text))
        if old is not None and old.id not in keep:
            keep.add(old.id)
            conn.execute(
                "UPDATE action_items SET text = ?, owner_id = ?, due = ?, updated_at = ?"
                " WHERE id = ?",
                (extracted.text, extracted.owner_id, extracted.due, now, old.id),
            )
            conn.execute("DELETE FROM action_item_sources WHERE item_id = ?", (old.id,))
            item_id = old.id
        else:
            item_id = new_id("ai_")
            conn.execute(
                "INSERT INTO action_items(id, text, owner_id, due, status, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, 'open', ?, ?)",
                (item_id, extracted.text, extracted.owner_id, extracted.due, now, now),
            )
        conn.executemany(
            "INSERT INTO action_item_sources(item_id, seq) VALUES (?, ?)",
            [(item_id, seq) for seq in seqs],
        )
    conn.executemany(
        "DELETE FROM action_items WHERE id = ?", [(i,) for i in replaced if i not in keep]
    )
    conn.execute(
        "DELETE FROM action_item_runs WHERE job_key IN (SELECT job_key FROM action_item_runs"
        " ORDER BY applied_at DESC, job_key DESC LIMIT -1 OFFSET ?)",
        (KEEP_RUNS,),
    )
    # Bounded: past MAX_ITEMS the oldest go.
    conn.execute(
        "DELETE FROM action_items WHERE id IN (SELECT id FROM action_items"
        " ORDER BY created_at DESC, id DESC LIMIT -1 OFFSET ?)",
        (MAX_ITEMS,),
    )
    return True
