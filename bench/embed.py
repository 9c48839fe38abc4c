"""The `embed` scenario of `./scripts/bench`: how fast the background indexer embeds
a conversation's existing messages on this machine (messages/s, server CPU per
message), and the nearest-neighbour scan of one file at 100,000 vectors, NumPy
against sqlite-vec (the choice in `store.vectors.nearest`).

The conversation's file is seeded with `bench.search.fill` while the server is
stopped; the server then starts with embeddings on, one semantic search wakes the
conversation, and the answer's `indexing` is polled until it is false. Called by
`bench.run` (`s_embed`); `python -m bench.embed --scan` runs the scan alone.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench import procs, seed
from bench.search import fill

DIMENSIONS = 384


def run(
    config: Path,
    data_dir: Path,
    log_path: Path,
    *,
    messages: int,
    scan_vectors: int,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole scenario on a fresh `data_dir`; returns its figures."""
    server = procs.start_messageai(config, data_dir, log_path)
    try:
        rest = seed.Rest(server.port)
        try:
            a, b = rest.register(["e00001", "e00002"])
            (conversation_id,) = rest.groups([(a, [b])])
        finally:
            rest.close()
    finally:
        server.stop()
    progress(f"seeding {messages:,} messages")
    fill(data_dir, conversation_id, [a["id"], b["id"]], messages, random.Random(11))
    server = procs.start_messageai(config, data_dir, log_path)
    try:
        headers = {"authorization": f"Bearer {a['token']}"}
        params = {"q": "meeting on friday", "mode": "semantic"}
        with httpx.Client(
            base_url=f"http://127.0.0.1:{server.port}", timeout=60.0, headers=headers
        ) as http:
            progress(f"embedding {messages:,} messages in the background")
            cpu0 = server.cpu()
            start = time.monotonic()
            while True:
                r = http.get("/v1/search", params=params)
                if r.status_code != 200:
                    raise RuntimeError(f"search: {r.status_code} {r.text[:200]}")
                if not r.json()["indexing"]:
                    break
                time.sleep(0.2)
            seconds = time.monotonic() - start
            cpu = server.cpu() - cpu0
    finally:
        server.stop()
    figures: dict[str, Any] = {
        "messages": messages,
        "seconds": seconds,
        "messages_per_s": messages / seconds,
        "cpu_ms_per_message": cpu * 1000 / messages,
    }
    if scan_vectors:
        progress(f"nearest neighbours among {scan_vectors:,} vectors")
        figures["scan"] = scan(scan_vectors)
    return figures


def scan(count: int, rounds: int = 5) -> dict[str, Any]:
    """Milliseconds (best and median of `rounds`) for the 50 nearest of one query in a
    file of `count` int8 vectors: read every BLOB into NumPy and score them there, or
    let sqlite-vec score them inside SQLite."""
    import apsw
    import numpy as np

    from messageai.ai.embedder import quantize
    from messageai.store import vectors

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.sqlite3"
        conn = apsw.Connection(str(path))
        conn.execute("PRAGMA journal_mode = WAL")
        vectors.MIGRATIONS_STEP(conn)
        conn.execute("INSERT INTO vector_models(id, name) VALUES (1, 'bench')")
        with conn:
            for lo in range(0, count, 10_000):
                block = rng.standard_normal((min(10_000, count - lo), DIMENSIONS))
                block /= np.linalg.norm(block, axis=1, keepdims=True)
                conn.executemany(
                    "INSERT INTO vectors(seq, model, vector) VALUES (?, 1, ?)",
                    ((lo + i + 1, quantize(row.astype(np.float32))) for i, row in enumerate(block)),
                )
        conn.close()
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        vectors.load_functions(conn)
        q = rng.standard_normal(DIMENSIONS).astype(np.float32)
        q /= np.linalg.norm(q)
        query = quantize(q)

        def with_numpy() -> list[int]:
            seqs, blobs = [], []
            for seq, blob in conn.execute("SELECT seq, vector FROM vectors WHERE model = 1"):
                seqs.append(seq)
                blobs.append(blob)
            m = np.frombuffer(b"".join(blobs), dtype=np.int8).reshape(-1, DIMENSIONS)
            mf = m.astype(np.float32)
            scores = (mf @ q) / np.sqrt(np.einsum("ij,ij->i", mf, mf))
            top = np.argpartition(-scores, 50)[:50]
            return [seqs[i] for i in top[np.argsort(-scores[top])]]

        def with_sqlite_vec() -> list[int]:
            return [seq for seq, _ in vectors.nearest(conn, "bench", query, 50, -1.0)]

        out: dict[str, Any] = {"vectors": count}
        for name, fn in (("numpy", with_numpy), ("sqlite_vec", with_sqlite_vec)):
            fn()
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1000)
            times.sort()
            out[name] = {"best_ms": times[0], "median_ms": times[len(times) // 2]}
        # NumPy scores the float query, sqlite-vec the int8 one: near ties may swap.
        out["top10_overlap"] = len(set(with_numpy()[:10]) & set(with_sqlite_vec()[:10]))
        conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scan", type=int, default=100_000, help="vectors in the scanned file")
    args = parser.parse_args()
    print(scan(args.scan))


if __name__ == "__main__":
    main()
