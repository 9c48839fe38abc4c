"""Seeding a fresh server over its public REST API: users and conversations.

Plain blocking httpx calls from a small thread pool (REST is not what the bench
measures; it only has to be quick enough). Also the bulk loaders that write a
conversation's database file directly (`fill_history`, `fill_changes`), used only
while the server is stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
R = TypeVar("R")
PASSWORD = "bench-password"
THREADS = 16


def parallel(fn: Callable[[T], R], items: Iterable[T], threads: int = THREADS) -> list[R]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


class Rest:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        limits = httpx.Limits(max_connections=THREADS, max_keepalive_connections=THREADS)
        self.http = httpx.Client(base_url=self.base, timeout=60.0, limits=limits)

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, body: dict[str, Any], token: str | None = None) -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        for attempt in range(5):
            response = self.http.post(path, json=body, headers=headers)
            if response.status_code in (200, 201):
                return response.json()
            if response.status_code in (429, 503) and attempt < 4:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:300]}")
        raise AssertionError("unreachable")

    def register(self, names: list[str]) -> list[dict[str, Any]]:
        """Register users; returns [{"id", "token", "name"}] in order."""

        def one(name: str) -> dict[str, Any]:
            answer = self._post("/v1/auth/register", {"username": name, "password": PASSWORD})
            return {"id": answer["user"]["id"], "token": answer["token"], "name": name}

        return parallel(one, names)

    def direct(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
        def one(pair: tuple[dict[str, Any], dict[str, Any]]) -> str:
            a, b = pair
            body = {"kind": "direct", "member_ids": [b["id"]]}
            return str(self._post("/v1/conversations", body, a["token"])["id"])

        return parallel(one, pairs)

    def messages(self, conversation_id: str, token: str, n: int) -> None:
        """Send `n` short messages into a conversation (the targets of `react`)."""
        for i in range(n):
            self._post(
                f"/v1/conversations/{conversation_id}/messages",
                {"client_id": f"seed{i}", "body": f"react to {i}"},
                token,
            )

    def groups(self, groups: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[str]:
        """Create groups of (creator, other members); returns their ids in order."""

        def one(item: tuple[int, tuple[dict[str, Any], list[dict[str, Any]]]]) -> str:
            i, (creator, members) = item
            body = {
                "kind": "group",
                "title": f"bench {i}",
                "member_ids": [m["id"] for m in members],
            }
            return str(self._post("/v1/conversations", body, creator["token"])["id"])

        return parallel(one, list(enumerate(groups)))


def fill_history(
    data_dir: Path, conversation_id: str, senders: list[str], total: int, synchronous: str
) -> float:
    """Append `total` messages to a conversation's database file (server stopped).

    Goes through the server's own code: its path (`store.paths`), schema
    (`MIGRATIONS`) and insert statement (`store.conversation.bulk_insert`), in
    batches of 50,000 rows per transaction. Returns the seconds it took.
    """
    from messageai.model import Message, now_ms
    from messageai.sqlite import migrate, open_db
    from messageai.store import conversation as sql
    from messageai.store.paths import conversation_path

    start = time.monotonic()
    path = conversation_path(data_dir, conversation_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = open_db(path, synchronous)
    migrate(conn, sql.MIGRATIONS)
    first = sql.last_seq(conn) + 1
    now = now_ms()
    pad = "y" * 60
    batch = 50_000
    for lo in range(first, first + total, batch):
        hi = min(lo + batch, first + total)
        messages = (
            Message(
                id=f"m_h{seq}",
                conversation_id=conversation_id,
                seq=seq,
                sender_id=senders[seq % len(senders)],
                client_id=f"h{seq}",
                body=f"{seq} {pad}",
                attachments=[],
                created_at=now,
            )
            for seq in range(lo, hi)
        )
        with conn:
            sql.bulk_insert(conn, messages)
    if sql.last_seq(conn) != first + total - 1:
        raise RuntimeError(f"seeding stopped at seq {sql.last_seq(conn)}, not {first + total - 1}")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.monotonic() - start


def fill_changes(
    data_dir: Path, conversation_id: str, senders: list[str], total: int, synchronous: str
) -> float:
    """`total` messages (`fill_history`), then one change to each, through the server's
    own store functions: an edit of every even seq, a reaction on every odd one, revs
    `total + 1` … `2 * total`. Catching up from rev 0 then brings `total` messages, all
    with rev above their seq (the worst case for the rev index). Server stopped."""
    from messageai.sqlite import open_db, transaction
    from messageai.store import conversation as sql
    from messageai.store.paths import conversation_path

    start = time.monotonic()
    fill_history(data_dir, conversation_id, senders, total, synchronous)
    conn = open_db(conversation_path(data_dir, conversation_id), synchronous)
    pad = "y" * 60
    with transaction(conn):
        for seq in range(1, total + 1):
            rev = total + seq
            if seq % 2 == 0:
                sql.edit(conn, seq, f"{seq} {pad}", f"{seq} edited {pad}", 1, rev)
            else:
                sql.add_reaction(conn, seq, "\U0001f44d", senders[seq % len(senders)], rev)
    if sql.last_rev(conn) != 2 * total:
        raise RuntimeError(f"seeding stopped at rev {sql.last_rev(conn)}, not {2 * total}")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.monotonic() - start
