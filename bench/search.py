"""The `search` scenario of `./scripts/bench`: keyword search latency in one big
conversation and across many (issue 10: p99 <= 20 ms in one conversation of 1,000,000
messages; <= 200 ms across 200 conversations holding 1,000,000 in all).

Seeding writes a stopped server's files with the store's own insert
(`store.conversation.bulk_insert`, which indexes each row as the actor does). The big
conversation's index is then built once more through the server's own filler
(`store.search.forget_index` + `fill_chunk`, the path of a file written before the index
existed) to time it. Then one client sends realistic queries over REST (`GET
/v1/search`), one at a time, and their latencies are measured: words that exist, rare
and common, two-word queries, stemmed forms and phrases. Stop-word-only queries ("the")
are measured apart: they are not what people search for, and they cost the most.
Called by `bench.run` (`s_search`) and, with small sizes, by tests/test_bench_smoke.py.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import procs, seed

# Words of chat, most common first (a Zipf law over them and RARE_WORDS).
_STOP_WORDS = "the i you to a and it is we that for on in of be can this have with just"
_TOPICAL = (
    "meeting friday lunch deploy release build test bug fix review call tomorrow today "
    "week plan customer design budget server database merge branch coffee office "
    "report slides demo ticket issue sprint standup deadline launch feedback draft"
)
STOP = _STOP_WORDS.split(" ")
COMMON = STOP + _TOPICAL.split(" ")
RARE_WORDS = 20_000
PHRASES = ("code review", "release notes", "quarterly planning", "on call rotation")
SEED_BATCH = 50_000


def _vocabulary() -> tuple[list[str], list[float]]:
    words = COMMON + [f"{_syllables(i)}" for i in range(RARE_WORDS)]
    weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))
    return words, weights


def _syllables(n: int) -> str:
    # A pronounceable made-up word per number ("kaboru"), so stemming has real work.
    parts = ["ka", "bo", "ru", "mi", "te", "sa", "no", "li", "ve", "zu", "pa", "do"]
    out = ""
    n += 144
    while n:
        n, r = divmod(n, len(parts))
        out += parts[r]
    return out


def bodies(rnd: random.Random, n: int) -> Iterator[str]:
    words, weights = _vocabulary()
    for _ in range(n):
        text = " ".join(rnd.choices(words, cum_weights=weights, k=rnd.randint(4, 24)))
        if rnd.random() < 0.02:
            text += " " + rnd.choice(PHRASES)
        yield text


def fill(
    data_dir: Path, conversation_id: str, senders: list[str], total: int, rnd: random.Random
) -> None:
    """`total` messages into a conversation's file, server stopped, through the
    server's own schema and insert (indexed as they are inserted)."""
    from messageai.model import Message, now_ms
    from messageai.sqlite import migrate, open_db
    from messageai.store import conversation as sql
    from messageai.store.paths import conversation_path

    path = conversation_path(data_dir, conversation_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = open_db(path, "NORMAL")
    try:
        migrate(conn, sql.MIGRATIONS)
        first = sql.last_seq(conn) + 1
        now = now_ms()
        text = bodies(rnd, total)
        for lo in range(first, first + total, SEED_BATCH):
            hi = min(lo + SEED_BATCH, first + total)
            messages = [
                Message(
                    id=f"m_s{seq}",
                    conversation_id=conversation_id,
                    seq=seq,
                    sender_id=senders[seq % len(senders)],
                    client_id=f"s{seq}",
                    body=next(text),
                    attachments=[],
                    created_at=now,
                )
                for seq in range(lo, hi)
            ]
            with conn:
                sql.bulk_insert(conn, messages)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def rebuild_with_filler(data_dir: Path, conversation_id: str, chunk: int) -> float:
    """Empty the file's index and fill it again with the server's filler, chunk by
    chunk in short transactions as its actor would; returns the seconds it took."""
    from messageai.sqlite import open_db, transaction
    from messageai.store import search
    from messageai.store.paths import conversation_path

    conn = open_db(conversation_path(data_dir, conversation_id), "NORMAL")
    try:
        with transaction(conn):
            search.forget_index(conn)
        start = time.monotonic()
        while True:
            with transaction(conn):
                if search.fill_chunk(conn, chunk) == 0:
                    break
        took = time.monotonic() - start
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return took
    finally:
        conn.close()


def queries(rnd: random.Random, n: int) -> list[str]:
    """Realistic queries: words that exist, common and rare, two words, a stemmed
    form, a phrase."""
    words, _ = _vocabulary()
    topical = [w for w in COMMON if w not in STOP]
    kinds: list[Callable[[], str]] = [
        lambda: rnd.choice(topical),
        lambda: words[rnd.randrange(len(COMMON), len(COMMON) + 2000)],
        lambda: words[rnd.randrange(len(COMMON) + 2000, len(words))],
        lambda: f"{rnd.choice(topical)} {rnd.choice(topical)}",
        lambda: f"{rnd.choice(topical)} {words[rnd.randrange(len(COMMON), len(words))]}",
        lambda: rnd.choice(["meetings", "deployed", "reviews", "fixes", "launched"]),
        lambda: f'"{rnd.choice(PHRASES)}"',
    ]
    return [rnd.choice(kinds)() for _ in range(n)]


def measure(
    base_url: str, token: str, qs: list[str], conversation_id: str | None
) -> tuple[list[float], int]:
    """Milliseconds per query (one at a time, after 10 warm-up queries) and how many
    results they found in all."""
    headers = {"authorization": f"Bearer {token}"}
    found = 0
    out = []
    with httpx.Client(base_url=base_url, timeout=60.0, headers=headers) as http:
        for i, q in enumerate(qs[:10] + qs):
            params: dict[str, Any] = {"q": q}
            if conversation_id is not None:
                params["conversation_id"] = conversation_id
            start = time.perf_counter()
            r = http.get("/v1/search", params=params)
            took = (time.perf_counter() - start) * 1000
            if r.status_code != 200:
                raise RuntimeError(f"search {q!r}: {r.status_code} {r.text[:200]}")
            if i >= 10:
                out.append(took)
                found += len(r.json()["results"])
    return out, found


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(latencies: list[float]) -> dict[str, float | None]:
    return {f"p{p}_ms": percentile(latencies, p) for p in (50, 95, 99)}


def run(
    config: Path,
    data_dir: Path,
    log_path: Path,
    *,
    single_messages: int,
    many_messages: int,
    conversations: int,
    queries_per_case: int,
    fill_chunk_rows: int = 2000,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole scenario on a fresh `data_dir`; returns its figures."""
    rnd = random.Random(10)
    server = procs.start_messageai(config, data_dir, log_path)
    try:
        rest = seed.Rest(server.port)
        try:
            progress(f"registering {conversations + 3} users")
            users = rest.register([f"s{i:05d}" for i in range(conversations + 3)])
            # One searcher in the big conversation only, another in the many only.
            one_user, all_user, partner = users[0], users[1], users[2]
            progress(f"creating {conversations + 1} conversations")
            single, *many = rest.groups(
                [(one_user, [partner])] + [(all_user, [users[i + 3]]) for i in range(conversations)]
            )
        finally:
            rest.close()
    finally:
        server.stop()
    senders = [one_user["id"], partner["id"]]
    progress(f"seeding {single_messages:,} messages into one conversation")
    start = time.monotonic()
    fill(data_dir, single, senders, single_messages, rnd)
    seed_single = time.monotonic() - start
    progress("building its index again with the server's filler")
    fill_seconds = rebuild_with_filler(data_dir, single, fill_chunk_rows)
    progress(f"seeding {many_messages:,} messages into {conversations} conversations")
    start = time.monotonic()
    per = many_messages // conversations
    for i, conversation_id in enumerate(many):
        count = per + (1 if i < many_messages % conversations else 0)
        fill(data_dir, conversation_id, [all_user["id"], users[i + 3]["id"]], count, rnd)
    seed_many = time.monotonic() - start
    server = procs.start_messageai(config, data_dir, log_path)
    try:
        base = f"http://127.0.0.1:{server.port}"
        qs = queries(rnd, queries_per_case)
        progress(f"{len(qs)} queries in the one conversation")
        cpu0 = server.cpu()
        one, one_found = measure(base, one_user["token"], qs, single)
        cpu1 = server.cpu()
        progress(f"{len(qs)} queries across all {conversations} conversations")
        every, every_found = measure(base, all_user["token"], qs, None)
        cpu2 = server.cpu()
        # Server CPU per query (all threads; warm-up included): unlike latency, not
        # changed by other work on the machine.
        cpu_one = (cpu1 - cpu0) * 1000 / (len(qs) + 10)
        cpu_all = (cpu2 - cpu1) * 1000 / (len(qs) + 10)
        stop_words = ["the", "you", "and the", "it is"] * 5
        stop, _ = measure(base, one_user["token"], stop_words, single)
    finally:
        server.stop()
    return {
        "single_messages": single_messages,
        "many_messages": many_messages,
        "conversations": conversations,
        "queries": len(qs),
        "seed_single_seconds": seed_single,
        "seed_many_seconds": seed_many,
        "fill_seconds": fill_seconds,
        "fill_rows_per_s": single_messages / fill_seconds if fill_seconds else None,
        "one": {**summary(one), "results": one_found, "cpu_ms_per_query": cpu_one},
        "all": {**summary(every), "results": every_found, "cpu_ms_per_query": cpu_all},
        "stop_words_one": summary(stop),
    }
