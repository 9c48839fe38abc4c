"""Proactive scheduling end to end (PROTOCOL.md "AI over a conversation"): the real
server with the loopback fake endpoint. The local first pass, one bot post per
discussion replying to its trigger, votes by reaction, at most one post an hour, both
switches checked before the request and in the post's own transaction, the bot user,
and a re-run after a crash between the post and its bookkeeping posting nothing more."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import apsw
import orjson
import pytest
import trio

from messageai.ai import proactive
from messageai.ai.background import conversation_of, names_of
from messageai.ai.scheduling_talk import talks_of_meeting
from messageai.jobs import JobContext
from messageai.store import jobs as jobs_sql
from tests.helpers import Account, Harness, harness, make_config
from tests.llm import FakeLLM, fake_llm, tools

T = TypeVar("T")
ONE, TWO = "1\ufe0f\u20e3", "2\ufe0f\u20e3"
FAST_JOBS = {"poll_seconds": 0.05, "lease_seconds": 1.0, "action_items_delay_seconds": 30}
# A slot no test waits for: action-item jobs never run beside these.
QUIET_ITEMS = {**FAST_JOBS, "action_items_after_messages_seconds": 3600}


@contextlib.asynccontextmanager
async def _server(tmp_path: Path, delay: float = 0.3) -> AsyncIterator[tuple[Harness, FakeLLM]]:
    with trio.fail_after(60):
        async with fake_llm() as llm:
            ai = {"base_url": llm.url, "model": "fake-model", "proactive_delay_seconds": delay}
            config = make_config(tmp_path / "data", ai=ai, jobs=QUIET_ITEMS)
            async with harness(config) as h:
                yield h, llm


async def _switch(h: Harness, who: Account, cid: str, enabled: bool, proactive: bool) -> None:
    r = await h.http.put(
        f"/v1/conversations/{cid}/ai",
        json={"enabled": enabled, "proactive": proactive},
        headers=h.auth(who),
    )
    assert r.status_code == 200, r.text


async def _history(h: Harness, who: Account, cid: str) -> list[dict[str, Any]]:
    r = await h.http.get(f"/v1/conversations/{cid}/messages", headers=h.auth(who))
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages


def _bot_id(h: Harness) -> str:
    assert h.server.registry is not None and h.server.registry.bot_id is not None
    return h.server.registry.bot_id


async def _until_post(h: Harness, who: Account, cid: str) -> dict[str, Any]:
    bot = _bot_id(h)
    while True:
        posts = [m for m in await _history(h, who, cid) if m["sender_id"] == bot]
        if posts:
            (post,) = posts
            return post
        await trio.sleep(0.05)


async def _jobs(h: Harness, state: str | None = None) -> list[jobs_sql.Job]:
    assert h.server.jobs is not None
    found = await h.server.jobs.inspect(jobs_sql.all_jobs)
    return [
        job for job in found if job.kind == proactive.KIND and (state is None or job.state == state)
    ]


async def _until_jobs_done(h: Harness, count: int) -> None:
    while len(await _jobs(h, "done")) < count:
        await trio.sleep(0.05)


TIMES = {
    "times": [
        {"text": "Friday  3pm", "sources": [2]},
        {"text": "Saturday 10am", "sources": [3, 2]},
        {"text": "friday 3PM", "sources": [3]},  # the same time again
        {"text": "Sunday, invented", "sources": [99]},  # cites nothing it was shown
    ]
}


async def test_scheduling_talk_gets_one_bot_post_to_vote_on(tmp_path: Path) -> None:
    async with _server(tmp_path) as (h, llm):
        ada, bob, cy = await h.account("ada"), await h.account("bob"), await h.account("cyd")
        cid = await h.group(ada, bob, cy)
        await _switch(h, bob, cid, True, True)
        llm.script(tools(("record_meeting_times", TIMES)))
        first = await h.post(ada, cid, "can we meet this week?")
        await h.post(bob, cid, "friday 3pm works for me")
        await h.post(cy, cid, "I could do saturday 10am")
        post = await _until_post(h, ada, cid)
        assert post["body"] == (
            f"Times proposed. Vote with a reaction:\n{ONE} Friday 3pm\n{TWO} Saturday 10am"
        )
        assert post["reply_to"] == first
        # One request, carrying the talk and names only; logged with no user.
        (request,) = llm.texts()
        assert "friday 3pm works for me" in request and "bob" in request
        assert ada.id not in request and cid not in request
        r = await h.http.get(f"/v1/conversations/{cid}/ai/log", headers=h.auth(cy))
        [entry] = r.json()["entries"]
        assert (entry["action"], entry["user_id"], entry["seqs"]) == ("proactive", None, [1, 2, 3])
        # The poster: the assistant, `bot: true`, a member of nothing.
        r = await h.http.get(f"/v1/users/{post['sender_id']}", headers=h.auth(ada))
        assert r.status_code == 200 and r.json()["bot"] is True
        assert r.json()["username"] == "assistant"
        assert not h.server.directory.is_member(cid, post["sender_id"])  # type: ignore[union-attr]
        # Votes are reactions; the post counts as unread; any member may delete it.
        async with h.ws(bob) as ws:
            answer = await ws.request(
                "react", conversation_id=cid, seq=post["seq"], emoji=ONE, on=True
            )
            assert answer["type"] == "updated", answer
            assert answer["message"]["reactions"] == {ONE: [bob.id]}
        r = await h.http.get("/v1/conversations", headers=h.auth(cy))
        [entry_] = [c for c in r.json()["conversations"] if c["id"] == cid]
        assert entry_["unread_count"] == 3  # ada's, bob's, and the post
        async with h.ws(cy) as ws:
            answer = await ws.request("delete_message", conversation_id=cid, seq=post["seq"])
            assert answer["type"] == "updated" and answer["message"]["deleted_at"] is not None


async def test_one_discussion_is_read_once_and_one_post_an_hour(tmp_path: Path) -> None:
    async with _server(tmp_path) as (h, llm):
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.group(ada, bob)
        await _switch(h, ada, cid, True, True)
        llm.script(tools(("record_meeting_times", TIMES)))
        await h.post(ada, cid, "lunch tomorrow?")
        await h.post(bob, cid, "friday 3pm works for me")
        await h.post(ada, cid, "or saturday 10am?")
        await _until_post(h, ada, cid)
        await _until_jobs_done(h, 1)
        # More talk of times: a new job, which sends nothing within the hour.
        await h.post(bob, cid, "actually, what about monday at noon?")
        await _until_jobs_done(h, 2)
        assert len(llm.requests) == 1
        assert len([m for m in await _history(h, ada, cid) if m["sender_id"] == _bot_id(h)]) == 1


async def test_talk_that_names_no_time_or_a_switch_off_never_reaches_the_model(
    tmp_path: Path,
) -> None:
    async with _server(tmp_path) as (h, llm):
        ada, bob = await h.account("ada"), await h.account("bob")
        quiet = await h.group(ada, bob, title="quiet")  # proactive off
        plain = await h.group(ada, bob, title="plain")  # on, but no talk of times
        later = await h.group(ada, bob, title="later")  # on, the sentinel
        await _switch(h, ada, quiet, True, False)
        await _switch(h, ada, plain, True, True)
        await _switch(h, ada, later, True, True)
        await h.post(ada, quiet, "can we meet friday at 3pm?")
        await h.post(ada, plain, "the build is green again, thanks")
        await h.post(bob, plain, "great, shipping it")
        # The scheduler reads heard messages in order: once the sentinel's job exists,
        # the messages above were judged, and none made a job.
        llm.script(tools(("record_meeting_times", {"times": []})))
        await h.post(ada, later, "are you free tomorrow morning?")
        await _until_jobs_done(h, 1)
        [job] = await _jobs(h)
        assert orjson.loads(job.payload) == {"conversation_id": later, "seq": 1}
        (request,) = llm.texts()
        assert "free tomorrow morning" in request and "friday at 3pm" not in request
        # No times found: nothing posted, and the talk is read.
        assert [m["sender_id"] for m in await _history(h, ada, later)] == [ada.id]


async def test_switched_off_while_the_model_works_posts_nothing(tmp_path: Path) -> None:
    async with _server(tmp_path) as (h, llm):
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.group(ada, bob)
        await _switch(h, ada, cid, True, True)
        llm.script(tools(("record_meeting_times", TIMES), delay=0.5))
        await h.post(ada, cid, "can we meet this week?")
        await h.post(bob, cid, "friday 3pm works for me")
        await h.post(ada, cid, "or saturday 10am")
        await llm.any_request.wait()
        await _switch(h, bob, cid, True, False)  # proactive off, the assistant still on
        await _until_jobs_done(h, 1)
        assert all(m["sender_id"] != _bot_id(h) for m in await _history(h, ada, cid))


async def test_a_rerun_after_a_crash_between_post_and_bookkeeping_posts_once(
    tmp_path: Path,
) -> None:
    """The kind run twice with one job's context, against the live server: the first
    run loses its last write (as a kill -9 right after the post would), the second
    finds the talk unread, asks again, and gets the first post back."""
    async with _server(tmp_path, delay=3600) as (h, llm):
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.group(ada, bob)
        await _switch(h, ada, cid, True, True)
        await h.post(ada, cid, "can we meet this week?")
        await h.post(bob, cid, "friday 3pm works for me")
        await h.post(ada, cid, "or saturday 10am")
        server = h.server
        assert server.registry is not None and server.directory is not None
        assert server.endpoint is not None
        real = conversation_of(server.directory, server.registry)
        writes = 0

        class Crash(Exception):
            pass

        async def crashing(cid_: str, work: Callable[[apsw.Connection], T], w: bool, /) -> T:
            nonlocal writes
            writes += 1
            if writes == 2:  # the first run's bookkeeping after its post
                raise Crash
            return await real(cid_, work, w)

        async def post(cid_: str, op: Any, guard: Any) -> Any:
            return await server.registry.post(cid_, _bot_id(h), op, guard)  # type: ignore[union-attr]

        kind = proactive.proactive_kind(
            server.endpoint,
            crashing,
            post,
            names_of(server.directory),
            _bot_id(h),
            max_messages=60,
            max_chars=24000,
        )
        ctx = JobContext(
            "j_crash", proactive.KIND, f"{cid}:1", 1, {"conversation_id": cid, "seq": 1}
        )
        llm.script(*[tools(("record_meeting_times", TIMES))] * 2)
        with pytest.raises(Crash):
            await kind.handle(ctx)
        await kind.handle(ctx)
        assert len(llm.requests) == 2
        posts = [m for m in await _history(h, ada, cid) if m["sender_id"] == _bot_id(h)]
        assert len(posts) == 1
        # Read now: a third run sends nothing.
        await kind.handle(ctx)
        assert len(llm.requests) == 2


async def test_bad_model_output_is_retried_and_changes_nothing(tmp_path: Path) -> None:
    async with _server(tmp_path) as (h, llm):
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.group(ada, bob)
        await _switch(h, ada, cid, True, True)
        llm.script(
            tools(("record_meeting_times", {"times": "friday"})),
            tools(("record_meeting_times", {"times": [{"text": "", "sources": [1]}]})),
            tools(("record_meeting_times", {"times": [{"text": "Fri", "sources": ["1"]}]})),
            tools(("record_meeting_times", TIMES)),
        )
        await h.post(ada, cid, "can we meet this week?")
        await h.post(bob, cid, "friday 3pm works for me")
        await h.post(ada, cid, "or saturday 10am")
        post = await _until_post(h, ada, cid)
        assert post["body"].count("\n") == 2 and len(llm.requests) == 4


def test_the_first_pass_fires_on_meeting_talk_only() -> None:
    for body in (
        "can we meet friday afternoon",
        "how about 3pm tomorrow?",
        "Lunch on Dec 3rd works for me",
        "are you free at the end of the week",
        "wednesday 10am?",
    ):
        assert talks_of_meeting(body), body
    for body in (
        "I had pizza on friday",
        "the build broke at 10:30",
        "ok",
        "what time is it?",
        "see you",
    ):
        assert not talks_of_meeting(body), body
