"""Search across the caller's conversations (PROTOCOL.md v1.1 "Search"): checks the
request, fans it out to the conversations' own files and merges the answers.

Called by `rest.search` (`GET /v1/search`) and the WebSocket session (`search`). Reads
never go through the actors: each file is read on a read-only connection (a WAL
reader, so a search neither waits for the actor's writer nor delays it, and sees every
commit whose ack has been sent) in this service's own worker threads, at most
`search.threads` at once, at most `search.max_concurrent_queries` queries at once. Idle
read connections stay open in a bounded LRU (`search.max_open_readers`).

Ranking: one Okapi BM25 score for every candidate of an answer, comparable across
files because it uses no file's own statistics (per-file bm25 would weigh a word that
fills one small conversation near zero there and high in a big one where it is rare,
and the merge would follow file sizes). Every result has every word of the query
(AND), and each word counts once per message (nearly always so in chat), so with one
idf over all the searched conversations the idf part is the same for every result of
an answer and cannot change its order: it is left at 1 per word, and the server
counts no words at all. What orders results is BM25's length part, normalised by the
mean length of the answer's candidates: shorter first, newest first among equals,
each conversation offering its best among its newest `store.search.RANK_WINDOW`
matches.

Modes: `keyword` as above. Where the server computes embeddings (`ai.embeddings`),
`semantic` ranks by the cosine similarity of the query's vector (embedded here, in
this service's threads) to each file's stored vectors (`store.vectors.nearest`), and
`hybrid` merges the keyword and the semantic rankings of the same files by
reciprocal rank fusion (`semantic_search`); the default mode is then `hybrid`.
Without embeddings `semantic` is `unavailable` and the default is `keyword`. Each
file's candidates and their messages are read in one read transaction, so a vector
always belongs to the body it is returned with (an edit deletes the old body's
vector in its own commit).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import apsw
import attrs
import trio

from messageai.config import Config
from messageai.errors import BadRequest, Forbidden, NotFound, Unavailable
from messageai.protocol import SearchResult, SearchResults
from messageai.services.directory import Directory
from messageai.sqlite import apply_best_practice
from messageai.store import conversation as messages_sql
from messageai.store import search as sql
from messageai.store import vectors as vectors_sql
from messageai.store.paths import conversation_path
from messageai.threads import WorkerPool, blocking

if TYPE_CHECKING:
    from messageai.ai.embedder import Embedder

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 256
DEFAULT_LIMIT = 20
MAX_LIMIT = 50
MODES = ("keyword", "semantic", "hybrid")
# Conversation ids are server-made; anything longer is not one of ours.
MAX_CONVERSATION_ID = 64


@attrs.frozen
class _FileRanking:
    conversation_id: str
    found: bool  # the file exists
    lags: bool
    ranked: list[tuple[int, int]]  # (seq, body length)


def check_request(
    q: object, limit: object, mode: object, default_mode: str = "keyword"
) -> tuple[str, int, str]:
    """The request's field rules, before anything else is looked at: (q trimmed, limit
    clamped, mode; `default_mode` when none). BadRequest names the field."""
    if not isinstance(q, str):
        raise BadRequest("q: required string")
    text = q.strip()
    if not 1 <= len(text) <= MAX_QUERY_CHARS:
        raise BadRequest(f"q: must be 1 to {MAX_QUERY_CHARS} characters after trimming")
    if limit is None:
        limit = DEFAULT_LIMIT
    if type(limit) is not int or limit < 1:
        raise BadRequest("limit: must be an integer of at least 1")
    if mode is None:
        mode = default_mode
    if mode not in MODES:
        raise BadRequest('mode: must be "keyword", "semantic" or "hybrid"')
    assert isinstance(mode, str)
    return text, min(limit, MAX_LIMIT), mode


class _Reader:
    """A read-only connection to one file and its tokenizer. `complete` once the
    file's index was seen filled: it stays so (the watermark only goes down), and the
    check is skipped from then on."""

    __slots__ = ("complete", "conn", "epoch", "tokenizer")

    def __init__(self, conn: apsw.Connection, epoch: int = 0) -> None:
        self.conn = conn
        self.tokenizer = sql.conversation_tokenizer(conn)
        self.complete = False
        self.epoch = epoch  # `_Readers.epoch` of its file when it was opened


class _Readers:
    """Idle read-only connections by conversation, least recently used first; a
    connection is taken out while a worker uses it, so no two threads share one."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._idle: OrderedDict[str, _Reader] = OrderedDict()
        self._lock = threading.Lock()
        # Files replaced or removed by the operator (`forget`): how many times each. A
        # reader opened before is closed when given back, never used again.
        self._forgotten: dict[str, int] = {}

    def epoch(self, conversation_id: str) -> int:
        return self._forgotten.get(conversation_id, 0)

    def forget(self, conversation_id: str) -> None:
        with self._lock:
            self._forgotten[conversation_id] = self.epoch(conversation_id) + 1
            old = self._idle.pop(conversation_id, None)
        if old is not None:
            old.conn.close()

    def is_open(self, conversation_id: str) -> bool:
        return conversation_id in self._idle

    def take(self, conversation_id: str) -> _Reader | None:
        with self._lock:
            return self._idle.pop(conversation_id, None)

    def give_back(self, conversation_id: str, reader: _Reader) -> None:
        evicted = []
        with self._lock:
            if conversation_id in self._idle or reader.epoch != self.epoch(conversation_id):
                evicted.append(reader)
            else:
                self._idle[conversation_id] = reader
            while len(self._idle) > self._size:
                evicted.append(self._idle.popitem(last=False)[1])
        for old in evicted:
            old.conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, OrderedDict()
        for old in idle.values():
            old.conn.close()


class Search:
    """Keyword search over the caller's conversation files."""

    def __init__(
        self,
        config: Config,
        directory: Directory,
        wake: Callable[[str], object],
        embedder: Embedder | None = None,
    ) -> None:
        self._config = config
        self._directory = directory
        # Starts the conversation's actor, which fills a lagging file's index.
        self._wake = wake
        self._pool = WorkerPool(config.search.threads, name="messageai search")
        self._readers = _Readers(config.search.max_open_readers)
        self._limiter = trio.CapacityLimiter(config.search.max_concurrent_queries)
        # For parsing queries on the event loop only (tokenizers are per connection).
        self._parser_conn = apsw.Connection(":memory:")
        self._parser = sql.conversation_tokenizer(self._parser_conn)
        self._searchers: dict[
            str, Callable[[str, list[str], str, int], Awaitable[SearchResults]]
        ] = {
            "keyword": self._keyword,
            "hybrid": self._keyword,  # no embeddings here: its keyword half
        }
        self._semantic: object | None = None
        self.default_mode = "keyword"
        if embedder is not None:
            # Imported here: it builds on this module's readers, threads and ranking.
            from messageai.services.semantic_search import SemanticSearch

            semantic = SemanticSearch(self, embedder)
            self._semantic = semantic
            self._searchers["semantic"] = semantic.search
            self._searchers["hybrid"] = semantic.search
            self.default_mode = "hybrid"

    def forget(self, conversation_id: str) -> None:
        """The operator replaces or removes this conversation's file (`services.admin`):
        its idle reader is closed now, one in use when it is given back."""
        self._readers.forget(conversation_id)

    def close(self) -> None:
        """Stop the threads and close the readers (after every query has ended)."""
        self._pool.close()
        self._readers.close()
        self._parser_conn.close()

    async def search(
        self, user_id: str, q: object, conversation_id: object, limit: object, mode: object
    ) -> SearchResults:
        """Check the request in PROTOCOL.md's order (fields, conversation, mode) and
        answer it. Cancellation while waiting for a turn or a thread withdraws it."""
        text, limit_, mode_ = check_request(q, limit, mode, self.default_mode)
        if conversation_id is not None:
            if not isinstance(conversation_id, str) or not conversation_id:
                raise BadRequest("conversation_id: must be a conversation id")
            record, member = (
                await self._directory.conversation_for_member(conversation_id, user_id)
                if len(conversation_id) <= MAX_CONVERSATION_ID
                else (None, False)
            )
            if record is None:
                raise NotFound("no such conversation")
            if not member:
                raise Forbidden("you are not a member of this conversation")
            ids = [conversation_id]
        else:
            ids = await self._directory.conversation_ids(user_id)
        searcher = self._searchers.get(mode_)
        if searcher is None:
            raise Unavailable(
                f"{mode_} search needs embeddings, which this server does not compute"
            )
        async with self._limiter:
            return await searcher(text, ids, mode_, limit_)

    # ------------------------------------------------------------ keyword

    async def _keyword(self, text: str, ids: list[str], _mode: str, limit: int) -> SearchResults:
        query = sql.parse_query(self._parser, text)
        ids, truncated = await self._within_cap(ids)
        if query.match is None or not ids:
            lags = await self._gather(ids, query, 0) if ids else []
            return self._answer([], lags, truncated)
        if len(ids) == 1:
            # One file: ranking, scores and snippets in one job (no merge to wait for).
            (conversation_id,) = ids
            ranking, results = await self._pool.run(self._search_one, conversation_id, query, limit)
            return self._answer(results, [ranking], truncated)
        rankings = await self._gather(ids, query, limit)
        best = _scored(rankings, query, limit)
        results = await self._results(best, query, limit)
        return self._answer(results, rankings, truncated)

    def _answer(
        self, results: list[SearchResult], rankings: list[_FileRanking], truncated: bool
    ) -> SearchResults:
        lagging = [r.conversation_id for r in rankings if r.found and r.lags]
        for conversation_id in lagging:
            try:
                self._wake(conversation_id)
            except Exception:
                # Supervision: the answer still says `indexing`; the next search retries.
                log.exception("conversation %s: could not start its index filler", conversation_id)
        return SearchResults(
            mode="keyword", results=results, indexing=bool(lagging), truncated=truncated
        )

    async def _within_cap(self, ids: list[str]) -> tuple[list[str], bool]:
        """The conversations one query reads: every one with a reader open, plus at
        most `max_files_per_query` others, the most recently written first."""
        cap = self._config.search.max_files_per_query
        closed = [i for i in ids if not self._readers.is_open(i)]
        if len(closed) <= cap:
            return ids, False
        data_dir = self._config.data_dir
        recent = await blocking(_by_recent_write, data_dir, closed)
        keep = set(recent[:cap])
        return [i for i in ids if i in keep or self._readers.is_open(i)], True

    async def _gather(self, ids: list[str], query: sql.Query, limit: int) -> list[_FileRanking]:
        """Rank `query` in every file of `ids`, in at most `search.threads` jobs."""
        jobs = min(self._config.search.threads, len(ids))
        slices = [ids[i::jobs] for i in range(jobs)]
        out: list[_FileRanking] = []

        async def run(part: list[str]) -> None:
            out.extend(await self._pool.run(self._rank_files, part, query, limit))

        async with trio.open_nursery() as nursery:
            for part in slices:
                nursery.start_soon(run, part)
        return out

    async def _results(
        self, best: list[tuple[float, str, int]], query: sql.Query, limit: int
    ) -> list[SearchResult]:
        by_file: dict[str, list[tuple[float, int]]] = {}
        for score, conversation_id, seq in best:
            by_file.setdefault(conversation_id, []).append((score, seq))
        found: list[SearchResult] = []

        async def run(conversation_id: str, wanted: list[tuple[float, int]]) -> None:
            found.extend(await self._pool.run(self._fetch, conversation_id, wanted, query))

        async with trio.open_nursery() as nursery:
            for conversation_id, wanted in by_file.items():
                nursery.start_soon(run, conversation_id, wanted)
        found.sort(key=lambda r: (-r.score, r.conversation_id, -r.message.seq))
        return found[:limit]

    # ------------------------------------------------------------ worker threads

    def _reader(self, conversation_id: str) -> _Reader | None:
        reader = self._readers.take(conversation_id)
        if reader is not None:
            return reader
        epoch = self._readers.epoch(conversation_id)  # before the open: see `forget`
        path = conversation_path(self._config.data_dir, conversation_id)
        if not path.exists():
            return None  # no message was ever stored there
        apply_best_practice()
        try:
            conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        except apsw.CantOpenError:
            return None
        if self._semantic is not None:
            vectors_sql.load_functions(conn)
        return _Reader(conn, epoch)

    def _rank_files(self, ids: list[str], query: sql.Query, limit: int) -> list[_FileRanking]:
        out = []
        for conversation_id in ids:
            reader = self._reader(conversation_id)
            if reader is None:
                out.append(_FileRanking(conversation_id, False, False, []))
                continue
            try:
                out.append(_rank(reader, conversation_id, query, limit))
            except BaseException:
                reader.conn.close()
                raise
            self._readers.give_back(conversation_id, reader)
        return out

    def _search_one(
        self, conversation_id: str, query: sql.Query, limit: int
    ) -> tuple[_FileRanking, list[SearchResult]]:
        reader = self._reader(conversation_id)
        if reader is None:
            return _FileRanking(conversation_id, False, False, []), []
        try:
            ranking = _rank(reader, conversation_id, query, limit)
            best = _scored([ranking], query, limit)
            results = _results_of(reader, conversation_id, [(s, q) for s, _, q in best], query)
        except BaseException:
            reader.conn.close()
            raise
        self._readers.give_back(conversation_id, reader)
        return ranking, results[:limit]

    def _fetch(
        self, conversation_id: str, wanted: list[tuple[float, int]], query: sql.Query
    ) -> list[SearchResult]:
        reader = self._reader(conversation_id)
        if reader is None:
            return []
        try:
            results = _results_of(reader, conversation_id, wanted, query)
        except BaseException:
            reader.conn.close()
            raise
        self._readers.give_back(conversation_id, reader)
        return results


def _rank(reader: _Reader, conversation_id: str, query: sql.Query, limit: int) -> _FileRanking:
    """One file's candidates; in a worker thread."""
    conn = reader.conn
    lags = False
    if not reader.complete:
        indexed = sql.has_index(conn)
        lags = not indexed or sql.unindexed_upto(conn) > 0
        reader.complete = not lags
        if not indexed:
            return _FileRanking(conversation_id, True, True, [])
    ranked = sql.ranked(conn, query, limit) if limit else []
    return _FileRanking(conversation_id, True, lags, ranked)


def _scored(
    rankings: list[_FileRanking], query: sql.Query, limit: int
) -> list[tuple[float, str, int]]:
    """Every candidate's score (see the module), best first, cut to twice `limit`
    (spares for any that changed since they were ranked)."""
    words = len(query.groups)
    lengths = [length for r in rankings for _, length in r.ranked]
    mean = sum(lengths) / len(lengths) if lengths else 1.0
    scored = [
        (sql.bm25(words, length, mean), r.conversation_id, seq)
        for r in rankings
        for seq, length in r.ranked
    ]
    scored.sort(key=lambda item: (-item[0], item[1], -item[2]))
    return scored[: limit * 2]


def _results_of(
    reader: _Reader, conversation_id: str, wanted: list[tuple[float, int]], query: sql.Query
) -> list[SearchResult]:
    """The wanted (score, seq) as results, in that order; in a worker thread. A body
    that no longer matches (edited or deleted since it was ranked) is not found: only
    the current body counts."""
    messages = messages_sql.messages_by_seq(reader.conn, conversation_id, [s for _, s in wanted])
    results = []
    for score, seq in wanted:
        message = messages.get(seq)
        made = sql.make_snippet(reader.tokenizer, message.body, query) if message else None
        if message is None or made is None:
            continue
        snippet, spans = made
        results.append(
            SearchResult(
                conversation_id=conversation_id,
                message=message,
                snippet=snippet,
                highlights=[[s, e] for s, e in spans],
                score=round(score, 6),
            )
        )
    return results


def _by_recent_write(data_dir: Path, ids: list[str]) -> list[str]:
    """`ids` whose file exists, the most recently written first (the WAL's time counts:
    a commit writes it, not the main file)."""
    times = []
    for conversation_id in ids:
        path = conversation_path(data_dir, conversation_id)
        latest = None
        for candidate in (path, path.with_name(path.name + "-wal")):
            try:
                mtime = os.stat(candidate).st_mtime_ns
            except FileNotFoundError:
                continue
            latest = mtime if latest is None else max(latest, mtime)
        if latest is not None:
            times.append((latest, conversation_id))
    times.sort(reverse=True)
    return [conversation_id for _, conversation_id in times]
