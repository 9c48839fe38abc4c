"""Semantic and hybrid search with the real embedding model (PROTOCOL.md v1.1 "Search")
against the real server on 127.0.0.1:0, and the vectors in each conversation's file:
meaning, deletes and edits, the background indexer's high-water mark and its catch-up
of existing messages while sends are acked. The model loads once per test process
(`embedder`, a session fixture); every server of these tests shares it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio

from messageai.ai.embedder import Embedder, quantize, shared
from messageai.model import Message, new_id, now_ms
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import conversation as conversation_sql
from messageai.store import vectors as vectors_sql
from messageai.store.paths import conversation_path
from tests.helpers import Account, Harness, assert_error, harness, make_config

# Niceness 0: these tests check behaviour, not throttling, on a machine that may be busy.
ON = {"enabled": True, "niceness": 0}

UNRELATED = [
    "the build failed again on CI",
    "I had pasta for lunch",
    "my cat knocked over the plant",
    "please review the pull request",
    "the weather is cold today",
    "what time does the train leave",
]
TARGET = "are you free at the end of the week"
QUESTION = "can we meet friday afternoon"


@pytest.fixture(scope="session")
def embedder() -> Iterator[Embedder]:
    yield shared()


@pytest.fixture
async def eh(tmp_path: Path, embedder: Embedder) -> Any:
    with trio.fail_after(60):
        async with harness(make_config(tmp_path / "data", embeddings=ON)) as running:
            yield running


async def send(h: Harness, who: Account, cid: str, body: str) -> dict[str, Any]:
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": new_id("c_"), "body": body},
        headers=h.auth(who),
    )
    assert r.status_code in (200, 201), r.text
    message: dict[str, Any] = r.json()["message"] if "message" in r.json() else r.json()
    return message


async def search(h: Harness, who: Account, **params: Any) -> dict[str, Any]:
    r = await h.http.get("/v1/search", params=params, headers=h.auth(who))
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def settled(h: Harness, who: Account, **params: Any) -> dict[str, Any]:
    """The first answer that says nothing lags (the indexer has caught up)."""
    while True:
        answer = await search(h, who, **params)
        if not answer["indexing"]:
            return answer
        await trio.sleep(0.05)


async def conversation(h: Harness, bodies: list[str]) -> tuple[Account, Account, str]:
    a, b = await h.account(), await h.account()
    cid = await h.direct(a, b)
    for i, body in enumerate(bodies):
        await send(h, a if i % 2 else b, cid, body)
    return a, b, cid


def stored_vector(data_dir: Path, cid: str, seq: int) -> bytes | None:
    conn = apsw.Connection(str(conversation_path(data_dir, cid)), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        value = conn.execute("SELECT vector FROM vectors WHERE seq = ?", (seq,)).get
    finally:
        conn.close()
    return value if isinstance(value, bytes) else None


async def test_semantic_and_hybrid_find_by_meaning(eh: Harness) -> None:
    a, _, cid = await conversation(eh, [*UNRELATED[:3], TARGET, *UNRELATED[3:]])
    semantic = await settled(eh, a, q=QUESTION, mode="semantic")
    assert semantic["mode"] == "semantic"
    top = semantic["results"][0]
    assert top["message"]["body"] == TARGET
    assert top["conversation_id"] == cid
    assert top["snippet"] == TARGET and top["highlights"] == []
    # The default mode is hybrid where embeddings are on; no word of the question is in
    # the target, so only its meaning brings it first.
    hybrid = await settled(eh, a, q=QUESTION)
    assert hybrid["mode"] == "hybrid"
    assert hybrid["results"][0]["message"]["body"] == TARGET
    assert hybrid["results"][0]["highlights"] == []
    # A keyword hit in hybrid keeps keyword mode's highlights.
    pasta = await settled(eh, a, q="pasta", mode="hybrid")
    assert pasta["results"][0]["message"]["body"] == "I had pasta for lunch"
    assert pasta["results"][0]["highlights"] == [[6, 11]]
    # Keyword mode still finds by words only.
    keyword = await search(eh, a, q=QUESTION, mode="keyword")
    assert keyword["mode"] == "keyword" and keyword["results"] == []


async def test_a_conversation_the_caller_is_not_in_is_never_found(eh: Harness) -> None:
    a, _, _ = await conversation(eh, [TARGET])
    outsider = await eh.account()
    await settled(eh, a, q=QUESTION, mode="semantic")
    answer = await search(eh, outsider, q=QUESTION, mode="semantic")
    assert answer["results"] == []


async def test_a_deleted_message_loses_its_vector_and_its_bytes(eh: Harness) -> None:
    a, b, cid = await conversation(eh, [*UNRELATED, TARGET])
    seq = len(UNRELATED) + 1
    await settled(eh, a, q=QUESTION, mode="semantic")
    data_dir = eh.server.config.data_dir
    vector = stored_vector(data_dir, cid, seq)
    assert vector is not None and len(vector) == 384
    sender = a if (seq - 1) % 2 else b
    r = await eh.http.delete(f"/v1/conversations/{cid}/messages/{seq}", headers=eh.auth(sender))
    assert r.status_code == 200, r.text
    assert stored_vector(data_dir, cid, seq) is None
    answer = await settled(eh, a, q=QUESTION, mode="semantic")
    assert all(hit["message"]["seq"] != seq for hit in answer["results"])
    # The delete checkpointed the WAL into the file; secure_delete zeroed the row.
    path = conversation_path(data_dir, cid)
    for file in (path, path.with_name(path.name + "-wal")):
        if file.exists():
            assert vector not in file.read_bytes(), file.name


async def test_an_edited_message_is_found_by_its_new_body_only(eh: Harness) -> None:
    a, b, cid = await conversation(eh, [*UNRELATED, TARGET])
    seq = len(UNRELATED) + 1
    sender = a if (seq - 1) % 2 else b
    await settled(eh, a, q=QUESTION, mode="semantic")
    before = stored_vector(eh.server.config.data_dir, cid, seq)
    r = await eh.http.patch(
        f"/v1/conversations/{cid}/messages/{seq}",
        json={"body": "the quarterly budget spreadsheet is attached"},
        headers=eh.auth(sender),
    )
    assert r.status_code == 200, r.text
    # At once: the old body's vector is gone with the edit's commit.
    stale = await search(eh, a, q=QUESTION, mode="semantic")
    assert all(hit["message"]["seq"] != seq for hit in stale["results"])
    fresh = await settled(eh, a, q="finance figures for this quarter", mode="semantic")
    assert fresh["results"][0]["message"]["seq"] == seq
    after = stored_vector(eh.server.config.data_dir, cid, seq)
    assert after is not None and after != before
    old = await settled(eh, a, q=QUESTION, mode="semantic")
    assert all(hit["message"]["seq"] != seq for hit in old["results"])


async def test_semantic_without_embeddings_is_unavailable(h: Harness) -> None:
    a = await h.account()
    r = await h.http.get(
        "/v1/search", params={"q": QUESTION, "mode": "semantic"}, headers=h.auth(a)
    )
    assert_error(r, 503, "unavailable")
    # The default is keyword there.
    r = await h.http.get("/v1/search", params={"q": QUESTION}, headers=h.auth(a))
    assert r.json()["mode"] == "keyword"


def write_messages(conn: apsw.Connection, senders: list[str], count: int, start: int = 1) -> None:
    now = now_ms()
    with transaction(conn):
        conversation_sql.bulk_insert(
            conn,
            (
                Message(
                    id=new_id("m_"),
                    conversation_id="c",
                    seq=seq,
                    sender_id=senders[seq % len(senders)],
                    client_id=f"seed{seq}",
                    body=f"archived note {seq} about the garden",
                    attachments=[],
                    created_at=now,
                    rev=seq,
                )
                for seq in range(start, start + count)
            ),
        )


def test_the_indexer_resumes_from_its_high_water_mark(tmp_path: Path, embedder: Embedder) -> None:
    path = tmp_path / "c.sqlite3"
    conn = open_db(path, "NORMAL")
    migrate(conn, conversation_sql.MIGRATIONS)
    write_messages(conn, ["u_a", "u_b"], 10)
    model = embedder.model_id
    with transaction(conn):
        assert vectors_sql.load_state(conn, model) == 0
        batch = vectors_sql.next_batch(conn, 4)
        assert batch is not None and [seq for seq, _ in batch[0]] == [1, 2, 3, 4]
        texts = [text for _, text in batch[0]]
        vectors_sql.write_batch(conn, model, batch, embedder.embed_quantized(texts))
    conn.close()
    # "Restart": a new connection reads the mark and goes on after it.
    conn = open_db(path, "NORMAL")
    with transaction(conn):
        assert vectors_sql.load_state(conn, model) == 4
        batch = vectors_sql.next_batch(conn, 4)
    assert batch is not None and [seq for seq, _ in batch[0]] == [5, 6, 7, 8]
    assert vectors_sql.lags(conn, model)
    # A new model id starts again from 0; the old model's vectors are never its results.
    vectors_sql.load_functions(conn)
    query = quantize(embedder.embed(["garden"])[0])
    assert vectors_sql.nearest(conn, model, query, 10, -1.0)
    with transaction(conn):
        assert vectors_sql.load_state(conn, "another-model") == 0
    assert vectors_sql.nearest(conn, "another-model", query, 10, -1.0) == []
    conn.close()


def test_a_batch_edited_or_deleted_while_embedding_is_not_stored(
    tmp_path: Path, embedder: Embedder
) -> None:
    conn = open_db(tmp_path / "c.sqlite3", "NORMAL")
    migrate(conn, conversation_sql.MIGRATIONS)
    write_messages(conn, ["u_a"], 3)
    model = embedder.model_id
    with transaction(conn):
        vectors_sql.load_state(conn, model)
        batch = vectors_sql.next_batch(conn, 10)
    assert batch is not None
    made = embedder.embed_quantized([text for _, text in batch[0]])
    # Meanwhile (the model runs outside any transaction) seq 1 is edited, seq 2 deleted.
    with transaction(conn):
        conversation_sql.edit(conn, 1, batch[0][0][1], "a new body", now_ms(), 4)
        conversation_sql.tombstone(conn, 2, batch[0][1][1], now_ms(), 5)
        vectors_sql.write_batch(conn, model, batch, made)
    rows = conn.execute("SELECT seq FROM vectors ORDER BY seq").fetchall()
    assert rows == [(3,)]
    # The edited one is queued and embedded next, with its new body.
    with transaction(conn):
        again = vectors_sql.next_batch(conn, 10)
    assert again == ([(1, "a new body")], None)
    conn.close()


async def test_existing_messages_are_embedded_while_sends_are_acked(
    tmp_path: Path, embedder: Embedder
) -> None:
    data_dir = tmp_path / "data"
    total = 300
    with trio.fail_after(120):
        async with harness(make_config(data_dir)) as h:
            a, b = await h.account(), await h.account()
            cid = await h.direct(a, b)
            await send(h, a, cid, "hello")
        # While the server is stopped (and had embeddings off), the file fills up.
        conn = open_db(conversation_path(data_dir, cid), "NORMAL")
        write_messages(conn, [a.id, b.id], total, start=2)
        conn.close()
        async with harness(make_config(data_dir, embeddings=ON)) as h:
            first = await search(h, a, q="garden", mode="semantic")
            assert first["indexing"] is True
            acked = 20
            async with h.ws(a) as ws:
                for i in range(acked):
                    ack = await ws.send_message(cid, f"fresh message {i}")
                    assert ack["type"] == "ack", ack
            # Every send was acked while the backlog was still being embedded.
            path = conversation_path(data_dir, cid)
            conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
            try:
                embedded = conn.execute("SELECT count(*) FROM vectors").get
            finally:
                conn.close()
            assert isinstance(embedded, int) and embedded < total
            done = await settled(h, a, q="notes about gardening", mode="semantic", limit=50)
            assert len(done["results"]) == 50
            conn = open_db(conversation_path(data_dir, cid), "NORMAL")
            try:
                count = conn.execute("SELECT count(*) FROM vectors").get
                assert count == total + 1 + acked
            finally:
                conn.close()


async def test_messages_are_delivered_while_the_indexer_runs(eh: Harness) -> None:
    a, b = await eh.account(), await eh.account()
    cid = await eh.direct(a, b)
    async with eh.ws(a) as wa, eh.ws(b) as wb:
        for ws in (wa, wb):
            assert (await ws.request("subscribe", conversation_id=cid))["type"] == "subscribed"
        for i in range(20):
            ack = await wa.send_message(cid, f"{UNRELATED[i % len(UNRELATED)]} {i}")
            assert ack["type"] == "ack", ack
            frame = await wb.next_event("new_message")
            assert frame["message"]["seq"] == ack["message"]["seq"]
            await trio.sleep(0.05)
