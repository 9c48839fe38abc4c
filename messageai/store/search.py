"""Keyword search inside one conversation's file: the FTS5 index, its maintenance, the
MATCH builder, and snippets with highlights.

The conversation actor calls `index_new` / `index_replace` inside its write transaction
(so the index changes in the same commit as the message) and `fill_chunk` from its idle
filler (`conversations.indexer`); `services.search` calls `parse_query` once per query and
`search_file` / `unindexed_upto` on read-only connections in its worker threads.

The index (`messages_fts`) is an external-content FTS5 table over `messages.body`
(rowid = seq) with `secure-delete` on, so a deleted body's tokens leave the index's pages.
A file written before the index existed keeps its messages and gets a watermark,
`search_meta.unindexed_upto` = U: every message with seq <= U has NO index entry, every
message above U has exactly one, for its current body. The filler indexes downwards from
U (the newest old messages first, the ones most likely searched) in short transactions
until U is 0. A 'delete' of values that were never indexed would corrupt an FTS5
external-content index, so `index_replace` leaves rows at or below U alone: the filler
indexes their current body when it gets there.
"""

from __future__ import annotations

from typing import cast

import apsw
import attrs

from messageai.sqlite import Migration

TOKENIZER = ("porter", ["unicode61", "remove_diacritics", "2"])
SNIPPET_CHARS = 200
ELLIPSIS = "…"
# Code points of context kept before the first highlighted word in a cut snippet.
SNIPPET_LEAD_CHARS = 60
# The newest matches of a query one file ranks at most (see `ranked`).
RANK_WINDOW = 500


def _create_index(conn: apsw.Connection) -> None:
    conn.execute(
        """
        CREATE VIRTUAL TABLE messages_fts USING fts5(
            body, content='messages', content_rowid='seq',
            tokenize='porter unicode61 remove_diacritics 2'
        );
        INSERT INTO messages_fts(messages_fts, rank) VALUES ('secure-delete', 1);
        CREATE TABLE search_meta(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            unindexed_upto INTEGER NOT NULL
        );
        INSERT INTO search_meta(id, unindexed_upto)
            VALUES (1, (SELECT coalesce(max(seq), 0) FROM messages));
        """
    )


# Appended to `store.conversation.MIGRATIONS`: creates the index, empty, with every
# message already stored below the watermark (the filler indexes them).
MIGRATIONS_STEP: Migration = _create_index


# ---------------------------------------------------------------- maintenance


def index_new(conn: apsw.Connection, seq: int, body: str) -> None:
    """Index a message just inserted (in the caller's transaction). Its seq is above
    the watermark: the watermark is fixed when the index is created, below every seq
    assigned after it."""
    conn.execute("INSERT INTO messages_fts(rowid, body) VALUES (?, ?)", (seq, body))


def index_replace(conn: apsw.Connection, seq: int, old_body: str, new_body: str) -> None:
    """Re-index a message whose body changed from `old_body` (what is indexed now) to
    `new_body` (an edit, or "" for a delete), in the caller's transaction. A message
    not indexed yet (at or below the watermark) is left to the filler."""
    if old_body == new_body or seq <= unindexed_upto(conn):
        return
    conn.execute(
        "INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', ?, ?)",
        (seq, old_body),
    )
    conn.execute("INSERT INTO messages_fts(rowid, body) VALUES (?, ?)", (seq, new_body))


def forget_index(conn: apsw.Connection) -> None:
    """Empty the index and put every message below the watermark: the state of a file
    written before the index existed, for the filler to index again (the bench times
    it; call inside a write transaction)."""
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('delete-all')")
    conn.execute(
        "UPDATE search_meta SET unindexed_upto = (SELECT coalesce(max(seq), 0) FROM messages)"
    )


def unindexed_upto(conn: apsw.Connection) -> int:
    """The watermark: messages with seq <= this are not indexed yet (0: none lag)."""
    value = conn.execute("SELECT unindexed_upto FROM search_meta").get
    return int(value) if isinstance(value, int) else 0


def fill_chunk(conn: apsw.Connection, rows: int) -> int:
    """Index the `rows` highest messages below the watermark with their current bodies
    and lower it; returns the new watermark. Call inside a write transaction."""
    upto = unindexed_upto(conn)
    if upto <= 0:
        return 0
    low = max(0, upto - rows)
    conn.execute(
        "INSERT INTO messages_fts(rowid, body)"
        " SELECT seq, body FROM messages WHERE seq > ? AND seq <= ?",
        (low, upto),
    )
    conn.execute("UPDATE search_meta SET unindexed_upto = ?", (low,))
    return low


# ---------------------------------------------------------------- queries


@attrs.frozen
class Query:
    """A parsed `q`: `match` is the FTS5 expression (None: nothing can match, e.g. a
    `q` of punctuation only); `groups` the tokens of each word or phrase as the index
    stores them; `terms` all of them."""

    match: str | None
    groups: tuple[tuple[str, ...], ...]
    terms: frozenset[str]
    # The MATCH expression of each word or phrase alone.
    match_groups: tuple[str, ...] = ()


def parse_query(tokenizer: apsw.FTS5Tokenizer, q: str) -> Query:
    """Build the MATCH expression of PROTOCOL.md's keyword search from `q` (already
    trimmed and length-checked): every word must match (AND), `"quoted words"` match as
    a phrase, an unterminated quote is closed at the end. No character of `q` is FTS5
    syntax: each word goes into the expression as a double-quoted FTS5 string (quotes
    doubled), made of the word's own text as the tokenizer found it, so FTS5 sees only
    strings joined by AND."""
    groups: list[list[tuple[str, str]]] = []  # (the word's text, its token)
    for quoted, part in _split_quotes(q):
        data = part.encode()
        words = [
            (data[start:end].decode(), token)
            for start, end, token in _tokens(tokenizer, data, apsw.FTS5_TOKENIZE_QUERY)
        ]
        if not words:
            continue
        if quoted:
            groups.append(words)
        else:
            groups.extend([word] for word in words)
    if not groups:
        return Query(None, (), frozenset())
    alone = tuple(_fts_string(" ".join(text for text, _ in words)) for words in groups)
    tokens = tuple(tuple(token for _, token in words) for words in groups)
    return Query(" AND ".join(alone), tokens, frozenset(t for g in tokens for t in g), alone)


def _split_quotes(q: str) -> list[tuple[bool, str]]:
    # Alternating unquoted and quoted parts; an odd number of quotes leaves the last
    # part quoted, which closes the open quote at the end of `q`.
    parts = q.split('"')
    return [(i % 2 == 1, part) for i, part in enumerate(parts) if part]


def _fts_string(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def ranked(conn: apsw.Connection, query: Query, limit: int) -> list[tuple[int, int]]:
    """The best `limit` matches of `query` in this file as (seq, body length in code
    points), best first: the shortest bodies among the newest RANK_WINDOW matches,
    newest first among equals.

    That is bm25's order for words that occur once in a message (nearly always, in
    chat): every match has every word of the query (AND), so within one file bm25
    differs only by length. FTS5's own bm25() is not used: it counts every match of
    each word first (a walk over half a million entries for a common word), where
    this stops after the newest RANK_WINDOW matches. Only for a file that
    `has_index`."""
    if query.match is None:
        return []
    rows = conn.execute(
        "SELECT m.seq, length(m.body) AS dl FROM ("
        " SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?"
        " ORDER BY rowid DESC LIMIT ?"
        ") AS f JOIN messages AS m ON m.seq = f.rowid"
        " ORDER BY dl, m.seq DESC LIMIT ?",
        (query.match, RANK_WINDOW, limit),
    ).fetchall()
    return [(int(cast(int, seq)), int(cast(int, dl))) for seq, dl in rows]


def bm25(words: int, length: int, mean_length: float) -> float:
    """Okapi BM25 (k1 = 1.2, b = 0.75, FTS5's constants) of a message that has each of
    the query's `words` once, with an idf of 1 for each; lengths in code points."""
    k1, b = 1.2, 0.75
    return words * (k1 + 1.0) / (1.0 + k1 * (1.0 - b + b * length / max(mean_length, 1.0)))


def has_index(conn: apsw.Connection) -> bool:
    """Whether the file has the index (not yet: its actor has not opened it since the
    release that added it)."""
    count = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'search_meta'").get
    return bool(count == 1)


# ---------------------------------------------------------------- snippets


def make_snippet(
    tokenizer: apsw.FTS5Tokenizer, body: str, query: Query
) -> tuple[str, list[tuple[int, int]]] | None:
    """One contiguous excerpt of `body` of at most SNIPPET_CHARS code points, counting
    a leading or trailing ELLIPSIS where it was cut, and the `[start, end)` code point
    offsets in it of every word whose token is one of the query's; None if `body` does
    not match `query` (it changed since it was ranked). The same tokenizer as the
    index's, so this is FTS5's own verdict."""
    data = body.encode()
    tokens = _tokens(tokenizer, data, apsw.FTS5_TOKENIZE_DOCUMENT)
    words = [token for _, _, token in tokens]
    if not all(_contains(words, group) for group in query.groups):
        return None
    matches = _code_point_spans(data, [(s, e) for s, e, t in tokens if t in query.terms])
    if len(body) <= SNIPPET_CHARS:
        return body, matches
    first = matches[0][0] if matches else 0
    start = 0 if first <= SNIPPET_LEAD_CHARS else first - SNIPPET_LEAD_CHARS
    if start > 0:
        # Begin at a word: the next space within the lead, if any.
        space = body.find(" ", start, first)
        if space != -1:
            start = space + 1
    lead = 1 if start > 0 else 0
    end = start + SNIPPET_CHARS - lead
    if end < len(body):
        end -= 1  # room for the trailing ellipsis
    else:
        end = len(body)
        # Reaching the end: use the room left for more context before.
        start = max(0, end - (SNIPPET_CHARS - 1))
        lead = 1 if start > 0 else 0
        if not lead:
            end = min(len(body), SNIPPET_CHARS)
    tail = 1 if end < len(body) else 0
    snippet = (ELLIPSIS if lead else "") + body[start:end] + (ELLIPSIS if tail else "")
    shift = lead - start
    highlights = [(s + shift, e + shift) for s, e in matches if s >= start and e <= end]
    return snippet, highlights


def _contains(words: list[str], group: tuple[str, ...]) -> bool:
    """Whether `group` occurs in `words` as consecutive tokens (a phrase, or a word)."""
    n = len(group)
    first = group[0]
    return any(
        words[i] == first and tuple(words[i : i + n]) == group for i in range(len(words) - n + 1)
    )


def _code_point_spans(data: bytes, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    # Byte offsets (ascending) to code point offsets, walking forward once.
    out = []
    byte_at, cp_at = 0, 0
    for start, end in spans:
        cp_start = cp_at + len(data[byte_at:start].decode())
        cp_end = cp_start + len(data[start:end].decode())
        byte_at, cp_at = end, cp_end
        out.append((cp_start, cp_end))
    return out


def _tokens(tokenizer: apsw.FTS5Tokenizer, data: bytes, flags: int) -> list[tuple[int, int, str]]:
    """(start byte, end byte, token) of each token of `data` (no colocated tokens: the
    index's tokenizer makes none)."""
    out = []
    for item in tokenizer(data, flags, None, include_colocated=False):
        start, end, token = cast(tuple[int, int, str], tuple(item))
        out.append((start, end, token))
    return out


def conversation_tokenizer(conn: apsw.Connection) -> apsw.FTS5Tokenizer:
    """The index's tokenizer on `conn` (for `parse_query` and snippets). Use it only
    on the thread that uses `conn`."""
    name, args = TOKENIZER
    return conn.fts5_tokenizer(name, list(args))
