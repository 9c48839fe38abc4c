"""PROTOCOL.md v1.1 "Messages change" over REST, against the real server: PATCH/DELETE
of a message, PUT/DELETE of a reaction (percent-encoded emoji), the edit history,
`GET …/changes`, `POST …/messages` with `reply_to` and `mentions`, and that a REST
change reaches every subscriber, the changer's own connections included."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import trio

from tests.helpers import Account, Harness, assert_error, harness, make_config


async def _setup(h: Harness) -> tuple[Account, Account, Account, str]:
    ada, bob, cyd = await h.account("ada"), await h.account("bob"), await h.account("cyd")
    cid = await h.group(ada, bob, cyd)
    return ada, bob, cyd, cid


async def _post(h: Harness, who: Account, cid: str, body: str, **extra: Any) -> httpx.Response:
    return await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": f"{body}-{len(extra)}", "body": body, **extra},
        headers=h.auth(who),
    )


async def test_rest_edit_delete_react_and_edits(h: Harness) -> None:
    ada, bob, _cyd, cid = await _setup(h)
    url = f"/v1/conversations/{cid}/messages"
    assert (await _post(h, ada, cid, "helo")).status_code == 201
    async with h.ws(ada) as a, h.ws(bob) as b:
        for ws in (a, b):
            await ws.request("subscribe", conversation_id=cid)
        r = await h.http.patch(f"{url}/1", json={"body": " hello "}, headers=h.auth(ada))
        assert r.status_code == 200, r.text
        edited = r.json()
        assert edited["body"] == "hello" and edited["rev"] == 2 and edited["edited_at"]
        # A REST change comes from no connection: the changer's own socket gets it too.
        assert (await a.next_event("message_updated"))["message"] == edited
        assert (await b.next_event("message_updated"))["message"] == edited
        r = await h.http.put(f"{url}/1/reactions/{quote('👍')}", headers=h.auth(bob))
        assert r.status_code == 200 and r.json()["reactions"] == {"👍": [bob.id]}
        r = await h.http.put(f"{url}/1/reactions/{quote(':+1:')}", headers=h.auth(ada))
        assert r.json()["reactions"] == {"👍": [bob.id], ":+1:": [ada.id]}
        r = await h.http.delete(f"{url}/1/reactions/{quote('👍')}", headers=h.auth(bob))
        assert r.status_code == 200 and r.json()["reactions"] == {":+1:": [ada.id]}
        # Idempotent: nothing changes, 200 with the message as it is.
        again = await h.http.delete(f"{url}/1/reactions/{quote('👍')}", headers=h.auth(bob))
        assert again.status_code == 200 and again.json() == r.json()
        revs = [(await a.next_event("message_updated"))["message"]["rev"] for _ in range(3)]
        assert revs == [3, 4, 5]
        await a.assert_quiet()
        r = await h.http.get(f"{url}/1/edits", headers=h.auth(bob))
        assert r.json() == {"edits": [{"body": "helo", "edited_at": edited["edited_at"]}]}
        r = await h.http.delete(f"{url}/1", headers=h.auth(ada))
        assert r.status_code == 200
        tomb = r.json()
        assert tomb["body"] == "" and tomb["reactions"] == {} and tomb["deleted_at"]
        assert tomb["rev"] == 6 and tomb["edited_at"] == edited["edited_at"]
        got = [(await b.next_event("message_updated"))["message"] for _ in range(4)]
        assert [m["rev"] for m in got] == [3, 4, 5, 6] and got[-1] == tomb
        r = await h.http.delete(f"{url}/1", headers=h.auth(ada))
        assert r.status_code == 200 and r.json() == tomb
        r = await h.http.get(f"{url}/1/edits", headers=h.auth(bob))
        assert r.json() == {"edits": []}
    r = await h.http.get(f"/v1/conversations/{cid}", headers=h.auth(bob))
    assert r.json()["last_rev"] == 6 and r.json()["last_message"] == tomb


async def test_rest_refusals_in_protocol_order(h: Harness) -> None:
    ada, bob, cyd, cid = await _setup(h)
    eve = await h.account("eve")
    url = f"/v1/conversations/{cid}/messages"
    assert (await _post(h, ada, cid, "ada's")).status_code == 201
    assert (await _post(h, ada, cid, "gone")).status_code == 201
    assert (await h.http.delete(f"{url}/2", headers=h.auth(ada))).status_code == 200
    patch = h.http.patch
    assert_error(await patch(f"{url}/1", json={"body": "x"}, headers=h.auth(bob)), 403, "forbidden")
    assert_error(await patch(f"{url}/2", json={"body": "x"}, headers=h.auth(ada)), 409, "conflict")
    assert_error(await patch(f"{url}/2", json={"body": "x"}, headers=h.auth(bob)), 403, "forbidden")
    assert_error(await patch(f"{url}/9", json={"body": "x"}, headers=h.auth(ada)), 404, "not_found")
    assert_error(await patch(f"{url}/1", json={"body": "x"}, headers=h.auth(eve)), 403, "forbidden")
    nope = "/v1/conversations/c_nope/messages"
    assert_error(
        await patch(f"{nope}/1", json={"body": "x"}, headers=h.auth(ada)), 404, "not_found"
    )
    # Fields first.
    assert_error(
        await patch(f"{nope}/1", json={"body": " "}, headers=h.auth(ada)), 400, "bad_request"
    )
    assert_error(await patch(f"{url}/1", json={"body": 3}, headers=h.auth(eve)), 400, "bad_request")
    assert_error(await patch(f"{url}/1", json={}, headers=h.auth(ada)), 400, "bad_request")
    long = {"body": "x" * 16001}
    assert_error(await patch(f"{url}/1", json=long, headers=h.auth(bob)), 413, "too_large")
    for bad_seq in ["x", "-1", "1.0", "%C2%B2", "99999999999999999999"]:
        assert_error(
            await patch(f"{url}/{bad_seq}", json={"body": "x"}, headers=h.auth(ada)),
            400,
            "bad_request",
        )
    # Deletes: the sender or the group's creator.
    assert (await _post(h, bob, cid, "bob's")).status_code == 201
    assert_error(await h.http.delete(f"{url}/3", headers=h.auth(cyd)), 403, "forbidden")
    assert_error(await h.http.delete(f"{url}/2", headers=h.auth(cyd)), 403, "forbidden")
    assert (await h.http.delete(f"{url}/3", headers=h.auth(ada))).status_code == 200
    # Reactions.
    react = f"{url}/1/reactions"
    for bad in [
        "x" * 33,
        quote("👍" * 8 + "x"),
        quote(" "),
        quote("a b"),
        quote("\t"),
        quote("\u00a0"),
        quote("\x01"),
        "%FF",  # not UTF-8: refused, not turned into U+FFFD
        "%F0%9F",
    ]:
        assert_error(await h.http.put(f"{react}/{bad}", headers=h.auth(bob)), 400, "bad_request")
    assert_error(await h.http.put(f"{url}/2/reactions/x", headers=h.auth(bob)), 409, "conflict")
    assert_error(await h.http.put(f"{url}/9/reactions/x", headers=h.auth(bob)), 404, "not_found")
    assert_error(await h.http.put(f"{react}/x", headers=h.auth(eve)), 403, "forbidden")
    for i in range(32):
        assert (await h.http.put(f"{react}/e{i}", headers=h.auth(bob))).status_code == 200
    assert_error(await h.http.put(f"{react}/e32", headers=h.auth(ada)), 413, "too_large")
    # Edits of an unknown seq; non-members.
    assert_error(await h.http.get(f"{url}/9/edits", headers=h.auth(ada)), 404, "not_found")
    assert_error(await h.http.get(f"{url}/1/edits", headers=h.auth(eve)), 403, "forbidden")
    # Nothing refused took a rev: 3 sends, 2 deletes, 32 reactions.
    r = await h.http.get(f"/v1/conversations/{cid}/changes?after_rev=0", headers=h.auth(ada))
    assert r.json()["last_rev"] == 37


async def test_rest_changes_route(h: Harness) -> None:
    ada, bob, _cyd, cid = await _setup(h)
    eve = await h.account("eve")
    changes = f"/v1/conversations/{cid}/changes"
    r = await h.http.get(f"{changes}?after_rev=0", headers=h.auth(ada))
    assert r.status_code == 200 and r.json() == {"messages": [], "last_rev": 0, "has_more": False}
    for i in range(3):
        assert (await _post(h, ada, cid, f"m{i}")).status_code == 201
    await h.http.patch(
        f"/v1/conversations/{cid}/messages/1", json={"body": "e"}, headers=h.auth(ada)
    )
    r = await h.http.get(f"{changes}?after_rev=1&limit=2", headers=h.auth(bob))
    page = r.json()
    assert [m["rev"] for m in page["messages"]] == [2, 3]
    assert page["has_more"] is True and page["last_rev"] == 4
    r = await h.http.get(f"{changes}?after_rev=3", headers=h.auth(bob))
    assert [(m["seq"], m["body"]) for m in r.json()["messages"]] == [(1, "e")]
    assert r.json()["has_more"] is False
    for query in ["", "?after_rev=", "?after_rev=-1", "?after_rev=x", "?after_rev=0&limit=0"]:
        assert_error(await h.http.get(changes + query, headers=h.auth(ada)), 400, "bad_request")
    assert_error(await h.http.get(f"{changes}?after_rev=0", headers=h.auth(eve)), 403, "forbidden")
    assert_error(
        await h.http.get("/v1/conversations/c_nope/changes?after_rev=0", headers=h.auth(ada)),
        404,
        "not_found",
    )
    assert_error(await h.http.get(f"{changes}?after_rev=0"), 401, "unauthorized")


async def test_rest_post_takes_reply_to_and_mentions(h: Harness) -> None:
    ada, bob, _cyd, cid = await _setup(h)
    eve = await h.account("eve")
    assert (await _post(h, ada, cid, "one")).status_code == 201
    r = await _post(h, ada, cid, "two", reply_to=1, mentions=[bob.id, bob.id])
    assert r.status_code == 201, r.text
    assert r.json()["reply_to"] == 1 and r.json()["mentions"] == [bob.id]
    await h.http.delete(f"/v1/conversations/{cid}/messages/1", headers=h.auth(ada))
    refused: list[dict[str, Any]] = [
        {"reply_to": 1},  # a tombstone
        {"reply_to": 7},  # no such seq
        {"reply_to": "2"},
        {"mentions": [eve.id]},
        {"mentions": bob.id},
        {"mentions": [f"u_{i}" for i in range(51)]},
    ]
    for extra in refused:
        assert_error(await _post(h, ada, cid, "bad", **extra), 400, "bad_request")


async def test_rest_changes_are_rate_limited_with_retry_after(tmp_path: Path) -> None:
    config = make_config(
        tmp_path / "data", limits={"messages_per_second": 0.01, "message_burst": 2}
    )
    with trio.fail_after(60):
        async with harness(config) as h:
            ada, _bob, _cyd, cid = await _setup(h)
            url = f"/v1/conversations/{cid}/messages"
            assert (await _post(h, ada, cid, "one")).status_code == 201
            r = await h.http.put(f"{url}/1/reactions/x", headers=h.auth(ada))
            assert r.status_code == 200
            for r in [
                await h.http.put(f"{url}/1/reactions/y", headers=h.auth(ada)),
                await h.http.patch(f"{url}/1", json={"body": "z"}, headers=h.auth(ada)),
                await h.http.delete(f"{url}/1", headers=h.auth(ada)),
            ]:
                assert r.status_code == 429, r.text
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["code"] == "rate_limited"
                assert r.json()["error"]["retry_after_ms"] > 0
            r = await h.http.get(f"{url}?after_seq=0", headers=h.auth(ada))
            assert r.json()["messages"][0]["body"] == "one"
            assert r.json()["messages"][0]["reactions"] == {"x": [ada.id]}
