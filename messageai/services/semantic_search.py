"""The `semantic` and `hybrid` modes of search (PROTOCOL.md v1.1 "Search"), for a
server that computes embeddings.

`services.search.Search` makes one `SemanticSearch` when it has the model and routes
both modes to `search`, after its own checks. The query is embedded in search's
worker threads (never behind the background indexer's batches). Each file is then
read in ONE read transaction in a worker thread: its nearest vectors
(`store.vectors.nearest`), for `hybrid` also its keyword candidates
(`store.search.ranked`), and the messages of all of them, so a vector is returned
only with the body it was made from.

Scores: `semantic` answers the cosine similarity of query and message (-1 to 1),
best first across files (one model, so comparable). `hybrid` ranks the keyword
candidates of all files by the same BM25 as keyword mode and the semantic ones by
similarity, and merges the two rankings by reciprocal rank fusion: a message's score
is the sum over the rankings it is in of 1 / (RRF_K + its rank). A hit in the keyword
ranking carries keyword mode's snippet and highlights; a purely semantic hit has
the body's beginning as its snippet (cut as keyword's are) and no highlights.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import trio

from messageai.errors import Unavailable
from messageai.model import Message
from messageai.protocol import SearchResult, SearchResults
from messageai.store import conversation as messages_sql
from messageai.store import search as sql
from messageai.store import vectors as vectors_sql

if TYPE_CHECKING:
    from messageai.ai.embedder import Embedder
    from messageai.services.search import Search, _Reader

log = logging.getLogger(__name__)

# Reciprocal rank fusion's constant (Cormack et al. 2009; the usual 60): ranks deep in
# one list add little, so a message high in either list comes first.
RRF_K = 60


@attrs.frozen
class _Hit:
    message: Message
    snippet: str
    highlights: list[list[int]]
    keyword: bool  # the body matches the query's words (keyword candidate)


@attrs.frozen
class _FileCandidates:
    conversation_id: str
    found: bool
    lags: bool
    keyword: list[tuple[int, int]]  # (seq, body length), the file's best first
    semantic: list[tuple[int, float]]  # (seq, similarity), best first
    hits: dict[int, _Hit]


class SemanticSearch:
    def __init__(self, search: Search, embedder: Embedder) -> None:
        self._search = search
        self._embedder = embedder
        self._model = embedder.model_id

    async def search(self, text: str, ids: list[str], mode: str, limit: int) -> SearchResults:
        """Answer a `semantic` or `hybrid` query over the files of `ids`."""
        outer = self._search
        ids, truncated = await outer._within_cap(ids)
        query = sql.parse_query(outer._parser, text) if mode == "hybrid" else None
        try:
            vector = await outer._pool.run(self._embed, text)
        except Exception as exc:
            log.exception("embedding a query failed")
            raise Unavailable("semantic search failed; try keyword mode") from exc
        files = await self._gather(ids, query, vector, limit)
        if mode == "semantic":
            results = _semantic_results(files, limit)
        else:
            assert query is not None
            results = _hybrid_results(files, query, limit)
        lagging = [f.conversation_id for f in files if f.found and f.lags]
        for conversation_id in lagging:
            try:
                outer._wake(conversation_id)
            except Exception:
                # Supervision: the answer still says `indexing`; the next search retries.
                log.exception("conversation %s: could not start its indexer", conversation_id)
        return SearchResults(
            mode=mode, results=results, indexing=bool(lagging), truncated=truncated
        )

    def _embed(self, text: str) -> bytes:
        from messageai.ai.embedder import quantize

        return quantize(self._embedder.embed([text])[0])

    async def _gather(
        self, ids: list[str], query: sql.Query | None, vector: bytes, limit: int
    ) -> list[_FileCandidates]:
        outer = self._search
        if not ids:
            return []
        jobs = min(outer._config.search.threads, len(ids))
        out: list[_FileCandidates] = []

        async def run(part: list[str]) -> None:
            out.extend(await outer._pool.run(self._files, part, query, vector, limit))

        async with trio.open_nursery() as nursery:
            for i in range(jobs):
                nursery.start_soon(run, ids[i::jobs])
        return out

    # ------------------------------------------------------------ worker threads

    def _files(
        self, ids: list[str], query: sql.Query | None, vector: bytes, limit: int
    ) -> list[_FileCandidates]:
        outer = self._search
        out = []
        for conversation_id in ids:
            reader = outer._reader(conversation_id)
            if reader is None:
                out.append(_FileCandidates(conversation_id, False, False, [], [], {}))
                continue
            try:
                out.append(self._file(reader, conversation_id, query, vector, limit))
            except BaseException:
                reader.conn.close()
                raise
            outer._readers.give_back(conversation_id, reader)
        return out

    def _file(
        self,
        reader: _Reader,
        conversation_id: str,
        query: sql.Query | None,
        vector: bytes,
        limit: int,
    ) -> _FileCandidates:
        conn = reader.conn
        min_similarity = self._search._config.embeddings.min_similarity
        conn.execute("BEGIN")  # one snapshot: the vectors and the bodies they were made from
        try:
            lags = vectors_sql.lags(conn, self._model)
            semantic = vectors_sql.nearest(conn, self._model, vector, limit, min_similarity)
            keyword: list[tuple[int, int]] = []
            if query is not None and sql.has_index(conn):
                lags = lags or sql.unindexed_upto(conn) > 0
                keyword = sql.ranked(conn, query, limit)
            elif query is not None:
                lags = True
            seqs = sorted({seq for seq, _ in semantic} | {seq for seq, _ in keyword})
            messages = messages_sql.messages_by_seq(conn, conversation_id, seqs) if seqs else {}
        finally:
            conn.execute("COMMIT")
        hits: dict[int, _Hit] = {}
        keyword_ok = []
        for seq, length in keyword:
            assert query is not None  # keyword candidates come only with a query
            message = messages.get(seq)
            # Only the current body counts (as in keyword mode).
            made = sql.make_snippet(reader.tokenizer, message.body, query) if message else None
            if message is not None and made is not None:
                hits[seq] = _Hit(message, made[0], [[s, e] for s, e in made[1]], True)
                keyword_ok.append((seq, length))
        semantic_ok = []
        for seq, similarity in semantic:
            message = messages.get(seq)
            if message is None or message.deleted_at is not None or not message.body:
                continue
            if seq not in hits:
                hits[seq] = _Hit(message, lead_snippet(message.body), [], False)
            semantic_ok.append((seq, similarity))
        return _FileCandidates(conversation_id, True, lags, keyword_ok, semantic_ok, hits)


def lead_snippet(body: str) -> str:
    """The beginning of `body` as a snippet of at most `SNIPPET_CHARS` code points,
    with a trailing ellipsis where it was cut (keyword snippets' rule)."""
    if len(body) <= sql.SNIPPET_CHARS:
        return body
    return body[: sql.SNIPPET_CHARS - 1] + sql.ELLIPSIS


def _semantic_results(files: list[_FileCandidates], limit: int) -> list[SearchResult]:
    ranked = sorted(
        ((similarity, f.conversation_id, seq, f) for f in files for seq, similarity in f.semantic),
        key=lambda item: (-item[0], item[1], -item[2]),
    )
    return [_result(f, seq, similarity) for similarity, _, seq, f in ranked[:limit]]


def _hybrid_results(
    files: list[_FileCandidates], query: sql.Query, limit: int
) -> list[SearchResult]:
    by_id = {f.conversation_id: f for f in files}
    words = len(query.groups)
    lengths = [length for f in files for _, length in f.keyword]
    mean = sum(lengths) / len(lengths) if lengths else 1.0
    keyword = sorted(
        (
            (sql.bm25(words, length, mean), f.conversation_id, seq)
            for f in files
            for seq, length in f.keyword
        ),
        key=lambda item: (-item[0], item[1], -item[2]),
    )
    semantic = sorted(
        ((similarity, f.conversation_id, seq) for f in files for seq, similarity in f.semantic),
        key=lambda item: (-item[0], item[1], -item[2]),
    )
    fused: dict[tuple[str, int], float] = {}
    for ranking in (keyword, semantic):
        for rank, (_, conversation_id, seq) in enumerate(ranking, start=1):
            key = (conversation_id, seq)
            fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0][0], -item[0][1]))
    return [
        _result(by_id[conversation_id], seq, score)
        for (conversation_id, seq), score in best[:limit]
    ]


def _result(f: _FileCandidates, seq: int, score: float) -> SearchResult:
    hit = f.hits[seq]
    return SearchResult(
        conversation_id=f.conversation_id,
        message=hit.message,
        snippet=hit.snippet,
        highlights=hit.highlights,
        score=round(score, 6),
    )
