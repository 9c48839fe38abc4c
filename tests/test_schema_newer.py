"""A database written by a newer MessageAI is refused, named, and never touched: the
directory at start-up (the server does not start: exit 1, the file named), and a
conversation's file when it is opened (that conversation is `unavailable`, the others
go on)."""

from __future__ import annotations

import uuid
from pathlib import Path

import apsw
import trio

from messageai.services.directory import DIRECTORY_FILE
from messageai.store.paths import conversation_path
from tests.helpers import assert_error, harness, make_config, run_messageai


def _set_version(path: Path, version: int) -> None:
    conn = apsw.Connection(str(path))
    try:
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def test_a_newer_directory_stops_the_server_before_it_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with harness(make_config(data)) as h:
        await h.account("ada")
    _set_version(data / DIRECTORY_FILE, 99)
    before = (data / DIRECTORY_FILE).read_bytes()
    done = await run_messageai("serve", "--data-dir", str(data), "--port", "0")
    assert done.returncode == 1, done.stderr
    assert f"{data / DIRECTORY_FILE}: schema version 99 is newer" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert (data / DIRECTORY_FILE).read_bytes() == before


async def test_a_newer_conversation_file_is_unavailable_and_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(60):
        async with harness(make_config(data)) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            newer, other = await h.direct(ada, bob), await h.group(ada, bob)
            for cid in (newer, other):
                r = await h.http.post(
                    f"/v1/conversations/{cid}/messages",
                    json={"client_id": uuid.uuid4().hex, "body": "hi"},
                    headers=h.auth(ada),
                )
                assert r.status_code == 201
        path = conversation_path(data, newer)
        _set_version(path, 99)
        before = path.read_bytes()
        async with harness(make_config(data)) as h:
            r = await h.http.get(f"/v1/conversations/{newer}/messages", headers=h.auth(ada))
            assert_error(r, 503, "unavailable")
            r = await h.http.get(f"/v1/conversations/{other}/messages", headers=h.auth(ada))
            assert r.status_code == 200 and len(r.json()["messages"]) == 1
        assert path.read_bytes() == before
