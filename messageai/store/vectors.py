"""Message embeddings inside one conversation's file: the vectors, the indexer's
high-water mark, and the nearest-neighbour query.

Writers: `store.conversation.edit` / `tombstone` call `invalidate` / `forget` inside
the change's transaction (so an edited message's old vector and a deleted message's
vector are gone in the same commit); the background indexer (`ai.vector_indexer`,
on the actor's commit worker) calls `load_state`, `next_batch` and `write_batch`.
Readers: `services.search` calls `lags` and `nearest` on read-only connections, with
sqlite-vec loaded.

Tables. `vectors(seq, model, vector)`: one int8 vector (384 bytes) per message that
has a body, tagged with the id of the model that made it (`vector_models`), so a new
model re-embeds in the background while the old vectors are ignored. `vector_meta`
(one row): the model the file is being indexed for and `embedded_upto` = H, the
high-water mark: every live message with seq <= H has a vector of that model for its
current body, except those in `vector_queue` (edited since: re-embedded next). A
vector is written only if the message's body is still the text that was embedded
(the model runs outside any transaction), so no stored vector is ever stale.
"""

from __future__ import annotations

from typing import cast

import apsw

from messageai.sqlite import Migration


def _create(conn: apsw.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE vector_models(
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE
        );
        CREATE TABLE vectors(
            seq INTEGER PRIMARY KEY,
            model INTEGER NOT NULL,
            vector BLOB NOT NULL
        );
        CREATE TABLE vector_meta(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            model TEXT,
            embedded_upto INTEGER NOT NULL
        );
        INSERT INTO vector_meta(id, model, embedded_upto) VALUES (1, NULL, 0);
        CREATE TABLE vector_queue(seq INTEGER PRIMARY KEY);
        """
    )


# Appended to `store.conversation.MIGRATIONS`: empty tables; every message stored so
# far is above the mark, so the indexer catches them up.
MIGRATIONS_STEP: Migration = _create


# ---------------------------------------------------------------- changes


def invalidate(conn: apsw.Connection, seq: int) -> None:
    """Message `seq`'s body changed (an edit, in its transaction): its vector goes, and
    if the indexer had passed it, it is queued to be embedded again."""
    conn.execute("DELETE FROM vectors WHERE seq = ?", (seq,))
    conn.execute(
        "INSERT OR IGNORE INTO vector_queue(seq)"
        " SELECT ? FROM vector_meta WHERE embedded_upto >= ?",
        (seq, seq),
    )


def forget(conn: apsw.Connection, seq: int) -> None:
    """Message `seq` was deleted (in the delete's transaction): its vector goes (the
    file's secure_delete overwrites its bytes)."""
    conn.execute("DELETE FROM vectors WHERE seq = ?", (seq,))
    conn.execute("DELETE FROM vector_queue WHERE seq = ?", (seq,))


# ---------------------------------------------------------------- the indexer


def model_key(conn: apsw.Connection, name: str) -> int | None:
    value = conn.execute("SELECT id FROM vector_models WHERE name = ?", (name,)).get
    return int(value) if isinstance(value, int) else None


def load_state(conn: apsw.Connection, model: str) -> int:
    """The high-water mark for `model`. A file indexed for another model (or none)
    starts again from 0 for this one: its old vectors stay until each is replaced, and
    no search for `model` reads them. Call inside a write transaction."""
    stored, upto = cast(
        tuple[str | None, int],
        conn.execute("SELECT model, embedded_upto FROM vector_meta").fetchone(),
    )
    if stored == model:
        return upto
    conn.execute("INSERT OR IGNORE INTO vector_models(name) VALUES (?)", (model,))
    conn.execute("UPDATE vector_meta SET model = ?, embedded_upto = 0", (model,))
    conn.execute("DELETE FROM vector_queue")
    return 0


# (seq, body) to embed; the mark the batch moves H to once written (None: queued
# messages, which move no mark).
Batch = tuple[list[tuple[int, str]], int | None]


def next_batch(conn: apsw.Connection, rows: int) -> Batch | None:
    """What to embed next: messages above the mark first (oldest first), then the
    queue; None when nothing is left. Messages that need no vector (tombstones, empty
    bodies) are skipped by moving the mark at once. Call inside a write transaction."""
    while True:
        upto = cast(int, conn.execute("SELECT embedded_upto FROM vector_meta").get)
        found = cast(
            list[tuple[int, str, int | None]],
            conn.execute(
                "SELECT seq, body, deleted_at FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                (upto, rows),
            ).fetchall(),
        )
        if not found:
            break
        items = [(seq, body) for seq, body, deleted in found if deleted is None and body]
        high = found[-1][0]
        if items:
            return items, high
        conn.execute("UPDATE vector_meta SET embedded_upto = ?", (high,))
    queued = cast(
        list[tuple[int, str, int | None]],
        conn.execute(
            "SELECT q.seq, m.body, m.deleted_at FROM vector_queue AS q"
            " JOIN messages AS m ON m.seq = q.seq ORDER BY q.seq LIMIT ?",
            (rows,),
        ).fetchall(),
    )
    items = [(seq, body) for seq, body, deleted in queued if deleted is None and body]
    gone = [(seq,) for seq, body, deleted in queued if deleted is not None or not body]
    if gone:
        conn.executemany("DELETE FROM vector_queue WHERE seq = ?", gone)
    if items:
        return items, None
    return None


def write_batch(conn: apsw.Connection, model: str, batch: Batch, vectors: list[bytes]) -> None:
    """Store the vectors of `batch` (in its order) for the messages whose body is still
    the text embedded, queue those edited meanwhile, and move the mark. Call inside a
    write transaction."""
    items, high = batch
    key = model_key(conn, model)
    assert key is not None, "load_state registers the model first"
    for (seq, text), vector in zip(items, vectors, strict=True):
        row = conn.execute("SELECT body, deleted_at FROM messages WHERE seq = ?", (seq,)).fetchone()
        if row is None or row[1] is not None:
            continue  # deleted meanwhile: its vector must not exist
        if row[0] != text:
            # Edited meanwhile: the old text's vector must not match; embed the new one.
            conn.execute("INSERT OR IGNORE INTO vector_queue(seq) VALUES (?)", (seq,))
            continue
        conn.execute(
            "INSERT INTO vectors(seq, model, vector) VALUES (?, ?, ?)"
            " ON CONFLICT(seq) DO UPDATE SET model = excluded.model, vector = excluded.vector",
            (seq, key, vector),
        )
        if high is None:
            conn.execute("DELETE FROM vector_queue WHERE seq = ?", (seq,))
    if high is not None:
        conn.execute("UPDATE vector_meta SET embedded_upto = max(embedded_upto, ?)", (high,))


# ---------------------------------------------------------------- queries


def load_functions(conn: apsw.Connection) -> None:
    """Load sqlite-vec's functions into `conn` (for `nearest`); extension loading is
    enabled only for this one load."""
    import sqlite_vec

    conn.enable_load_extension(True)
    try:
        conn.load_extension(sqlite_vec.loadable_path())
    finally:
        conn.enable_load_extension(False)


def has_vectors(conn: apsw.Connection) -> bool:
    """Whether the file has the tables (not yet: its actor has not opened it since the
    release that added them)."""
    count = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'vector_meta'").get
    return bool(count == 1)


def lags(conn: apsw.Connection, model: str) -> bool:
    """Whether some message of the file has no current vector of `model` yet."""
    if not has_vectors(conn):
        return True
    stored, upto = cast(
        tuple[str | None, int],
        conn.execute("SELECT model, embedded_upto FROM vector_meta").fetchone(),
    )
    if stored != model:
        return True
    last = conn.execute("SELECT max(seq) FROM messages").get
    if isinstance(last, int) and last > upto:
        return True
    return conn.execute("SELECT 1 FROM vector_queue LIMIT 1").get is not None


def nearest(
    conn: apsw.Connection, model: str, query: bytes, limit: int, min_similarity: float
) -> list[tuple[int, float]]:
    """The `limit` messages whose vectors of `model` are most similar to `query` (an
    int8 vector), as (seq, cosine similarity), best first, none below
    `min_similarity`. A scan of the file's vectors by sqlite-vec (measured against a
    NumPy scan in the README); `conn` must have had `load_functions`."""
    key = model_key(conn, model) if has_vectors(conn) else None
    if key is None:
        return []
    rows = conn.execute(
        "SELECT seq, 1.0 - vec_distance_cosine(vec_int8(vector), vec_int8(?)) AS similarity"
        " FROM vectors WHERE model = ? ORDER BY similarity DESC LIMIT ?",
        (query, key, limit),
    ).fetchall()
    return [
        (int(cast(int, seq)), float(cast(float, sim)))
        for seq, sim in rows
        if float(cast(float, sim)) >= min_similarity
    ]
