"""The `ai.action_items` job kind run by a real jobs runner on real files: a
conversation file made by the conversation's own migrations, the loopback fake
endpoint, and the kind's collaborators (the actor's `Ai` command, the switch, the AI
log, the directory's names) played over that file, since they are being built on
branch `assistant`. Checks: the switch gates every request and every write, the
request carries the window only, failures are retried and change nothing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import apsw
import pytest
import trio

from messageai.ai.action_item_job import KIND, action_items_kind
from messageai.ai.endpoint import Endpoint
from messageai.config import AiConfig
from messageai.jobs import BadJob, Jobs
from messageai.model import Message
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import action_items as items_sql
from messageai.store import conversation
from messageai.store import jobs as jobs_sql
from tests.helpers import make_config
from tests.llm import FakeLLM, Reply, fake_llm, text, tools

T = TypeVar("T")
CID = "c_test"
BODIES = [
    ("u_ada", "Bob, please book the room for Monday"),
    ("u_bob", "Will do"),
    ("u_ada", "thanks"),
]
GOOD = {"items": [{"text": "Book the room", "owner": "Bob", "due": "Monday", "sources": [1, 2]}]}


class File:
    """The conversation's file and what its actor would do with it."""

    def __init__(self, path: Path) -> None:
        self.conn = open_db(path, "NORMAL")
        migrate(self.conn, conversation.MIGRATIONS)
        for sender, body in BODIES:
            self.add(sender, body)
        self.enabled = True
        self.log: list[list[int]] = []

    def add(self, sender: str, body: str) -> int:
        seq = conversation.last_seq(self.conn) + 1
        rev = conversation.last_rev(self.conn) + 1
        with transaction(self.conn):
            conversation.insert_message(
                self.conn,
                Message(
                    id=f"m_{seq}",
                    conversation_id=CID,
                    seq=seq,
                    sender_id=sender,
                    client_id=f"k{seq}",
                    body=body,
                    attachments=[],
                    created_at=seq * 1000,
                    rev=rev,
                ),
            )
        return seq

    async def run(self, cid: str, work: Callable[[apsw.Connection], T], writes: bool) -> T:
        assert cid == CID
        with transaction(self.conn):
            return work(self.conn)

    def switch(self, _conn: apsw.Connection) -> bool:
        return self.enabled

    def add_log(self, _conn: apsw.Connection, seqs: Sequence[int], _now: int) -> None:
        self.log.append(list(seqs))


async def _names(cid: str, user_ids: Sequence[str]) -> list[tuple[str, str]]:
    return [("Ada", "u_ada"), ("Bob", "u_bob")]


@contextlib.asynccontextmanager
async def _running(
    tmp_path: Path, llm: FakeLLM, max_messages: int = 60, **jobs: Any
) -> AsyncIterator[tuple[Jobs, File]]:
    file = File(tmp_path / "c.sqlite3")
    endpoint = Endpoint(AiConfig(base_url=llm.url, model="m"), None)
    kind = action_items_kind(
        endpoint,
        file.run,
        file.switch,
        file.add_log,
        _names,
        max_messages=max_messages,
        max_chars=24000,
    )
    config = make_config(
        tmp_path / "data",
        jobs={
            "poll_seconds": 0.05,
            "backoff_base_seconds": 0.02,
            "backoff_max_seconds": 0.05,
            **jobs,
        },
    )
    service = Jobs(config, [kind])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            yield service, file
            nursery.cancel_scope.cancel()
    finally:
        await endpoint.aclose()
        file.conn.close()


async def _finished(jobs: Jobs, job_id: str) -> jobs_sql.Job:
    while True:
        job = await jobs.inspect(jobs_sql.get, job_id)
        assert job is not None
        if job.state in ("done", "dead"):
            return job
        await trio.sleep(0.02)


async def test_extraction_stores_items_from_the_window_and_logs_the_request(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with fake_llm() as llm, _running(tmp_path, llm) as (jobs, file):
            llm.script(tools(("record_action_items", GOOD)))
            job = await jobs.enqueue(KIND, {"conversation_id": CID}, dedup_key=f"{CID}:3")
            assert (await _finished(jobs, job.job_id)).state == "done"
            [item] = items_sql.items(file.conn)
    assert (item.text, item.owner_id, item.due, item.source_seqs, item.status) == (
        "Book the room",
        "u_bob",
        "Monday",
        (1, 2),
        "open",
    )
    assert file.log == [[1, 2, 3]]
    (sent,) = llm.texts()
    assert "please book the room" in sent and "u_ada" not in sent


async def test_with_the_switch_off_nothing_is_sent_logged_or_stored(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with fake_llm() as llm, _running(tmp_path, llm) as (jobs, file):
            file.enabled = False
            job = await jobs.enqueue(KIND, {"conversation_id": CID}, dedup_key="k")
            assert (await _finished(jobs, job.job_id)).state == "done"
            assert items_sql.items(file.conn) == []
    assert llm.requests == [] and file.log == []


async def test_the_switch_turned_off_while_the_model_works_drops_the_result(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with fake_llm() as llm, _running(tmp_path, llm) as (jobs, file):
            llm.script(tools(("record_action_items", GOOD), delay=0.5))
            job = await jobs.enqueue(KIND, {"conversation_id": CID}, dedup_key="k")
            await llm.any_request.wait()
            file.enabled = False
            assert (await _finished(jobs, job.job_id)).state == "done"
            assert items_sql.items(file.conn) == []


async def test_endpoint_failures_and_garbage_are_retried_and_change_nothing(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with fake_llm() as llm, _running(tmp_path, llm, max_attempts=3) as (jobs, file):
            llm.script(
                Reply(status=500, body=b"{}"),
                tools(("record_action_items", {"items": "garbage"})),
                tools(("record_action_items", GOOD)),
            )
            job = await jobs.enqueue(KIND, {"conversation_id": CID}, dedup_key="k")
            done = await _finished(jobs, job.job_id)
            assert (done.state, done.attempts) == ("done", 3)
            assert [i.text for i in items_sql.items(file.conn)] == ["Book the room"]
            # Dead after its attempts, with the reason (no content) kept.
            file.add("u_bob", "and the projector")
            llm.script(*[text("no tool call")] * 3)
            other = await jobs.enqueue(KIND, {"conversation_id": CID}, dedup_key="k2")
            dead = await _finished(jobs, other.job_id)
            assert (
                dead.state == "dead"
                and dead.last_error == "the model made 0 record_action_items calls, not one"
            )
            assert [i.text for i in items_sql.items(file.conn)] == ["Book the room"]


async def test_a_conversation_with_nothing_new_since_its_last_extraction_is_not_sent(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with fake_llm() as llm, _running(tmp_path, llm) as (jobs, file):
            llm.script(tools(("record_action_items", GOOD)), tools(("record_action_items", GOOD)))
            first = await jobs.enqueue(KIND, {"conversation_id": CID}, dedup_key="k1")
            assert (await _finished(jobs, first.job_id)).state == "done"
            again = await jobs.enqueue(KIND, {"conversation_id": CID}, dedup_key="k2")
            assert (await _finished(jobs, again.job_id)).state == "done"
            assert len(llm.requests) == 1 and file.log == [[1, 2, 3]]
            # A new message makes the next run read again, and only then.
            seq = file.add("u_ada", "and the projector too")
            third = await jobs.enqueue(KIND, {"conversation_id": CID}, dedup_key="k3")
            assert (await _finished(jobs, third.job_id)).state == "done"
            assert len(llm.requests) == 2 and file.log[-1] == [1, 2, 3, seq]


async def test_a_payload_other_than_a_conversation_id_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with fake_llm() as llm, _running(tmp_path, llm) as (jobs, _file):
            for payload in (
                {},
                {"conversation_id": "../x"},
                {"conversation_id": CID, "body": "hi"},
            ):
                with pytest.raises(BadJob):
                    await jobs.enqueue(KIND, payload, dedup_key="k")


async def test_items_follow_an_edit_of_a_source_outside_the_newest_messages(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with fake_llm() as llm, _running(tmp_path, llm, max_messages=2) as (jobs, file):
            # An item from messages 1 and 2, stored by an earlier run with a wider window.
            with transaction(file.conn):
                found = [items_sql.Extracted("Book the room", "u_bob", None, (1, 2))]
                items_sql.apply_extraction(file.conn, "job:earlier", [1, 2], found, 3, 5000)
            with transaction(file.conn):
                conversation.edit(file.conn, 1, BODIES[0][1], "Bob, please book the hall", 9000, 4)
            llm.script(
                tools(
                    ("record_action_items", {"items": [{"text": "Book the hall", "sources": [1]}]})
                )
            )
            job = await jobs.enqueue(KIND, {"conversation_id": CID}, dedup_key="k2")
            await _finished(jobs, job.job_id)
            assert [(i.text, i.source_seqs) for i in items_sql.items(file.conn)] == [
                ("Book the hall", (1,))
            ]
    # The request re-read the item's sources, though 1 is not among the newest two.
    (second,) = llm.texts()
    assert "please book the hall" in second and "Will do" in second and "thanks" not in second
