"""Action items end to end (PROTOCOL.md "AI over a conversation"): the real server with
the loopback fake endpoint; extraction by the durable `ai.action_items` job; the list,
the status, the checks in order, deletes, the switch."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.helpers import Account, Harness, assert_error, harness, make_config
from tests.llm import FakeLLM, fake_llm, tools

FAST_JOBS = {"poll_seconds": 0.05, "action_items_delay_seconds": 0.2, "lease_seconds": 1.0}


@contextlib.asynccontextmanager
async def _server(tmp_path: Path, endpoint: bool = True) -> AsyncIterator[tuple[Harness, FakeLLM]]:
    with trio.fail_after(60):
        async with fake_llm() as llm:
            ai = {"base_url": llm.url, "model": "fake-model"} if endpoint else {}
            config = make_config(tmp_path / "data", ai=ai, jobs=FAST_JOBS)
            async with harness(config) as h:
                yield h, llm


async def _send(h: Harness, who: Account, cid: str, body: str) -> int:
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": uuid.uuid4().hex, "body": body},
        headers=h.auth(who),
    )
    assert r.status_code == 201, r.text
    seq: int = r.json()["seq"]
    return seq


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
        one = await _send(h, ada, cid, "bob can you send the slides by friday")
        two = await _send(h, bob, cid, "yes, friday")
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
