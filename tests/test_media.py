"""Media (PROTOCOL.md `POST /v1/media`, `GET /v1/media/{id}`, attachments), end to end.

Real server on 127.0.0.1:0, real files under tmp_path, real HTTP (httpx, or a raw TCP
client where the test must control exactly what is sent). Every refusal also checks
that nothing was stored: no media record, no file, no temporary file left behind.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from messageai.services.media import ByteRange, blob_path, parse_range
from messageai.threads import BLOCKING_THREADS, blocking
from tests.helpers import Account, Harness, assert_error, harness, make_config

# Random-looking bytes, the same in every process: some are test parameters, and
# pytest-xdist's workers must collect the same tests.
_BYTES = random.Random(26)
PNG = b"\x89PNG\r\n\x1a\n" + _BYTES.randbytes(3000)
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + _BYTES.randbytes(300_000)
PDF = b"%PDF-1.7\n" + _BYTES.randbytes(2000)
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"


async def upload(
    h: Harness, who: Account, data: bytes, content_type: str = "image/png"
) -> dict[str, Any]:
    r = await h.http.post(
        "/v1/media", content=data, headers={**h.auth(who), "Content-Type": content_type}
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def send(
    h: Harness, who: Account, cid: str, attachments: list[str], status: int = 201
) -> dict[str, Any]:
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": uuid.uuid4().hex, "body": "look", "attachments": attachments},
        headers=h.auth(who),
    )
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


def stored(h: Harness) -> tuple[int, list[str]]:
    """(media records, files under media/ other than the tmp dir); asserts that no
    temporary file is left in media/tmp."""
    assert h.server.directory is not None
    count = h.server.directory.read(lambda conn: conn.execute("SELECT count(*) FROM media").get)
    root = h.server.config.data_dir / "media"
    files = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp"
    )
    leftovers = [p.name for p in (root / "tmp").glob("*")]
    assert leftovers == [], leftovers
    return int(count), files


async def raw_request(port: int, head: str, body_parts: list[bytes]) -> tuple[int, bytes]:
    """Send a request head and some body bytes over TCP, then read the response head.
    The body need not be complete: the server must answer without waiting for it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head.encode())
        for part in body_parts:
            await stream.send_all(part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, data
            data += chunk
    response_head, _, rest = data.partition(b"\r\n\r\n")
    return int(response_head.split(b" ", 2)[1]), rest


# ---------------------------------------------------------------- round trip


async def test_upload_download_round_trip_with_stored_type_and_nosniff(h: Harness) -> None:
    ada = await h.account("ada")
    first = await upload(h, ada, PNG)
    assert set(first) == {"id", "content_type", "size", "sha256", "filename"}
    assert first["filename"] is None
    assert first["content_type"] == "image/png" and first["size"] == len(PNG)
    assert first["sha256"] == hashlib.sha256(PNG).hexdigest()
    r = await h.http.get(f"/v1/media/{first['id']}", headers=h.auth(ada))
    assert r.status_code == 200 and r.content == PNG
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "content-disposition" not in r.headers
    # The same bytes again: a new id of its own, one file on disk.
    second = await upload(h, ada, PNG)
    assert second["id"] != first["id"] and second["sha256"] == first["sha256"]
    assert (await h.http.get(f"/v1/media/{second['id']}", headers=h.auth(ada))).content == PNG
    sha = first["sha256"]
    assert stored(h) == (2, [f"{sha[:2]}/{sha}"])
    # Text comes back as UTF-8 text; a PDF is a download.
    text = await upload(h, ada, "héllo\n".encode(), "text/plain; charset=utf-8")
    r = await h.http.get(f"/v1/media/{text['id']}", headers=h.auth(ada))
    assert r.text == "héllo\n" and r.headers["content-type"] == "text/plain; charset=utf-8"
    pdf = await upload(h, ada, PDF, "application/pdf")
    r = await h.http.get(f"/v1/media/{pdf['id']}", headers=h.auth(ada))
    assert r.content == PDF and r.headers["content-disposition"].startswith("attachment")


async def test_executable_type_when_allowed_is_served_as_a_download(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", media={"allowed_types": ["image/svg+xml", "image/png"]})
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>x()</script></svg>'
    with trio.fail_after(30):
        async with harness(config) as h:
            ada = await h.account("ada")
            media = await upload(h, ada, svg, "image/svg+xml")
            r = await h.http.get(f"/v1/media/{media['id']}", headers=h.auth(ada))
            assert r.content == svg and r.headers["content-type"] == "image/svg+xml"
            assert r.headers["content-disposition"].startswith("attachment")
            assert r.headers["x-content-type-options"] == "nosniff"
            assert "sandbox" in r.headers["content-security-policy"]
            # Not in this server's list: refused even though the bytes are a real PDF.
            r = await h.http.post(
                "/v1/media", content=PDF, headers={**h.auth(ada), "Content-Type": "application/pdf"}
            )
            assert_error(r, 415, "bad_request")


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"", "image/png", 400),
        (HTML, "image/png", 415),
        (HTML, "text/plain", 415),
        (b"  \n<script>alert(1)</script>", "text/plain", 415),
        (PNG, "image/jpeg", 415),
        (PNG, "", 415),
        (PNG, "application/x-msdownload", 415),
        (PNG, "text/html", 415),
        (b"MZ\x90\x00\x03" + bytes(100), "image/png", 415),
        (b"plain text \xff\xfe not utf-8", "text/plain", 415),
        (b"a" * 1000 + b"\x00" + b"b" * 1000, "text/plain", 415),
        (b"%PDF-1.4 fake", "image/png", 415),
    ],
)
async def test_bad_upload_is_refused_and_stores_nothing(
    h: Harness, data: bytes, content_type: str, status: int
) -> None:
    ada = await h.account("ada")
    headers = {**h.auth(ada)}
    if content_type:
        headers["Content-Type"] = content_type
    r = await h.http.post("/v1/media", content=data, headers=headers)
    assert_error(r, status, "bad_request")
    assert stored(h) == (0, [])


async def test_media_routes_need_a_valid_token(h: Harness) -> None:
    ada = await h.account("ada")
    media = await upload(h, ada, PNG)
    for headers in ({}, {"Authorization": "Bearer nope"}):
        r = await h.http.post(
            "/v1/media", content=PNG, headers={**headers, "Content-Type": "image/png"}
        )
        assert_error(r, 401, "unauthorized")
        assert_error(
            await h.http.get(f"/v1/media/{media['id']}", headers=headers), 401, "unauthorized"
        )
    assert stored(h)[0] == 1


async def test_upload_past_the_limit_is_cut_off_at_once_and_stores_nothing(
    tmp_path: Path,
) -> None:
    limit = 256 * 1024
    config = make_config(tmp_path / "data", limits={"max_upload_bytes": limit})
    with trio.fail_after(30):
        async with harness(config) as h:
            ada = await h.account("ada")
            assert h.server.port is not None
            base = (
                "POST /v1/media HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                f"Authorization: Bearer {ada.token}\r\n"
            )
            # A declared length past the limit: 413 before a single body byte is sent.
            status, _ = await raw_request(
                h.server.port, base + "Content-Length: 1000000000\r\n\r\n", []
            )
            assert status == 413
            # Chunked, no length: 413 once the bytes pass the limit, while the client
            # has not finished (the last chunk is never sent).
            chunk = PNG[:8] + bytes(64 * 1024 - 8)
            parts = [
                f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
                if i == 0
                else f"{64 * 1024:x}\r\n".encode() + bytes(64 * 1024) + b"\r\n"
                for i in range(limit // (64 * 1024) + 1)
            ]
            status, _ = await raw_request(
                h.server.port, base + "Transfer-Encoding: chunked\r\n\r\n", parts
            )
            assert status == 413
            assert stored(h) == (0, [])
            # Exactly at the limit is fine.
            at_limit = PNG[:8] + bytes(limit - 8)
            assert (await upload(h, ada, at_limit))["size"] == limit


async def test_large_upload_and_download_stream_with_bounded_memory(tmp_path: Path) -> None:
    size = 24 << 20
    config = make_config(tmp_path / "data", limits={"max_upload_bytes": 32 << 20})
    piece = os.urandom(64 * 1024)

    async def body() -> AsyncIterator[bytes]:
        yield MP4[:32] + piece[32:]
        for _ in range(size // len(piece) - 1):
            yield piece

    with trio.fail_after(50):
        async with harness(config) as h:
            ada = await h.account("ada")
            tracemalloc.start()
            try:
                r = await h.http.post(
                    "/v1/media",
                    content=body(),
                    headers={**h.auth(ada), "Content-Type": "video/mp4"},
                )
                assert r.status_code == 201, r.text
                media = r.json()
                digest = hashlib.sha256()
                received = 0
                async with h.http.stream(
                    "GET", f"/v1/media/{media['id']}", headers=h.auth(ada)
                ) as download:
                    assert download.status_code == 200
                    async for data in download.aiter_raw():
                        digest.update(data)
                        received += len(data)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert media["size"] == size == received
            assert digest.hexdigest() == media["sha256"]
            # Client and server together never held more than a few chunks of 24 MiB.
            assert peak < 8 << 20, peak


async def test_quota_counts_every_upload_and_refuses_past_it(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", media={"quota_bytes": 10_000})
    with trio.fail_after(30):
        async with harness(config) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            await upload(h, ada, PNG)
            await upload(h, ada, PNG)
            r = await h.http.post(
                "/v1/media", content=PNG + PNG, headers={**h.auth(ada), "Content-Type": "image/png"}
            )
            assert_error(r, 413, "too_large")
            await upload(h, ada, PNG)
            r = await h.http.post(
                "/v1/media", content=PNG, headers={**h.auth(ada), "Content-Type": "image/png"}
            )
            assert_error(r, 413, "too_large")
            assert stored(h)[0] == 3
            # Another user's quota is their own.
            await upload(h, bob, PNG)


async def test_concurrent_uploads_cannot_pass_the_quota_together(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", media={"quota_bytes": 10_000})
    with trio.fail_after(30):
        async with harness(config) as h:
            ada = await h.account("ada")
            statuses: list[int] = []

            async def one(i: int) -> None:
                r = await h.http.post(
                    "/v1/media",
                    content=PNG + bytes([i]),
                    headers={**h.auth(ada), "Content-Type": "image/png"},
                )
                statuses.append(r.status_code)

            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(one, i)
            # Three of 3,009 bytes fit in 10,000; the refused ones left no file behind.
            assert sorted(statuses) == [201] * 3 + [413] * 3
            count, files = stored(h)
            assert count == 3 and len(files) == 3


# ---------------------------------------------------------------- access on the reference


async def test_non_member_gets_404_for_media_attached_in_someone_elses_conversation(
    h: Harness,
) -> None:
    ada, bob, carol = await h.account("ada"), await h.account("bob"), await h.account("carol")
    cid = await h.direct(ada, bob)
    media = await upload(h, ada, PNG)
    url = f"/v1/media/{media['id']}"
    # Not attached yet: only the uploader.
    assert_error(await h.http.get(url, headers=h.auth(bob)), 404, "not_found")
    message = await send(h, ada, cid, [media["id"]])
    assert message["attachments"] == [media["id"]]
    assert (await h.http.get(url, headers=h.auth(bob))).content == PNG
    missing = await h.http.get(url, headers=h.auth(carol))
    unknown = await h.http.get("/v1/media/md_nothing_here", headers=h.auth(carol))
    assert_error(missing, 404, "not_found")
    assert missing.json() == unknown.json()
    # Carol uploading the very same bytes learns nothing and gains nothing.
    own = await upload(h, carol, PNG)
    assert own["id"] != media["id"]
    assert_error(await h.http.get(url, headers=h.auth(carol)), 404, "not_found")


async def test_removed_group_member_loses_access_to_its_media_at_once(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    gid = await h.group(ada, bob)
    media = await upload(h, ada, PNG)
    async with h.ws(ada) as ws:
        ack = await ws.request(
            "send_message",
            conversation_id=gid,
            client_id="c1",
            body="pic",
            attachments=[media["id"]],
        )
        assert ack["type"] == "ack" and ack["message"]["attachments"] == [media["id"]]
    url = f"/v1/media/{media['id']}"
    assert (await h.http.get(url, headers=h.auth(bob))).status_code == 200
    r = await h.http.delete(f"/v1/conversations/{gid}/members/{bob.id}", headers=h.auth(ada))
    assert r.status_code == 204
    assert_error(await h.http.get(url, headers=h.auth(bob)), 404, "not_found")


async def test_attaching_media_you_may_not_use_is_forbidden_and_stores_nothing(
    h: Harness,
) -> None:
    ada, bob, carol = await h.account("ada"), await h.account("bob"), await h.account("carol")
    cid = await h.direct(ada, bob)
    theirs = await upload(h, carol, PNG)
    mine = await upload(h, ada, PNG)
    # REST: 403, over the WebSocket: `forbidden`, also when mixed with a usable id.
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": "x1", "body": "hi", "attachments": [theirs["id"]]},
        headers=h.auth(ada),
    )
    assert_error(r, 403, "forbidden")
    async with h.ws(ada) as ws:
        for attachments in ([theirs["id"]], [mine["id"], theirs["id"]], ["md_unknown"]):
            error = await ws.request(
                "send_message",
                conversation_id=cid,
                client_id="x2",
                body="hi",
                attachments=attachments,
            )
            assert error["type"] == "error" and error["code"] == "forbidden", error
        history = await ws.request("get_history", conversation_id=cid)
        assert history["messages"] == []
    assert_error(
        await h.http.get(f"/v1/media/{theirs['id']}", headers=h.auth(bob)), 404, "not_found"
    )
    # The same client_id is still free: nothing was stored under it.
    message = await send(h, ada, cid, [mine["id"]])
    assert message["seq"] == 1


async def test_a_member_may_forward_media_shared_with_them(h: Harness) -> None:
    ada, bob, carol = await h.account("ada"), await h.account("bob"), await h.account("carol")
    media = await upload(h, ada, PNG)
    await send(h, ada, await h.direct(ada, bob), [media["id"]])
    url = f"/v1/media/{media['id']}"
    assert_error(await h.http.get(url, headers=h.auth(carol)), 404, "not_found")
    await send(h, bob, await h.direct(bob, carol), [media["id"]])
    assert (await h.http.get(url, headers=h.auth(carol))).content == PNG
    # A resent message (same client_id) is a duplicate and its reference stays.
    r = await h.http.post(
        f"/v1/conversations/{await h.direct(bob, carol)}/messages",
        json={"client_id": "again", "body": "x", "attachments": [media["id"]]},
        headers=h.auth(bob),
    )
    assert r.status_code == 201


# ---------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # Served: one satisfiable range.
        ("bytes=0-", ByteRange(0, 99)),
        ("bytes=0-0", ByteRange(0, 0)),
        ("bytes=10-19", ByteRange(10, 19)),
        ("bytes=99-", ByteRange(99, 99)),
        ("bytes=-5", ByteRange(95, 99)),
        ("bytes=-100", ByteRange(0, 99)),
        ("bytes=-500", ByteRange(0, 99)),  # a suffix longer than the file: all of it
        ("bytes=90-500", ByteRange(90, 99)),  # an end past the file is cut to it
        (" bytes = 1 - 2 ", ByteRange(1, 2)),
        # Unsatisfiable (416).
        ("bytes=100-", False),
        ("bytes=100-200", False),
        ("bytes=-0", False),
        ("bytes=" + "9" * 20 + "-", False),
        # Not one we serve: the whole file (200), as RFC 9110 allows.
        (None, None),
        ("", None),
        ("bytes=0-1,5-6", None),  # several ranges
        ("bytes=5-2", None),  # last before first: invalid, ignored
        ("bytes=-", None),
        ("bytes=", None),
        ("items=0-5", None),
        ("bytes=a-b", None),
        ("bytes=1.5-2", None),
        ("bytes=0x10-", None),
        ("bytes=²-", None),
        ("bytes=٣-", None),  # a digit to int(), not to HTTP
        ("garbage", None),
    ],
)
def test_parse_range_edge_cases(header: str | None, expected: ByteRange | bool | None) -> None:
    assert parse_range(header, 100) == expected


def test_parse_range_of_an_empty_file_is_never_satisfiable() -> None:
    assert parse_range("bytes=0-", 0) is False
    assert parse_range("bytes=-1", 0) is False
    assert parse_range(None, 0) is None


async def test_range_requests_for_audio_and_video(h: Harness) -> None:
    ada = await h.account("ada")
    video = await upload(h, ada, MP4, "video/mp4")
    url, size = f"/v1/media/{video['id']}", len(MP4)
    full = await h.http.get(url, headers=h.auth(ada))
    assert full.status_code == 200 and full.content == MP4
    assert full.headers["accept-ranges"] == "bytes"
    cases = [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, size - 1),
        ("bytes=-10", size - 10, size - 1),
        (f"bytes=5-{size * 2}", 5, size - 1),
    ]
    for header, first, last in cases:
        r = await h.http.get(url, headers={**h.auth(ada), "Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert r.content == MP4[first : last + 1]
        assert int(r.headers["content-length"]) == last - first + 1
    for header in (f"bytes={size}-", "bytes=-0"):
        r = await h.http.get(url, headers={**h.auth(ada), "Range": header})
        assert_error(r, 416, "bad_request")
        assert r.headers["content-range"] == f"bytes */{size}"
    # A range we do not serve (several, or malformed): the whole file.
    for header in ("bytes=0-1,5-6", "items=0-5", "bytes=9-3"):
        r = await h.http.get(url, headers={**h.auth(ada), "Range": header})
        assert r.status_code == 200 and r.content == MP4
    # Images are served whole.
    png = await upload(h, ada, PNG)
    r = await h.http.get(f"/v1/media/{png['id']}", headers={**h.auth(ada), "Range": "bytes=0-9"})
    assert r.status_code == 200 and r.content == PNG


# ---------------------------------------------------------------- cleanup


async def test_unreferenced_upload_is_deleted_after_its_time(tmp_path: Path) -> None:
    config = make_config(
        tmp_path / "data",
        media={"unreferenced_ttl_seconds": 0.3, "cleanup_interval_seconds": 0.05},
    )
    with trio.fail_after(30):
        async with harness(config) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            kept = await upload(h, ada, PNG)
            await send(h, ada, await h.direct(ada, bob), [kept["id"]])
            other = PNG + b"different bytes"
            dropped = await upload(h, ada, other)
            url = f"/v1/media/{dropped['id']}"
            while (await h.http.get(url, headers=h.auth(ada))).status_code == 200:
                await trio.sleep(0.05)
            assert_error(await h.http.get(url, headers=h.auth(ada)), 404, "not_found")
            sha = kept["sha256"]
            assert stored(h) == (1, [f"{sha[:2]}/{sha}"])
            assert (await h.http.get(f"/v1/media/{kept['id']}", headers=h.auth(bob))).content == PNG
            # The same bytes uploaded again are stored again.
            again = await upload(h, ada, other)
            await send(h, ada, await h.direct(ada, bob), [again["id"]])
            r = await h.http.get(f"/v1/media/{again['id']}", headers=h.auth(bob))
            assert r.content == other


async def test_a_reference_lost_before_the_ack_is_recorded_again_by_the_resend(
    h: Harness,
) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    media = await upload(h, ada, PNG)
    body = {"client_id": "resend-me", "body": "pic", "attachments": [media["id"]]}
    r = await h.http.post(f"/v1/conversations/{cid}/messages", json=body, headers=h.auth(ada))
    assert r.status_code == 201
    # As if the process died between the conversation's commit and the reference write.
    assert h.server.directory is not None
    await h.server.directory.write(lambda conn: conn.execute("DELETE FROM media_refs"))
    url = f"/v1/media/{media['id']}"
    assert_error(await h.http.get(url, headers=h.auth(bob)), 404, "not_found")
    # The client never saw the ack, so it resends: a duplicate, and the reference is back.
    r = await h.http.post(f"/v1/conversations/{cid}/messages", json=body, headers=h.auth(ada))
    assert r.status_code == 200 and r.json()["seq"] == 1
    assert (await h.http.get(url, headers=h.auth(bob))).content == PNG


async def test_a_registration_completes_while_a_sweep_is_in_its_file_step(tmp_path: Path) -> None:
    """The sweep holds the media lock from its directory transaction through its file
    step. Here the file step cannot start for real: every thread `threads.blocking`
    may use is busy (held by the test on a threading.Event; no OS call is faked).
    Registrations and logins must not wait for it: they need only the directory."""
    config = make_config(
        tmp_path / "data",
        media={"unreferenced_ttl_seconds": 0.01, "cleanup_interval_seconds": 3600.0},
    )
    with trio.fail_after(30):
        async with harness(config) as h, trio.open_nursery() as nursery:
            media = h.server.media
            assert media is not None
            ada = await h.account("ada")
            sha = (await upload(h, ada, PNG))["sha256"]
            path = blob_path(media.root, sha)
            await trio.sleep(0.05)  # past its time, unreferenced
            release = threading.Event()
            busy = threading.Semaphore(0)

            def hold() -> None:
                busy.release()
                release.wait()

            try:
                for _ in range(BLOCKING_THREADS):
                    nursery.start_soon(blocking, hold)
                for _ in range(BLOCKING_THREADS):
                    while not busy.acquire(blocking=False):
                        await trio.sleep(0.01)
                swept: list[int] = []

                async def sweep() -> None:
                    swept.append(await media.sweep())

                nursery.start_soon(sweep)
                # The sweep's directory transaction committed; its unlink is waiting.
                while stored(h)[0] != 0:
                    await trio.sleep(0.01)
                assert media.lock.locked() and path.exists() and swept == []
                bob = await h.account("bob")
                r = await h.http.post(
                    "/v1/auth/login", json={"username": "ada", "password": "password1"}
                )
                assert r.status_code == 200
                assert (await h.http.get("/v1/me", headers=h.auth(bob))).status_code == 200
                # Still in its file step: the registration did not wait for it.
                assert media.lock.locked() and path.exists() and swept == []
            finally:
                release.set()
            while not swept:
                await trio.sleep(0.01)
            assert swept == [1] and not path.exists() and stored(h) == (0, [])


# ---------------------------------------------------------------- v1.1: names, info, captions


async def upload_named(
    h: Harness, who: Account, data: bytes, name: str, content_type: str = "image/png"
) -> Any:
    return await h.http.post(
        "/v1/media",
        params={"filename": name},
        content=data,
        headers={**h.auth(who), "Content-Type": content_type},
    )


async def test_an_upload_keeps_its_name_and_downloads_carry_it_per_rfc_6266(h: Harness) -> None:
    ada = await h.account("ada")
    r = await upload_named(h, ada, PDF, 'Q3 report \u2013 final "v2" 100%.pdf', "application/pdf")
    assert r.status_code == 201, r.text
    pdf = r.json()
    assert pdf["filename"] == 'Q3 report \u2013 final "v2" 100%.pdf'
    r = await h.http.get(f"/v1/media/{pdf['id']}", headers=h.auth(ada))
    assert r.content == PDF
    # A PDF is a download; the name in UTF-8, percent-encoded, and an ASCII fallback
    # without the quote, the percent sign or the dash.
    assert r.headers["content-disposition"] == (
        'attachment; filename="Q3 report _ final _v2_ 100_.pdf";'
        " filename*=UTF-8''Q3%20report%20%E2%80%93%20final%20%22v2%22%20100%25.pdf"
    )
    # An image with a name is shown inline, with the name.
    r = await upload_named(h, ada, PNG, "café.png")
    png = r.json()
    r = await h.http.get(f"/v1/media/{png['id']}", headers=h.auth(ada))
    assert r.headers["content-disposition"] == (
        "inline; filename=\"caf_.png\"; filename*=UTF-8''caf%C3%A9.png"
    )
    # Exactly 255 characters is a name; the media info tells it without the bytes.
    long_name = "é" * 251 + ".png"
    r = await upload_named(h, ada, PNG, long_name)
    assert r.status_code == 201, r.text
    r = await h.http.get(f"/v1/media/{r.json()['id']}/info", headers=h.auth(ada))
    assert r.status_code == 200
    assert r.json()["filename"] == long_name and r.json()["size"] == len(PNG)


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "a" * 256,
        "../etc/passwd",
        "a/b.png",
        "a\\b.png",
        ".",
        "..",
        "tab\there.png",
        "nul\x00.png",
        "del\x7f.png",
        "photo\u202egnp.exe",
    ],
)
async def test_a_bad_filename_is_400_and_stores_nothing(h: Harness, name: str) -> None:
    ada = await h.account("ada")
    assert_error(await upload_named(h, ada, PNG, name), 400, "bad_request")
    assert stored(h) == (0, [])


async def test_media_info_is_for_those_who_may_download_it(h: Harness) -> None:
    ada, bob, eve = await h.account("ada"), await h.account("bob"), await h.account("eve")
    media = await upload(h, ada, PNG)
    r = await h.http.get(f"/v1/media/{media['id']}/info", headers=h.auth(ada))
    assert r.status_code == 200
    assert r.json() == {**media, "filename": None}
    # Others: the same 404 as an unknown id, until a message shares it with them.
    for who, media_id in [(bob, media["id"]), (bob, "md_nope"), (eve, media["id"])]:
        assert_error(
            await h.http.get(f"/v1/media/{media_id}/info", headers=h.auth(who)), 404, "not_found"
        )
    cid = await h.direct(ada, bob)
    await send(h, ada, cid, [media["id"]])
    r = await h.http.get(f"/v1/media/{media['id']}/info", headers=h.auth(bob))
    assert r.status_code == 200 and r.json()["content_type"] == "image/png"
    assert_error(
        await h.http.get(f"/v1/media/{media['id']}/info", headers=h.auth(eve)), 404, "not_found"
    )


async def test_a_message_with_an_attachment_may_have_an_empty_body(h: Harness) -> None:
    ada, bob = await h.account("ada"), await h.account("bob")
    cid = await h.direct(ada, bob)
    media = await upload(h, ada, PNG)
    r = await h.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": "c1", "body": "", "attachments": [media["id"]]},
        headers=h.auth(ada),
    )
    assert r.status_code == 201, r.text
    assert r.json()["attachments"] == [media["id"]]
    # Without an attachment, text is still required (REST and WebSocket alike).
    for body in ["", "   "]:
        r = await h.http.post(
            f"/v1/conversations/{cid}/messages",
            json={"client_id": "c2", "body": body},
            headers=h.auth(ada),
        )
        assert_error(r, 400, "bad_request")
    async with h.ws(ada) as ws:
        ack = await ws.request(
            "send_message", conversation_id=cid, client_id="c3", body="", attachments=[media["id"]]
        )
        assert ack["type"] == "ack" and ack["message"]["body"] == ""
        refused = await ws.request("send_message", conversation_id=cid, client_id="c4", body="")
        assert refused["type"] == "error" and refused["code"] == "bad_request"


async def test_deleting_its_messages_takes_a_file_from_the_members_and_erases_it(
    tmp_path: Path,
) -> None:
    # Deleting content deletes it everywhere it was kept: once no live message of the
    # conversation references an upload, its members cannot fetch it, and the sweep
    # erases the bytes. A second message with the same attachment keeps it reachable.
    config = make_config(
        tmp_path / "data",
        media={"unreferenced_ttl_seconds": 0.3, "cleanup_interval_seconds": 0.05},
    )
    with trio.fail_after(30):
        async with harness(config) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            gid = await h.group(ada, bob)
            media = await upload(h, ada, PNG)
            first = await send(h, ada, gid, [media["id"]])
            second = await send(h, bob, gid, [media["id"]])  # forwarded by bob
            url = f"/v1/media/{media['id']}"
            assert (await h.http.get(url, headers=h.auth(bob))).status_code == 200
            r = await h.http.delete(
                f"/v1/conversations/{gid}/messages/{first['seq']}", headers=h.auth(ada)
            )
            assert r.status_code == 200 and r.json()["attachments"] == []
            await trio.sleep(0.5)  # past the time: only the reference keeps it
            assert (await h.http.get(url, headers=h.auth(bob))).status_code == 200
            r = await h.http.delete(
                f"/v1/conversations/{gid}/messages/{second['seq']}", headers=h.auth(bob)
            )
            assert r.status_code == 200
            assert_error(await h.http.get(url, headers=h.auth(bob)), 404, "not_found")
            while (await h.http.get(url, headers=h.auth(ada))).status_code == 200:
                await trio.sleep(0.05)
            assert stored(h) == (0, [])
