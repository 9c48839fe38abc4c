"""`GET /metrics` and `GET /readyz` against the real server on 127.0.0.1:0.

Every scrape is read back with prometheus_client's own parser, so the output is what
Prometheus accepts. The counters are the process's (one server per process in
production; here several tests share a process), so the tests compare a scrape
before with one after, never absolute values; the gauges are the server's own.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from messageai.config import ConfigError
from messageai.server import Server
from tests.expo import fake_expo
from tests.helpers import harness, make_config, raw_websocket_handshake
from tests.jobkinds import kinds_for
from tests.llm import Reply, fake_llm, text

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient, **headers: str) -> Samples:
    r = await http.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_figures_move_as_a_client_sends(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with harness(make_config(tmp_path / "data")) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cid = await h.direct(ada, bob)
            before = await scrape(h.http)
            assert value(before, "messageai_connections") == 0
            async with h.ws(ada) as a:
                for i in range(5):
                    assert (await a.send_message(cid, f"hello {i}"))["type"] == "ack"
                # A resend is acked again but stores nothing.
                client_id = uuid.uuid4().hex
                await a.send_message(cid, "once", client_id)
                assert (await a.send_message(cid, "once", client_id))["duplicate"] is True
                during = await scrape(h.http)
                assert value(during, "messageai_connections") == 1
                assert value(during, "messageai_users_online") == 1
            assert value(during, "messageai_actors") >= 1
            assert value(during, "messageai_open_databases") >= 1
            assert moved(before, during, "messageai_messages_committed_total") == 6
            assert moved(before, during, "messageai_ack_seconds_count") == 6
            assert moved(before, during, "messageai_ack_seconds_sum") > 0
            # One commit per send at least (one in flight), the duplicate's included.
            commits = moved(before, during, "messageai_commit_seconds_count")
            assert commits >= 6
            assert moved(before, during, "messageai_commit_batch_size_count") == commits
            assert moved(before, during, "messageai_commit_batch_size_sum") >= 7
            # The buckets are cumulative and end in +Inf, which equals the count.
            assert value(during, "messageai_commit_seconds_bucket", le="+Inf") == value(
                during, "messageai_commit_seconds_count"
            )
            assert value(during, "messageai_commit_batch_size_bucket", le="1.0") <= value(
                during, "messageai_commit_batch_size_bucket", le="2.0"
            )
            # An edit is a change.
            r = await h.http.patch(
                f"/v1/conversations/{cid}/messages/1", json={"body": "edited"}, headers=h.auth(ada)
            )
            assert r.status_code == 200, r.text
            after = await scrape(h.http)
            assert moved(during, after, "messageai_changes_committed_total") == 1
            assert value(after, "process_resident_memory_bytes") > 0


async def test_refusals_and_errors_are_counted_by_limit_and_code(tmp_path: Path) -> None:
    config = make_config(
        tmp_path / "data",
        limits={"messages_per_second": 0.01, "message_burst": 1, "max_connections_per_user": 1},
    )
    with trio.fail_after(30):
        async with harness(config) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cid = await h.direct(ada, bob)
            before = await scrape(h.http)
            async with h.ws(ada) as a:
                assert (await a.send_message(cid, "one"))["type"] == "ack"
                refused = await a.send_message(cid, "two")
                assert refused["code"] == "rate_limited"
                # A second connection of ada's passes the cap: 429 at the handshake.
                auth = {"Authorization": f"Bearer {ada.token}"}
                status, _ = await raw_websocket_handshake(h.url, "/v1/ws", auth)
                assert status == 429
            assert (await h.http.get("/v1/nothing-here")).status_code == 404
            after = await scrape(h.http)
            assert moved(before, after, "messageai_rate_limited_total", limit="messages") == 1
            assert moved(before, after, "messageai_rate_limited_total", limit="connections") == 1
            assert moved(before, after, "messageai_errors_total", code="rate_limited") == 2
            assert moved(before, after, "messageai_errors_total", code="not_found") == 1


async def test_a_connection_closed_with_1013_is_counted(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", limits={"outbound_queue_bytes": 3000})
    with trio.fail_after(30):
        async with harness(config) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            cid = await h.direct(ada, bob)
            async with h.ws(ada) as a:
                for _ in range(3):
                    assert (await a.send_message(cid, "z" * 1500))["type"] == "ack"
            before = await scrape(h.http)
            async with h.ws(bob) as b:
                await b.send({"type": "get_history", "conversation_id": cid, "req": 1})
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    while True:
                        await b.recv(10)
                assert closed.value.reason is not None and closed.value.reason.code == 1013
            after = await scrape(h.http)
            assert moved(before, after, "messageai_slow_consumer_closes_total") == 1


async def test_push_queue_and_outcomes_and_media_bytes(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with fake_expo() as expo:
            push = {"endpoint": expo.endpoint, "retry_base_seconds": 0.01}
            async with harness(make_config(tmp_path / "data", push=push)) as h:
                ada, bob = await h.account("ada"), await h.account("bob")
                cid = await h.direct(ada, bob)
                token = "ExponentPushToken[metricsmetricsmetrics]"
                r = await h.http.post(
                    "/v1/push-tokens", json={"token": token, "platform": "ios"}, headers=h.auth(bob)
                )
                assert r.status_code == 201
                before = await scrape(h.http)
                assert value(before, "messageai_push_queue_depth") == 0
                r = await h.http.post(
                    f"/v1/conversations/{cid}/messages",
                    json={"client_id": uuid.uuid4().hex, "body": "ping"},
                    headers=h.auth(ada),
                )
                assert r.status_code == 201
                await expo.wait_for(lambda: len(expo.notifications()) == 1)
                while True:
                    after = await scrape(h.http)
                    if moved(before, after, "messageai_push_notifications_total", outcome="sent"):
                        break
                    await trio.sleep(0.02)
                assert (
                    moved(before, after, "messageai_push_notifications_total", outcome="sent") == 1
                )
                assert (
                    moved(before, after, "messageai_push_notifications_total", outcome="failed")
                    == 0
                )

                data = b"some plain text, 33 bytes of it\n"
                r = await h.http.post(
                    "/v1/media",
                    content=data,
                    headers={**h.auth(ada), "Content-Type": "text/plain"},
                )
                assert r.status_code == 201, r.text
                r = await h.http.get(f"/v1/media/{r.json()['id']}", headers=h.auth(ada))
                assert r.content == data
                media = await scrape(h.http)
                assert moved(after, media, "messageai_media_uploaded_bytes_total") == len(data)
                assert moved(after, media, "messageai_media_served_bytes_total") == len(data)
                # The gauge is the folder's, read at the scrape: the same bytes again
                # are stored once; a second upload adds its own.
                assert moved(after, media, "messageai_media_disk_bytes") == len(data)
                other = b"other plain text: 29 bytes.\n"
                for body in (data, other):
                    r = await h.http.post(
                        "/v1/media",
                        content=body,
                        headers={**h.auth(ada), "Content-Type": "text/plain"},
                    )
                    assert r.status_code == 201, r.text
                again = await scrape(h.http)
                assert moved(media, again, "messageai_media_disk_bytes") == len(other)
                files = [p for p in (tmp_path / "data" / "media").rglob("*") if p.is_file()]
                assert value(again, "messageai_media_disk_bytes") == sum(
                    p.stat().st_size for p in files
                )


async def test_metrics_off_is_404_and_the_rest_still_serves(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with harness(make_config(tmp_path / "data", metrics={"enabled": False})) as h:
            assert (await h.http.get("/metrics")).status_code == 404
            assert (await h.http.get("/healthz")).status_code == 200


async def test_metrics_token_from_env_is_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESSAGEAI_TEST_METRICS_TOKEN", "s3cret-scrape-token")
    config = make_config(tmp_path / "data", metrics={"token_env": "MESSAGEAI_TEST_METRICS_TOKEN"})
    with trio.fail_after(20):
        async with harness(config) as h:
            assert (await h.http.get("/metrics")).status_code == 401
            wrong = {"Authorization": "Bearer not-the-token"}
            assert (await h.http.get("/metrics", headers=wrong)).status_code == 401
            samples = await scrape(h.http, Authorization="Bearer s3cret-scrape-token")
            assert ("messageai_connections", frozenset()) in samples


async def test_metrics_token_from_file(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text("from-a-file\n")
    config = make_config(tmp_path / "data", metrics={"token_file": str(token_file)})
    with trio.fail_after(20):
        async with harness(config) as h:
            assert (await h.http.get("/metrics")).status_code == 401
            await scrape(h.http, Authorization="Bearer from-a-file")


async def test_a_missing_metrics_token_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", metrics={"token_env": "MESSAGEAI_TEST_UNSET_VAR"})
    with trio.fail_after(20), pytest.raises(BaseException) as raised:
        async with harness(config):
            pass
    error = raised.value
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    assert isinstance(error, ConfigError)
    assert "metrics.token_env" in str(error)


async def test_readyz_answers_503_with_a_reason_until_the_data_directory_is_back(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with trio.fail_after(20):
        async with harness(make_config(data)) as h:
            r = await h.http.get("/readyz")
            assert (r.status_code, r.json()) == (200, {"status": "ready"})
            # The directory's files stay open, but nothing new can be made there.
            data.rename(tmp_path / "moved")
            try:
                r = await h.http.get("/readyz")
                assert r.status_code == 503
                assert r.json()["status"] == "unready"
                assert "data directory is not writable" in r.json()["reason"]
                # Liveness is not readiness.
                assert (await h.http.get("/healthz")).status_code == 200
            finally:
                (tmp_path / "moved").rename(data)
            assert (await h.http.get("/readyz")).status_code == 200


async def test_readyz_is_503_when_the_directory_database_does_not_answer(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with harness(make_config(tmp_path / "data")) as h:
            directory = h.server.directory
            assert directory is not None
            # Its read connection closed under it: a real apsw error from a real file.
            directory._reader.close()
            r = await h.http.get("/readyz")
            assert r.status_code == 503
            assert "directory database does not answer" in r.json()["reason"]


async def test_ai_requests_are_timed_and_failures_counted(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with fake_llm() as llm:
            ai = {"base_url": llm.url, "model": "fake-model", "timeout_seconds": 5.0}
            async with harness(make_config(tmp_path / "data", ai=ai)) as h:
                ada, bob = await h.account("ada"), await h.account("bob")
                cid = await h.direct(ada, bob)
                r = await h.http.put(
                    f"/v1/conversations/{cid}/ai", json={"enabled": True}, headers=h.auth(ada)
                )
                assert r.status_code == 200, r.text
                before = await scrape(h.http)
                llm.script(text("fine"), Reply(status=503, body=b"{}"))
                for question, status in (("first?", 200), ("second?", 503)):
                    r = await h.http.post(
                        f"/v1/conversations/{cid}/ai/ask",
                        json={"question": question},
                        headers=h.auth(ada),
                    )
                    assert r.status_code == status, r.text
                after = await scrape(h.http)
                assert moved(before, after, "messageai_ai_request_seconds_count") == 2
                assert moved(before, after, "messageai_ai_request_seconds_sum") > 0
                assert moved(before, after, "messageai_ai_request_failures_total") == 1


async def test_jobs_are_counted_by_kind_and_outcome(tmp_path: Path) -> None:
    jobs_config = {
        "poll_seconds": 0.05,
        "backoff_base_seconds": 0.02,
        "backoff_max_seconds": 0.05,
        "max_attempts": 2,
    }
    config = make_config(tmp_path / "data", jobs=jobs_config)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                Server(config, job_kinds=kinds_for(config.data_dir)).run
            )
            try:
                assert server.jobs is not None
                async with httpx.AsyncClient(base_url=server.url) as http:
                    before = await scrape(http)
                    assert value(before, "messageai_jobs_running") == 0
                    payload = {"value": "v", "hold": "none", "hold_attempts": 0}
                    await server.jobs.enqueue("test.effect", payload, dedup_key="ok")
                    failing = {"mode": "job_failed", "text": "no"}
                    await server.jobs.enqueue("test.fail", failing, dedup_key="bad")
                    finished = "messageai_jobs_finished_total"
                    while True:
                        after = await scrape(http)
                        dead = moved(before, after, finished, kind="test.fail", outcome="dead")
                        if dead and moved(
                            before, after, finished, kind="test.effect", outcome="done"
                        ):
                            break
                        await trio.sleep(0.05)
                    assert moved(before, after, finished, kind="test.effect", outcome="done") == 1
                    assert moved(before, after, finished, kind="test.fail", outcome="retry") == 1
                    assert moved(before, after, finished, kind="test.fail", outcome="dead") == 1
            finally:
                server.shutdown()
