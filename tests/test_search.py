"""Keyword search (PROTOCOL.md v1.1 "Search") against the real server on 127.0.0.1:0:
matching rules, query syntax as text, snippets and highlights, limits, authorization,
the WebSocket frame, and the index of files written before it existed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messageai.model import Message, now_ms
from messageai.sqlite import migrate, open_db
from messageai.store import conversation as conversation_sql
from messageai.store import search as search_sql
from messageai.store.paths import conversation_path
from tests.helpers import Account, Harness, assert_error, harness, make_config


async def send(h: Harness, who: Account, conversation_id: str, body: str) -> dict[str, Any]:
    r = await h.http.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"client_id": f"c{now_ms()}{id(body)}{body[:8]}", "body": body},
        headers=h.auth(who),
    )
    assert r.status_code in (200, 201), r.text
    message: dict[str, Any] = r.json()["message"] if "message" in r.json() else r.json()
    return message


async def search(h: Harness, who: Account, **params: Any) -> httpx.Response:
    return await h.http.get("/v1/search", params=params, headers=h.auth(who))


async def found(h: Harness, who: Account, q: str, **params: Any) -> list[str]:
    r = await search(h, who, q=q, **params)
    assert r.status_code == 200, r.text
    return [hit["message"]["body"] for hit in r.json()["results"]]


async def pair(h: Harness) -> tuple[Account, Account, str]:
    a, b = await h.account(), await h.account()
    return a, b, await h.direct(a, b)


async def test_words_match_by_stem_and_without_diacritics(h: Harness) -> None:
    a, b, cid = await pair(h)
    await send(h, a, cid, "the weekly meeting is moved")
    await send(h, b, cid, "see you at the café")
    await send(h, b, cid, "nothing to see here")
    assert await found(h, a, "meetings") == ["the weekly meeting is moved"]
    assert await found(h, b, "CAFE") == ["see you at the café"]
    assert await found(h, b, "cafés") == ["see you at the café"]


async def test_every_word_must_match_and_quotes_make_a_phrase(h: Harness) -> None:
    a, _, cid = await pair(h)
    await send(h, a, cid, "release the build friday")
    await send(h, a, cid, "friday release")
    await send(h, a, cid, "release notes")
    assert sorted(await found(h, a, "release friday")) == [
        "friday release",
        "release the build friday",
    ]
    assert await found(h, a, '"friday release"') == ["friday release"]
    # An unterminated quote is closed at the end of q.
    assert await found(h, a, '"release notes') == ["release notes"]
    assert await found(h, a, '"notes release"') == []


async def test_no_character_is_query_syntax(h: Harness) -> None:
    a, _, cid = await pair(h)
    await send(h, a, cid, "cats AND dogs (maybe) near: the-end ^top *star* NEAR")
    await send(h, a, cid, "unrelated words")
    for q in [
        "AND",
        "NEAR",
        "near(",
        "dogs AND",
        "OR dogs",
        "NOT cats",
        "star*",
        "*",
        "(maybe",
        "maybe)",
        "near:",
        "body:cats",
        "-end",
        "the-end",
        "^top",
        '"',
        '""',
        '"cats" "',
        "cats + dogs",
        "{body}: cats",
        "'cats'",
        "\\",
        "\x00cats",
    ]:
        r = await search(h, a, q=q)
        assert r.status_code == 200, (q, r.text)
    assert await found(h, a, "AND") == ["cats AND dogs (maybe) near: the-end ^top *star* NEAR"]
    assert await found(h, a, "NOT unrelated") == []  # NOT is a word that must match
    assert len(await found(h, a, "-end")) == 1
    # Punctuation only is valid and finds nothing.
    assert await found(h, a, "*** () ::") == []


async def test_snippet_is_one_excerpt_with_code_point_highlights(h: Harness) -> None:
    a, _, cid = await pair(h)
    await send(h, a, cid, "Ünïcødé 👍 Meeting at the Café, then meetings again")
    r = await search(h, a, q="meeting cafe")
    (hit,) = r.json()["results"]
    snippet = hit["snippet"]
    assert snippet == "Ünïcødé 👍 Meeting at the Café, then meetings again"
    words = [snippet[s:e] for s, e in hit["highlights"]]
    assert words == ["Meeting", "Café", "meetings"]
    assert isinstance(hit["score"], float)
    assert hit["conversation_id"] == cid
    # A long body is cut to at most 200 code points, ellipses included.
    long_body = "é" * 150 + " " + "filler " * 40 + "needle " + "tail " * 60
    await send(h, a, cid, long_body)
    (hit,) = (await search(h, a, q="needle")).json()["results"]
    snippet = hit["snippet"]
    assert len(snippet) <= 200
    assert snippet.startswith("…") and snippet.endswith("…")
    assert snippet[1:-1] in long_body
    assert [snippet[s:e] for s, e in hit["highlights"]] == ["needle"]


async def test_limit_default_clamp_and_refusals(h: Harness) -> None:
    a, _, cid = await pair(h)
    for i in range(60):
        await send(h, a, cid, f"ping number {i}")
    assert len(await found(h, a, "ping")) == 20
    assert len(await found(h, a, "ping", limit=5)) == 5
    assert len(await found(h, a, "ping", limit=1000)) == 50
    for bad in ("0", "-1", "x", "1.5"):
        assert_error(await search(h, a, q="ping", limit=bad), 400, "bad_request")
    assert_error(await search(h, a, q="   "), 400, "bad_request")
    assert_error(await search(h, a), 400, "bad_request")
    assert_error(await search(h, a, q="x" * 257), 400, "bad_request")
    # 256 code points after trimming is fine, even where UTF-8 takes more bytes.
    assert (await search(h, a, q="  " + "é" * 256 + "  ")).status_code == 200
    assert_error(await search(h, a, q="ping", mode="fuzzy"), 400, "bad_request")
    assert_error(await search(h, a, q="ping", mode="semantic"), 503, "unavailable")
    r = await search(h, a, q="ping", mode="hybrid", limit=2)
    assert r.status_code == 200
    assert r.json()["mode"] == "keyword"
    assert r.json()["indexing"] is False
    unauthorized = await h.http.get("/v1/search", params={"q": "ping"})
    assert_error(unauthorized, 401, "unauthorized")


async def test_only_the_callers_current_conversations_are_searched(h: Harness) -> None:
    a, b, c = await h.account(), await h.account(), await h.account()
    ab = await h.direct(a, b)
    group = await h.group(a, b, c)
    bc = await h.direct(b, c)
    await send(h, a, ab, "secret plan one")
    await send(h, a, group, "secret plan two")
    await send(h, b, bc, "secret plan three")
    assert sorted(await found(h, c, "secret")) == ["secret plan three", "secret plan two"]
    assert await found(h, c, "secret", conversation_id=bc) == ["secret plan three"]
    assert_error(await search(h, c, q="secret", conversation_id=ab), 403, "forbidden")
    assert_error(await search(h, c, q="secret", conversation_id="c_nope"), 404, "not_found")
    assert_error(await search(h, c, q="x" * 300, conversation_id="c_nope"), 400, "bad_request")
    r = await h.http.delete(f"/v1/conversations/{group}/members/{c.id}", headers=h.auth(a))
    assert r.status_code in (200, 204), r.text
    assert await found(h, c, "secret") == ["secret plan three"]
    assert_error(await search(h, c, q="secret", conversation_id=group), 403, "forbidden")


async def test_websocket_search_answers_with_its_req(h: Harness) -> None:
    a, _, cid = await pair(h)
    async with h.ws(a) as ws:
        ack = await ws.send_message(cid, "lunch at noon?")
        assert ack["type"] == "ack"
        # Found as soon as the ack has been sent.
        answer = await ws.request("search", q="lunch")
        assert answer["type"] == "search_results"
        assert answer["mode"] == "keyword"
        assert answer["indexing"] is False
        assert [r["message"]["seq"] for r in answer["results"]] == [ack["message"]["seq"]]
        answer = await ws.request("search", q="lunch", conversation_id=cid, limit=1)
        assert len(answer["results"]) == 1
        cases: list[tuple[dict[str, Any], str]] = [
            ({"q": ""}, "bad_request"),
            ({"q": 5}, "bad_request"),
            ({"q": "x", "limit": 0}, "bad_request"),
            ({"q": "x", "limit": "5"}, "bad_request"),
            ({"q": "x", "conversation_id": "c_nope"}, "not_found"),
            ({"q": "x", "mode": "semantic"}, "unavailable"),
        ]
        for fields, code in cases:
            error = await ws.request("search", **fields)
            assert (error["type"], error["code"]) == ("error", code), fields
        # The connection still works for everything else.
        assert (await ws.send_message(cid, "after"))["type"] == "ack"


# Pieces of text that FTS5 would read as syntax, and any characters at all.
_QUERY_TEXT = st.lists(
    st.one_of(
        st.sampled_from([*"\"*()-:^+{},' \t", "AND", "OR", "NOT", "NEAR", "NEAR(", "body:"]),
        st.text(max_size=8),
    ),
    max_size=40,
).map("".join)
_RUNS = iter(range(1_000_000))


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(queries=st.lists(_QUERY_TEXT, min_size=40, max_size=40))
def test_generated_queries_never_fail_but_for_their_length(
    tmp_path: Path, queries: list[str]
) -> None:
    async def main() -> None:
        with trio.fail_after(60):
            data_dir = tmp_path / f"run{next(_RUNS)}"
            async with harness(make_config(data_dir)) as h:
                a, _, cid = await pair(h)
                await send(h, a, cid, 'some "text" with AND * ( : - NEAR ^ in it')
                async with h.ws(a) as ws:
                    for q in queries:
                        r = await search(h, a, q=q)
                        answer = await ws.request("search", q=q)
                        if 1 <= len(q.strip()) <= 256:
                            assert r.status_code == 200, (q, r.text)
                            assert answer["type"] == "search_results", (q, answer)
                        else:
                            assert_error(r, 400, "bad_request")
                            assert (answer["type"], answer["code"]) == ("error", "bad_request")

    trio.run(main)


def test_query_builder_quotes_every_word() -> None:
    conn = open_db(Path(":memory:"), "NORMAL")
    tokenizer = search_sql.conversation_tokenizer(conn)
    query = search_sql.parse_query(tokenizer, 'a"b AND "c d')
    assert query.match == '"a" AND "b AND" AND "c" AND "d"'
    assert search_sql.parse_query(tokenizer, "*** ::").match is None


# ---------------------------------------------------------------- old files


def write_old_file(data_dir: Path, conversation_id: str, senders: list[str], total: int) -> None:
    """A conversation file as the release before the index wrote it: the schema of
    MIGRATIONS before the search step, `total` messages, no index rows."""
    path = conversation_path(data_dir, conversation_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = open_db(path, "NORMAL")
    # The steps before the index's (later steps, e.g. embeddings', come after it).
    old = conversation_sql.MIGRATIONS[
        : conversation_sql.MIGRATIONS.index(search_sql.MIGRATIONS_STEP)
    ]
    migrate(conn, old)
    now = now_ms()
    rows = [
        Message(
            id=f"m_old{seq}",
            conversation_id=conversation_id,
            seq=seq,
            sender_id=senders[seq % len(senders)],
            client_id=f"old{seq}",
            body=f"archived note {seq}" + (" zebra" if seq == 1 else ""),
            attachments=[],
            created_at=now,
        )
        for seq in range(1, total + 1)
    ]
    with conn:
        conn.executemany(
            "INSERT INTO messages(seq, id, sender_id, client_id, body, attachments, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(m.seq, m.id, m.sender_id, m.client_id, m.body, "[]", m.created_at) for m in rows],
        )
    conn.close()


async def test_an_old_file_is_indexed_in_the_background_while_sends_are_acked(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    total = 40_000
    config = make_config(data_dir, search={"fill_chunk_rows": 500})
    with trio.fail_after(120):
        async with harness(config) as h:
            a, b, cid = await pair(h)
        # While the server is stopped, the conversation's file becomes an old one.
        path = conversation_path(data_dir, cid)
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        write_old_file(data_dir, cid, [a.id, b.id], total)
        async with harness(config) as h:
            # The first search finds the file not indexed and starts its filler.
            first = (await search(h, a, q="zebra")).json()
            assert first["indexing"] is True
            assert first["results"] == []
            acked = 0
            async with h.ws(a) as ws:
                while True:
                    ack = await ws.send_message(cid, f"fresh message {acked}")
                    assert ack["type"] == "ack", ack
                    acked += 1
                    answer = await ws.request("search", q="fresh")
                    # New messages are found at once, even while old ones lag.
                    assert len(answer["results"]) == min(acked, 20)
                    if not answer["indexing"]:
                        break
            # Sends were acked while the index filled (each chunk is one short step).
            assert acked > 1
            done = (await search(h, a, q="zebra")).json()
            assert done["indexing"] is False
            assert [r["message"]["seq"] for r in done["results"]] == [1]
            assert len(await found(h, a, "archived", limit=50)) == 50
            conn = open_db(conversation_path(data_dir, cid), "NORMAL")
            try:
                assert search_sql.unindexed_upto(conn) == 0
                assert (
                    conn.execute(
                        "INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)"
                    ).fetchall()
                    == []
                )
            finally:
                conn.close()


def test_replace_below_the_watermark_is_left_to_the_filler(tmp_path: Path) -> None:
    write_old_file(tmp_path, "c_old", ["u_a"], 10)
    conn = open_db(conversation_path(tmp_path, "c_old"), "NORMAL")
    try:
        migrate(conn, conversation_sql.MIGRATIONS)
        assert search_sql.unindexed_upto(conn) == 10
        with conn:
            assert search_sql.fill_chunk(conn, 4) == 6
            # seq 3 is not indexed yet: an edit leaves it to the filler (no 'delete').
            conn.execute("UPDATE messages SET body = 'edited three' WHERE seq = 3")
            search_sql.index_replace(conn, 3, "archived note 3", "edited three")
            # seq 8 is indexed: its old body goes, its new body comes.
            conn.execute("UPDATE messages SET body = 'edited eight' WHERE seq = 8")
            search_sql.index_replace(conn, 8, "archived note 8", "edited eight")
        while search_sql.unindexed_upto(conn):
            with conn:
                search_sql.fill_chunk(conn, 4)
        conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
        hits = conn.execute(
            "SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'edited' ORDER BY rowid"
        ).fetchall()
        assert hits == [(3,), (8,)]
        archived = conn.execute(
            "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'archived'"
        ).get
        assert archived == 8
    finally:
        conn.close()


# ---------------------------------------------------------------- changes


async def test_tombstones_and_earlier_bodies_are_never_found_nor_left_in_the_file(
    h: Harness,
) -> None:
    a, b, cid = await pair(h)
    async with h.ws(a) as ws:
        await ws.send_message(cid, "wombatlive stays here")
        sent = await ws.send_message(cid, "quokkamarmalade first words")
        seq = sent["message"]["seq"]
        assert await found(h, b, "quokkamarmalade") == ["quokkamarmalade first words"]
        r = await ws.request("edit_message", conversation_id=cid, seq=seq, body="xylophonejuggler")
        assert r["type"] == "updated"
        # Found by its new body only, as soon as `updated` has been sent.
        assert await found(h, b, "quokkamarmalade") == []
        assert await found(h, b, "xylophonejuggler") == ["xylophonejuggler"]
        r = await ws.request("delete_message", conversation_id=cid, seq=seq)
        assert r["type"] == "updated" and r["message"]["body"] == ""
        assert await found(h, b, "xylophonejuggler") == []
        assert await found(h, b, "quokkamarmalade") == []
        assert await found(h, b, "wombatlive") == ["wombatlive stays here"]
    # Their tokens (as the index stores them: lower case, stemmed) are gone from the
    # file's bytes and its WAL after a checkpoint; a live message's are there.
    path = conversation_path(h.server.config.data_dir, cid)
    conn = open_db(path, "NORMAL")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    blob = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert b"wombatl" in blob
    assert b"quokkamarmal" not in blob
    assert b"xylophonejuggl" not in blob


async def test_scores_are_comparable_across_conversations(h: Harness) -> None:
    a, b, c = await h.account(), await h.account(), await h.account()
    # In `small` nearly every message says "kiwi": a bm25 of its own statistics gives
    # the word almost no weight there. In `big` one message of fifty says it.
    small = await h.direct(a, b)
    big = await h.direct(a, c)
    for _ in range(3):
        await send(h, a, small, "kiwi")
    await send(h, a, small, "kiwi tart with cream")
    for i in range(49):
        await send(h, a, big, f"other words {i}")
    await send(h, a, big, "kiwi tart with cream")
    hits = (await search(h, a, q="kiwi")).json()["results"]
    scores = {(hit["conversation_id"], hit["message"]["body"]): hit["score"] for hit in hits}
    # The same text scores the same wherever it is; shorter ranks higher.
    assert scores[(small, "kiwi tart with cream")] == scores[(big, "kiwi tart with cream")]
    assert [hit["message"]["body"] for hit in hits][:3] == ["kiwi"] * 3
    ordered = [hit["score"] for hit in hits]
    assert len(ordered) == 5 and ordered == sorted(ordered, reverse=True)
    assert all(score > 0 for score in ordered)


async def test_a_query_opens_at_most_max_files_per_query_files(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", search={"max_files_per_query": 1})
    with trio.fail_after(60):
        async with harness(config) as h:
            a = await h.account()
            # Out of `general` (every user is in it): only the three files below count.
            listed = (await h.http.get("/v1/conversations", headers=h.auth(a))).json()
            (general,) = listed["conversations"]
            r = await h.http.delete(
                f"/v1/conversations/{general['id']}/members/{a.id}", headers=h.auth(a)
            )
            assert r.status_code == 204
            conversations = []
            for _ in range(3):
                other = await h.account()
                cid = await h.direct(a, other)
                await send(h, a, cid, "apricot")
                conversations.append(cid)
            first = (await search(h, a, q="apricot")).json()
            # One file opened: the most recently written conversation's.
            assert first["truncated"] is True
            assert [r["conversation_id"] for r in first["results"]] == [conversations[-1]]
            second = (await search(h, a, q="apricot")).json()
            assert second["truncated"] is True and len(second["results"]) == 2
            # Open files do not count: now one more opening covers them all.
            third = (await search(h, a, q="apricot")).json()
            assert "truncated" not in third
            assert len(third["results"]) == 3
            # A named conversation is always searched.
            named = (await search(h, a, q="apricot", conversation_id=conversations[0])).json()
            assert len(named["results"]) == 1
