"""Action items end to end (PROTOCOL.md "AI over a conversation"): the real server with
the loopback fake endpoint; extraction by the durable `ai.action_items` job; the list,
the status, the checks in order, deletes, the switch."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from messageai.sqlite import open_db
from messageai.store import jobs as jobs_sql
from tests.helpers import Account, Harness, ServerProcess, assert_error, harness, make_config
from tests.llm import FakeLLM, Reply, fake_llm, tools

FAST_JOBS = {"poll_seconds": 0.05, "action_items_delay_seconds": 0.2, "lease_seconds": 1.0}


@contextlib.asynccontextmanager
async def _server(tmp_path: Path, endpoint: bool = True) -> AsyncIterator[tuple[Harness, FakeLLM]]:
    with trio.fail_after(60):
        async with fake_llm() as llm:
            ai = {"base_url": llm.url, "model": "fake-model"} if endpoint else {}
            config = make_config(tmp_path / "data", ai=ai, jobs=FAST_JOBS)
            async with harness(config) as h:
                yield h, llm


def _items_url(cid: str) -> str:
    return f"/v1/conversations/{cid}/ai/action-items"


async def _items(h: Harness, who: Account, cid: str) -> httpx.Response:
    return await h.http.get(_items_url(cid), headers=h.auth(who))


async def _until_items(h: Harness, who: Account, cid: str, count: int) -> list[dict[str, Any]]:
    while True:
        r = await _items(h, who, cid)
        assert r.status_code == 200, r.text
        found: list[dict[str, Any]] = r.json()["items"]
        if len(found) == count:
            return found
        await trio.sleep(0.05)


async def test_items_are_extracted_listed_marked_done_and_follow_deletes(tmp_path: Path) -> None:
    async with _server(tmp_path) as (h, llm):
        ada, bob = await h.account("ada"), await h.account("bob")
        cid = await h.group(ada, bob)
        one = await h.post(ada, cid, "bob can you send the slides by friday")
        two = await h.post(bob, cid, "yes, friday")
        assert_error(await _items(h, ada, cid), 403, "forbidden")  # the switch is off
        r = await h.http.put(
            f"/v1/conversations/{cid}/ai", json={"enabled": True}, headers=h.auth(ada)
        )
        assert r.status_code == 200, r.text
        llm.script(
            tools(
                (
                    "record_action_items",
                    {
                        "items": [
                            {
                                "text": "Send the slides",
                                "owner": "bob",
                                "due": "friday",
                                "sources": [one, two, 999],
                            }
                        ]
                    },
                )
            )
        )
        [item] = await _until_items(h, ada, cid, 1)  # the first read starts the job
        assert item["text"] == "Send the slides" and item["owner_id"] == bob.id
        assert (item["due"], item["source_seqs"], item["status"]) == ("friday", [one, two], "open")
        assert isinstance(item["id"], str)
        (request,) = llm.texts()
        assert "send the slides by friday" in request and ada.id not in request
        r = await h.http.get(f"/v1/conversations/{cid}/ai/log", headers=h.auth(bob))
        [entry] = r.json()["entries"]
        assert (entry["action"], entry["user_id"], entry["seqs"]) == (
            "action_items",
            None,
            [one, two],
        )

        url = f"{_items_url(cid)}/{item['id']}"
        r = await h.http.patch(url, json={"status": "done"}, headers=h.auth(bob))
        assert r.status_code == 200 and r.json() == {**item, "status": "done"}
        assert_error(
            await h.http.patch(url, json={"status": "closed"}, headers=h.auth(bob)),
            400,
            "bad_request",
        )
        assert_error(
            await h.http.patch(
                f"{_items_url(cid)}/ai_nope", json={"status": "done"}, headers=h.auth(bob)
            ),
            404,
            "not_found",
        )

        # A deleted source leaves at once; with none left the item is gone.
        r = await h.http.delete(f"/v1/conversations/{cid}/messages/{one}", headers=h.auth(ada))
        assert r.status_code == 200, r.text
        [left] = (await _items(h, ada, cid)).json()["items"]
        assert left["source_seqs"] == [two]
        r = await h.http.delete(f"/v1/conversations/{cid}/messages/{two}", headers=h.auth(bob))
        assert r.status_code == 200, r.text
        assert (await _items(h, ada, cid)).json()["items"] == []

        await h.http.put(
            f"/v1/conversations/{cid}/ai", json={"enabled": False}, headers=h.auth(ada)
        )
        assert_error(await _items(h, ada, cid), 403, "forbidden")


async def test_new_messages_where_the_switch_is_on_are_extracted_unasked(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with fake_llm() as llm:
            jobs = {**FAST_JOBS, "action_items_after_messages_seconds": 0.3}
            config = make_config(
                tmp_path / "data", ai={"base_url": llm.url, "model": "m"}, jobs=jobs
            )
            async with harness(config) as h:
                ada, bob = await h.account("ada"), await h.account("bob")
                off = await h.group(ada, bob, title="off")
                on = await h.group(ada, bob, title="on")
                await h.post(ada, off, "bob please book the room")  # switch off: no job
                r = await h.http.put(
                    f"/v1/conversations/{on}/ai", json={"enabled": True}, headers=h.auth(ada)
                )
                assert r.status_code == 200, r.text
                answer = {"items": [{"text": "Book the room", "owner": "bob", "sources": [1]}]}
                llm.script(tools(("record_action_items", answer)))
                await h.post(ada, on, "bob please book the room")
                await llm.any_request.wait()  # no list was read: the message started it
                (request,) = llm.texts()
                assert "book the room" in request
                [item] = await _until_items(h, ada, on, 1)
                assert item["text"] == "Book the room" and item["owner_id"] == bob.id
                assert h.server.jobs is not None
                found = await h.server.jobs.inspect(jobs_sql.all_jobs)
                # None for the conversation switched off (the list read may add one).
                assert {orjson.loads(j.payload)["conversation_id"] for j in found} == {on}


async def test_checks_come_in_the_contracts_order(tmp_path: Path) -> None:
    async with _server(tmp_path, endpoint=False) as (h, _llm):
        ada, bob, eve = await h.account(), await h.account(), await h.account()
        cid = await h.direct(ada, bob)
        assert_error(await h.http.get(_items_url(cid)), 401, "unauthorized")
        assert_error(await _items(h, ada, "c_nope"), 404, "not_found")
        assert_error(await _items(h, eve, cid), 403, "forbidden")
        assert_error(await _items(h, ada, cid), 503, "unavailable")
        # The field rule comes before membership.
        bad = await h.http.patch(f"{_items_url(cid)}/x", json={"status": 1}, headers=h.auth(eve))
        assert_error(bad, 400, "bad_request")
        ok = await h.http.patch(
            f"{_items_url(cid)}/x", json={"status": "done"}, headers=h.auth(eve)
        )
        assert_error(ok, 403, "forbidden")


@pytest.mark.slow
async def test_kill_9_while_items_are_extracted_runs_the_job_again_and_stores_them_once(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with trio.fail_after(60):
        async with fake_llm() as llm:
            config_file = ServerProcess.write_config(
                tmp_path / "messageai.toml",
                f'[ai]\nbase_url = "{llm.url}"\nmodel = "fake-model"\n'
                "[jobs]\npoll_seconds = 0.05\nlease_seconds = 1.0\naction_items_delay_seconds = 0.2\n",
            )
            answer = {"items": [{"text": "Send the slides", "owner": "bob", "sources": [1]}]}
            # The first request is held until the server is killed; the re-run gets this.
            llm.script(Reply(delay=30), tools(("record_action_items", answer)))
            async with trio.open_nursery() as nursery:
                proc = ServerProcess(data, config_file)
                port = await proc.start(nursery)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    ada = await _register(http, "ada")
                    bob = await _register(http, "bob")
                    r = await http.post(
                        "/v1/conversations",
                        json={"kind": "group", "title": "T", "member_ids": [bob.id]},
                        headers=_auth(ada),
                    )
                    cid = r.json()["id"]
                    r = await http.post(
                        f"/v1/conversations/{cid}/messages",
                        json={"client_id": "k1", "body": "bob please send the slides"},
                        headers=_auth(ada),
                    )
                    assert r.status_code == 201
                    await http.put(
                        f"/v1/conversations/{cid}/ai", json={"enabled": True}, headers=_auth(ada)
                    )
                    assert (await http.get(_items_url(cid), headers=_auth(ada))).json() == {
                        "items": []
                    }
                await llm.any_request.wait()  # the extraction is waiting for the model
                proc.kill()
                assert await proc.wait() == -9
            [job] = _jobs(data)
            assert (job.state, job.attempts) == ("running", 1)

            async with trio.open_nursery() as nursery:
                proc = ServerProcess(data, config_file)
                port = await proc.start(nursery)
                # The dead process's lease expires; the job runs again and finishes.
                while _jobs(data)[0].state != "done":
                    await trio.sleep(0.05)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    r = await http.get(_items_url(cid), headers=_auth(ada))
                    [item] = r.json()["items"]
                    assert (item["text"], item["owner_id"], item["source_seqs"]) == (
                        "Send the slides",
                        bob.id,
                        [1],
                    )
                    r = await http.get(f"/v1/conversations/{cid}/ai/log", headers=_auth(ada))
                    # Both requests carried the content, and both are in the log.
                    assert [e["action"] for e in r.json()["entries"]] == ["action_items"] * 2
                proc.terminate()
                assert await proc.wait() == 0
            [job] = _jobs(data)
            assert (job.state, job.attempts) == ("done", 2)
            assert len(llm.requests) == 2


async def _register(http: httpx.AsyncClient, name: str) -> Account:
    r = await http.post("/v1/auth/register", json={"username": name, "password": "password1"})
    body = r.json()
    return Account(id=body["user"]["id"], username=name, token=body["token"])


def _auth(who: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {who.token}"}


def _jobs(data: Path) -> list[jobs_sql.Job]:
    conn = open_db(data / jobs_sql.JOBS_FILE, "FULL")
    try:
        return jobs_sql.all_jobs(conn)
    finally:
        conn.close()
